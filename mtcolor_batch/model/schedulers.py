"""The denoising schedulers a run can use (``sampling.scheduler``), built from the bundle's config.

Every scheduler is diffusers' own class, made with ``from_config`` from the bundle's
``scheduler/scheduler_config.json`` (SD 1.5 ships a PNDM config; its betas and offsets are what each
class rebuilds from), so a run with scheduler X computes what ``StableDiffusionControlNetPipeline``
with ``X.from_config(pipe.scheduler.config)`` computes.

How the multi-instance loop stays correct with each of them (``model/sampler.py``):

* branches, CFG halves and tiles are one batch; every scheduler here updates each batch row from
  that row alone, so a row's history (the multistep solvers' earlier predictions) is that branch's
  own state: one scheduler over the batch is one state per branch;
* at the fusion after step K the latents are fused by their formula (``fuse_latents``) and the
  solvers' history tensors are fused per pixel by the branch that supplied the pixel
  (:func:`fuse_history`), so the global state that goes on carries each instance's own past;
* the stochastic schedulers (LCM, TCD) draw their step noise from the run's seeded CPU generator
  (:func:`step`), so a rerun gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    LCMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

Scheduler: TypeAlias = (
    DDIMScheduler | LCMScheduler | TCDScheduler | DPMSolverMultistepScheduler | UniPCMultistepScheduler
)
"""What the sampler steps with: one of diffusers' classes below."""

SCHEDULERS: dict[str, tuple[type[Scheduler], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "ddim-trailing": (DDIMScheduler, {"timestep_spacing": "trailing"}),
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": (UniPCMultistepScheduler, {}),
}
"""``sampling.scheduler`` value -> (diffusers class, config values it sets over the bundle's)."""

STOCHASTIC = ("lcm", "tcd")
"""Schedulers that draw noise at each step (from the run's generator)."""

HISTORY_ATTRS = ("model_outputs", "last_sample")
"""Scheduler attributes holding per-row tensors of earlier steps (DPM-Solver++ and UniPC)."""

ConfigMap: TypeAlias = Mapping[str, Any]


def scheduler_names() -> list[str]:
    return list(SCHEDULERS)


def build_scheduler(name: str, config: ConfigMap) -> Scheduler:
    """``name`` built from a bundle's scheduler config; ValueError naming the choices otherwise."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    scheduler: Scheduler = cls.from_config(dict(config), **extra)
    return scheduler


def scheduler_factory(config: ConfigMap) -> Callable[..., Scheduler]:
    """``factory(name="ddim")``: a fresh scheduler per sampling run (schedulers keep step state)."""

    def make(name: str = "ddim") -> Scheduler:
        return build_scheduler(name, config)

    return make


def describe(scheduler: Scheduler) -> str:
    """What provenance calls it: the class, plus the spacing where it is not the config's."""
    spacing = getattr(scheduler.config, "timestep_spacing", None)
    name = type(scheduler).__name__
    return f"{name} ({spacing} spacing)" if spacing == "trailing" else name


def step(
    scheduler: Scheduler,
    eps: torch.Tensor,
    t: torch.Tensor,
    z: torch.Tensor,
    generator: torch.Generator | None,
    gamma: float,
) -> torch.Tensor:
    """One update of ``z`` with each class's own step arguments.

    DDIM keeps its deterministic (eta = 0) call exactly as before; LCM and TCD take the run's
    generator for their noise, TCD also its gamma (diffusers calls it ``eta``); the multistep solvers
    draw nothing.
    """
    if isinstance(scheduler, TCDScheduler):
        return scheduler.step(eps, t, z, eta=gamma, generator=generator).prev_sample
    if isinstance(scheduler, LCMScheduler):
        return scheduler.step(eps, t, z, generator=generator).prev_sample
    if isinstance(scheduler, DPMSolverMultistepScheduler):
        return scheduler.step(eps, t, z).prev_sample
    return scheduler.step(eps, t, z).prev_sample


def fuse_history(scheduler: Scheduler, fuse: Callable[[torch.Tensor], torch.Tensor], rows: int) -> None:
    """Apply the fusion ``fuse`` ((rows, C, h, w) -> (1, C, h, w)) to every per-row history tensor.

    A multistep solver's next update combines the latent with its earlier model outputs; after the
    branches are fused into one latent, each pixel's past must be the past of the branch that
    supplied the pixel, or the solver would extrapolate the global branch's history under an
    instance's latent.
    """
    for attr in HISTORY_ATTRS:
        value = getattr(scheduler, attr, None)
        if isinstance(value, list):
            setattr(scheduler, attr, [_fused(v, fuse, rows) for v in value])
        elif isinstance(value, torch.Tensor):
            setattr(scheduler, attr, _fused(value, fuse, rows))


def _fused(value: Any, fuse: Callable[[torch.Tensor], torch.Tensor], rows: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[0] == rows:
        return fuse(value)
    return value
