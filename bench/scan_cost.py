"""Benchmark: what one whole scan costs per profile, as a multiple of one plain SD+ControlNet image.

Setup (``--full-size``): SD 1.5-size random weights with trained-like MT-Color modules
(``bench/full_size.py``), a random LoRA of LCM-LoRA's shape and rank (rank 64 over SD 1.5's 278
adapted layers, fp16: the published files' layout) added to the bundle as the ``lcm`` accelerator,
and a 3000x2000 gray scan with a sidecar of 4 instances. ``--smoke``: the tiny bundle, a 300x200
scan, the same code (the slow test suite runs it).

Per profile (``default``, ``fast``, ``cpu``, ``paper``) the whole-scan seconds are what the product's
record says each stage took (load, perception, plan, colorize, adherence, compose, write; not the
model load), from a real ``mtcolor-batch run`` of that profile:

* ``measured``: the run itself (``fast`` and ``cpu``: few steps, one 512 px tile);
* ``composed`` (``default``, ``paper``: a whole run at full size takes too long on a CPU): a 1-step
  run of the profile gives every stage but the sampling, and the sampling is composed from measured
  one-step costs (a low-resolution step with and without the instance branches, a step over all the
  tiles, VAE decode/encode) at the profile's counts, as ``bench/model_step.py --one-call`` does.

The unit, measured in the same process: one plain 20-step 512x512 image (DDIM, guidance 7.5, VAE
decode included) through diffusers' ``StableDiffusionControlNetPipeline`` built from the same
components. The last line is the cpu profile's figure against it.

    python bench/scan_cost.py --full-size                  # the table; about 20-30 min on 2 cores
    python bench/scan_cost.py --full-size --profiles cpu   # the cpu row and the unit only
    python bench/scan_cost.py --smoke                      # tiny, a minute
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROFILES = ("default", "fast", "cpu", "paper")
COMPOSED = ("default", "paper")
UNIT_STEPS, UNIT_SIZE = 20, 512
SMOKE = {"sampling.working_long_side": 256, "sampling.tile_size": 192}
"""--smoke: the tiny bundle's runs kept small (still tiled for the default profile); unit at 64 px."""
SMOKE_ARGS = ["--working-size", "256", "--tile-size", "192"]
STAGES = ("load", "perceive", "hints", "plan", "colorize", "adherence", "compose", "write")


@dataclass
class Row:
    profile: str
    how: str  # measured | composed
    seconds: float
    scheduler: str
    steps: int
    guidance: float
    accelerator: str


# ------------------------------------------------------------------------------------- set-up
def write_scan(folder: Path, size: tuple[int, int]) -> Path:
    """A gray scan (h, w) with soft structure and a sidecar naming 4 instances."""
    from PIL import Image

    h, w = size
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w]
    gray = 0.35 + 0.25 * np.sin(xx / (w / 7.0)) * np.cos(yy / (h / 5.0)) + 0.2 * (yy / h)
    path = folder / "scan.png"
    Image.fromarray(np.clip(gray * 255, 0, 255).astype(np.uint8), mode="L").save(path)
    boxes = [
        (0.05, 0.1, 0.35, 0.6),
        (0.4, 0.15, 0.6, 0.9),
        (0.65, 0.05, 0.95, 0.45),
        (0.62, 0.55, 0.97, 0.95),
    ]
    texts = ["a red tram", "a woman in a blue coat", "the grey sky", "a green door"]
    lines = ["version: 1", 'prompt: "a street photograph"', "instances:"]
    for (x0, y0, x1, y1), text in zip(boxes, texts, strict=True):
        box = [round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)]
        lines += [f"  - box: {box}", f'    text: "{text}"']
    (folder / "scan.png.yaml").write_text("\n".join(lines) + "\n")
    return path


def make_bundle(workdir: Path, full: bool, path: Path | None = None) -> Path:
    """The bench bundle (``path``, else one written in ``workdir`` and kept there) with a random
    ``lcm`` accelerator of LCM-LoRA's layout added if it has none."""
    from diffusers import UNet2DConditionModel
    from full_size import write_bench_bundle

    from mtcolor_batch.model.accelerators import KNOWN, add_accelerator, bundle_accelerators
    from mtcolor_batch.model.bundle import read_manifest
    from mtcolor_batch.testing.tiny_lora import LCM_LORA_RANK, random_kohya_lora, write_kohya_lora

    path = path or workdir / ("bundle-sd15-size" if full else "bundle-small")
    if not (path / "mtcolor.json").is_file():
        t0 = time.perf_counter()
        write_bench_bundle(path, small=not full)
        print(f"wrote bench bundle {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    if "lcm" not in bundle_accelerators(read_manifest(path)):
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(path / "unet"))
        rank, dtype = (LCM_LORA_RANK, torch.float16) if full else (4, torch.float32)
        state = random_kohya_lora(unet, rank=rank, std=0.01, dtype=dtype, seed=3)
        lora = write_kohya_lora(workdir / "random-lcm-layout.safetensors", state)
        add_accelerator(path, lora, "lcm", KNOWN["lcm"].recipe)
        lora.unlink()
    return path


# --------------------------------------------------------------------------------- whole runs
def run_profile(bundle: Path, scans: Path, out: Path, profile: str, extra: list[str]) -> dict[str, Any]:
    """One real `mtcolor-batch run` in this process; returns the scan's provenance record."""
    from typer.main import get_command

    from mtcolor_batch.cli import app

    args = ["run", str(scans), "--out", str(out), "--model", str(bundle), "--profile", profile, "--force"]
    code = get_command(app).main([*args, *extra], standalone_mode=False, prog_name="mtcolor-batch")
    if code not in (0, None):
        raise SystemExit(f"run --profile {profile} {' '.join(extra)} exited {code}")
    record = json.loads(next(out.rglob("*.color.json")).read_text())
    gc.collect()
    return record


def stage_seconds(record: dict[str, Any], skip: tuple[str, ...] = ()) -> float:
    return sum(float(v) for k, v in record["timings"].items() if k in STAGES and k not in skip)


def row_of(profile: str, how: str, seconds: float, record: dict[str, Any], steps: int | None = None) -> Row:
    p = record["parameters"]
    return Row(
        profile, how, seconds, p["scheduler"], steps or p["steps"], p["guidance_scale"], p["accelerator"]
    )


# ------------------------------------------------------------------------------ composed runs
def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - t0


def composed_sampling(
    bundle: Path, scan: Path, profile: str, overrides: dict[str, Any]
) -> tuple[float, dict[str, float]]:
    """Seconds the profile's sampling takes on this scan, from one-step costs at its step counts."""
    from mtcolor_batch.core.config import load_profile
    from mtcolor_batch.model.canvas import area_resized, ceil8, resize_plane
    from mtcolor_batch.model.engine import EngineOptions, MTColorEngine
    from mtcolor_batch.model.fusion import fusion_steps, steps_fraction
    from mtcolor_batch.model.sampler import TILE_SEED_STRENGTH
    from mtcolor_batch.perception.instances import resize_instances
    from mtcolor_batch.render.chroma import resize_luma
    from mtcolor_batch.scan.imageio import load_scan
    from mtcolor_batch.stages.instances import find_instances, read_sidecar
    from mtcolor_batch.stages.plan import make_plan

    prof = load_profile(profile, overrides)
    engine = MTColorEngine.load(bundle, device="cpu", options=EngineOptions.from_sampling(prof.sampling))
    loaded = load_scan(scan, scan.parent, prof.scan)
    found = find_instances(loaded, read_sidecar(loaded, prof.hints), None, prof, scan.parent)  # boxes
    plan = make_plan(loaded.size, prof.sampling, 0, found.prompt or prof.sampling.prompt)
    luma = resize_luma(loaded.luma, plan.working_size)
    insts = resize_instances(found.instances, loaded.size, plan.working_size)
    sampler = engine.sampler
    costs: dict[str, float] = {}
    texts = sampler.texts(plan, insts)
    costs["setup"] = _timed(lambda: sampler.canvas(luma, insts, texts, plan))
    full = sampler.canvas(luma, insts, texts, plan)
    tiled = len(full.boxes) > 1
    if tiled:
        h, w = luma.shape
        scale = plan.tile_size / max(ceil8(h), ceil8(w))
        lh, lw = max(1, round(h * scale)), max(1, round(w * scale))
        low_insts = [area_resized(i, (h, w), (lh, lw)) for i in insts]
        low = sampler.canvas(resize_plane(luma, (lh, lw)), low_insts, texts, plan, tiled=False)
    else:
        low = full

    def step(canvas: Any, branches: list[int]) -> None:
        scheduler = sampler.scheduler_factory(plan.scheduler)
        scheduler.set_timesteps(plan.steps)
        t = scheduler.timesteps[0]
        z = torch.randn(len(branches), 4, *canvas.latent_size)
        with sampler.hints.reuse() if sampler.hints is not None else _null():
            eps = sampler.predict(z, branches, t, canvas, texts, plan, scheduler)
            scheduler.step(eps, t, z)

    n = low.n_instances
    step(low, [0])  # warm-up
    costs["low_fused"] = _timed(lambda: step(low, [0]))
    costs["low_branch"] = _timed(lambda: step(low, [0, *range(1, n + 1)])) if n else costs["low_fused"]
    z_low = torch.randn(1, 4, *low.latent_size)
    costs["decode_low"] = _timed(lambda: sampler.decode_rgb(z_low, low))
    if tiled:
        costs["tile_fused"] = _timed(lambda: step(full, [0]))
        rgb = np.full((*luma.shape, 3), 0.5)
        costs["encode_full"] = _timed(lambda: sampler.encode_rgb(rgb, full))
        z_full = torch.randn(1, 4, *full.latent_size)
        costs["decode_full"] = _timed(lambda: sampler.decode_rgb(z_full, full))
    s = plan.steps
    k = fusion_steps(plan.alpha, s) if n else 0
    runs = -(-k // plan.branch_refresh) if k else 0
    total = (
        costs["setup"] + runs * costs["low_branch"] + (s - runs) * costs["low_fused"] + costs["decode_low"]
    )
    if tiled:
        start = max(0, min(s - 1, s - steps_fraction(TILE_SEED_STRENGTH, s)))
        total += (
            costs["setup"] + (s - start) * costs["tile_fused"] + costs["encode_full"] + costs["decode_full"]
        )
    return total, costs


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def one_step_run_cost(
    bundle: Path, scans: Path, work: Path, profile: str, extra: list[str]
) -> tuple[float, dict[str, Any]]:
    """Every stage but the sampling, from a real 1-step run of the profile (colorize left out)."""
    record = run_profile(bundle, scans, work / f"{profile}-1step", profile, ["--steps", "1", *extra])
    return stage_seconds(record, skip=("colorize",)), record


# --------------------------------------------------------------------------------------- unit
def unit_seconds(bundle: Path, size: int = UNIT_SIZE) -> float:
    """One plain 20-step 512x512 SD+ControlNet image (VAE decode included) from the same components."""
    from model_step import plain_pipeline

    from mtcolor_batch.model.engine import MTColorEngine

    engine = MTColorEngine.load(bundle, device="cpu")
    pipe = plain_pipeline(engine)
    engine.denoiser.uninstall()  # the plain UNet, as diffusers ships it
    control = torch.linspace(0, 1, size * size).reshape(1, 1, size, size).expand(1, 3, -1, -1)

    def image(steps: int) -> None:
        pipe(
            prompt="a colour photograph",
            negative_prompt="black and white",
            image=control,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="np",
        )

    _timed(lambda: image(1))  # warm-up
    seconds = _timed(lambda: image(UNIT_STEPS))
    return seconds


# --------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group(required=True)
    size.add_argument("--full-size", action="store_true", help="SD 1.5-size weights, a 3000x2000 scan")
    size.add_argument("--smoke", action="store_true", help="the tiny bundle and a 300x200 scan")
    ap.add_argument("--profiles", default=",".join(PROFILES), help="comma list (default: all four)")
    ap.add_argument("--workdir", type=Path, help="keeps the bench bundle between runs")
    ap.add_argument("--bundle", type=Path, help="an existing bundle to use (gets the lcm accelerator)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from mtcolor_batch.core.config import load_profile
    from mtcolor_batch.core.device import flush_cpu_denormals

    args = parse_args(argv)
    # What a `run` process does before its models load (so torch's worker threads inherit it); the
    # profiles' runs happen in this process after other torch work, so it is set here, first. The
    # unit runs under the same setting (its models were not slowed by denormals: docs/few-step.md).
    flush_cpu_denormals()
    wanted = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = set(wanted) - set(PROFILES)
    if unknown:
        raise SystemExit(f"unknown profile(s) {', '.join(sorted(unknown))}; use {', '.join(PROFILES)}")
    full = bool(args.full_size)
    with tempfile.TemporaryDirectory(prefix="scan-cost-") as tmp:
        work = Path(tmp)
        workdir = args.workdir or (Path(tempfile.gettempdir()) / "mtcolor-scan-cost")
        workdir.mkdir(parents=True, exist_ok=True)
        bundle = make_bundle(workdir, full, args.bundle)
        scan = write_scan(work / "scans", (2000, 3000) if full else (200, 300))
        extra, overrides = ([], {}) if full else (SMOKE_ARGS, SMOKE)
        rows: list[Row] = []
        for profile in wanted:
            if profile in COMPOSED:
                other, record = one_step_run_cost(bundle, scan.parent, work, profile, extra)
                sampling, _costs = composed_sampling(bundle, scan, profile, overrides)
                steps = load_profile(profile, overrides).sampling.steps
                rows.append(row_of(profile, "composed", other + sampling, record, steps))
            else:
                record = run_profile(bundle, scan.parent, work / profile, profile, extra)
                rows.append(row_of(profile, "measured", stage_seconds(record), record))
            print(f"{profile}: {rows[-1].seconds:.1f} s ({rows[-1].how})", flush=True)
        unit = unit_seconds(bundle, UNIT_SIZE if full else 64)
    print_table(rows, unit, full)


def print_table(rows: list[Row], unit: float, full: bool) -> None:
    scan = "3000x2000" if full else "300x200"
    print()
    print(f"whole-scan seconds, {scan} scan with 4 instances, CPU ({torch.get_num_threads()} threads)")
    head = f"{'profile':<9} {'how':<9} {'scheduler':<14} {'steps':>5} {'guid.':>5} {'accel.':<7}"
    print(f"{head} {'seconds':>8} {'x unit':>7}")
    default = next((r.seconds for r in rows if r.profile == "default"), None)
    for r in rows:
        vs_default = f"  {r.seconds / default:.2f}x default" if default and r.profile != "default" else ""
        print(
            f"{r.profile:<9} {r.how:<9} {r.scheduler:<14} {r.steps:>5} {r.guidance:>5.1f} {r.accelerator:<7} "
            f"{r.seconds:>8.1f} {r.seconds / unit:>6.2f}x{vs_default}"
        )
    unit_row = f"{'unit':<9} {'measured':<9} {'ddim':<14} {UNIT_STEPS:>5} {7.5:>5.1f} {'none':<7}"
    print(f"{unit_row} {unit:>8.1f} {1:>6.2f}x")
    print("(composed: a 1-step run's stages + one-step sampling costs at the profile's step counts)")
    cpu = next((r for r in rows if r.profile == "cpu"), None)
    if cpu is not None:
        ratio = math.floor(cpu.seconds / unit * 100 + 0.5) / 100
        print(f"cpu profile: {ratio:.2f}x one plain 20-step 512² SD+ControlNet image")


if __name__ == "__main__":
    main()
