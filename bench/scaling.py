"""How colorization cost grows with scan size: the sampler stays flat, only compose grows.

For each scan size (default 1, 4, 16, 64 MP, 4:3) a smooth synthetic 16-bit-like scan is made and
timed through the full-resolution stages:

- ``resize``: ``render.chroma.resize_luma`` (area downsampling to the working size),
- ``compose``: ``render.chroma.compose`` (guided upsampling + luminance lock, float32 output),
- ``sample`` (unless ``--no-engine``): ``MTColorEngine.colorize`` with the tiny random bundle at the
  plan's working size (the profile's tile grid, ``--steps`` steps), with its UNet call count.

Peak memory is reported two ways: ``tracemalloc`` peak of each stage (numpy and torch-CPU buffers
allocated by Python; includes the stage's output array) and the process's max RSS so far.

    python bench/scaling.py                    # 1, 4, 16, 64 MP
    python bench/scaling.py --sizes 1 4 --steps 2 --json out.json
    python bench/scaling.py --no-engine --check     # compose alone, plus the L error of each output
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mtcolor_batch.core.config import SamplingSettings
from mtcolor_batch.render.chroma import compose, lightness_error, resize_luma
from mtcolor_batch.stages.plan import make_plan


def synthetic_scan(megapixels: float, seed: int = 0) -> np.ndarray:
    """A smooth 4:3 gray scene with fine grain, float32 on 16-bit code values."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(megapixels * 1e6 / width))
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width, dtype=np.float32)
    y = np.linspace(0, 1, height, dtype=np.float32)
    luma = 0.25 + 0.5 * np.outer(0.5 + 0.5 * np.sin(6 * y), 0.4 + 0.6 * x).astype(np.float32)
    luma += rng.normal(0, 0.01, size=(height, width)).astype(np.float32)
    np.clip(luma, 0, 1, out=luma)
    return np.round(luma * 65535, out=luma) / 65535


def _measure(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """(result, wall seconds, CPU seconds of this process (all threads), tracemalloc peak in MB).

    CPU seconds are reported too because wall time on a shared machine mostly measures the
    neighbours; on an idle machine wall ~= CPU / threads used.
    """
    tracemalloc.start()
    tracemalloc.reset_peak()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return out, seconds, cpu, peak


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run(sizes: list[float], steps: int, engine_on: bool, check: bool) -> list[dict[str, Any]]:
    settings = SamplingSettings(steps=steps)
    engine = None
    if engine_on:
        from mtcolor_batch.model.engine import MTColorEngine
        from mtcolor_batch.testing.tiny_sd15 import write_tiny_bundle

        tmp = Path(tempfile.mkdtemp(prefix="mtcolor-bench-"))
        engine = MTColorEngine.load(write_tiny_bundle(tmp / "tiny", perception=False), device="cpu")
    rows = []
    for mp in sizes:
        luma = synthetic_scan(mp)
        plan = make_plan(luma.shape, settings, seed=0, prompt="a colour photograph")
        small, t_resize, _, m_resize = _measure(
            lambda luma=luma, plan=plan: resize_luma(luma, plan.working_size)
        )
        row: dict[str, Any] = {
            "megapixels": round(luma.size / 1e6, 2),
            "scan": list(luma.shape),
            "working": list(plan.working_size),
            "tiles": len(plan.tiles),
            "resize_s": t_resize,
            "resize_peak_mb": m_resize,
        }
        if engine is not None:
            before = engine.unet_calls
            ab, t_sample, c_sample, m_sample = _measure(
                lambda small=small, plan=plan: engine.colorize(small, [], plan)
            )
            row.update(
                sample_s=t_sample,
                sample_cpu_s=c_sample,
                sample_peak_mb=m_sample,
                unet_calls=engine.unet_calls - before,
            )
        else:
            h, w = plan.working_size
            yy, xx = np.mgrid[0:h, 0:w]
            ab = np.stack([40 * np.sin(xx / 37.0), 30 * np.cos(yy / 53.0)]).astype(np.float32)
        rgb, t_compose, c_compose, m_compose = _measure(lambda luma=luma, ab=ab: compose(luma, ab))
        row.update(
            compose_s=t_compose,
            compose_cpu_s=c_compose,
            compose_peak_mb=m_compose,
            compose_output_mb=rgb.nbytes / 1e6,
            compose_s_per_mp=t_compose / (luma.size / 1e6),
        )
        if "sample_s" in row:
            row["sample_over_compose"] = row["sample_s"] / t_compose
            row["sample_over_compose_cpu"] = row["sample_cpu_s"] / c_compose
        if check:
            row["max_levels_16bit"] = lightness_error(rgb, luma, 16).max_levels
        row["max_rss_mb"] = _max_rss_mb()
        rows.append(row)
        del rgb, luma
        _print_row(row)
    return rows


def _print_row(row: dict[str, Any]) -> None:
    parts = [
        f"{row['megapixels']:7.2f} MP  work {row['working'][0]}x{row['working'][1]} tiles {row['tiles']}",
        f"resize {row['resize_s']:6.2f}s",
        f"compose {row['compose_s']:7.2f}s cpu {row['compose_cpu_s']:7.2f}s "
        f"({row['compose_s_per_mp']:.3f} s/MP, "
        f"peak {row['compose_peak_mb']:.0f} MB incl. {row['compose_output_mb']:.0f} MB output)",
    ]
    if "sample_s" in row:
        parts.append(
            f"sample {row['sample_s']:6.2f}s cpu {row['sample_cpu_s']:6.2f}s "
            f"({row['unet_calls']} UNet calls) "
            f"sample/compose {row['sample_over_compose']:.2f} (cpu {row['sample_over_compose_cpu']:.2f})"
        )
    if "max_levels_16bit" in row:
        parts.append(f"L err {row['max_levels_16bit']:.3f} lv@16b")
    parts.append(f"maxRSS {row['max_rss_mb']:.0f} MB")
    print(" | ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 16, 64], help="megapixels")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps for the tiny bundle")
    parser.add_argument("--no-engine", action="store_true", help="time compose alone (synthetic chroma)")
    parser.add_argument("--check", action="store_true", help="also measure the L error of each output")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--torch-threads", type=int, help="torch.set_num_threads for the sampler (1 on an oversubscribed box)"
    )
    args = parser.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    rows = run(args.sizes, args.steps, not args.no_engine, args.check)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
