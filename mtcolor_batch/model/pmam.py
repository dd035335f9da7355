"""Pixel-level masked attention (PMAM): region-aware fusion of ControlNet features into the UNet.

Plain SD+ControlNet adds each ControlNet residual to the UNet feature of the same resolution, pixel
by pixel. MT-Color adds a cross-attention on top: queries and keys come from the UNet (latent)
feature, values from the ControlNet feature of the gray scan, and the attention mask lets a pixel
look only at pixels of its own region (one region per instance, background is region 0). Colour
evidence is gathered from the whole object yet never borrowed from a neighbouring object, which is
what stops colour bleeding across instance borders.

    fused = unet_feat + control_res + out_proj(masked_attn(q(unet_feat), k(unet_feat), v(control_res)))

``out_proj`` starts at zero, so a fresh PMAM is exactly plain SD+ControlNet.

Wiring without forking diffusers: the UNet still receives the ControlNet residuals through its own
``down_block_additional_residuals`` / ``mid_block_additional_residual`` arguments; :func:`attach_pmam`
only adds the PMAM delta through forward hooks on ``conv_in``, every down block (on the skip tuple it
returns, never on the hidden state that flows down) and the mid block. Because the UNet's down-path
features do not depend on those residuals, the result equals passing ``control_res + delta`` to an
unmodified UNet (the model tests check exactly that).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.model.region_attention import RegionLayout
from mtcolor_batch.model.regions import RegionMaps, masked_attention

if TYPE_CHECKING:
    from diffusers import ControlNetModel, UNet2DConditionModel


class PMAMBlock(nn.Module):
    """PMAM at one resolution: masked cross-attention from UNet feature (Q, K) to ControlNet feature (V)."""

    def __init__(self, channels: int, head_dim: int = 64) -> None:
        super().__init__()
        self.channels = channels
        self.heads = channels // head_dim if channels % head_dim == 0 else 1
        # Per-pixel LayerNorm, not GroupNorm: GroupNorm statistics span the whole image, so a change
        # inside one instance would shift the normalised features (and the output) of every other.
        self.norm_latent = nn.LayerNorm(channels, eps=1e-6)
        self.norm_control = nn.LayerNorm(channels, eps=1e-6)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.out_proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        return x.view(b, s, self.heads, c // self.heads).transpose(1, 2)

    def forward(
        self, latent: torch.Tensor, control: torch.Tensor, mask: torch.Tensor | RegionLayout
    ) -> torch.Tensor:
        """Delta to add to ``latent + control``; (B, C, h, w) in, (B, C, h, w) out, in latent's dtype.

        ``mask`` is the (B, 1, h*w, h*w) bool same-region mask at this resolution, or its
        :class:`RegionLayout` (same result, computed region by region).
        """
        b, c, h, w = latent.shape
        dtype = self.to_q.weight.dtype
        x = self.norm_latent(latent.to(dtype).flatten(2).transpose(1, 2))
        y = self.norm_control(control.to(dtype).flatten(2).transpose(1, 2))
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(x)), self._split(self.to_v(y))
        out = masked_attention(q, k, v, mask)
        out = self.out_proj(out.transpose(1, 2).reshape(b, h * w, c))
        return out.transpose(1, 2).reshape(b, c, h, w).to(latent.dtype)

    def is_zero(self) -> torch.Tensor:
        """0-d bool tensor: True while out_proj is all zero, i.e. the block provably adds nothing."""
        return ~(self.out_proj.weight.any() | self.out_proj.bias.any())


class PMAM(nn.Module):
    """One :class:`PMAMBlock` per ControlNet injection point, in diffusers order.

    Blocks ``0 .. n-2`` match ``down_block_additional_residuals`` (index 0 is the ``conv_in`` one),
    the last block matches ``mid_block_additional_residual``.
    """

    def __init__(self, channels: Sequence[int], head_dim: int = 64) -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.head_dim = head_dim
        self.blocks = nn.ModuleList(PMAMBlock(c, head_dim) for c in self.channels)

    @classmethod
    def from_controlnet(cls, controlnet: ControlNetModel, head_dim: int = 64) -> PMAM:
        """Channel widths read from the ControlNet's zero convs, so they match its residuals exactly."""
        down = [int(conv.out_channels) for conv in controlnet.controlnet_down_blocks]
        mid = int(controlnet.controlnet_mid_block.out_channels)
        return cls([*down, mid], head_dim)

    def active(self) -> list[bool]:
        """Which blocks can change anything (one device sync for all of them)."""
        return [not z for z in torch.stack([cast(PMAMBlock, blk).is_zero() for blk in self.blocks]).tolist()]


def unet_skip_layout(unet: UNet2DConditionModel) -> list[int]:
    """Index of the first skip feature each down block returns (index 0 is conv_in's output).

    A diffusers down block returns one skip per resnet plus one after its downsampler, if any.
    """
    starts, index = [], 1
    for block in unet.down_blocks:
        starts.append(index)
        downsamplers = getattr(block, "downsamplers", None)
        index += len(block.resnets) + (len(downsamplers) if downsamplers is not None else 0)
    starts.append(index)  # total number of down skips, used as a consistency check
    return starts


@contextmanager
def attach_pmam(
    pmam: PMAM,
    unet: UNet2DConditionModel,
    control_down: Sequence[torch.Tensor],
    control_mid: torch.Tensor,
    masks: RegionMaps,
    scale: float = 1.0,
    active: Sequence[bool] | None = None,
) -> Iterator[None]:
    """Hook PMAM into one UNet forward call; the hooks are removed on exit, even after an error.

    ``control_down`` / ``control_mid`` are the ControlNet residuals before ``scale`` (the values of
    the attention); the PMAM delta is multiplied by ``scale`` so that controlnet_scale=0 also turns
    PMAM off. ``active[i] == False`` skips block i (its output is provably zero).
    """
    starts = unet_skip_layout(unet)
    if starts[-1] != len(control_down) or len(pmam.blocks) != len(control_down) + 1:
        raise ModelError(
            f"PMAM has {len(pmam.blocks)} blocks, UNet has {starts[-1]} skips + mid, "
            f"ControlNet gave {len(control_down)} + mid residuals",
            hint="the MT-Color modules do not belong to this UNet/ControlNet",
        )
    active = list(active) if active is not None else [True] * len(pmam.blocks)
    controls = [*control_down, control_mid]

    def delta(i: int, feat: torch.Tensor) -> torch.Tensor | None:
        if not active[i]:
            return None
        d = pmam.blocks[i](feat, controls[i], masks.same_region_attention((feat.shape[-2], feat.shape[-1])))
        return d * scale if scale != 1.0 else d

    stash: dict[str, torch.Tensor] = {}

    def conv_in_hook(_m: nn.Module, _a: tuple, out: torch.Tensor) -> torch.Tensor:
        # conv_in's output is both skip 0 and the input of down block 0: add the delta here and
        # hand the untouched tensor back to down block 0 in its pre-hook below.
        d = delta(0, out)
        if d is None:
            return out
        stash["conv_in"] = out
        return out + d

    def restore_hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if "conv_in" not in stash:
            return args, kwargs
        original = stash.pop("conv_in")
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": original}
        else:
            args = (original, *args[1:])
        return args, kwargs

    def down_hook(start: int):  # noqa: ANN202 - returns a hook closure
        def hook(_m: nn.Module, _a: tuple, out: tuple) -> tuple:
            hidden, skips = out
            fused = []
            for k, skip in enumerate(skips):
                d = delta(start + k, skip)
                fused.append(skip if d is None else skip + d)
            return hidden, tuple(fused)  # new skip tensors; `hidden` (flowing down) untouched

        return hook

    def mid_hook(_m: nn.Module, _a: tuple, out: torch.Tensor) -> torch.Tensor:
        d = delta(len(controls) - 1, out)
        return out if d is None else out + d

    handles = [
        unet.conv_in.register_forward_hook(conv_in_hook),
        unet.down_blocks[0].register_forward_pre_hook(restore_hook, with_kwargs=True),
        unet.mid_block.register_forward_hook(mid_hook),
    ]
    handles += [
        blk.register_forward_hook(down_hook(s)) for blk, s in zip(unet.down_blocks, starts[:-1], strict=True)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        stash.clear()
