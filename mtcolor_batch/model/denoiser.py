"""One MT-Color noise prediction: ControlNet, then the UNet with PMAM and instance guidance active.

This is the seam between the diffusers backbone and the MT-Color modules. The sampler only deals
with :class:`RegionBatch` (the per-image instance layout as tensors) and :class:`MTColorDenoiser`;
how the modules are wired into diffusers (forward hooks for PMAM, attention processors for the
instance guidance) stays in here and in ``pmam.py`` / ``instance_guidance.py``.

Per-call state (region masks, instance tokens, hooks) is set up at the start of every call and torn
down in a ``finally``, so nothing leaks from one call (or one image) into the next, and the UNet is a
plain diffusers UNet again between calls.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.core.fs import staged_file
from mtcolor_batch.model.instance_guidance import (
    GuidanceContext,
    GuidanceState,
    InstanceAttnProcessor,
    InstanceGuidance,
    layer_key,
)
from mtcolor_batch.model.pmam import PMAM, RegionMasks, attach_pmam

METADATA_KEY = "mtcolor_modules"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RegionBatch:
    """Instance layout of a batch of B images with N instance slots, at latent size h x w.

    label_map: (B, h, w) long, 0 = background, k = slot k (1..N); exclusive regions (PMAM and the
        latent-latent part of the instance attention mask).
    inst_masks: (B, N, 8h, 8w) float, instance masks at image (working) resolution, input of the
        mask encoder.
    inst_text: (B, N, D_text) float, pooled CLIP text embedding of each instance's text.
    inst_valid: (B, N) bool, False for padding slots (never attended).
    """

    label_map: torch.Tensor
    inst_masks: torch.Tensor
    inst_text: torch.Tensor
    inst_valid: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.label_map.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.inst_valid.shape[1])

    @classmethod
    def from_masks(
        cls,
        masks: Sequence[np.ndarray | torch.Tensor],
        texts: torch.Tensor,
        latent_size: tuple[int, int],
        slots: int | None = None,
    ) -> RegionBatch:
        """One image (B=1) from its instance masks (H, W bool/float, any size) and texts (N, D_text).

        Masks are resized to 8h x 8w (nearest) for the mask encoder. The label map gives each latent
        cell to whoever covers most of its 8x8 pixels (background included), so regions are
        exclusive even if the masks overlap. ``slots`` pads to a fixed N with invalid slots.
        """
        h, w = latent_size
        n = len(masks)
        slots = n if slots is None else slots
        if texts.ndim != 2 or texts.shape[0] != n:
            raise ValueError(f"texts must be ({n}, D_text), got {tuple(texts.shape)}")
        if slots < n:
            raise ValueError(f"{n} instances do not fit in {slots} slots")
        size = (8 * h, 8 * w)
        inst_masks = torch.zeros(1, slots, *size)
        if n:
            stacked = torch.stack([torch.as_tensor(np.asarray(m)).float() for m in masks])
            if tuple(stacked.shape[-2:]) != size:
                stacked = F.interpolate(stacked[None], size=size, mode="nearest")[0]
            inst_masks[0, :n] = stacked.clamp(0, 1)
        coverage = F.adaptive_avg_pool2d(inst_masks[0, :n], (h, w))
        background = (1 - coverage.sum(0, keepdim=True)).clamp(min=0)
        label_map = torch.cat([background, coverage]).argmax(0)[None]
        inst_text = torch.zeros(1, slots, texts.shape[-1], dtype=texts.dtype)
        inst_text[0, :n] = texts
        valid = torch.zeros(1, slots, dtype=torch.bool)
        valid[0, :n] = True
        return cls(label_map.long(), inst_masks, inst_text, valid)

    @classmethod
    def cat(cls, batches: Sequence[RegionBatch]) -> RegionBatch:
        """Stack along the batch axis; slots are padded to the largest N with invalid slots."""
        if not batches:
            raise ValueError("no region batches to concatenate")
        n = max(rb.num_slots for rb in batches)

        def pad(t: torch.Tensor, k: int) -> torch.Tensor:
            extra = n - k
            if extra == 0:
                return t
            return torch.cat([t, t.new_zeros(t.shape[0], extra, *t.shape[2:])], dim=1)

        return cls(
            torch.cat([rb.label_map for rb in batches]),
            torch.cat([pad(rb.inst_masks, rb.num_slots) for rb in batches]),
            torch.cat([pad(rb.inst_text, rb.num_slots) for rb in batches]),
            torch.cat([pad(rb.inst_valid, rb.num_slots) for rb in batches]),
        )

    def repeat(self, times: int) -> RegionBatch:
        """The whole batch ``times`` times, e.g. ``repeat(2)`` for [uncond; cond] classifier-free guidance."""
        return RegionBatch.cat([self] * times)

    def drop_tokens(self) -> RegionBatch:
        """Same regions, no instance tokens (all slots invalid): an instance-free unconditional branch."""
        return replace(self, inst_valid=torch.zeros_like(self.inst_valid))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> RegionBatch:
        """Move every field; ``dtype`` applies to the float fields only (masks stay long/bool)."""
        return RegionBatch(
            self.label_map.to(device=device),
            self.inst_masks.to(device=device, dtype=dtype),
            self.inst_text.to(device=device, dtype=dtype),
            self.inst_valid.to(device=device),
        )

    def check(self, batch: int, latent_size: tuple[int, int]) -> None:
        """Raise ValueError unless the batch matches ``batch`` latents of ``latent_size``."""
        b, n = self.batch_size, self.num_slots
        h, w = latent_size
        want = {
            "label_map": (b, h, w),
            "inst_masks": (b, n, 8 * h, 8 * w),
            "inst_valid": (b, n),
        }
        for name, shape in want.items():
            if tuple(getattr(self, name).shape) != shape:
                got = tuple(getattr(self, name).shape)
                raise ValueError(f"RegionBatch.{name} is {got}, expected {shape}")
        if tuple(self.inst_text.shape[:2]) != (b, n):
            got = tuple(self.inst_text.shape)
            raise ValueError(f"RegionBatch.inst_text is {got}, expected ({b}, {n}, D)")
        if b != batch:
            raise ValueError(f"RegionBatch has batch {b} but latents have batch {batch} (repeat it for CFG)")


class MTColorModules(nn.Module):
    """The trainable MT-Color parts: :attr:`pmam` and :attr:`guidance`. Fresh modules are exact no-ops."""

    def __init__(
        self,
        pmam_channels: Sequence[int],
        text_dim: int,
        layer_dims: dict[str, int],
        token_dim: int,
        head_dim: int = 64,
    ) -> None:
        super().__init__()
        self.pmam = PMAM(pmam_channels, head_dim)
        self.guidance = InstanceGuidance(text_dim, layer_dims, token_dim)

    @property
    def config(self) -> dict:
        """Everything needed to rebuild the modules; stored in the safetensors metadata."""
        return {
            "format": FORMAT_VERSION,
            "pmam_channels": self.pmam.channels,
            "head_dim": self.pmam.head_dim,
            "text_dim": self.guidance.text_dim,
            "token_dim": self.guidance.token_dim,
            "layer_dims": self.guidance.layer_dims,
        }

    @classmethod
    def from_unet(
        cls, unet: nn.Module, controlnet: nn.Module, text_dim: int, token_dim: int | None = None
    ) -> MTColorModules:
        """Zero-initialised modules sized for this UNet + ControlNet (token_dim defaults to the UNet's
        cross-attention width, 768 for SD 1.5)."""
        pmam = PMAM.from_controlnet(controlnet)
        token_dim = int(token_dim or unet.config.cross_attention_dim)
        return cls(pmam.channels, text_dim, InstanceGuidance.self_attention_dims(unet), token_dim)

    def check_compatible(self, unet: nn.Module, controlnet: nn.Module) -> None:
        """ModelError unless these modules were built for this UNet/ControlNet pair."""
        expected = PMAM.from_controlnet(controlnet).channels
        if self.pmam.channels != expected:
            raise ModelError(
                f"MT-Color PMAM expects ControlNet widths {self.pmam.channels}, "
                f"this ControlNet has {expected}",
                hint="modules and bundle do not match",
            )
        dims = InstanceGuidance.self_attention_dims(unet)
        if dims != self.guidance.layer_dims:
            raise ModelError(
                f"MT-Color instance guidance covers {len(self.guidance.layer_dims)} self-attention layers, "
                f"this UNet has {len(dims)} with different names or widths",
                hint="modules and bundle do not match",
            )

    def save(self, path: str | Path) -> Path:
        """Write the weights and config as one safetensors file, atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with staged_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(self.config, sort_keys=True)})
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> MTColorModules:
        """Rebuild from a file written by :meth:`save`.

        Strict: a missing, extra or mis-shaped weight, or absent config metadata, is a ModelError.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ModelError("MT-Color modules file not found", path=path)
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        except Exception as exc:  # safetensors raises several unrelated types for a corrupt file
            raise ModelError(f"cannot read MT-Color modules: {exc}", path=path) from exc
        try:
            config = json.loads(metadata[METADATA_KEY])
            if config.pop("format") != FORMAT_VERSION:
                raise ValueError("unsupported format version")
            modules = cls(**config)
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelError(f"MT-Color modules file has no valid config ({exc})", path=path) from exc
        own = modules.state_dict()
        missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or extra:
            raise ModelError(
                f"MT-Color modules weights do not match: {len(missing)} missing {missing[:3]}, "
                f"{len(extra)} unexpected {extra[:3]}",
                path=path,
                hint="file written for other modules or truncated",
            )
        wrong = [k for k in own if own[k].shape != tensors[k].shape]
        if wrong:
            raise ModelError(f"MT-Color modules weights have wrong shapes: {wrong[:3]}", path=path)
        modules.load_state_dict(tensors, strict=True)
        return modules.to(device)


class MTColorDenoiser(nn.Module):
    """Noise prediction with ControlNet + PMAM + instance guidance, for any batch size and dtype.

    Construction installs the instance-guidance processors on every UNet self-attention layer (the
    other layers keep their processors). They act only while a call's context is set, so the UNet
    alone still behaves as plain diffusers. ``skip_zero_modules`` skips parts whose output is
    provably zero (zero out_proj / zero gate) so an untrained bundle costs nothing extra at inference
    (never while gradients flow to the modules, or training could not start); set it to False to
    compute everything (the tests use that to show the no-op is exact, not skipped).
    """

    def __init__(
        self,
        unet: nn.Module,
        controlnet: nn.Module,
        modules: MTColorModules,
        *,
        skip_zero_modules: bool = True,
    ) -> None:
        super().__init__()
        modules.check_compatible(unet, controlnet)
        self.unet = unet
        self.controlnet = controlnet
        self.mtcolor = modules
        self.skip_zero_modules = skip_zero_modules
        self.state = GuidanceState()
        self.install()

    def install(self) -> None:
        """(Re)install our processor on every attn1 layer, wrapping whatever was there before."""
        processors = {}
        for name, proc in self.unet.attn_processors.items():
            if isinstance(proc, InstanceAttnProcessor):
                proc = proc.base
            if name.endswith("attn1.processor"):
                key = layer_key(name)
                proc = InstanceAttnProcessor(proc, self.mtcolor.guidance.layers[key], key, self.state)
            processors[name] = proc
        self.unet.set_attn_processor(processors)

    def uninstall(self) -> None:
        """Give the UNet its original processors back."""
        processors = {
            name: proc.base if isinstance(proc, InstanceAttnProcessor) else proc
            for name, proc in self.unet.attn_processors.items()
        }
        self.unet.set_attn_processor(processors)

    def _installed(self) -> bool:
        return all(
            isinstance(proc, InstanceAttnProcessor) and proc.state is self.state
            for name, proc in self.unet.attn_processors.items()
            if name.endswith("attn1.processor")
        )

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float | int,
        text_embeds: torch.Tensor,
        control_image: torch.Tensor,
        regions: RegionBatch,
        controlnet_scale: float = 1.0,
    ) -> torch.Tensor:
        """latents (B,4,h,w), text_embeds (B,77,D), control_image (B,3,8h,8w) in [0,1] -> noise (B,4,h,w)."""
        b, _, h, w = latents.shape
        regions = regions.to(device=latents.device, dtype=latents.dtype)
        regions.check(b, (h, w))
        if not self._installed():  # someone called unet.set_attn_processor since
            self.install()
        down, mid = self.controlnet(
            latents,
            timestep,
            encoder_hidden_states=text_embeds,
            controlnet_cond=control_image.to(latents.dtype),
            conditioning_scale=1.0,
            return_dict=False,
        )
        scale = float(controlnet_scale)
        # The very operation diffusers' ControlNet applies for conditioning_scale: bit-identical.
        down_scaled = [r * scale for r in down]
        mid_scaled = mid * scale

        masks = RegionMasks(regions.label_map)
        # Never skip while training: zero-initialised parts must still get their first gradient.
        training = torch.is_grad_enabled() and any(p.requires_grad for p in self.mtcolor.parameters())
        skip = self.skip_zero_modules and not training
        pmam_active = self.mtcolor.pmam.active() if skip else None
        guide_active = self.mtcolor.guidance.active() if skip else {}
        use_guidance = regions.num_slots > 0 and (not skip or any(guide_active.values()))
        use_pmam = scale != 0.0 and (not skip or any(pmam_active))

        with ExitStack() as stack:
            if use_pmam:
                pmam = self.mtcolor.pmam
                stack.enter_context(attach_pmam(pmam, self.unet, down, mid, masks, scale, pmam_active))
            if use_guidance:
                tokens = self.mtcolor.guidance.encode(regions.inst_text, regions.inst_masks)
                context = GuidanceContext(tokens, regions.inst_valid, masks, (h, w), guide_active)
                stack.enter_context(self.state.use(context))
            return self.unet(
                latents,
                timestep,
                encoder_hidden_states=text_embeds,
                down_block_additional_residuals=down_scaled,
                mid_block_additional_residual=mid_scaled,
                return_dict=False,
            )[0]
