"""One MT-Color noise prediction: ControlNet, then the UNet with PMAM and instance guidance active.

This is the seam between the diffusers backbone and the MT-Color modules. The sampler only deals
with :class:`RegionBatch` (the per-image instance layout as tensors) and :class:`MTColorDenoiser`;
how the modules are wired into diffusers (forward hooks for PMAM, attention processors for the
instance guidance) stays in here and in ``pmam.py`` / ``instance_guidance.py``.

Per-call data (region masks, instance tokens) travels as a call argument to the attention
processors, and the PMAM hooks are added for one call and removed in a ``finally``, so nothing leaks
from one call (or one image) into the next, and the UNet is a plain diffusers UNet between calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.core.fs import staged_file
from mtcolor_batch.model.hint_embedding import HintEmbeddings
from mtcolor_batch.model.instance_guidance import (
    CALL_KEY,
    CallArgFilter,
    InstanceAttnProcessor,
    InstanceCall,
    InstanceGuidance,
    layer_key,
)
from mtcolor_batch.model.pmam import PMAM, attach_pmam
from mtcolor_batch.model.regions import RegionBatch, RegionMaps

if TYPE_CHECKING:
    from diffusers import ControlNetModel, UNet2DConditionModel

METADATA_KEY = "mtcolor_modules"
FORMAT_VERSION = 2
"""2: the instance branch has its own projections, LayerNorm and masks of Eq. 7/8. Format 1 files
(branch on the layer's frozen projections) cannot be loaded: their branch weights do not exist."""
OUTDATED_HINT = (
    "written before the instance branch got its own projections; retrain with `mtcolor-batch train` "
    "or re-pull with `mtcolor-batch models pull`"
)


class MTColorModules(nn.Module):
    """The trainable MT-Color parts: :attr:`pmam` and :attr:`guidance`. Fresh modules are exact no-ops."""

    def __init__(
        self,
        pmam_channels: Sequence[int],
        text_dim: int,
        layer_dims: dict[str, int],
        token_dim: int,
        head_dim: int = 64,
        layer_heads: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.pmam = PMAM(pmam_channels, head_dim)
        self.guidance = InstanceGuidance(text_dim, layer_dims, token_dim, layer_heads)

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
            "layer_heads": self.guidance.layer_heads,
        }

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        text_dim: int,
        token_dim: int | None = None,
        weight: Callable[[str], torch.Tensor] | None = None,
        *,
        init_branches: bool = True,
    ) -> MTColorModules:
        """Zero-gated modules sized for this UNet + ControlNet (token_dim defaults to the UNet's
        cross-attention width, 768 for SD 1.5); branch projections start from the UNet's own
        self-attention weights, read by ``weight(name)`` (default ``unet.get_parameter``)."""
        pmam = PMAM.from_controlnet(controlnet)
        token_dim = int(token_dim or unet.config.cross_attention_dim)
        dims = InstanceGuidance.self_attention_dims(unet)
        heads = InstanceGuidance.self_attention_heads(unet)
        modules = cls(pmam.channels, text_dim, dims, token_dim, layer_heads=heads)
        if init_branches:
            modules.guidance.init_from(weight or unet.get_parameter)
        return modules

    def check_compatible(self, unet: UNet2DConditionModel, controlnet: ControlNetModel) -> None:
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
            version = config.pop("format")
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelError(f"MT-Color modules file has no valid config ({exc})", path=path) from exc
        if version != FORMAT_VERSION:
            raise ModelError(
                f"MT-Color modules are format {version}, this version needs format {FORMAT_VERSION}",
                path=path,
                hint=OUTDATED_HINT if version == 1 else "update mtcolor-batch or re-pull the bundle",
            )
        try:
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


def modules_format(path: str | Path) -> int | None:
    """The format version in a modules file's metadata (header only, no weights read); None if absent."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return int(json.loads((f.metadata() or {})[METADATA_KEY])["format"])
    except Exception:  # unreadable or foreign files are reported by MTColorModules.load, with details
        return None


class MTColorDenoiser(nn.Module):
    """Noise prediction with ControlNet + PMAM + instance guidance, for any batch size and dtype.

    Construction installs the processors once: the instance branch on every UNet self-attention
    layer, a pass-through on the others. Per-call data reaches them only as the call argument
    ``cross_attention_kwargs["mtcolor"]``, so the UNet called on its own stays plain diffusers.
    Replacing the UNet's processors afterwards (``unet.set_attn_processor``) detaches MT-Color until
    :meth:`install` is called again.

    ``skip_zero_modules`` skips parts whose output is provably zero (zero out_proj / zero gate) so an
    untrained bundle costs nothing extra at inference (never while gradients flow to the modules, or
    training could not start); set it to False to compute everything (the tests use that to show the
    no-op is exact, not skipped).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        modules: MTColorModules,
        *,
        skip_zero_modules: bool = True,
        attention: str = "auto",
    ) -> None:
        super().__init__()
        modules.check_compatible(unet, controlnet)
        self.attention = attention
        self.unet = unet
        self.controlnet = controlnet
        self.mtcolor = modules
        self.skip_zero_modules = skip_zero_modules
        self.hints = HintEmbeddings(controlnet)  # reused within a sampling run (``hints.reuse()``)
        self.install()

    def install(self) -> None:
        """Install our processors, wrapping whatever each layer had before."""
        processors: dict[str, object] = {}
        for name, proc in self.unet.attn_processors.items():
            if isinstance(proc, InstanceAttnProcessor | CallArgFilter):
                proc = proc.base
            if name.endswith("attn1.processor"):
                key = layer_key(name)
                processors[name] = InstanceAttnProcessor(proc, self.mtcolor.guidance.layer(key), key)
            else:
                processors[name] = CallArgFilter(proc)
        self.unet.set_attn_processor(processors)

    def uninstall(self) -> None:
        """Give the UNet its original processors back."""
        processors = {
            name: proc.base if isinstance(proc, InstanceAttnProcessor | CallArgFilter) else proc
            for name, proc in self.unet.attn_processors.items()
        }
        self.unet.set_attn_processor(processors)

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float | int,
        text_embeds: torch.Tensor,
        control_image: torch.Tensor | None,
        regions: RegionBatch,
        controlnet_scale: float = 1.0,
        *,
        use_controlnet: bool = True,
        control_keys: Sequence[Hashable] | None = None,
    ) -> torch.Tensor:
        """latents (B,4,h,w), text_embeds (B,77,D), control_image (B,3,8h,8w) in [0,1] -> noise (B,4,h,w).

        ``use_controlnet=False`` is training stage 1: the UNet alone with the instance branch, no
        ControlNet call and no PMAM (``control_image`` is then ignored). ``control_keys`` names the
        window each hint shows (the sampler's latent boxes): inside ``self.hints.reuse()`` a window's
        ControlNet embedding is then computed once per run.
        """
        b, _, h, w = latents.shape
        regions = regions.to(device=latents.device, dtype=latents.dtype)
        regions.check(b, (h, w))
        maps = RegionMaps.of(regions, self.attention)
        # Never skip while training: zero-initialised parts must still get their first gradient.
        training = torch.is_grad_enabled() and any(p.requires_grad for p in self.mtcolor.parameters())
        skip = self.skip_zero_modules and not training
        guide_active = self.mtcolor.guidance.active() if skip else {}
        # Skipping is an inference shortcut only: without a pixel inside an instance (N = 0, or
        # only empty slots) the branch adds exactly zero, so leaving it out changes nothing.
        use_guidance = regions.num_slots > 0 and (
            not skip or (any(guide_active.values()) and maps.any_inside())
        )
        kwargs: dict = {}
        if use_guidance:
            tokens = self.mtcolor.guidance.encode(regions.inst_text, regions.inst_masks)
            kwargs["cross_attention_kwargs"] = {CALL_KEY: InstanceCall(tokens, maps, guide_active)}
        if not use_controlnet:
            return self.unet(
                latents, timestep, encoder_hidden_states=text_embeds, return_dict=False, **kwargs
            )[0]
        if control_image is None:
            raise ValueError("control_image is required unless use_controlnet=False")
        with self.hints.call(control_keys):
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
        pmam_active = self.mtcolor.pmam.active() if skip else None
        use_pmam = scale != 0.0 and (not skip or any(pmam_active or []))
        with ExitStack() as stack:
            if use_pmam:
                pmam = self.mtcolor.pmam
                stack.enter_context(attach_pmam(pmam, self.unet, down, mid, maps, scale, pmam_active))
            return self.unet(
                latents,
                timestep,
                encoder_hidden_states=text_embeds,
                down_block_additional_residuals=down_scaled,
                mid_block_additional_residual=mid_scaled,
                return_dict=False,
                **kwargs,
            )[0]
