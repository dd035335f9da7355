"""Make zero-initialised modules behave like trained ones, for benchmarks and tests.

MT-Color's modules start at zero (PMAM's out_proj, the instance branches' tanh gates) and the
denoiser skips parts whose output is provably zero, so a fresh bundle never runs them: timing it
says nothing about a trained one, and a test on it cannot tell two attention implementations apart.
"""

from __future__ import annotations

import torch
from torch import nn

TRAINED_LIKE_STD = 0.02


@torch.no_grad()
def trained_like(module: nn.Module, *, std: float = TRAINED_LIKE_STD, seed: int = 0) -> int:
    """Re-draw, in place, every all-zero floating-point parameter from N(0, std); return how many.

    Zero-initialised parts (PMAM out_proj, tanh gates, ControlNet zero convs, LayerNorm biases) are
    exactly the ones a skip-zero optimisation can skip; after this call nothing is provably zero.
    """
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for param in module.parameters():
        if param.is_floating_point() and not bool(param.any()):
            fresh = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
            param.copy_(fresh.to(param.dtype))
            count += 1
    return count
