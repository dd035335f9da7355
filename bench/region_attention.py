"""Benchmark: region-sparse vs dense masked attention at one UNet resolution (seconds per call).

    python bench/region_attention.py                    # S = 64x64 = 4096, 320 channels, CPU
    python bench/region_attention.py --device cuda --dtype float16 --impls dense,sparse,flex

The layout mimics a 512x512 tile with ``--regions`` instances covering ``1 - background`` of it
(square blocks, as real instances are compact); both CFG halves share labels, as in the sampler.
"""

from __future__ import annotations

import argparse
import time

import torch

from mtcolor_batch.model.region_attention import RegionLayout, region_attention


def block_labels(side: int, regions: int, background: float) -> torch.Tensor:
    """(side*side,) labels: ``regions`` square instances filling 1 - background of the grid."""
    lab = torch.zeros(side, side, dtype=torch.long)
    if regions:
        cell = max(1, round(side * ((1 - background) / regions) ** 0.5))
        per_row = max(1, side // cell)
        for r in range(regions):
            y, x = (r // per_row) * cell, (r % per_row) * cell
            lab[y : y + cell, x : x + cell] = r + 1
    return lab.flatten()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=64, help="feature side (64 = SD 1.5's first level at 512 px)")
    ap.add_argument("--channels", type=int, default=320)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--regions", type=int, default=4)
    ap.add_argument("--background", type=float, default=0.75)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--impls", default="dense,sparse")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dev, dt = torch.device(args.device), getattr(torch, args.dtype)
    heads, s = args.channels // args.head_dim, args.side * args.side
    labels = block_labels(args.side, args.regions, args.background).to(dev)[None].expand(args.batch, -1)
    q, k, v = (torch.randn(args.batch, heads, s, args.head_dim, device=dev, dtype=dt) for _ in range(3))
    print(
        f"S={s} ({args.side}x{args.side}), {heads} heads x {args.head_dim}, batch {args.batch}, "
        f"{args.regions} regions, {args.background:.0%} background, {args.device} {args.dtype}"
    )
    base = None
    ref = None
    for impl in args.impls.split(","):
        times = []
        try:
            for i in range(args.repeats + 1):
                layout = RegionLayout.self_attention(labels)  # built per call, as in the denoiser
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out = region_attention(q, k, v, layout, impl=impl)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if i:  # the first call warms up (and compiles, for flex on CUDA)
                    times.append(time.perf_counter() - t)
        except Exception as exc:  # one failing kernel (e.g. flex on an old driver) must not hide the rest
            print(f"{impl:>7}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        best = min(times)
        base = base or best
        ref = out if ref is None else ref
        err = (out.float() - ref.float()).abs().max().item()
        print(
            f"{impl:>7}: {best * 1000:9.1f} ms/call  {base / best:5.2f}x vs {args.impls.split(',')[0]}"
            f"  max |diff| {err:.2e}"
        )


if __name__ == "__main__":
    main()
