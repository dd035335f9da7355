"""sampling.scheduler: every scheduler samples MT-Color correctly on the tiny bundle.

* alpha = 0 equals diffusers' own StableDiffusionControlNetPipeline with the same scheduler;
* batching the branches keeps one state per branch (a row of the batch steps as a lone scheduler);
* the fusion at step K is its formula, and a multistep solver's history is fused with the latents;
* LCM and TCD draw their noise from the run's seed: reruns are identical, another seed is not.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from mtcolor_batch.core.config import SamplingSettings, load_profile
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.types import Instance, Plan
from mtcolor_batch.model import schedulers
from mtcolor_batch.model.fusion import fuse_latents, fusion_steps
from mtcolor_batch.stages.plan import make_plan

NAMES = list(schedulers.SCHEDULERS)
SETTINGS = SamplingSettings(steps=4, working_long_side=64, tile_size=64, tile_overlap=16, alpha=0.5)


def _scene(h: int, w: int) -> tuple[np.ndarray, list[Instance]]:
    yy, xx = np.mgrid[0:h, 0:w]
    luma = (0.2 + 0.6 * (xx / (w - 1)) * (yy / (h - 1))).astype(np.float32)
    insts = []
    for i, (x0, y0, x1, y1) in enumerate([(8, 8, 32, 32), (32, 32, 56, 60)]):
        m = np.zeros((h, w), dtype=bool)
        m[y0:y1, x0:x1] = True
        insts.append(Instance.from_full_mask(i + 1, f"thing{i}", ["a red tram", "blue sky"][i], m))
    return luma, insts


def _plan(name: str, **changes: object) -> Plan:
    plan = make_plan((64, 64), SETTINGS, seed=3, prompt="an old street")
    return dataclasses.replace(plan, scheduler=name, **changes)


def test_names_are_the_profile_values() -> None:
    """The profile accepts exactly the schedulers the factory builds; anything else is refused."""
    assert set(NAMES) == {"ddim", "ddim-trailing", "lcm", "tcd", "dpmpp-2m", "unipc"}
    for name in NAMES:
        assert load_profile("default", {"sampling.scheduler": name}).sampling.scheduler == name
    with pytest.raises(UserError, match="sampling.scheduler"):
        load_profile("default", {"sampling.scheduler": "bogus"})
    with pytest.raises(ValueError, match="unknown scheduler"):
        schedulers.build_scheduler("bogus", {})


def test_default_is_ddim_from_the_bundle_config(engine) -> None:  # noqa: ANN001
    """ddim stays what it was: DDIMScheduler.from_config of the bundle's config."""
    from diffusers import DDIMScheduler

    made = engine.sampler.scheduler_factory()
    assert type(made) is DDIMScheduler and made.config.timestep_spacing != "trailing"
    assert SamplingSettings().scheduler == "ddim"
    trailing = engine.sampler.scheduler_factory("ddim-trailing")
    made.set_timesteps(4)
    trailing.set_timesteps(4)
    assert not torch.equal(made.timesteps, trailing.timesteps)


@pytest.mark.parametrize("name", NAMES)
def test_alpha_zero_matches_the_diffusers_pipeline(engine, name: str) -> None:  # noqa: ANN001
    """No branch, no instance: our loop is diffusers' SD+ControlNet pipeline with that scheduler."""
    from diffusers import StableDiffusionControlNetPipeline

    luma, _ = _scene(64, 64)
    guidance = 1.0 if name in ("lcm", "tcd") else 7.5  # LCM/TCD as their authors run them, and CFG
    plan = _plan(name, alpha=0.0, guidance_scale=guidance, tcd_gamma=0.3)
    ours = engine.colorize_rgb(luma, [], plan)
    pipe = StableDiffusionControlNetPipeline(
        vae=engine.vae,
        text_encoder=engine.text_encoder,
        tokenizer=engine.tokenizer,
        unet=engine.unet,
        controlnet=engine.controlnet,
        scheduler=engine.sampler.scheduler_factory(name),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    control = torch.from_numpy(luma)[None, None].expand(1, 3, 64, 64)
    with torch.no_grad():
        theirs = pipe(
            prompt=plan.prompt,
            negative_prompt=plan.negative_prompt,
            image=control,
            height=64,
            width=64,
            num_inference_steps=plan.steps,
            guidance_scale=guidance,
            controlnet_conditioning_scale=plan.controlnet_scale,
            generator=torch.Generator("cpu").manual_seed(plan.seed),
            eta=plan.tcd_gamma if name == "tcd" else 0.0,  # TCD's gamma; DDIM also takes eta: ours is 0
            output_type="np",
        ).images[0]
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(ours, theirs.astype(np.float64), atol=2e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_batched_rows_are_independent_states(engine, name: str) -> None:  # noqa: ANN001
    """One scheduler over a batch of branches = one scheduler per branch, row by row."""
    g = torch.Generator().manual_seed(0)
    batched = engine.sampler.scheduler_factory(name)
    batched.set_timesteps(6)
    lone = [copy.deepcopy(batched) for _ in range(3)]
    z = torch.randn(3, 4, 8, 8, generator=g)
    rows = [z[i : i + 1].clone() for i in range(3)]
    for t in batched.timesteps:
        eps = torch.randn(3, 4, 8, 8, generator=g)
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        z = schedulers.step(batched, eps, t, z, torch.Generator().manual_seed(seed), 0.3)
        if name in schedulers.STOCHASTIC:
            continue  # their noise is drawn for the whole batch at once; covered by the seed test
        for i in range(3):
            rows[i] = schedulers.step(lone[i], eps[i : i + 1], t, rows[i], None, 0.3)
    if name not in schedulers.STOCHASTIC:
        for i in range(3):
            torch.testing.assert_close(z[i : i + 1], rows[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_fusion_at_step_k_is_the_formula(engine, name: str) -> None:  # noqa: ANN001
    """The latent entering step K is fuse_latents of the branches leaving step K-1, bit for bit; a
    multistep solver's history is fused too (one row, the instance's own past inside its region)."""
    luma, insts = _scene(64, 64)
    plan = _plan(name, branch_refresh=1, branch_crop=0)
    sampler = engine.sampler
    texts = sampler.texts(plan, insts)
    canvas = sampler.canvas(luma, insts, texts, plan)
    k = fusion_steps(plan.alpha, plan.steps)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    histories: list[list[int]] = []
    factory = sampler.scheduler_factory

    def spying(requested: str = "ddim") -> schedulers.Scheduler:
        scheduler = factory(requested)
        step = scheduler.step

        def spy(eps: torch.Tensor, t: torch.Tensor, z: torch.Tensor, *args: object, **kw: object) -> object:
            histories.append(
                [v.shape[0] for v in getattr(scheduler, "model_outputs", []) if isinstance(v, torch.Tensor)]
            )
            out = step(eps, t, z, *args, **kw)
            seen.append((z.clone(), out.prev_sample.clone()))
            return out

        scheduler.step = spy  # type: ignore[method-assign]
        return scheduler

    sampler.scheduler_factory = spying
    try:
        with torch.no_grad():
            sampler.denoise(
                canvas,
                texts,
                plan,
                sampler.initial_noise(torch.Generator().manual_seed(1), canvas.latent_size),
                0,
                torch.Generator().manual_seed(2),
            )
    finally:
        sampler.scheduler_factory = factory
    assert len(seen) == plan.steps and 0 < k < plan.steps
    branches_out = seen[k - 1][1]
    assert branches_out.shape[0] == 1 + len(insts)
    fused = fuse_latents(branches_out[:1], branches_out[1:], canvas.fusion_masks, plan.beta, plan.fusion)
    assert torch.equal(seen[k][0], fused)
    if name in ("dpmpp-2m", "unipc"):
        assert all(n == 1 + len(insts) for n in histories[k - 1])
        assert histories[k] and all(n == 1 for n in histories[k])


def test_fuse_history_keeps_each_pixels_own_past() -> None:
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler()
    g = torch.Generator().manual_seed(0)
    past = torch.randn(3, 4, 5, 5, generator=g)
    sched.model_outputs = [None, past]
    labels = torch.randint(0, 3, (5, 5), generator=g)
    masks = torch.stack([(labels == k + 1).float() for k in range(2)])
    schedulers.fuse_history(sched, lambda h: fuse_latents(h[:1], h[1:], masks, 0.2, "paste"), 3)
    fused = sched.model_outputs[1]
    assert sched.model_outputs[0] is None and fused.shape == (1, 4, 5, 5)
    for y in range(5):
        for x in range(5):
            assert torch.equal(fused[0, :, y, x], past[int(labels[y, x]), :, y, x])


@pytest.mark.parametrize("name", schedulers.STOCHASTIC)
def test_stochastic_schedulers_are_reproducible(engine, name: str) -> None:  # noqa: ANN001
    """Tiled, with instances: the same seed gives the same bytes, another seed other bytes."""
    yy, xx = np.mgrid[0:64, 0:96]
    luma = (0.3 + 0.5 * xx / 95).astype(np.float32)
    plan = dataclasses.replace(
        make_plan((64, 96), SETTINGS, seed=5, prompt="a street"), scheduler=name, guidance_scale=1.0
    )
    _, insts = _scene(64, 64)
    a = engine.colorize(luma, insts, plan)
    assert np.array_equal(a, engine.colorize(luma, insts, plan))
    assert not np.array_equal(a, engine.colorize(luma, insts, dataclasses.replace(plan, seed=6)))


@pytest.mark.parametrize("name", NAMES)
def test_tiled_runs_with_every_scheduler(engine, name: str) -> None:  # noqa: ANN001
    """Low-resolution pass, re-noising with the run's own scheduler, tiles: finite, and not DDIM's."""
    luma = np.tile(np.linspace(0.1, 0.9, 96, dtype=np.float32), (64, 1))
    plan = dataclasses.replace(make_plan((64, 96), SETTINGS, seed=5, prompt="a street"), scheduler=name)
    _, insts = _scene(64, 64)
    ab = engine.colorize(luma, insts, plan)
    assert np.isfinite(ab).all() and ab.shape == (2, 64, 96)
    if name != "ddim":
        assert not np.array_equal(
            ab, engine.colorize(luma, insts, dataclasses.replace(plan, scheduler="ddim"))
        )


def test_few_step_keys_at_their_defaults_leave_fingerprints_unchanged() -> None:
    """Journals written before sampling.scheduler existed stay done; another value redoes the files."""
    import hashlib
    import json

    default = load_profile("default")
    data = default.model_dump(
        mode="json",
        exclude={
            "name": True,
            "device": True,
            "jobs": True,
            "hints": {"max_sidecar_instances"},
            "output": {"c2pa_cert", "c2pa_key"},  # machine-local paths, never hashed (Content Credentials)
        },
    )
    for key in ("scheduler", "tcd_gamma", "accelerator", "accelerator_steps"):
        del data["sampling"][key]
    before = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    assert default.fingerprint() == before
    for change in (
        {"sampling.scheduler": "unipc"},
        {"sampling.accelerator": "lcm"},
        {"sampling.tcd_gamma": 0.5},
    ):
        assert load_profile("default", change).fingerprint() != before, change
