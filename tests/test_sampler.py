"""The MT-Color sampling loop on the tiny bundle: fusion, alpha=0, determinism, batching, tiling, sizes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mtcolor_batch.core.config import SamplingSettings
from mtcolor_batch.core.types import Instance, Plan
from mtcolor_batch.model.fusion import fuse_latents, fusion_steps
from mtcolor_batch.stages.plan import make_plan

SETTINGS = SamplingSettings(steps=2, working_long_side=96, tile_size=64, tile_overlap=16, alpha=0.5, beta=0.2)


def _scene(h: int, w: int, n: int = 2) -> tuple[np.ndarray, list[Instance]]:
    yy, xx = np.mgrid[0:h, 0:w]
    luma = (0.2 + 0.6 * (xx / max(w - 1, 1)) * (yy / max(h - 1, 1))).astype(np.float32)
    insts = []
    boxes = [
        (w // 8, h // 8, w // 2, h // 2),
        (w // 2, h // 2, w - w // 8, h - h // 10),
        (0, h // 2, w // 3, h),
    ]
    texts = ["a red tram", "the green and blue sky", "a brown coat"]
    for i in range(n):
        x0, y0, x1, y1 = boxes[i]
        m = np.zeros((h, w), dtype=bool)
        m[y0:y1, x0:x1] = True
        insts.append(Instance.from_full_mask(i + 1, f"thing{i}", texts[i], m))
    return luma, insts


def _plan(size: tuple[int, int], **changes: object) -> Plan:
    return dataclasses.replace(make_plan(size, SETTINGS, seed=7, prompt="an old street"), **changes)


# ------------------------------------------------------------------------------------ fusion
@pytest.mark.parametrize("mode", ["paper", "paste", "blend"])
def test_fusion_equation_exact(mode: str) -> None:
    """Each sampling.fusion mode is its formula, pixel by pixel and bit for bit."""
    g = torch.Generator().manual_seed(0)
    zg = torch.randn(1, 4, 6, 5, generator=g)
    zi = torch.randn(3, 4, 6, 5, generator=g)
    labels = torch.randint(0, 4, (6, 5), generator=g)
    masks = torch.stack([(labels == k + 1).float() for k in range(3)])
    for beta in (0.2, 0.0, 1.0):
        z = fuse_latents(zg, zi, masks, beta, mode)
        for y in range(6):
            for x in range(5):
                k = int(labels[y, x])
                g_px, i_px = zg[0, :, y, x], zi[k - 1, :, y, x]
                want = {
                    "paper": beta * g_px if k == 0 else i_px,  # Eq. 10: beta*m_g*z_g + sum m_i*z_i
                    "paste": g_px if k == 0 else i_px,
                    "blend": g_px if k == 0 else (beta * g_px + i_px) / (beta + 1.0),
                }[mode]
                assert torch.equal(z[0, :, y, x], want), (mode, beta, y, x)
    no_instances = fuse_latents(zg, zi[:0], masks[:0], 0.2, mode)
    assert torch.equal(no_instances, 0.2 * zg if mode == "paper" else zg)
    with pytest.raises(ValueError, match="fusion"):
        fuse_latents(zg, zi, masks, 0.2, "average")


def test_fusion_mode_reaches_the_sampler(engine) -> None:  # noqa: ANN001
    """The plan's mode is what runs: the three modes give three different images, paste by default."""
    luma, insts = _scene(64, 64)
    assert make_plan((64, 64), SETTINGS, seed=7).fusion == "paste"
    outs = {m: engine.colorize(luma, insts, _plan((64, 64), fusion=m)) for m in ("paper", "paste", "blend")}
    assert np.array_equal(outs["paste"], engine.colorize(luma, insts, _plan((64, 64))))
    assert not np.array_equal(outs["paper"], outs["paste"])
    assert not np.array_equal(outs["blend"], outs["paste"])


def test_fusion_steps_rounds_half_up() -> None:
    assert fusion_steps(0.2, 20) == 4
    assert fusion_steps(0.5, 1) == 1
    assert fusion_steps(0.0, 50) == 0
    assert fusion_steps(1.0, 3) == 3


# ------------------------------------------------------------------------------ equivalences
def _plain_sampling(engine, luma: np.ndarray, insts: list[Instance], plan: Plan) -> np.ndarray:  # noqa: ANN001
    """An independent, textbook SD+ControlNet CFG loop (no branches) through the same denoiser."""
    from diffusers import DDIMScheduler
    from skimage.color import rgb2lab

    from mtcolor_batch.model.regions import RegionBatch

    h, w = luma.shape
    seq, pooled = engine.encode_text([plan.negative_prompt, plan.prompt, *[i.text for i in insts]])
    cond = RegionBatch.from_masks([i.full((h, w)) for i in insts], pooled[2:], (h // 8, w // 8))
    # Unconditional half: the null instance condition, as training's dropout (same regions, no tokens).
    regions = RegionBatch.cat([cond.drop_tokens(), cond])
    sched = DDIMScheduler.from_config(engine.sampler.scheduler_factory().config)
    sched.set_timesteps(plan.steps)
    z = torch.randn((1, 4, h // 8, w // 8), generator=torch.Generator("cpu").manual_seed(plan.seed))
    control = torch.from_numpy(luma)[None, None].expand(2, 3, h, w)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = engine.denoiser(torch.cat([z, z]), t, seq[:2], control, regions, plan.controlnet_scale)
            eps = eps[:1] + plan.guidance_scale * (eps[1:] - eps[:1])
            z = sched.step(eps, t, z).prev_sample
        img = engine.vae.decode(z / engine.vae.config.scaling_factor).sample
    rgb = ((img + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).numpy().astype(np.float64)
    return rgb2lab(rgb)[..., 1:].transpose(2, 0, 1).astype(np.float32)


def test_alpha_zero_is_plain_sampling_bit_for_bit(engine) -> None:  # noqa: ANN001
    luma, insts = _scene(64, 64)
    plan = _plan((64, 64), alpha=0.0)
    engine.unet_calls = 0
    ab = engine.colorize(luma, insts, plan)
    assert engine.unet_calls == plan.steps  # one batched [uncond; cond] call per step
    assert np.array_equal(ab, _plain_sampling(engine, luma, insts, plan))
    # ... and the multi-instance path really does something different when alpha > 0.
    assert not np.array_equal(ab, engine.colorize(luma, insts, _plan((64, 64), alpha=1.0)))


def test_seed_determinism(engine) -> None:  # noqa: ANN001
    luma, insts = _scene(64, 64)
    a = engine.colorize(luma, insts, _plan((64, 64)))
    b = engine.colorize(luma, insts, _plan((64, 64)))
    c = engine.colorize(luma, insts, _plan((64, 64), seed=8))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (2, 64, 64) and a.dtype == np.float32 and np.isfinite(a).all()


def test_batched_equals_unbatched_branches(engine) -> None:  # noqa: ANN001
    luma, insts = _scene(64, 64, n=3)
    plan = _plan((64, 64), alpha=1.0, branch_refresh=1)  # every step: 4 branches x 2 CFG halves
    engine.unet_calls = 0
    one = engine.colorize(luma, insts, dataclasses.replace(plan, max_batch=1))
    # First step: one shared unconditional half + 4 conditional ones; second: 4 branches x 2 halves.
    assert engine.unet_calls == (1 + 4) + 4 * 2
    engine.unet_calls = 0
    big = engine.colorize(luma, insts, dataclasses.replace(plan, max_batch=64))
    assert engine.unet_calls == 2
    # Only float summation order differs (batched conv kernels): ~3e-4 CIELAB units, 1000x below a JND.
    # A branch paired with the wrong text or regions would differ by whole units.
    np.testing.assert_allclose(one, big, atol=5e-3, rtol=0)


@pytest.mark.parametrize(("side", "crop"), [(64, 0), (96, 0), (96, 4096)])  # one tile, tiles, crop
@pytest.mark.slow
def test_shared_unconditional_half_is_exact(tiny_bundle: Path, side: int, crop: int) -> None:
    """First multi-instance step: the global branch's unconditional half serves every branch.

    All branches hold the same latent then, so their unconditional inputs are identical: sharing
    it gives the values computing it per branch gives (fp tolerance: other batch compositions).
    """
    from mtcolor_batch.model.engine import MTColorEngine
    from mtcolor_batch.testing.trained_like import trained_like

    engine = MTColorEngine.load(tiny_bundle, device="cpu")
    trained_like(engine.modules, seed=3)  # every module runs
    luma, insts = _scene(side, side, n=3)
    plan = _plan((side, side), alpha=1.0, branch_crop=crop)
    sampler = engine.sampler
    texts = sampler.texts(plan, insts)
    canvas = sampler.canvas(luma, insts, texts, plan)
    assert len(canvas.boxes) == (1 if side == 64 else 4) and bool(canvas.crops) == bool(crop)
    z = sampler.initial_noise(torch.Generator().manual_seed(1), canvas.latent_size).repeat(4, 1, 1, 1)
    scheduler = sampler.scheduler_factory()
    scheduler.set_timesteps(plan.steps)
    t = scheduler.timesteps[0]
    inner, latents = sampler.denoiser, {False: 0, True: 0}
    reference = torch.empty(0)
    try:
        for shared in (False, True):

            def count(lat: torch.Tensor, *args: object, shared: bool = shared, **kw: object) -> torch.Tensor:
                latents[shared] += lat.shape[0]
                return inner(lat, *args, **kw)

            sampler.denoiser = count
            with torch.no_grad():
                eps = sampler.predict(z, [0, 1, 2, 3], t, canvas, texts, plan, scheduler, shared=shared)
            if shared:
                torch.testing.assert_close(eps, reference, rtol=0, atol=1e-5)
            reference = eps
    finally:
        sampler.denoiser = inner
    tiles = len(canvas.boxes)
    assert latents[True] < latents[False] <= tiles * 8  # unconditional halves saved
    assert torch.isfinite(reference).all()


# ---------------------------------------------------------------------------------- tiling
def test_unet_calls_constant_beyond_working_resolution(engine) -> None:  # noqa: ANN001
    from mtcolor_batch.render.chroma import resize_luma

    counts = {}
    for side in (300, 1000):
        plan = make_plan((side, side), SETTINGS, seed=3, prompt="x")
        assert plan.working_size == (96, 96) and len(plan.tiles) > 1
        luma, insts = _scene(side, side, n=1)
        luma_w = resize_luma(luma, plan.working_size)
        insts_w = [
            Instance.from_full_mask(
                i.id,
                i.label,
                i.text,
                resize_luma(i.full((side, side)).astype(np.float32), plan.working_size) > 0.5,
            )
            for i in insts
        ]
        engine.unet_calls = 0
        ab = engine.colorize(luma_w, insts_w, plan)
        assert ab.shape == (2, 96, 96) and np.isfinite(ab).all()
        counts[side] = engine.unet_calls
    assert len(set(counts.values())) == 1, counts
    small = make_plan((64, 64), SETTINGS, seed=3, prompt="x")
    engine.unet_calls = 0
    engine.colorize(*_scene(64, 64, n=1), small)
    assert engine.unet_calls < counts[300]


def test_tiled_instance_branches_across_tile_borders(engine) -> None:  # noqa: ANN001
    luma, insts = _scene(96, 64, n=2)
    plan = _plan((96, 64), alpha=1.0)  # K = T: instance branches also run in the tile pass
    assert len(plan.tiles) > 1
    ab = engine.colorize(luma, insts, plan)
    again = engine.colorize(luma, insts, plan)
    assert ab.shape == (2, 96, 64) and np.isfinite(ab).all() and np.array_equal(ab, again)


@pytest.mark.parametrize("scan", [(1, 1), (7, 3000), (513, 513)])
@pytest.mark.slow
def test_odd_scan_sizes(engine, scan: tuple[int, int]) -> None:  # noqa: ANN001
    settings = (
        SETTINGS
        if scan != (513, 513)
        else SETTINGS.model_copy(update={"working_long_side": 1024, "tile_size": 512, "tile_overlap": 128})
    )
    plan = make_plan(scan, settings, seed=1, prompt="x")
    luma, insts = _scene(*plan.working_size, n=1 if min(plan.working_size) >= 16 else 0)
    ab = engine.colorize(luma, insts, plan)
    assert ab.shape == (2, *plan.working_size) and np.isfinite(ab).all()


def test_unaligned_luma_is_padded_and_cropped(engine) -> None:  # noqa: ANN001
    luma, insts = _scene(13, 21, n=1)
    plan = _plan((13, 21), tiles=[(0, 0, 21, 13)])
    ab = engine.colorize(luma, insts, plan)
    assert ab.shape == (2, 13, 21) and np.isfinite(ab).all()
