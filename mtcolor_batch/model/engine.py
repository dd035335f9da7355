"""The MT-Color engine: a verified bundle loaded once, colouring many working-resolution images.

``MTColorEngine.load`` verifies the bundle (every file's sha256), loads each component with
safetensors only, wires the MT-Color modules in through :class:`MTColorDenoiser` and picks device and
dtype (float16 on CUDA, float32 on CPU; PyTorch SDPA attention). ``colorize`` returns CIELAB a*, b*
at the working resolution: the luminance lock (``render/chroma.py``) later puts the scan's own
full-resolution lightness under it, so only colour comes from the model.

The VAE always runs in float32: it is small, and SD's VAE in float16 can overflow at high
resolution, which would turn a whole canvas black for a saving of a few hundred MB.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtcolor_batch.core.device import describe_device, resolve_device, resolve_dtype
from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.core.types import Instance, Plan
from mtcolor_batch.model.bundle import Bundle, load_bundle
from mtcolor_batch.model.registry import MODULES_FILE
from mtcolor_batch.model.sampler import MTColorSampler

_STEPPABLE = ("DDIMScheduler",)
"""Schedulers run as shipped; any other is rebuilt as DDIM from its config (see sampler.py)."""


def _load_component(kind: str, folder: Path, dtype: torch.dtype) -> Any:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        if kind == "tokenizer":
            return CLIPTokenizer.from_pretrained(folder)
        if kind == "text_encoder":
            return CLIPTextModel.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True)
        cls = {"unet": UNet2DConditionModel, "controlnet": ControlNetModel, "vae": AutoencoderKL}[kind]
        return cls.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the {kind} component: {exc}", path=folder) from exc


def _load_scheduler(folder: Path) -> tuple[Any, dict[str, Any], str]:
    import diffusers

    try:
        config = diffusers.DDIMScheduler.load_config(folder)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the scheduler config: {exc}", path=folder) from exc
    shipped = str(config.get("_class_name", "DDIMScheduler"))
    if shipped in _STEPPABLE:
        return getattr(diffusers, shipped), config, shipped
    return diffusers.DDIMScheduler, config, f"DDIMScheduler (from {shipped} config)"


class MTColorEngine:
    """A loaded bundle plus the sampler; create with :meth:`load`."""

    def __init__(
        self,
        bundle: Bundle,
        components: dict[str, Any],
        scheduler: tuple[Any, dict[str, Any], str],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        from mtcolor_batch.model.denoiser import MTColorDenoiser, RegionBatch

        self.bundle = bundle
        self.device = device
        self.dtype = dtype
        self.tokenizer = components["tokenizer"]
        self.text_encoder = components["text_encoder"]
        self.unet = components["unet"]
        self.controlnet = components["controlnet"]
        self.vae = components["vae"]
        self.modules = components["modules"]
        self.denoiser = MTColorDenoiser(self.unet, self.controlnet, self.modules).eval()
        sched_cls, sched_config, self.scheduler_name = scheduler
        self.sampler = MTColorSampler(
            denoiser=self.denoiser,
            region_batch=RegionBatch,
            scheduler_factory=lambda: sched_cls.from_config(sched_config),
            vae=self.vae,
            encode_text=self.encode_text,
            device=device,
            dtype=dtype,
        )
        self.last_timings: dict[str, float] = {}

    @classmethod
    def load(
        cls,
        bundle_dir: Path | str,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        *,
        verify: bool = True,
    ) -> MTColorEngine:
        """Verify and load a bundle; raises :class:`ModelError` with the failing file on problems."""
        from mtcolor_batch.model.denoiser import MTColorModules

        bundle = load_bundle(Path(bundle_dir), verify=verify)
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        root = bundle.path
        comps: dict[str, Any] = {}
        for kind in ("tokenizer", "text_encoder", "unet", "controlnet"):
            comps[kind] = _load_component(kind, root / kind, dt)
        comps["vae"] = _load_component("vae", root / "vae", torch.float32)
        comps["modules"] = MTColorModules.load(root / MODULES_FILE)
        text_dim = int(comps["text_encoder"].config.hidden_size)
        if comps["modules"].guidance.text_dim != text_dim:
            raise ModelError(
                f"MT-Color modules expect {comps['modules'].guidance.text_dim}-d text embeddings, "
                f"the text encoder gives {text_dim}",
                path=root / MODULES_FILE,
                hint="modules and bundle do not match",
            )
        comps["modules"].to(dt)
        for kind in ("text_encoder", "unet", "controlnet", "vae", "modules"):
            comps[kind].to(dev).eval().requires_grad_(False)
        for kind in ("unet", "controlnet", "vae"):
            _use_sdpa(comps[kind])
        return cls(bundle, comps, _load_scheduler(root / "scheduler"), dev, dt)

    # ----------------------------------------------------------------------------- properties
    @property
    def unet_calls(self) -> int:
        """Batched denoiser (ControlNet + UNet) forwards since load: for tests and benchmarks."""
        return self.sampler.unet_calls

    @unet_calls.setter
    def unet_calls(self, value: int) -> None:
        self.sampler.unet_calls = int(value)

    @property
    def info(self) -> dict[str, Any]:
        """What provenance records about the model that ran."""
        return {
            "engine": "mtcolor",
            "bundle": self.bundle.name,
            "revision": self.bundle.revision,
            "weights_sha256": self.bundle.weights_sha256,
            "tiny": self.bundle.tiny,
            "path": str(self.bundle.path),
            "device": describe_device(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "scheduler": self.scheduler_name,
            "sources": self.bundle.sources,
        }

    # ---------------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, 77, D) token embeddings for cross-attention and (K, D) pooled embeddings."""
        tok = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        out = self.text_encoder(tok.input_ids.to(self.device))
        return out.last_hidden_state.to(self.dtype), out.pooler_output.to(self.dtype)

    # ------------------------------------------------------------------------------ colorize
    @torch.no_grad()
    def colorize_rgb(self, luma_w: np.ndarray, instances_w: Sequence[Instance], plan: Plan) -> np.ndarray:
        """The decoded sRGB (H, W, 3) float64 in [0, 1] at working resolution (before the lock)."""
        return self.sampler.sample(luma_w, instances_w, plan)

    @torch.no_grad()
    def colorize(self, luma_w: np.ndarray, instances_w: Sequence[Instance], plan: Plan) -> np.ndarray:
        """Luma (H, W) float32 in [0, 1] at working resolution -> CIELAB a*, b* (2, H, W) float32."""
        from skimage.color import rgb2lab

        t0 = time.perf_counter()
        calls0 = self.unet_calls
        rgb = self.colorize_rgb(luma_w, instances_w, plan)
        ab = rgb2lab(rgb)[..., 1:].transpose(2, 0, 1).astype(np.float32)
        self.last_timings = {
            "sample_s": time.perf_counter() - t0,
            "unet_calls": float(self.unet_calls - calls0),
        }
        return np.ascontiguousarray(ab)


def _use_sdpa(model: Any) -> None:
    """PyTorch scaled-dot-product attention on every layer not already customised.

    The MT-Color processors wrap whatever processor a layer has, so this runs before the denoiser is
    built; diffusers already defaults to SDPA on torch 2, this only makes it explicit.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    if hasattr(model, "set_attn_processor") and getattr(model, "attn_processors", None):
        model.set_attn_processor(AttnProcessor2_0())
