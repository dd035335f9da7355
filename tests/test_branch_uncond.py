"""sampling.branch_uncond: ``own`` is the paper's sampling; ``global`` guides the instance branches
with the global branch's unconditional half, an opt-in approximation whose distance is measured here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mtcolor_batch.core.config import SamplingSettings, load_profile
from mtcolor_batch.core.types import Instance, Plan
from mtcolor_batch.model.engine import MTColorEngine
from mtcolor_batch.stages.plan import make_plan
from mtcolor_batch.testing.trained_like import trained_like


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path) -> MTColorEngine:
    eng = MTColorEngine.load(tiny_bundle, device="cpu")
    trained_like(eng.modules, seed=11)  # every module runs, as in a trained bundle
    return eng


def _scene(size: int) -> tuple[np.ndarray, list[Instance]]:
    """A gradient and three instances of about a ninth of the image each."""
    yy, xx = np.mgrid[0:size, 0:size]
    luma = (0.15 + 0.7 * (xx + yy) / (2 * size)).astype(np.float32)
    insts = []
    side = size // 3
    for i, (x0, y0) in enumerate([(8, 16), (size - side - 8, 24), (size // 3, size - side - 8)]):
        m = np.zeros((size, size), dtype=bool)
        m[y0 : y0 + side, x0 : x0 + side] = True
        insts.append(Instance.from_full_mask(i + 1, f"thing {i}", f"a red thing {i}", m))
    return luma, insts


def _plan(size: int, tile: int = 256, **changes: object) -> Plan:
    settings = SamplingSettings(steps=20, working_long_side=size, tile_size=tile, tile_overlap=64, alpha=0.2)
    return dataclasses.replace(make_plan((size, size), settings, seed=4, prompt="a street"), **changes)


def _final(engine: MTColorEngine, size: int, plan: Plan, latents: list[int]) -> torch.Tensor:
    """The final latent of the sampling loop at ``size`` (one tile or several), counting UNet latents."""
    sampler = engine.sampler
    luma, insts = _scene(size)
    texts = sampler.texts(plan, insts)
    canvas = sampler.canvas(luma, insts, texts, plan)
    z0 = sampler.initial_noise(torch.Generator().manual_seed(0), canvas.latent_size)
    inner = sampler.denoiser

    def count(lat: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        latents.append(lat.shape[0] * lat.shape[2] * lat.shape[3])
        return inner(lat, *args, **kwargs)

    sampler.denoiser = count
    try:
        with torch.no_grad():
            return sampler.denoise(canvas, texts, plan, z0)
    finally:
        sampler.denoiser = inner


def test_own_is_the_default_and_the_paper_setting() -> None:
    assert Plan.__dataclass_fields__["branch_uncond"].default == "own"
    for name in ("default", "fast", "quality", "archival", "paper"):
        assert load_profile(name).sampling.branch_uncond == "own", name
    assert not load_profile("paper", {"sampling.branch_uncond": "global"}).follows("paper")
    chosen = load_profile("default", {"sampling.branch_uncond": "global"}).sampling
    assert make_plan((64, 64), chosen, seed=1).branch_uncond == "global"  # the plan, so the record


def test_global_with_one_uncropped_branch_step_is_own_bit_for_bit(engine: MTColorEngine) -> None:
    """K = 1 without a crop: the first step already shares the global unconditional half exactly, so
    ``global`` changes nothing there; the switch touches only what it claims to."""
    plan = _plan(128, steps=5, branch_crop=0)  # alpha 0.2 of 5 steps: K = 1
    own = _final(engine, 128, plan, [])
    glob = _final(engine, 128, dataclasses.replace(plan, branch_uncond="global"), [])
    assert torch.equal(own, glob)


@pytest.mark.parametrize(
    ("size", "tile", "crop", "bound"),
    [(192, 256, 0, 0.06), (384, 512, 64, 0.10), (320, 256, 64, 0.13)],  # whole; cropped; tiles, cropped
)
def test_global_runs_fewer_latents_and_stays_within_bound(
    engine: MTColorEngine, size: int, tile: int, crop: int, bound: float
) -> None:
    """``global`` drops the instance branches' unconditional halves in the first K = 4 of 20 steps.

    Measured here (relative L2 of the final latents, ``global`` vs ``own``, trained-like tiny
    bundle): 192 px uncropped 0.041, 384 px cropped (64) 0.074, 320 px tiled and cropped 0.098; for
    scale, the instance branches themselves (``own`` vs alpha = 0) move it by 0.062 / 0.057 / 0.067.
    The bounds sit a little above these. A guidance scale of 7.5 amplifies the branch's own
    unconditional drift from the global one 6.5-fold: the approximation is as large as what the
    branches do, which is why the switch is opt-in only.
    """
    plan = _plan(size, tile, branch_crop=crop)
    own_rows: list[int] = []
    global_rows: list[int] = []
    own = _final(engine, size, plan, own_rows)
    glob = _final(engine, size, dataclasses.replace(plan, branch_uncond="global"), global_rows)
    effect = _final(engine, size, dataclasses.replace(plan, alpha=0.0), [])
    rel = float((glob - own).norm() / own.norm())
    branches = float((own - effect).norm() / own.norm())
    print(f"size {size} crop {crop}: global vs own {rel:.4f}; branches' own effect {branches:.4f}")
    assert sum(global_rows) < sum(own_rows)
    assert 0 < rel < bound
    assert torch.isfinite(glob).all()


def test_cli_refuses_an_unknown_value_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mtcolor_batch.cli import app

    result = CliRunner().invoke(app, ["run", str(tmp_path), "--branch-uncond", "mine", "--dry-run"])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "sampling.branch_uncond" in lines[0], result.output
