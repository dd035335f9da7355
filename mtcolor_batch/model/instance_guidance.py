"""Instance mask + text guidance: one extra token per instance in every UNet self-attention.

Each instance is described by its own text ("a dark green tram") and its mask. The pooled CLIP
embedding of the text is concatenated with a small 3-conv encoding of the mask and mapped by a 3-layer
MLP to one token. In every self-attention layer (``attn1``) of the UNet the latent pixels attend to
``[latents ; instance tokens]`` under the paper's mask:

* latent -> latent only within the same region (background is one more region);
* latent -> instance token k only for pixels of instance k; empty slots are never attended.

Only the latent part is kept, added through a tanh gate that starts at zero (as in diffusers'
GLIGEN ``GatedSelfAttentionDense``), so untrained modules are exact no-ops:

    out = self_attention(x) + tanh(gate_l) * masked_attention([x ; W_l tokens])[latent part]

The masked attention reuses the layer's own (pretrained) q/k/v/out projections; what is learned is the
token encoder, one linear map per layer into that layer's width, and the gates. It is installed as a
diffusers attention processor that wraps the layer's original processor: no fork of diffusers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mtcolor_batch.model.pmam import RegionMasks


def layer_key(processor_name: str) -> str:
    """ModuleDict-safe key for a layer: "down_blocks.0...attn1.processor" -> "down_blocks_0_..._attn1"."""
    return processor_name.removesuffix(".processor").replace(".", "_")


class MaskEncoder(nn.Module):
    """Three strided convs: instance mask -> fixed-size vector that keeps shape and position.

    Masks are first area-resized to ``size`` x ``size`` so cost and output size do not depend on the
    working resolution; the final map is pooled to 4x4 (not 1x1) so *where* the instance is survives.
    """

    def __init__(self, size: int = 64, channels: tuple[int, int, int] = (16, 32, 64)) -> None:
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
    """Per-layer parameters: token -> layer width, and the zero-initialised tanh gate."""

    def __init__(self, token_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(token_dim, dim)
        self.gate = nn.Parameter(torch.zeros(1))


class InstanceGuidance(nn.Module):
    """Instance token encoder + one :class:`GuidedLayer` per UNet self-attention layer."""

    def __init__(self, text_dim: int, layer_dims: dict[str, int], token_dim: int = 768) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.token_dim = token_dim
        self.layer_dims = dict(layer_dims)
        self.mask_encoder = MaskEncoder()
        self.mlp = nn.Sequential(
            nn.Linear(text_dim + self.mask_encoder.out_dim, token_dim),
            nn.SiLU(),
            nn.Linear(token_dim, token_dim),
            nn.SiLU(),
            nn.Linear(token_dim, token_dim),
        )
        self.layers = nn.ModuleDict(
            {layer_key(n): GuidedLayer(token_dim, d) for n, d in self.layer_dims.items()}
        )

    @staticmethod
    def self_attention_dims(unet: nn.Module) -> dict[str, int]:
        """{processor name: width} for every self-attention (attn1) layer of a diffusers UNet."""
        dims = {}
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                dims[name] = int(unet.get_submodule(name.removesuffix(".processor")).to_q.in_features)
        return dims

    def encode(self, inst_text: torch.Tensor, inst_masks: torch.Tensor) -> torch.Tensor:
        """(B, N, D_text) texts + (B, N, H, W) masks -> (B, N, token_dim) instance tokens."""
        b, n = inst_text.shape[:2]
        dtype = self.mlp[0].weight.dtype
        mask_feat = self.mask_encoder(inst_masks.flatten(0, 1).to(dtype)).view(b, n, -1)
        return self.mlp(torch.cat([inst_text.to(dtype), mask_feat], dim=-1))

    def active(self) -> dict[str, bool]:
        """Which layers can change anything (gate != 0), with one device sync for all of them."""
        flags = torch.stack([(layer.gate != 0).any() for layer in self.layers.values()]).tolist()
        return dict(zip(self.layers.keys(), flags, strict=True))


@dataclass
class GuidanceContext:
    """Everything one UNet call needs; lives only for that call (see :meth:`GuidanceState.use`)."""

    tokens: torch.Tensor  # (B, N, token_dim)
    valid: torch.Tensor  # (B, N) bool
    masks: RegionMasks  # label map at latent resolution + per-size cache
    latent_size: tuple[int, int]
    active: dict[str, bool] = field(default_factory=dict)
    _size_cache: dict[int, tuple[int, int]] = field(default_factory=dict)
    _mask_cache: dict[int, torch.Tensor] = field(default_factory=dict)

    def attention_mask(self, seq_len: int) -> torch.Tensor:
        """The (B, 1, S, S + N) mask for layers with ``seq_len`` latent tokens, built once per call."""
        if seq_len not in self._mask_cache:
            labels = self.masks.labels(self.size_for(seq_len))
            self._mask_cache[seq_len] = instance_attention_mask(labels, self.valid)
        return self._mask_cache[seq_len]

    def size_for(self, seq_len: int) -> tuple[int, int]:
        """Spatial size of a layer from its token count: the latent size halved (ceil) k times."""
        if seq_len not in self._size_cache:
            h, w = self.latent_size
            while h * w > seq_len and (h > 1 or w > 1):
                h, w = -(-h // 2), -(-w // 2)
            if h * w != seq_len:
                raise ValueError(f"cannot map {seq_len} tokens onto latent size {self.latent_size}")
            self._size_cache[seq_len] = (h, w)
        return self._size_cache[seq_len]


class GuidanceState:
    """Shared slot through which the processors see the current call's context (None between calls)."""

    def __init__(self) -> None:
        self.current: GuidanceContext | None = None

    @contextmanager
    def use(self, context: GuidanceContext) -> Iterator[None]:
        if self.current is not None:
            raise RuntimeError("instance guidance context is already set (re-entrant UNet call?)")
        self.current = context
        try:
            yield
        finally:
            self.current = None


def instance_attention_mask(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Bool mask (B, 1, S, S + N) of the paper for latent queries over [latents ; instance tokens].

    ``labels`` (B, S): region per pixel (0 background, k = slot k). Token k (slot k, 1-based in the
    label map) is visible to a pixel only if the pixel is in region k and the slot is valid.
    """
    n = valid.shape[1]
    latent = labels[:, :, None] == labels[:, None, :]
    slots = torch.arange(1, n + 1, device=labels.device)
    token = (labels[:, :, None] == slots) & valid[:, None, :].bool()
    return torch.cat([latent, token], dim=-1)[:, None]


def masked_instance_attention(
    attn: nn.Module, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Latent part of ``attn``'s attention over ``[x ; tokens]`` under ``mask``, using attn's projections.

    Only latent queries are computed: the token rows would be thrown away anyway.
    """
    b, s, _ = x.shape
    kv = torch.cat([x, tokens], dim=1)
    q, k, v = attn.to_q(x), attn.to_k(kv), attn.to_v(kv)
    heads = attn.heads
    q, k, v = (t.view(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(b, s, -1).to(q.dtype)
    return attn.to_out[0](out)


class InstanceAttnProcessor:
    """Wraps a self-attention layer's processor and adds the gated, masked instance attention.

    A plain object on purpose: diffusers registers nn.Module processors as UNet submodules, which
    would leak MT-Color weights into the UNet's own state dict. Without a context it is exactly the
    wrapped processor, so the UNet stays usable on its own.
    """

    def __init__(self, base: object, layer: GuidedLayer, key: str, state: GuidanceState) -> None:
        self.base = base
        self.layer = layer
        self.key = key
        self.state = state

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        ctx = self.state.current
        if ctx is None or encoder_hidden_states is not None or hidden_states.ndim != 3:
            return out
        if not ctx.active.get(self.key, True) or ctx.tokens.shape[1] == 0:
            return out
        return out + self.delta(attn, hidden_states, ctx)

    def delta(self, attn: nn.Module, x: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        """The gated instance term alone (tests use it to check leakage)."""
        mask = ctx.attention_mask(x.shape[1])
        weight_dtype = self.layer.proj.weight.dtype
        tokens = self.layer.proj(ctx.tokens.to(weight_dtype)).to(x.dtype)
        gate = torch.tanh(self.layer.gate).to(x.dtype)
        return gate * masked_instance_attention(attn, x, tokens, mask)
