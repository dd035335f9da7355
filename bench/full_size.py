"""SD 1.5-shaped random models for the benchmarks, and the one way to make modules "trained-like".

Random weights cost what trained ones cost only where the code cannot tell them apart. MT-Color's
modules start at zero (PMAM's out_proj, the instance gates), and the denoiser skips parts whose output
is provably zero, so a fresh bundle never runs them. ``mtcolor_batch.testing.trained_like`` re-draws
every all-zero weight small and non-zero: every module then runs, as in a trained bundle. Every bench
script, ``bench/gpu_check.sh`` and the tests use that one helper.

Nothing here downloads anything: shapes are SD 1.5's (UNet 320/640/1280/1280, ControlNet from that
UNet, CLIP-L-size text encoder, SD VAE), SAM ViT-B's and OWLv2-base's, with random weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtcolor_batch.testing.tiny_sd15 import sd15_scheduler, write_tiny_tokenizer
from mtcolor_batch.testing.trained_like import trained_like


def sd15_modules(dev: torch.device) -> dict[str, nn.Module]:
    """UNet, ControlNet, text encoder and VAE in SD 1.5's shapes, random, on ``dev`` (float32)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(dev):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
        controlnet = ControlNetModel.from_unet(unet)
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                projection_dim=768,
            )
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
    trained_like(controlnet, seed=1)  # a real ControlNet's zero convs are trained
    return {"unet": unet, "controlnet": controlnet, "text_encoder": text, "vae": vae}


def full_size_engine(device: str, dtype: str, workdir: Path, *, seed: int = 0, options: Any = None) -> Any:
    """SD 1.5-shaped random MTColorEngine built in memory (fresh, zero-initialised MT-Color modules)."""
    from transformers import CLIPTokenizer

    from mtcolor_batch.core.device import resolve_device, resolve_dtype
    from mtcolor_batch.model.bundle import Bundle
    from mtcolor_batch.model.denoiser import MTColorModules
    from mtcolor_batch.model.engine import MTColorEngine, _load_scheduler, _use_sdpa

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    torch.manual_seed(seed)
    comps: dict[str, Any] = dict(sd15_modules(dev))
    comps["modules"] = MTColorModules.from_unet(comps["unet"], comps["controlnet"], text_dim=768).to(dev)
    write_tiny_tokenizer(workdir / "tokenizer")
    sd15_scheduler().save_pretrained(workdir / "scheduler")
    comps["tokenizer"] = CLIPTokenizer.from_pretrained(workdir / "tokenizer")
    if dt != torch.float32:  # the VAE dtype is the engine's business (vae_dtype option)
        for kind in ("text_encoder", "unet", "controlnet", "modules"):
            comps[kind] = comps[kind].to(dt)
    for kind in ("text_encoder", "unet", "controlnet", "vae", "modules"):
        comps[kind].eval().requires_grad_(False)
    for kind in ("unet", "controlnet", "vae"):
        _use_sdpa(comps[kind])
    bundle = Bundle(workdir, "random-sd15-size", "random", False, {}, {})
    return MTColorEngine(bundle, comps, _load_scheduler(workdir / "scheduler"), dev, dt, options)


def _write_perception(root: Path, small: bool) -> None:
    """SAM ViT-B-shaped and OWLv2-base-shaped random perception (tiny ones when ``small``)."""
    from mtcolor_batch.perception.models import DETECTOR_DIR, SAM_DIR
    from mtcolor_batch.testing.tiny_perception import write_tiny_perception

    if small:
        write_tiny_perception(root)
        return
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2Processor,
        SamConfig,
        SamModel,
        SamProcessor,
    )
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    from mtcolor_batch.testing.tiny_clip import write_tiny_clip_tokenizer

    torch.manual_seed(10)
    SamModel(SamConfig()).eval().save_pretrained(root / SAM_DIR, safe_serialization=True)  # ViT-B defaults
    SamProcessor(image_processor=SamImageProcessorPil()).save_pretrained(root / SAM_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_tiny_clip_tokenizer(Path(tmp), model_max_length=16, pad_token="!")
        vocab = len(tokenizer.get_vocab())
        config = Owlv2Config(
            text_config={
                "vocab_size": vocab,
                "pad_token_id": tokenizer.convert_tokens_to_ids("!"),
                "bos_token_id": vocab - 2,
                "eos_token_id": vocab - 1,
            },
            vision_config={"image_size": 960, "patch_size": 16},  # owlv2-base-patch16-ensemble
        )
        torch.manual_seed(11)
        Owlv2ForObjectDetection(config).eval().save_pretrained(root / DETECTOR_DIR, safe_serialization=True)
        processor = Owlv2Processor(
            image_processor=Owlv2ImageProcessorPil(size={"height": 960, "width": 960}), tokenizer=tokenizer
        )
        processor.save_pretrained(root / DETECTOR_DIR)


def write_bench_bundle(path: Path, *, small: bool = False, seed: int = 0) -> Path:
    """A complete bundle on disk with trained-like MT-Color modules, for end-to-end timing.

    Full size: SD 1.5-shaped components saved in float16 (about 2.6 GB), SAM ViT-B and OWLv2-base
    shapes. ``small``: the tiny bundle's components (CPU smoke test of the same script).
    """
    from mtcolor_batch.model.bundle import save_bundle
    from mtcolor_batch.model.denoiser import MTColorModules
    from mtcolor_batch.model.registry import MODULES_FILE
    from mtcolor_batch.testing.tiny_sd15 import write_tiny_bundle

    path = Path(path)
    if small:
        write_tiny_bundle(path, seed=seed)
        modules = MTColorModules.load(path / MODULES_FILE)
        trained_like(modules, seed=seed + 2)
        modules.save(path / MODULES_FILE)
        save_bundle(
            path,
            name="bench-small-trained-like",
            revision=f"seed-{seed}",
            tiny=True,
            sources={"generator": "bench/full_size.py", "small": True},
        )
        return path
    path.mkdir(parents=True, exist_ok=False)
    torch.manual_seed(seed)
    comps = sd15_modules(torch.device("cpu"))
    modules = MTColorModules.from_unet(comps["unet"], comps["controlnet"], text_dim=768)
    trained_like(modules, seed=seed + 2)
    for kind, model in comps.items():
        model.to(torch.float16).save_pretrained(path / kind, safe_serialization=True)
        del model
    comps.clear()
    modules.save(path / MODULES_FILE)
    write_tiny_tokenizer(path / "tokenizer")
    sd15_scheduler().save_pretrained(path / "scheduler")
    _write_perception(path, small=False)
    save_bundle(
        path,
        name="bench-sd15-size-trained-like",
        revision=f"seed-{seed}",
        tiny=False,
        sources={"generator": "bench/full_size.py", "random": True},
    )
    return path
