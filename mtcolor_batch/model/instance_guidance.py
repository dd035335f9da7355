"""Instance mask + text guidance (paper Sec. 3.3, Eq. 7-9): a gated, masked branch in every self-attention.

Each instance is described by its own text ("a dark green tram") and its mask. The pooled CLIP
embedding of the text is concatenated with a small 3-conv encoding of the mask and mapped by a 3-layer
MLP to one token. Every self-attention layer (``attn1``) of the UNet gets a branch of its own, as
diffusers' GLIGEN ``GatedSelfAttentionDense``: the token is mapped to the layer's width (``e``), the
latents get a LayerNorm (``h``), and the branch's own projections W_Qp, W_Kp, W_Vp and an output
projection compute a masked attention whose latent part is added through a tanh gate:

    out = self_attention(x) + tanh(gate_l) * inside * W_O(masked_attn(W_Qp h, W_Kp [h ; e], W_Vp [h ; e]))

under the paper's masks (built in ``regions.py``):

* M_self (Eq. 7): a pixel of instance k attends to the pixels of instance k only; pixels outside
  every instance get zero branch output (``inside``), so background is never mixed in;
* M_cross (Eq. 8): a pixel of instance k attends to token k only, when slot k holds a text.

The gate starts at zero, so fresh modules are exact no-ops. An image without instances (N = 0) and
one whose N slots are all empty get the same output bit for bit, in training and at inference: no
pixel is inside an instance, so the branch adds exactly zero.

Per-call data (tokens, masks) reaches the processors as a call argument through the UNet's
``cross_attention_kwargs`` (key ``mtcolor``), the way diffusers passes per-call data to attention
processors; nothing is stored on the processors between calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from mtcolor_batch.model.region_attention import RegionLayout
from mtcolor_batch.model.regions import MASK_INPUT_SIZE, RegionMaps, masked_attention

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

CALL_KEY = "mtcolor"
"""Name of the per-call argument in the UNet's ``cross_attention_kwargs``."""


def layer_key(processor_name: str) -> str:
    """ModuleDict-safe key for a layer: "down_blocks.0...attn1.processor" -> "down_blocks_0_..._attn1"."""
    return processor_name.removesuffix(".processor").replace(".", "_")


class MaskEncoder(nn.Module):
    """Three strided convs: instance mask -> fixed-size vector that keeps shape and position.

    Masks are first area-resized to ``size`` x ``size`` so cost and output size do not depend on the
    working resolution; the final map is pooled to 4x4 (not 1x1) so *where* the instance is survives.
    Region batches carry masks already resized to ``MASK_INPUT_SIZE`` (``regions.mask_input``), for
    which the resize here is the identity.
    """

    def __init__(self, size: int = MASK_INPUT_SIZE, channels: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.size = size
        c1, c2, c3 = channels
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            nn.SiLU(),
        )
        self.out_dim = c3 * 16

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """(M, H, W) float masks -> (M, out_dim)."""
        x = F.adaptive_avg_pool2d(masks[:, None], self.size)
        x = F.adaptive_avg_pool2d(self.convs(x), 4)
        return x.flatten(1)


class GuidedLayer(nn.Module):
    """One layer's instance branch: token map, LayerNorm, W_Qp/W_Kp/W_Vp, output projection, tanh gate.

    Only the gate is zero-initialised (as in GLIGEN), so the output is exactly zero until it moves.
    :meth:`init_from` starts the projections as copies of the layer's own self-attention (separate
    parameters from then on): the branch then starts from attention the UNet already uses, which is
    what lets it learn in a short run (random projections did not, on the synthetic learning task).
    The trainer gives those copied projections (:attr:`COPIED`) a smaller learning rate than the
    parts that start from scratch (``projection_lr_scale``): at the rate the new parts need, the
    copies were soon scrambled and the learned text binding came and went from one step count to
    the next.
    """

    COPIED = ("to_q", "to_k", "to_v", "to_out")
    """The projections :meth:`init_from` copies from the layer's self-attention (W_Qp, W_Kp, W_Vp, W_O)."""

    def __init__(self, token_dim: int, dim: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = int(heads)
        self.proj = nn.Linear(token_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor | RegionLayout,
        inside: torch.Tensor,
    ) -> torch.Tensor:
        """The gated branch output (B, S, dim) for latents ``x`` (B, S, dim), tokens (B, N, token_dim).

        ``mask`` is the (B, 1, S, S + N) branch mask or its :class:`RegionLayout`, ``inside`` the
        (B, S, 1) instance pixels.
        """
        b, s, _ = x.shape
        dtype = self.to_q.weight.dtype
        # LayerNorm on the latents only: a normalised token could never outweigh the pixels it
        # competes with in the softmax, and on the synthetic task the texts were then never learned.
        h = torch.cat([self.norm(x.to(dtype)), self.proj(tokens.to(dtype))], dim=1)
        q, k, v = self.to_q(h[:, :s]), self.to_k(h), self.to_v(h)
        q, k, v = (t.view(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = masked_attention(q, k, v, mask).transpose(1, 2).reshape(b, s, -1)
        out = torch.where(inside, self.to_out(out), 0.0)
        return (torch.tanh(self.gate) * out).to(x.dtype)

    @torch.no_grad()
    def init_from(self, weight: Callable[[str], torch.Tensor]) -> None:
        """Copy W_Q, W_K, W_V and the output projection of the layer's own self-attention.

        ``weight(name)`` returns that attention's parameter ``name`` ("to_q.weight", "to_out.0.bias").
        """
        for mine, theirs in ((self.to_q, "to_q"), (self.to_k, "to_k"), (self.to_v, "to_v")):
            mine.weight.copy_(weight(f"{theirs}.weight"))
        self.to_out.weight.copy_(weight("to_out.0.weight"))
        self.to_out.bias.copy_(weight("to_out.0.bias"))


class InstanceGuidance(nn.Module):
    """Instance token encoder + one :class:`GuidedLayer` per UNet self-attention layer."""

    def __init__(
        self,
        text_dim: int,
        layer_dims: dict[str, int],
        token_dim: int = 768,
        layer_heads: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.token_dim = token_dim
        self.layer_dims = dict(layer_dims)
        self.layer_heads = {n: int((layer_heads or {}).get(n, 1)) for n in self.layer_dims}
        self.mask_encoder = MaskEncoder()
        self.mlp = nn.Sequential(
            nn.Linear(text_dim + self.mask_encoder.out_dim, token_dim),
            nn.SiLU(),
            nn.Linear(token_dim, token_dim),
            nn.SiLU(),
            nn.Linear(token_dim, token_dim),
        )
        self.layers = nn.ModuleDict(
            {layer_key(n): GuidedLayer(token_dim, d, self.layer_heads[n]) for n, d in self.layer_dims.items()}
        )

    @staticmethod
    def self_attention_dims(unet: UNet2DConditionModel) -> dict[str, int]:
        """{processor name: width} for every self-attention (attn1) layer of a diffusers UNet."""
        dims = {}
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                dims[name] = int(unet.get_submodule(name.removesuffix(".processor")).to_q.in_features)
        return dims

    @staticmethod
    def self_attention_heads(unet: UNet2DConditionModel) -> dict[str, int]:
        """{processor name: head count} of every self-attention (attn1) layer of a diffusers UNet."""
        return {
            name: int(unet.get_submodule(name.removesuffix(".processor")).heads)
            for name in unet.attn_processors
            if name.endswith("attn1.processor")
        }

    def init_from(self, weight: Callable[[str], torch.Tensor]) -> None:
        """Start every layer's branch projections from that layer's own self-attention.

        ``weight(name)`` returns a UNet parameter by its state-dict name: ``unet.get_parameter`` for a
        loaded UNet, or a reader of its safetensors file (``models pull`` builds on the meta device).
        """
        for name in self.layer_dims:
            prefix = name.removesuffix(".processor")

            def layer_weight(key: str, p: str = prefix) -> torch.Tensor:
                return weight(f"{p}.{key}")

            self.layer(layer_key(name)).init_from(layer_weight)

    def copied_parameter_names(self) -> set[str]:
        """Names (as in ``named_parameters()``) of the projections :meth:`init_from` copies from the UNet."""
        return {
            name
            for name, _ in self.named_parameters()
            if name.startswith("layers.") and name.split(".")[2] in GuidedLayer.COPIED
        }

    def layer(self, key: str) -> GuidedLayer:
        """The branch of one layer, typed (``nn.ModuleDict`` only knows it holds modules)."""
        return cast(GuidedLayer, self.layers[key])

    def encode(self, inst_text: torch.Tensor, inst_masks: torch.Tensor) -> torch.Tensor:
        """(B, N, D_text) texts + (B, N, H, W) masks (a batch's ``inst_masks``) -> (B, N, token_dim)."""
        b, n = inst_text.shape[:2]
        dtype = cast(nn.Linear, self.mlp[0]).weight.dtype
        mask_feat = self.mask_encoder(inst_masks.flatten(0, 1).to(dtype)).view(b, n, -1)
        return self.mlp(torch.cat([inst_text.to(dtype), mask_feat], dim=-1))

    def active(self) -> dict[str, bool]:
        """Which layers can change anything (gate != 0), with one device sync for all of them."""
        flags = torch.stack([(self.layer(key).gate != 0).any() for key in self.layers]).tolist()
        return dict(zip(self.layers.keys(), flags, strict=True))


@dataclass(frozen=True)
class InstanceCall:
    """What one UNet call hands every instance processor: the tokens and the call's region masks."""

    tokens: torch.Tensor  # (B, N, token_dim)
    maps: RegionMaps
    active: dict[str, bool] = field(default_factory=dict)  # layer key -> may change anything


class CallArgFilter:
    """Wraps the processors of layers without a branch so they accept (and ignore) the MT-Color argument.

    diffusers hands ``cross_attention_kwargs`` to every attention layer and warns about keys a
    processor does not name; naming it here keeps cross-attention and ControlNet-shared layers quiet.
    """

    def __init__(self, base: object) -> None:
        self.base = base

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        mtcolor: InstanceCall | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)  # type: ignore[operator]


class InstanceAttnProcessor:
    """Wraps a self-attention layer's processor and adds the layer's gated instance branch.

    A plain object on purpose: diffusers registers nn.Module processors as UNet submodules, which
    would leak MT-Color weights into the UNet's own state dict. Called without ``mtcolor`` it is
    exactly the wrapped processor, so the UNet stays usable on its own.
    """

    def __init__(self, base: object, layer: GuidedLayer, key: str) -> None:
        self.base = base
        self.layer = layer
        self.key = key

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        mtcolor: InstanceCall | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)  # type: ignore[operator]
        if mtcolor is None or encoder_hidden_states is not None or hidden_states.ndim != 3:
            return out
        if not mtcolor.active.get(self.key, True):
            return out
        return out + self.delta(hidden_states, mtcolor)

    def delta(self, x: torch.Tensor, call: InstanceCall) -> torch.Tensor:
        """The gated instance term alone (tests use it to check leakage)."""
        size = call.maps.size_for(x.shape[1])
        pixels = call.maps.inside_pixels(size)  # the branch writes instance pixels only: run it there
        if pixels is not None:
            if pixels.empty:
                return torch.zeros_like(x)
            return pixels.put(self.layer(pixels.take(x), call.tokens, pixels.layout, pixels.inside))
        return self.layer(x, call.tokens, call.maps.branch_attention(size), call.maps.inside(size))
