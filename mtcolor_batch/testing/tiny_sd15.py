"""A tiny, randomly initialised bundle in exactly the real layout, built offline in seconds.

Tests and the offline demo need the whole pipeline (tokenizer -> text encoder -> ControlNet ->
UNet -> VAE -> scheduler -> MT-Color modules -> perception) without a download. Every shape
relationship of SD 1.5 that the sampler relies on is kept: the VAE and the ControlNet's conditioning
encoder both downsample by 8, the UNet has a cross-attention stage, the text encoder's hidden size is
the UNet's cross-attention width. Weights are random (seeded), so colours are meaningless; the
manifest says ``tiny: true`` and every output made with it says so in its provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.core.fs import staged_dir
from mtcolor_batch.model.bundle import save_bundle
from mtcolor_batch.model.denoiser import MTColorModules
from mtcolor_batch.model.registry import MANIFEST_FILE, MODULES_FILE
from mtcolor_batch.testing.tiny_clip import write_tiny_clip_tokenizer
from mtcolor_batch.testing.tiny_perception import write_tiny_perception

TINY_TEXT_DIM = 32
TINY_NAME = "tiny-random"


# A few merges so common words become single tokens (the tokenizer exercises real BPE, not bytes only).
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("r", "e"), ("re", "d</w>")]


def write_tiny_tokenizer(folder: Path) -> int:
    """Write a CLIP BPE tokenizer (vocab.json + merges.txt, model_max_length 77); return vocab size."""
    tok = write_tiny_clip_tokenizer(folder, merges=_MERGES)
    tok.save_pretrained(folder)
    return len(tok.get_vocab())


def sd15_scheduler():
    """SD 1.5's own noise schedule, so random bundles (tiny or full-size) sample like a real one."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_unet(
    text_dim: int,
    *,
    channels: tuple[int, int] = (8, 16),
    attend_at_latent: bool = False,
    head_dim: int = 2,
) -> Any:
    """A two-level SD-style UNet from the current torch RNG.

    By default it attends only at the coarser level (as diffusers' own tiny test UNets): at the
    latent's full resolution a 64x64 latent means 4096x4096 attention maps, seconds per call on a
    CPU. ``attend_at_latent`` adds attention at the latent resolution (the learning test's 8x8).
    """
    from diffusers import UNet2DConditionModel

    first_down = "CrossAttnDownBlock2D" if attend_at_latent else "DownBlock2D"
    last_up = "CrossAttnUpBlock2D" if attend_at_latent else "UpBlock2D"
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=(first_down, "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", last_up),
        cross_attention_dim=text_dim,
        attention_head_dim=head_dim,
        norm_num_groups=4,
    )


def tiny_controlnet(unet: Any, *, live_zero_convs: bool = True) -> Any:
    """A ControlNet derived from ``unet`` (SD's 8x conditioning encoder, tiny widths).

    ``from_unet`` copies the UNet's encoder and zeroes the output convs; ``live_zero_convs``
    re-randomises them so the ControlNet really reaches the UNet in tests (a zero ControlNet would
    hide wiring bugs). Training starts from the zeros instead.
    """
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 16))
    if live_zero_convs:
        with torch.no_grad():
            for mod in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
                torch.nn.init.normal_(mod.weight, std=0.05)
            torch.nn.init.normal_(controlnet.controlnet_cond_embedding.conv_out.weight, std=0.05)
    return controlnet


def tiny_vae() -> Any:
    """A 4-level VAE (downsamples by 8 like SD's) without the mid-block attention (no 4096 tokens)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        mid_block_add_attention=False,
    )


def tiny_text_encoder(vocab_size: int, text_dim: int, *, layers: int = 5, intermediate: int = 37) -> Any:
    """A CLIP text tower ``text_dim`` wide over the tiny tokenizer's vocabulary (special ids last)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=text_dim,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            projection_dim=text_dim,
        )
    )


def _tiny_components(folder: Path, seed: int) -> None:

    vocab_size = write_tiny_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    unet = tiny_unet(TINY_TEXT_DIM)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    torch.manual_seed(seed + 1)
    controlnet = tiny_controlnet(unet)
    controlnet.save_pretrained(folder / "controlnet", safe_serialization=True)
    torch.manual_seed(seed + 2)
    tiny_vae().save_pretrained(folder / "vae", safe_serialization=True)
    torch.manual_seed(seed + 3)
    text_encoder = tiny_text_encoder(vocab_size, TINY_TEXT_DIM)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    sd15_scheduler().save_pretrained(folder / "scheduler")
    torch.manual_seed(seed + 4)
    MTColorModules.from_unet(unet, controlnet, text_dim=TINY_TEXT_DIM).save(folder / MODULES_FILE)


def write_tiny_bundle(path: Path, *, seed: int = 0, perception: bool = True) -> Path:
    """Write a complete tiny random bundle at ``path`` (created; must be empty or absent).

    Built in a sibling temp folder and moved into place, so an interrupted build never leaves a
    folder that looks like a bundle. Same seed -> byte-identical weights and manifest.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if (path / MANIFEST_FILE).is_file():
            raise ModelError("a bundle already exists here", path=path, hint="choose an empty folder")
        raise ModelError("target folder is not empty", path=path, hint="choose an empty or new folder")
    with staged_dir(path) as staging:
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
            _tiny_components(staging, seed)
        if perception:
            write_tiny_perception(staging, seed=seed)
        save_bundle(
            staging,
            name=TINY_NAME,
            revision=f"seed-{seed}",
            tiny=True,
            sources={"generator": "mtcolor_batch.testing.tiny_sd15", "seed": seed, "perception": perception},
        )
    return path
