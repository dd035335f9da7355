"""Multi-instance fusion (paper Sec. 3.4, Eq. 10) and the step-count rules around it.

Why on its own: the fusion is the paper's arithmetic, checked against the equation directly
(tests/test_sampler.py), without a sampler, scheduler or model.
"""

from __future__ import annotations

import math

import torch

__all__ = ["FUSION_MODES", "fuse_latents", "fusion_steps", "steps_fraction"]

FUSION_MODES = ("paper", "paste", "blend")

def steps_fraction(fraction: float, steps: int) -> int:
    """round(fraction*steps) within [0, steps], rounding halves up (Python's round() would send 0.5
    to 0): the one rounding rule for a share of the denoising steps."""
    return min(steps, max(0, int(math.floor(fraction * steps + 0.5))))


def fusion_steps(alpha: float, steps: int) -> int:
    """K = round(alpha*T): the steps sampled per instance before the fusion."""
    return steps_fraction(alpha, steps)


def fuse_latents(
    z_global: torch.Tensor, z_inst: torch.Tensor, masks: torch.Tensor, beta: float, mode: str = "paste"
) -> torch.Tensor:
    """Multi-instance fusion after step K (paper Sec. 3.4, Eq. 10), one of ``FUSION_MODES``.

    ``z_global`` (1, C, h, w), ``z_inst`` (N, C, h, w), ``masks`` (N, h, w) exclusive {0,1} at latent
    resolution, ``m_g = NOT(OR m_i)`` the background:

    * ``paper``: Eq. 10 as printed, ``z = beta*m_g*z_g + sum_i m_i*z_i``: background latents are
      scaled by beta (what the paper's beta sweep varies);
    * ``paste``: ``z = m_g*z_g + sum_i m_i*z_i``: each instance's latent pasted onto the global one,
      the paper's stated intent ("isolating instances") without shrinking the background;
    * ``blend``: ``z = (beta*z_g + sum_i m_i*z_i) / (beta + sum_i m_i)``: instance pixels mix the
      global and instance branches; background keeps ``z_g`` (also at beta = 0, where it is 0/0).
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; use one of {', '.join(FUSION_MODES)}")
    if z_inst.shape[0] == 0:
        return z_global if mode != "paper" else beta * z_global
    m = masks.to(z_global.dtype)[:, None]  # (N, 1, h, w)
    pasted = (m * z_inst).sum(0, keepdim=True)
    covered = m.sum(0, keepdim=True)
    m_g = 1.0 - covered.clamp(max=1.0)
    if mode == "paper":
        return beta * m_g * z_global + pasted
    if mode == "paste":
        return m_g * z_global + pasted
    num = beta * z_global + pasted
    return torch.where(covered > 0, num / (beta + covered).clamp_min(1e-12), z_global)
