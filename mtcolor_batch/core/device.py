"""Choosing the compute device and dtype once, the same way everywhere.

The engine, perception and the benchmarks all need the same answer to "auto", and provenance must
record what really ran, so the choice and its description live in one place.
"""

from __future__ import annotations

import torch

from mtcolor_batch.core.errors import ModelError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or nothing) -> CUDA when present, else CPU; an explicit device that is absent is an error.

    MPS is only used when asked for: several diffusers ops still fall back or differ there, and a
    silent switch would change outputs between runs of the same job.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ModelError(f"unknown device '{device}'", hint="use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was requested but CUDA is not available", hint="use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError("device 'mps' was requested but MPS is not available", hint="use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on CUDA (half the memory, tensor cores), float32 elsewhere.

    CPU half precision is slow and partly unsupported, so float16 on CPU is refused rather than
    silently run at a crawl.
    """
    if isinstance(dtype, torch.dtype):
        chosen = dtype
    else:
        name = str(dtype).strip().lower()
        if name == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        if name not in _DTYPES:
            raise ModelError(f"unknown dtype '{dtype}'", hint="use auto, float32, float16 or bfloat16")
        chosen = _DTYPES[name]
    if device.type == "cpu" and chosen == torch.float16:
        raise ModelError("float16 is not supported on CPU", hint="use --dtype float32 (or bfloat16)")
    return chosen


def describe_device(device: torch.device) -> str:
    """Human-readable device name for provenance (GPU model included: outputs are per device)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type


def flush_cpu_denormals() -> None:
    """Flush denormal floats to zero in CPU math, for this process from now on.

    Why: x86 CPUs compute with denormals (|x| < 1.2e-38) in microcode, many times slower. On SD
    1.5-size random weights SAM's image encoder underflowed into them: its embedding and 4 box
    prompts of the bench scan took 127 s instead of 8 s on 2 threads (bench/scan_cost.py). The
    diffusion models were not slowed, and the golden outputs are the same with it on. Flushing
    changes a value by less than 1.2e-38.

    The flag is per thread, and torch's CPU worker threads copy it from the thread that creates them
    when they are created (at the first parallel op), so this is called before any model loads:
    ``Pipeline.load`` and ``load_perception`` call it first thing. A process whose worker threads
    exist already gets it on the calling thread only. No effect on CUDA math.
    """
    torch.set_flush_denormal(True)
