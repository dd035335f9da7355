"""Engine speed options: half-precision VAE with float32 redo on overflow, compile, provenance."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mtcolor_batch.core.config import SamplingSettings, load_profile
from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.core.types import Instance
from mtcolor_batch.model.engine import EngineOptions, MTColorEngine, PrecisionVAE, resolve_vae_dtype
from mtcolor_batch.stages.plan import make_plan


@pytest.fixture(scope="module")
def tiny_vae(tiny_bundle: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(tiny_bundle / "vae").eval().requires_grad_(False)


@torch.no_grad()
def test_half_vae_decode_matches_float32_without_fallback(tiny_vae: torch.nn.Module) -> None:
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    want = tiny_vae.decode(z).sample
    vae = PrecisionVAE(copy.deepcopy(tiny_vae), torch.float16)
    got = vae.decode(z).sample
    assert got.dtype == torch.float16 and vae.fallbacks == 0
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)


@torch.no_grad()
def test_half_vae_overflow_is_redone_in_float32(tiny_vae: torch.nn.Module) -> None:
    """A decode that overflows float16 comes back finite, equal to the float32 decode."""
    big = copy.deepcopy(tiny_vae)
    big.decoder.conv_in.weight.mul_(1e3)  # first activations beyond float16's 65504 ...
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 50
    assert not torch.isfinite(copy.deepcopy(big).half().decode(z.half()).sample).all()  # ... so it overflows
    want = copy.deepcopy(big).half().float().decode(z).sample  # float32 maths on the half weights
    assert torch.isfinite(want).all()
    vae = PrecisionVAE(big, torch.float16)
    got = vae.decode(z).sample
    assert vae.fallbacks == 1
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)
    assert next(vae.parameters()).dtype == torch.float16  # cast back after the redo


def test_vae_dtype_resolution() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_vae_dtype("auto", cpu, torch.float32) == torch.float32
    assert resolve_vae_dtype("auto", cuda, torch.float16) == torch.float16
    assert resolve_vae_dtype("auto", cuda, torch.bfloat16) == torch.bfloat16
    with pytest.raises(ModelError, match="float16 is not supported on CPU"):
        resolve_vae_dtype("float16", cpu, torch.float32)
    with pytest.raises(ModelError, match="unknown VAE dtype"):
        resolve_vae_dtype("float8", cpu, torch.float32)


def test_profile_keys_reach_the_engine_options() -> None:
    profile = load_profile(
        "default",
        {"sampling.compile": True, "sampling.channels_last": False, "sampling.vae_dtype": "bfloat16"},
    )
    opts = EngineOptions.from_sampling(profile.sampling)
    assert opts == EngineOptions(vae_dtype="bfloat16", channels_last=False, compile=True)
    assert EngineOptions.from_sampling(SamplingSettings()) == EngineOptions()


def _scene() -> tuple[np.ndarray, list[Instance]]:
    luma = np.linspace(0.1, 0.9, 64 * 64, dtype=np.float32).reshape(64, 64)
    m = np.zeros((64, 64), dtype=bool)
    m[8:40, 16:48] = True
    return luma, [Instance.from_full_mask(1, "tram", "a red tram", m)]


@pytest.mark.slow
def test_compile_gives_the_same_colours_and_is_recorded(tiny_bundle: Path) -> None:
    """--compile (eager backend here: dynamo capture without a C++ toolchain) changes no output."""
    settings = SamplingSettings(steps=2, working_long_side=64, alpha=0.5)
    plan = dataclasses.replace(make_plan((64, 64), settings, seed=3, prompt="a street"))
    plain = MTColorEngine.load(tiny_bundle, device="cpu")
    compiled = MTColorEngine.load(
        tiny_bundle, device="cpu", options=EngineOptions(compile=True, compile_backend="eager")
    )
    luma, insts = _scene()
    want = plain.colorize(luma, insts, plan)
    got = compiled.colorize(luma, insts, plan)
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert compiled.compiled_modules > 1
    assert compiled.info["compile"] is True and compiled.info["compile_backend"] == "eager"
    assert plain.info["compile"] is False and "compile_backend" not in plain.info
    assert plain.info["vae_dtype"] == "float32" and plain.info["channels_last"] is False
