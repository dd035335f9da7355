"""The MT-Color engine: a verified bundle loaded once, colouring many working-resolution images.

``MTColorEngine.load`` verifies the bundle (every file's sha256), loads each component with
safetensors only, wires the MT-Color modules in through :class:`MTColorDenoiser` and picks device and
dtype (float16 on CUDA, float32 on CPU; PyTorch SDPA attention). ``colorize`` returns CIELAB a*, b*
at the working resolution: the luminance lock (``render/chroma.py``) later puts the scan's own
full-resolution lightness under it, so only colour comes from the model. ``colorize_rgb`` hands
back the decoded RGB itself, which the paper profile writes as is.

Speed options (:class:`EngineOptions`, one profile key and one ``run`` option each, recorded in
provenance): the VAE runs in the engine's half dtype on CUDA and is redone in float32 only for a
decode that overflows (SD's VAE in float16 can, at high resolution, which would turn a canvas
black); channels-last memory format for the convolutional nets on CUDA; optional ``torch.compile``
of the ControlNet and of the UNet's plain layers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtcolor_batch.core.color import rgb_to_ab
from mtcolor_batch.core.device import describe_device, resolve_device, resolve_dtype
from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.core.types import Instance, Plan
from mtcolor_batch.model.accelerators import AUTO, NONE, Accelerator, fuse_accelerator
from mtcolor_batch.model.accelerators import find as find_accelerator
from mtcolor_batch.model.bundle import Bundle, load_bundle
from mtcolor_batch.model.denoiser import MTColorDenoiser, MTColorModules
from mtcolor_batch.model.registry import MODULES_FILE
from mtcolor_batch.model.sampler import MTColorSampler, StepCallback
from mtcolor_batch.model.schedulers import scheduler_factory
from mtcolor_batch.model.text import encode_texts

VAE_DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How the engine runs (not what it computes): each is a profile key and a ``run`` option.

    vae_dtype: ``auto`` = the engine's dtype on CUDA (float16/bfloat16), float32 elsewhere; a half
        decode that overflows (non-finite output) is redone in float32 (see :class:`PrecisionVAE`).
    channels_last: NHWC memory format for UNet, ControlNet and VAE on CUDA, where cuDNN's half
        convolutions are faster in it; ignored on CPU (where it is not faster).
    compile: ``torch.compile`` the ControlNet and the UNet's plain layers (resnets, feed-forwards);
        the attention layers stay eager, as MT-Color's per-call data passes through them and would
        make dynamo recompile every call. Costs a warm-up per new tile shape.
    compile_backend: torch.compile backend (``inductor``; tests use ``eager``).
    attention: how PMAM and the instance branch attend within regions: ``auto``/``sparse`` region by
        region, ``flex`` FlexAttention, ``dense`` one masked SDPA (the reference; see
        ``model.region_attention``).
    accelerator: the bundle's distilled LoRA fused into the UNet at load (``none``: the base UNet).
        Unlike the others it changes what is computed; it is here because it is fixed per engine.
    """

    vae_dtype: str = "auto"
    channels_last: bool = True
    compile: bool = False
    compile_backend: str = "inductor"
    attention: str = "auto"
    accelerator: str = "none"

    @classmethod
    def from_sampling(cls, sampling: Any) -> EngineOptions:
        """The options a profile's ``sampling`` section asks for."""
        return cls(
            vae_dtype=str(sampling.vae_dtype),
            channels_last=bool(sampling.channels_last),
            compile=bool(sampling.compile),
            attention=str(sampling.attention),
            accelerator=str(sampling.accelerator),
        )


class PrecisionVAE(torch.nn.Module):
    """The VAE in a half dtype, redone in float32 only for a call whose output overflows.

    It offers what the sampler uses (``config``, ``encode``, ``decode``, parameters for the dtype).
    The float32 redo upcasts the VAE for that one call and casts it back, so it never holds two
    copies; ``fallbacks`` counts the redos (reported in the engine's timings).
    """

    def __init__(self, vae: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.vae: Any = vae.to(dtype)  # a diffusers AutoencoderKL
        self.half_dtype = dtype
        self.fallbacks = 0

    @property
    def config(self) -> Any:
        return self.vae.config

    def _float32(self, fn: Any, x: torch.Tensor, **kwargs: Any) -> Any:
        self.fallbacks += 1
        self.vae.to(torch.float32)
        try:
            return fn(x.float(), **kwargs)
        finally:
            self.vae.to(self.half_dtype)

    def decode(self, z: torch.Tensor, **kwargs: Any) -> Any:
        out = self.vae.decode(z.to(self.half_dtype), **kwargs)
        if bool(torch.isfinite(out.sample).all()):
            return out
        return self._float32(self.vae.decode, z, **kwargs)

    def encode(self, x: torch.Tensor, **kwargs: Any) -> Any:
        out = self.vae.encode(x.to(self.half_dtype), **kwargs)
        if bool(torch.isfinite(out.latent_dist.mean).all()):
            return out
        return self._float32(self.vae.encode, x, **kwargs)


def resolve_vae_dtype(name: str, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """``auto`` -> the engine dtype on CUDA, float32 elsewhere; float16 is refused on CPU."""
    if name not in VAE_DTYPES:
        raise ModelError(f"unknown VAE dtype '{name}'", hint="use auto, float32, float16 or bfloat16")
    if name == "auto":
        return dtype if device.type == "cuda" else torch.float32
    return resolve_dtype(name, device)


def _compile_plain_layers(unet: torch.nn.Module, controlnet: torch.nn.Module, backend: str) -> int:
    """In-place torch.compile of the ControlNet and of the UNet layers MT-Color does not wrap.

    In place (``Module.compile``) so the denoiser's references, hooks and processors stay valid.
    Returns how many modules were compiled.
    """
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D

    controlnet.compile(backend=backend, dynamic=False)
    count = 1
    for mod in unet.modules():
        if isinstance(mod, ResnetBlock2D | FeedForward):
            mod.compile(backend=backend, dynamic=False)
            count += 1
    return count


_STEPPABLE = ("DDIMScheduler",)
"""What ``sampling.scheduler: ddim`` runs as shipped; any other config is rebuilt as DDIM from it."""


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
        options: EngineOptions | None = None,
    ) -> None:

        self.bundle = bundle
        self.device = device
        self.dtype = dtype
        self.options = options or EngineOptions()
        self.tokenizer = components["tokenizer"]
        self.text_encoder = components["text_encoder"]
        self.unet = components["unet"]
        self.controlnet = components["controlnet"]
        self.vae_dtype = resolve_vae_dtype(self.options.vae_dtype, device, dtype)
        vae = components["vae"]
        self.vae = PrecisionVAE(vae, self.vae_dtype) if self.vae_dtype != torch.float32 else vae.float()
        self.modules = components["modules"]
        self.channels_last = self.options.channels_last and device.type == "cuda"
        if self.channels_last:
            for model in (self.unet, self.controlnet, vae):
                model.to(memory_format=torch.channels_last)
        self.denoiser = MTColorDenoiser(
            self.unet, self.controlnet, self.modules, attention=self.options.attention
        ).eval()
        self.compiled_modules = 0
        if self.options.compile:
            self.compiled_modules = _compile_plain_layers(
                self.unet, self.controlnet, self.options.compile_backend
            )
        _, sched_config, self.scheduler_name = scheduler
        self.accelerator: Accelerator | None = components.get("accelerator")
        self.sampler = MTColorSampler(
            denoiser=self.denoiser,
            scheduler_factory=scheduler_factory(sched_config),
            vae=self.vae,
            encode_text=self.encode_text,
            device=device,
            dtype=dtype,
            hints=self.denoiser.hints,
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
        options: EngineOptions | None = None,
    ) -> MTColorEngine:
        """Verify and load a bundle; raises :class:`ModelError` with the failing file on problems."""

        bundle = load_bundle(Path(bundle_dir), verify=verify)
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        root = bundle.path
        comps: dict[str, Any] = {}
        for kind in ("tokenizer", "text_encoder", "unet", "controlnet"):
            comps[kind] = _load_component(kind, root / kind, dt)
        comps["vae"] = _load_component("vae", root / "vae", torch.float32)  # cast by the engine
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
        if (options or EngineOptions()).accelerator not in (NONE, AUTO):
            acc = find_accelerator(bundle, (options or EngineOptions()).accelerator)
            fuse_accelerator(comps["unet"], comps["text_encoder"], root / acc.file)  # once per engine
            comps["accelerator"] = acc
        for kind in ("unet", "controlnet", "vae"):
            _use_sdpa(comps[kind])
        return cls(bundle, comps, _load_scheduler(root / "scheduler"), dev, dt, options)

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
            "accelerator": self.accelerator.record() if self.accelerator else None,
            "sources": self.bundle.sources,
            "vae_dtype": str(self.vae_dtype).removeprefix("torch."),
            "channels_last": self.channels_last,
            "compile": self.options.compile,
            "attention": self.options.attention,
            **({"compile_backend": self.options.compile_backend} if self.options.compile else {}),
        }

    # ---------------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, 77, D) token embeddings for cross-attention and (K, D) pooled embeddings."""
        seq, pooled = encode_texts(self.tokenizer, self.text_encoder, texts, self.device)
        return seq.to(self.dtype), pooled.to(self.dtype)

    # ------------------------------------------------------------------------------ colorize
    @torch.no_grad()
    def colorize_rgb(
        self,
        luma_w: np.ndarray,
        instances_w: Sequence[Instance],
        plan: Plan,
        on_step: StepCallback | None = None,
    ) -> np.ndarray:
        """The decoded sRGB (H, W, 3) float64 in [0, 1] at working resolution (before any lock).

        What the paper profile writes as is (``output.luminance_lock: false``). ``on_step(i)`` runs
        before every denoising step (a stop check that may raise; see ``MTColorSampler.denoise``).
        """
        t0 = time.perf_counter()
        calls0 = self.unet_calls
        fallbacks0 = getattr(self.vae, "fallbacks", 0)
        rgb = self.sampler.sample(luma_w, instances_w, plan, on_step)
        self.last_timings = {
            "sample_s": time.perf_counter() - t0,
            "unet_calls": float(self.unet_calls - calls0),
        }
        if isinstance(self.vae, PrecisionVAE):
            self.last_timings["vae_float32_fallbacks"] = float(self.vae.fallbacks - fallbacks0)
        return rgb

    @torch.no_grad()
    def colorize(
        self,
        luma_w: np.ndarray,
        instances_w: Sequence[Instance],
        plan: Plan,
        on_step: StepCallback | None = None,
    ) -> np.ndarray:
        """Luma (H, W) float32 in [0, 1] at working resolution -> CIELAB a*, b* (2, H, W) float32."""
        return rgb_to_ab(self.colorize_rgb(luma_w, instances_w, plan, on_step))


def _use_sdpa(model: Any) -> None:
    """PyTorch scaled-dot-product attention on every layer not already customised.

    The MT-Color processors wrap whatever processor a layer has, so this runs before the denoiser is
    built; diffusers already defaults to SDPA on torch 2, this only makes it explicit.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    if hasattr(model, "set_attn_processor") and getattr(model, "attn_processors", None):
        model.set_attn_processor(AttnProcessor2_0())
