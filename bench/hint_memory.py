"""Peak memory of sidecar hints: instances as box + crop (this checkout) against another checkout.

Resolving a sidecar used to give every hint an image-sized bool mask (8,000 boxes on a 600x450 scan
peaked at 6.7 GB; 256 boxes on a 100 MP scan would hold 25 GB of masks). Each case runs the real
chain ``stages.instances.read_sidecar`` + ``find_instances`` (no perception) in a fresh subprocess
whose ``PYTHONPATH`` selects the code, under an address-space cap so a blow-up ends as a
MemoryError instead of taking the machine. The scan's luminance is a broadcast constant: the scan
itself costs nothing, only the hints do. Box sides are 1-5 % of the scan's sides, so the sum of the
box areas (printed: the floor any representation pays) grows with the canvas too.

    python bench/hint_memory.py                                   # this checkout only
    git archive <old-commit> | tar -x -C /tmp/before              # the code to compare against
    python bench/hint_memory.py --before /tmp/before --e2e        # side by side, + `mtcolor-batch run`

``--e2e`` also runs the real CLI (tiny bundle, ``mtcolor-batch models tiny``) under ``/usr/bin/time
-v`` and prints the maximum resident set size: 1, 64 and 256 boxes on a 600x450 scan (working size
600) and on a 1600x1200 scan at ``--working-size 1024``. Sampling keeps each hint as box + crop too,
so these should grow with the hint count by latent-sized planes only (``--e2e-only`` skips the
resolve cases).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent
CASES = [(256, 450, 600), (8000, 450, 600), (256, 10000, 10000), (8000, 10000, 10000)]
MB = 1024 * 1024


def boxes_for(n: int, h: int, w: int, seed: int = 0) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        bw = max(2, int(w * rng.uniform(0.01, 0.05)))
        bh = max(2, int(h * rng.uniform(0.01, 0.05)))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        out.append((x0, y0, x0 + bw, y0 + bh))
    return out


def write_sidecar(path: Path, boxes: list[tuple[int, int, int, int]]) -> None:
    lines = ["version: 1", "instances:"]
    colors = ["red", "navy", "dark green", "brown"]
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        lines.append(f"  - box: [{x0}, {y0}, {x1}, {y1}]\n    color: {colors[k % len(colors)]}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def child(n: int, h: int, w: int) -> None:
    """One case in this process (the parent set PYTHONPATH and the memory cap); one JSON line out."""
    import tracemalloc

    from mtcolor_batch.core.config import load_profile
    from mtcolor_batch.core.types import Scan
    from mtcolor_batch.stages.instances import find_instances, read_sidecar

    profile = load_profile(None, {"hints.max_sidecar_instances": n, "hints.max_sidecar_bytes": 64 * n + 4096})
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_sidecar(root / "scan.png.yaml", boxes_for(n, h, w))
        luma = np.broadcast_to(np.float32(0.5), (h, w))
        scan = Scan(root / "scan.png", "scan.png", luma, "PNG", "L", 8, "0" * 64)
        tracemalloc.start()
        start = time.perf_counter()
        result: dict[str, object]
        try:
            sidecar = read_sidecar(scan, profile.hints)
            found = find_instances(scan, sidecar, None, profile, root)
            result = {
                "instances": len(found.instances),
                "mask_mb": sum(i.mask.nbytes for i in found.instances) / MB,
            }
        except MemoryError:
            result = {"error": "MemoryError"}
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result["seconds"] = round(time.perf_counter() - start, 2)
        result["traced_peak_mb"] = round(peak / MB, 1)
        result["rss_peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result["rss_base_mb"] = round(base_rss, 1)
    print(json.dumps(result))


def run_case(code: Path, n: int, h: int, w: int, cap_gb: float, timeout: int) -> dict[str, object]:
    def limit() -> None:
        cap = int(cap_gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), str(h), str(w)]
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=limit, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": "MemoryError" if "MemoryError" in proc.stderr else tail[:80]}
    return json.loads(lines[-1])


E2E_CASES = [(n, (450, 600), 600) for n in (1, 64, 256)] + [(n, (1200, 1600), 1024) for n in (1, 64, 256)]
"""(boxes, scan (h, w), --working-size) of the ``mtcolor-batch run`` cases."""


def e2e(
    code: Path, workdir: Path, profile: str, n: int, scan: tuple[int, int], working: int
) -> dict[str, object]:
    """``mtcolor-batch run`` on one scan with an ``n``-box sidecar; max RSS from /usr/bin/time -v.

    ``--alpha 0.5`` with 2 steps gives one multi-instance step, so every hint also gets its branch
    (the default alpha rounds to no branch step at 2 steps).
    """
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    bundle = workdir / "tiny"
    if not bundle.exists():
        subprocess.run(
            ["mtcolor-batch", "models", "tiny", str(bundle)], env=env, check=True, capture_output=True
        )
    h, w = scan
    scans = workdir / f"scans-{n}-{w}x{h}"
    if not scans.exists():
        scans.mkdir()
        from PIL import Image

        yy, xx = np.mgrid[0:h, 0:w]
        Image.fromarray(((0.2 + 0.6 * xx / w) * 255).astype(np.uint8)).save(scans / "street.png")
        write_sidecar(scans / "street.png.yaml", boxes_for(n, h, w))
    out = workdir / f"out-{abs(hash(str(code)))}-{n}-{w}"
    cmd = [
        "/usr/bin/time",
        "-v",
        "mtcolor-batch",
        "run",
        str(scans),
        "--out",
        str(out),
        "--model",
        str(bundle),
    ]
    cmd += ["--steps", "2", "--alpha", "0.5", "--working-size", str(working), "--force", "--profile", profile]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr)
    return {
        "exit": proc.returncode,
        "max_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
        "wall": wall.group(1) if wall else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--before", type=Path, help="checkout (or `git archive` export) of the code to compare"
    )
    parser.add_argument("--cap-gb", type=float, default=6.0, help="address-space cap per case (GB)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per case")
    parser.add_argument(
        "--e2e", action="store_true", help="also measure `mtcolor-batch run` (1/64/256 boxes, two sizes)"
    )
    parser.add_argument("--e2e-only", action="store_true", help="only the `mtcolor-batch run` figures")
    parser.add_argument("--profile", default="default", help="profile for --e2e (archival: strict hints)")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    codes = [("after", HERE)] + ([("before", args.before.resolve())] if args.before else [])
    print(f"resolve + finalize a sidecar (cap {args.cap_gb:g} GB address space per case)")
    print(
        f"{'case':>24} {'boxes MB':>9} | {'code':>6} {'traced peak MB':>15} {'RSS peak MB':>12} "
        f"{'(base)':>8} {'s':>6}  note"
    )
    for n, h, w in [] if args.e2e_only else CASES:
        box_mb = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes_for(n, h, w)) / MB
        for name, code in codes:
            r = run_case(code, n, h, w, args.cap_gb, args.timeout)
            note = r.get("error") or f"{r['instances']} instances, masks {float(r['mask_mb']):.1f} MB"  # type: ignore[arg-type]
            traced, rss, base = (r.get(k, "-") for k in ("traced_peak_mb", "rss_peak_mb", "rss_base_mb"))
            print(
                f"{f'{n} boxes on {w}x{h}':>24} {box_mb:9.1f} | {name:>6} {traced:>15} {rss:>12} {base:>8} "
                f"{r.get('seconds', '-'):>6}  {note}",
                flush=True,
            )
    if args.e2e or args.e2e_only:
        with tempfile.TemporaryDirectory() as tmp:
            print(
                f"mtcolor-batch run --profile {args.profile}, tiny bundle, one scan with an N-box sidecar, "
                "--steps 2 --alpha 0.5 (/usr/bin/time -v, max RSS)"
            )
            print(f"{'case':>40} | " + " | ".join(f"{name:>6} RSS MB   wall" for name, _ in codes))
            for n, (h, w), working in E2E_CASES:
                cells = []
                for _, code in codes:
                    r = e2e(code, Path(tmp), args.profile, n, (h, w), working)
                    bad = "" if r["exit"] == 0 else f" exit {r['exit']}"
                    cells.append(f"{r['max_rss_mb']!s:>13} {r['wall']!s:>6}{bad}")
                case = f"{n} boxes, {w}x{h} scan, working {working}"
                print(f"{case:>40} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
