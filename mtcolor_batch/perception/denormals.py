"""Perception's CPU forwards run with denormal floats flushed to zero.

Measured on SD 1.5-size random weights (bench/scan_cost.py): SAM ViT-B's image encoder at 1024 px
took 354 s on one CPU thread with denormals and 22 s flushed, the same masks; OWLv2 and the
diffusion models were not slowed. x86 CPUs handle denormals (|x| < 1.2e-38) in microcode, so a layer
whose activations underflow runs many times slower, and flushing them changes a value by less than
1.2e-38. Whether real SAM weights underflow as the random ones do is not known here, so the guard is
on for every perception forward, on CPU only (torch's flag has no effect on CUDA).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormals for the block, then restore torch's default (off).

    torch has no getter for the flag; nothing in this package sets it elsewhere, so "restore" is "off".
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
