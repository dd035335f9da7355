"""Runner overhead: per-file time of the whole batch runner minus engine time, vs plain Pillow I/O.

What it measures: ``mtcolor-batch run`` on N generated scans (8-bit JPEG, 8-bit PNG, 16-bit TIFF)
with the tiny bundle, auto instances off. From the wall time of the run it subtracts the one-time
model load and every file's engine time (the ``colorize`` stage), and divides by N: that is what
the runner itself costs per file (discovery, hashing, journal commits, robust loading, planning,
luminance-locked compose at full resolution, encoding with metadata, provenance, fsyncs). The
baseline is a plain Pillow read + RGB convert + write of the same files in the same formats.
The goal is a ratio under 1.2x.

Usage: python bench/runner_overhead.py [--files 12] [--size 1536x1024] [--model DIR] [--steps 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from rich.console import Console

from mtcolor_batch.config import load_profile
from mtcolor_batch.jobs.journal import Journal, journal_path
from mtcolor_batch.jobs.runner import RunRequest, run_batch
from mtcolor_batch.pipeline import Pipeline


def make_scans(folder: Path, n: int, w: int, h: int) -> list[Path]:
    """N gray scans with texture (so encoders do real work), cycling JPEG / PNG / 16-bit TIFF."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(n):
        g = np.clip(0.5 + 0.3 * np.sin(x / (17 + i)) * np.cos(y / 23) + rng.normal(0, 0.03, (h, w)), 0, 1)
        kind = i % 3
        if kind == 0:
            p = folder / f"scan{i:03d}.jpg"
            Image.fromarray(np.rint(g * 255).astype(np.uint8), "L").save(p, quality=92)
        elif kind == 1:
            p = folder / f"scan{i:03d}.png"
            Image.fromarray(np.rint(g * 255).astype(np.uint8), "L").save(p)
        else:
            p = folder / f"scan{i:03d}.tif"
            tifffile.imwrite(p, np.rint(g * 65535).astype(np.uint16), photometric="minisblack", metadata=None)
        paths.append(p)
    return paths


def pillow_baseline(paths: list[Path], out: Path) -> float:
    """Seconds per file for open + load + convert to RGB + save in the same format (q95 for JPEG)."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            img.load()
            rgb = img.convert("RGB") if img.mode != "I;16" else img
            kwargs = {"quality": 95} if p.suffix in (".jpg", ".jpeg") else {}
            rgb.save(out / p.name, **kwargs)
    return (time.perf_counter() - start) / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--size", default="1536x1024", help="WxH of the generated scans")
    ap.add_argument("--model", type=Path, default=None, help="bundle dir (default: a fresh tiny bundle)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--working-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="mtcolor-bench-") as tmp:
        base = Path(tmp)
        if args.model is None:
            from mtcolor_batch.model.tiny import write_tiny_bundle

            args.model = write_tiny_bundle(base / "tiny")
        paths = make_scans(base / "scans", args.files, w, h)
        pillow_baseline(paths[:2], base / "warm")  # warm caches and codecs
        base_s = min(pillow_baseline(paths, base / f"pillow{k}") for k in range(3))

        profile = load_profile(
            "default",
            {
                "sampling.steps": args.steps,
                "sampling.working_long_side": args.working_size,
                "perception.auto_instances": False,
                "device": args.device,
            },
        )
        load_s: list[float] = []

        def factory(*a: object) -> Pipeline:
            t = time.perf_counter()
            pipe = Pipeline.load(*a)  # type: ignore[arg-type]
            load_s.append(time.perf_counter() - t)
            return pipe

        out = base / "out"
        console = Console(stderr=True, quiet=True)
        start = time.perf_counter()
        code = run_batch(
            RunRequest(scans=base / "scans", profile=profile, out=out, model=str(args.model)),
            console,
            pipeline_factory=factory,
        )
        wall = time.perf_counter() - start
        assert code == 0, f"run failed with exit code {code}"
        with Journal(journal_path(out, None)) as j:
            rows = j.all()
        engine = sum(r.timings.get("colorize", 0.0) for r in rows)
        runner_s = (wall - load_s[0] - engine) / len(rows)
        outputs = sorted(p for p in out.rglob("*.color.*") if p.suffix != ".json")
        colour_s = min(pillow_baseline(outputs, base / f"colour{k}") for k in range(2))
        stages = {
            k: statistics.mean(r.timings.get(k, 0.0) for r in rows)
            for k in ("load", "hints", "perceive", "plan", "colorize", "adherence", "compose", "write")
        }
    print(
        f"files: {args.files} x {w}x{h} (jpg/png/16-bit tif), steps {args.steps}, working {args.working_size}"
    )
    print(f"model load (once): {load_s[0]:.2f} s; engine per file: {engine / len(rows) * 1000:.1f} ms")
    print("mean stage ms: " + ", ".join(f"{k} {v * 1000:.1f}" for k, v in stages.items()))
    print(f"runner per file (minus engine): {runner_s * 1000:.1f} ms")
    print(f"plain Pillow read+write per file: {base_s * 1000:.1f} ms")
    print(f"ratio: {runner_s / base_s:.2f}x (goal < 1.2x)")
    compose_s = stages["compose"]
    print(
        f"same, without render.chroma.compose ({compose_s * 1000:.0f} ms): "
        f"{(runner_s - compose_s) * 1000:.1f} ms"
        f" -> {(runner_s - compose_s) / base_s:.2f}x"
    )
    print(
        f"Pillow read+write of the colour outputs themselves: {colour_s * 1000:.1f} ms per file"
        f" -> runner without compose is {(runner_s - compose_s) / colour_s:.2f}x that"
    )


if __name__ == "__main__":
    main()
