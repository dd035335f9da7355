"""``--steps 1000`` (the documented maximum) stays inside the scheduler's trained timesteps."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from mtcolor_batch.model.sampler import set_timesteps

SD15 = {  # SD 1.5's scheduler config (the tiny bundle writes the same)
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "num_train_timesteps": 1000,
}


def test_a_thousand_steps_run_every_trained_timestep_once() -> None:
    scheduler = DDIMScheduler.from_config(SD15)
    set_timesteps(scheduler, 1000, torch.device("cpu"))
    ts = scheduler.timesteps
    assert len(ts) == 1000 and int(ts.max()) == 999 and len(set(ts.tolist())) == 1000
    z = torch.zeros(1, 4, 8, 8)
    for t in ts[:2]:  # the first step used to index alphas_cumprod[1000]
        z = scheduler.step(torch.zeros_like(z), t, z).prev_sample
    start = 1000 - 300  # a tiled run re-noises at a step index near the end
    scheduler.add_noise(z, torch.randn_like(z), ts[start : start + 1])


@pytest.mark.parametrize("steps", [1, 20, 50, 500, 999])
def test_other_step_counts_are_unchanged(steps: int) -> None:
    ours, plain = DDIMScheduler.from_config(SD15), DDIMScheduler.from_config(SD15)
    set_timesteps(ours, steps, torch.device("cpu"))
    plain.set_timesteps(steps, device="cpu")
    assert torch.equal(ours.timesteps, plain.timesteps)
