"""Files per second: the local runner vs ``--executor ray`` with N workers, on the same tree.

Both go through ``jobs.runner.run_batch`` (same planning, journal and per-file pipeline); only the
executor differs. Two rates per run:

- ``end-to-end``: files / wall time of the whole run (model loading and, for Ray, starting the
  actors included) - what a user waits for on a small batch;
- ``steady``: files / time between the first and the last file finished (from the journal's
  ``updated_at``), i.e. the throughput a large archive sees once the workers are up.

The local runner is timed with the default torch thread count and with one thread (Ray gives each
1-CPU worker one thread, and on a busy machine extra threads can cost more than they give); the
ratio is Ray over the faster local run. With the tiny random bundle (default) per-file work is tiny,
so fixed costs dominate end-to-end figures; pass ``--model DIR`` for a real bundle.

    python bench/ray_vs_local.py                      # 30 tiny files, 2 workers, tiny bundle
    python bench/ray_vs_local.py --files 60 --workers 2 --size 128 --steps 2
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from mtcolor_batch.core.config import load_profile
from mtcolor_batch.jobs.journal import journal_path
from mtcolor_batch.jobs.runner import RunRequest, run_batch


def make_tree(root: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        rel = root / f"box{i % 4}" / f"scan{i:04d}{('.png', '.jpg', '.tif')[i % 3]}"
        rel.parent.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:size, 0:size]
        img = 110 + 70 * np.sin(xx / (3 + i % 7)) * np.cos(yy / 9) + rng.normal(0, 6, (size, size))
        Image.fromarray(img.clip(0, 255).astype(np.uint8), "L").save(rel)


def rates(out: Path, files: int, wall: float) -> tuple[float, float]:
    db = sqlite3.connect(journal_path(out, None))
    stamps = sorted(t for (t,) in db.execute("SELECT updated_at FROM files WHERE state = 'done'"))
    db.close()
    if len(stamps) != files:
        raise SystemExit(f"only {len(stamps)} of {files} files done in {out}")
    span = stamps[-1] - stamps[0]
    return files / wall, (files - 1) / span if span > 0 else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=96, help="scan side (px)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--working-size", type=int, default=32)
    ap.add_argument("--model", type=Path, default=None, help="bundle dir (default: a tiny random one)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # this bench's Ray on loopback only
    import ray
    import torch

    from mtcolor_batch.jobs.executors.ray import RayExecutor

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mtcolor-ray-bench-"))
    bundle = args.model
    if bundle is None:
        from mtcolor_batch.testing.tiny_sd15 import write_tiny_bundle

        bundle = write_tiny_bundle(work / "tiny-bundle")
    scans = work / "scans"
    make_tree(scans, args.files, args.size)
    profile = load_profile(
        None,
        {
            "device": "cpu",
            "sampling.steps": args.steps,
            "sampling.working_long_side": args.working_size,
            "sampling.tile_size": max(64, args.working_size),
            "sampling.tile_overlap": 0,
            "perception.size": 64,
        },
    )
    quiet = Console(stderr=True, quiet=True)
    results: dict[str, tuple[float, float]] = {}
    default_threads = torch.get_num_threads()
    for label, threads in ((f"local ({default_threads} threads)", default_threads), ("local (1 thread)", 1)):
        torch.set_num_threads(threads)
        out = work / f"out-local-{threads}"
        t0 = time.perf_counter()
        code = run_batch(RunRequest(scans, profile, out=out, model=str(bundle)), quiet)
        results[label] = rates(out, args.files, time.perf_counter() - t0)
        assert code == 0
    torch.set_num_threads(default_threads)

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, num_gpus=0, include_dashboard=False, logging_level=logging.WARNING)
    ray_init = time.perf_counter() - t0
    out = work / "out-ray"
    t0 = time.perf_counter()
    executor = RayExecutor(workers=args.workers, gpus_per_worker=0)
    code = run_batch(RunRequest(scans, profile, out=out, model=str(bundle)), quiet, executor=executor)
    label = f"ray ({args.workers} workers)"
    results[label] = rates(out, args.files, time.perf_counter() - t0)
    ray.shutdown()
    assert code == 0

    print(
        f"{args.files} files {args.size}x{args.size}, {args.steps} steps, working {args.working_size} px, "
        f"bundle {bundle}; {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}; "
        f"ray.init {ray_init:.1f} s (not in the Ray figures)"
    )
    print(f"{'run':<22}{'end-to-end files/s':>20}{'steady files/s':>17}")
    for name, (e2e, steady) in results.items():
        print(f"{name:<22}{e2e:>20.2f}{steady:>17.2f}")
    best_local = max((v for k, v in results.items() if k.startswith("local")), key=lambda v: v[1])
    ray_e2e, ray_steady = results[label]
    print(
        f"ratio ray/local (best local): end-to-end {ray_e2e / best_local[0]:.2f}x, "
        f"steady {ray_steady / best_local[1]:.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())
