"""End-to-end timing of ``mtcolor-batch run`` on a 1.2 MP, a 24 MP 16-bit and a ~100 MP scan.

Writes (once, into ``--workdir``) a random bundle with trained-like MT-Color modules
(``bench/full_size.py``: SD 1.5-, SAM ViT-B- and OWLv2-base-shaped; ``--small``: the tiny bundle) and
three synthetic scans, then runs the real CLI in this process once per scan (so torch's peak memory
is per scan), sampling ``nvidia-smi`` alongside. Prints s/image (the record's stage timings: model
loading excluded), wall seconds including loading, torch and nvidia-smi peak memory.

    python bench/e2e_run.py --workdir /tmp/e2e --device cuda
    python bench/e2e_run.py --workdir /tmp/e2e --small --device cpu --steps 4   # CPU smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size import write_bench_bundle  # noqa: E402

# (name, width, height, bits): the three sizes, and the --small stand-ins.
SCANS = [("scan_1mp", 1280, 960, 8), ("scan_24mp_16bit", 6000, 4000, 16), ("scan_100mp", 12000, 8400, 8)]
SMALL_SCANS = [("scan_03mp", 640, 480, 8), ("scan_2mp_16bit", 1732, 1155, 16), ("scan_6mp", 3000, 2000, 8)]


def write_scan(path: Path, width: int, height: int, bits: int) -> None:
    """A gray gradient with a few flat shapes (something for perception to find), PNG or TIFF."""
    yy, xx = np.ogrid[0:height, 0:width]
    img = 0.2 + 0.5 * (xx / width) + 0.2 * (yy / height)
    img = np.broadcast_to(img, (height, width)).copy()
    rng = np.random.default_rng(width)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        img[y0 : y0 + height // 5, x0 : x0 + width // 6] = rng.uniform(0.05, 0.95)
    img = np.clip(img, 0, 1)
    if path.suffix == ".tif":
        import tifffile

        data = (img * 65535).astype(np.uint16) if bits == 16 else (img * 255).astype(np.uint8)
        tifffile.imwrite(path, data, photometric="minisblack", compression="zlib", metadata=None)
    else:
        Image.fromarray((img * 255).astype(np.uint8), mode="L").save(path)


class SmiSampler:
    """Max of ``nvidia-smi``'s used memory (MiB), sampled every 0.2 s in a thread."""

    def __init__(self) -> None:
        self.peak = float("nan")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return
        index = str(torch.cuda.current_device()) if torch.cuda.is_available() else "0"
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    [exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", index],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                ).stdout.strip()
                value = float(out.splitlines()[0])
                self.peak = value if np.isnan(self.peak) else max(self.peak, value)
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            self._stop.wait(0.2)

    def __enter__(self) -> SmiSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _bundle_usable(bundle: Path) -> bool:
    """A bundle written by an earlier run is reused only if this version can load its modules."""
    from mtcolor_batch.core.errors import ModelError
    from mtcolor_batch.model.denoiser import MTColorModules
    from mtcolor_batch.model.registry import MANIFEST_FILE, MODULES_FILE

    if not (bundle / MANIFEST_FILE).is_file():
        return False
    try:
        MTColorModules.load(bundle / MODULES_FILE)
    except ModelError:
        return False
    return True


def run_cli(args: list[str]) -> int:
    """``mtcolor-batch <args>`` in this process; returns its exit code."""
    from mtcolor_batch.cli import app

    try:
        result = app(args, standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return int(result or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--small", action="store_true", help="tiny bundle and 0.3/2/6 MP scans (CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, help="override the profile's steps")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--extra", default="", help="more `run` options, space-separated (e.g. --compile)")
    args = ap.parse_args()

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    bundle = work / ("bundle-small" if args.small else "bundle-full")
    t = time.perf_counter()
    if not _bundle_usable(bundle):
        shutil.rmtree(bundle, ignore_errors=True)
        write_bench_bundle(bundle, small=args.small)
        print(f"bundle written in {time.perf_counter() - t:.0f} s: {bundle}", flush=True)
    rows = []
    for name, width, height, bits in SMALL_SCANS if args.small else SCANS:
        folder = work / "scans" / name
        folder.mkdir(parents=True, exist_ok=True)
        scan = folder / (f"{name}.tif" if bits == 16 or width * height > 50e6 else f"{name}.png")
        if not scan.is_file():
            write_scan(scan, width, height, bits)
        out = work / "out" / name
        shutil.rmtree(out, ignore_errors=True)
        cli = [
            "run",
            str(scan),
            "--out",
            str(out),
            "--model",
            str(bundle),
            "--device",
            args.device,
            "--seed",
            "0",
            "--profile",
            args.profile,
            "--force",
        ]
        if args.steps:
            cli += ["--steps", str(args.steps)]
        cli += args.extra.split()
        cuda = torch.cuda.is_available() and args.device != "cpu"
        gc.collect()  # the previous run's engine
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        with SmiSampler() as smi:
            code = run_cli(cli)
        wall = time.perf_counter() - t
        records = list(out.rglob("*.color.json"))
        record = json.loads(records[0].read_text()) if records else {}
        timings = record.get("timings", {})
        per_image = sum(float(v) for v in timings.values() if isinstance(v, int | float))
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        n_inst = len(record.get("instances", []) or [])
        rows.append(
            (name, width * height / 1e6, bits, code, per_image, wall, peak, smi.peak, n_inst, timings)
        )
    print(
        f"\n{'scan':<18} {'MP':>6} {'bits':>4} {'exit':>4} {'s/image':>8} {'wall s':>7} {'torch GiB':>9} "
        f"{'smi MiB':>8} {'inst':>4}  stages (s)"
    )
    for name, mp, bits, code, per_image, wall, peak, smi_peak, n_inst, timings in rows:
        stages = " ".join(f"{k}={float(v):.1f}" for k, v in timings.items() if isinstance(v, int | float))
        print(
            f"{name:<18} {mp:>6.1f} {bits:>4} {code:>4} {per_image:>8.2f} {wall:>7.1f} {peak:>9.2f} "
            f"{smi_peak:>8.0f} {n_inst:>4}  {stages}"
        )
    if any(r[3] != 0 for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
