"""Benchmark: seconds per image and UNet calls per image vs. number of instances.

Default: the tiny random bundle on CPU (what CI can run; it measures the loop's overhead and call
structure, not real model cost). ``--full-size`` builds Stable Diffusion 1.5-size random weights
(UNet 320/640/1280/1280, ControlNet from that UNet, CLIP-L-size text encoder, SD VAE) in memory,
for a GPU in float16/bfloat16 with PyTorch SDPA, and also prints peak GPU memory. Random weights
cost exactly what trained ones cost, so the timings stand for the real bundle.

    python bench/model_step.py                          # tiny, CPU, profile steps, 512x512
    python bench/model_step.py --full-size --device cuda --dtype float16

The paper's figure to compare with: 68.6 s and 18 GB per 512x512 image on an A40.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mtcolor_batch.core.config import load_profile
from mtcolor_batch.core.types import Instance
from mtcolor_batch.model.bundle import Bundle
from mtcolor_batch.model.engine import MTColorEngine, _load_scheduler
from mtcolor_batch.model.sampler import fusion_steps
from mtcolor_batch.stages.plan import make_plan
from mtcolor_batch.testing.tiny_sd15 import sd15_scheduler, write_tiny_bundle, write_tiny_tokenizer

PAPER_S, PAPER_GB = 68.6, 18.0


def full_size_engine(device: str, dtype: str, workdir: Path) -> MTColorEngine:
    """SD 1.5-shaped random engine, built in memory (no multi-GB files written)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from mtcolor_batch.core.device import resolve_device, resolve_dtype
    from mtcolor_batch.model.denoiser import MTColorModules
    from mtcolor_batch.model.engine import _use_sdpa

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    torch.manual_seed(0)
    with torch.device(dev):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
        controlnet = ControlNetModel.from_unet(unet)
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                projection_dim=768,
            )
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        modules = MTColorModules.from_unet(unet, controlnet, text_dim=768)
    write_tiny_tokenizer(workdir / "tokenizer")
    sd15_scheduler().save_pretrained(workdir / "scheduler")
    comps = {
        "tokenizer": CLIPTokenizer.from_pretrained(workdir / "tokenizer"),
        "text_encoder": text,
        "unet": unet,
        "controlnet": controlnet,
        "vae": vae,  # the engine keeps the VAE in float32
        "modules": modules,
    }
    if dt != torch.float32:
        for kind in ("text_encoder", "unet", "controlnet", "modules"):
            comps[kind] = comps[kind].to(dt)
    for kind in ("text_encoder", "unet", "controlnet", "vae", "modules"):
        comps[kind].eval().requires_grad_(False)
    for kind in ("unet", "controlnet", "vae"):
        _use_sdpa(comps[kind])
    bundle = Bundle(workdir, "random-sd15-size", "random", False, {}, {})
    return MTColorEngine(bundle, comps, _load_scheduler(workdir / "scheduler"), dev, dt)


def scene(size: int, n: int) -> tuple[np.ndarray, list[Instance]]:
    yy, xx = np.mgrid[0:size, 0:size]
    luma = (0.15 + 0.7 * (xx + yy) / (2 * size)).astype(np.float32)
    insts = []
    cells = [(0, 0), (1, 0), (0, 1), (1, 1)]
    for i in range(n):
        cx, cy = cells[i % 4]
        x0, y0 = cx * size // 2 + size // 16, cy * size // 2 + size // 16
        x1, y1 = x0 + size // 3, y0 + size // 3
        m = np.zeros((size, size), dtype=bool)
        m[y0:y1, x0:x1] = True
        insts.append(Instance(i + 1, f"object {i}", f"a red object number {i}", m, (x0, y0, x1, y1)))
    return luma, insts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full-size", action="store_true", help="SD 1.5-size random weights (use a GPU)")
    ap.add_argument("--bundle", type=Path, help="bundle folder (default: a fresh tiny bundle)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--profile", default="default", help="profile whose sampling values are used")
    ap.add_argument("--steps", type=int, help="override the profile's steps")
    ap.add_argument("--size", type=int, default=512, help="square image side (default 512)")
    ap.add_argument("--instances", default="0,1,2,4")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per setting (after one warm-up run)")
    args = ap.parse_args()

    profile = load_profile(args.profile, {"sampling.steps": args.steps})
    sampling = profile.sampling.model_copy(update={"working_long_side": max(args.size, 8)})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.full_size:
            engine = full_size_engine(args.device, args.dtype, Path(tmp))
        else:
            bundle = args.bundle or write_tiny_bundle(Path(tmp) / "tiny")
            engine = MTColorEngine.load(bundle, device=args.device, dtype=args.dtype)
        build_s = time.perf_counter() - t0
        cuda = engine.device.type == "cuda"
        print(
            f"model: {engine.info['bundle']} ({'SD1.5-size random' if args.full_size else 'tiny'}), "
            f"device {engine.info['device']}, dtype {engine.info['dtype']}, built/loaded in {build_s:.1f} s"
        )
        print(
            f"image {args.size}x{args.size}, steps {sampling.steps}, guidance {sampling.guidance_scale}, "
            f"alpha {sampling.alpha} (K={fusion_steps(sampling.alpha, sampling.steps)}), "
            f"max_batch {sampling.max_batch}"
        )
        rows = []
        counts = [int(v) for v in args.instances.split(",")]
        plan = make_plan((args.size, args.size), sampling, seed=0, prompt="an old photograph")
        engine.colorize(*scene(args.size, max(counts)), plan)  # warm-up: kernels, allocator, batch shapes
        for n in counts:
            luma, insts = scene(args.size, n)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times, cpu, calls = [], [], []
            for _ in range(args.repeats):
                c0 = engine.unet_calls
                t, p = time.perf_counter(), time.process_time()
                engine.colorize(luma, insts, plan)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - p)
                calls.append(engine.unet_calls - c0)
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            rows.append((n, float(np.median(times)), float(np.median(cpu)), calls[0], peak))
    base_s, base_cpu, base_calls = rows[0][1], rows[0][2], rows[0][3]
    # CPU seconds (process time) beside wall seconds: on a shared machine wall time mostly measures the
    # neighbours, CPU time still measures this process.
    head = f"{'instances':>9} {'s/image':>9} {'x time':>7} {'cpu s':>8} {'x cpu':>6}"
    print(f"\n{head} {'UNet calls':>10} {'x calls':>8} {'peak GiB':>9}")
    for n, s, c_s, c, peak in rows:
        print(
            f"{n:>9} {s:>9.3f} {s / base_s:>7.2f} {c_s:>8.2f} {c_s / base_cpu:>6.2f} "
            f"{c:>10d} {c / base_calls:>8.2f} {peak:>9.2f}"
        )
    if args.full_size and cuda:
        n, s, _cs, _c, peak = rows[-1]
        print(
            f"\npaper (A40, 512x512): {PAPER_S} s, {PAPER_GB} GB per image | here with {n} instances: "
            f"{s:.1f} s ({s / PAPER_S:.2f}x), {peak:.1f} GiB ({peak / PAPER_GB:.2f}x)"
        )


if __name__ == "__main__":
    main()
