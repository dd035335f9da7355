"""Benchmark: MT-Color vs plain SD+ControlNet, side by side in one process, as ratios.

The base is plain diffusers ``StableDiffusionControlNetPipeline`` built from the very same UNet,
ControlNet, text encoder, VAE and scheduler, at the same steps, guidance and size; every MT-Color
setting is printed as a ratio to it.

Modules (``--modules``): ``trained`` (default) re-draws every zero-initialised MT-Color weight small
and non-zero (``mtcolor_batch.testing.trained_like``), so PMAM and the instance branch really run, as
in a trained bundle; ``fresh`` keeps them zero, which the denoiser skips as provable no-ops (a fresh
bundle is therefore cheaper than a trained one: never quote fresh figures as MT-Color's cost).

Modes:
  full image (default): whole images, VAE decode included, ``--repeats`` timed runs after a warm-up.
  ``--one-call``: one denoising step per phase, timed apart from the per-image set-up (text
      encoding, region maps), and composed into seconds per image: plain ``setup + T*step``;
      MT-Color ``setup + first + (R-1)*branch + (T-R)*fused`` (K = round(alpha*T) branch steps, of
      which R = ceil(K/N) run the instance branches with ``branch_refresh`` N, the others cost a
      global-only ``fused`` step; ``first`` is the first branch step, whose unconditional halves are
      shared when uncropped, ``branch`` a later one), at the profile's steps and at every
      ``--compose`` step count. VAE excluded on both sides. Makes the full-size ratio measurable on
      a CPU in minutes. Every timed MT-Color step runs right after a timed plain step, and the base
      is the median of those plain steps: a shared machine drifts by several percent over minutes,
      and a pair sees the same drift.
  ``--table``: the settings of the speed issue (fresh/trained-like x 0/4 instances), printed with the
      figures measured before this benchmark existed beside the new ones.

    python bench/model_step.py                                  # tiny bundle, CPU, trained-like
    python bench/model_step.py --table                          # tiny, the issue's table
    python bench/model_step.py --full-size --one-call --table   # SD 1.5 size, CPU, a few minutes
    python bench/model_step.py --full-size --device cuda --instances 0,1,2,4,8

The paper's figure to compare with: 68.6 s and 18 GB per 512x512 image on an A40 (Table 12).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size import full_size_engine  # noqa: E402

from mtcolor_batch.core.config import load_profile  # noqa: E402
from mtcolor_batch.core.types import Instance, Plan  # noqa: E402
from mtcolor_batch.model.engine import EngineOptions, MTColorEngine  # noqa: E402
from mtcolor_batch.model.fusion import fusion_steps  # noqa: E402
from mtcolor_batch.stages.plan import make_plan  # noqa: E402
from mtcolor_batch.testing.trained_like import trained_like  # noqa: E402

PAPER_S, PAPER_GB = 68.6, 18.0
# Measured before this benchmark compared with diffusers (issue 13), CPU seconds of whole 512x512
# images on a 2-core CPU; "plain" was MT-Color with fresh modules. Full size: 5 DDIM steps; tiny: 20.
OLD_FULL = {
    "fresh-0": (208.6, 1.00),
    "fresh-4": (315.4, 1.51),
    "trained-0": (201.2, 0.96),
    "trained-4": (402.7, 1.93),
}
OLD_TINY = {"fresh-0": (3.00, 1.00), "trained-4": (21.2, 7.07)}
TABLE = [("fresh", 0, 0), ("fresh", 4, 0), ("trained", 0, 0), ("trained", 4, 0), ("trained", 4, 64)]
"""(modules, instances, branch_crop px): the issue's four settings, then the cheaper instance branches.
``--rows`` replaces it, e.g. ``trained:0:0,trained:4:0,trained:4:32``; a fourth field sets
``sampling.branch_uncond`` (``trained:4:64:global``; default ``own``), a fifth
``sampling.branch_refresh`` (``trained:4:64:own:1``; default the profile's)."""


def scene(size: int, n: int) -> tuple[np.ndarray, list[Instance]]:
    """A gradient and ``n`` square instances of a third of the side each (up to 4 distinct places)."""
    yy, xx = np.mgrid[0:size, 0:size]
    luma = (0.15 + 0.7 * (xx + yy) / (2 * size)).astype(np.float32)
    insts = []
    cells = [(0, 0), (1, 0), (0, 1), (1, 1)]
    for i in range(n):
        cx, cy = cells[i % 4]
        shift = (i // 4) * size // 12  # instances 5..8 overlap 1..4, shifted
        x0, y0 = cx * size // 2 + size // 16 + shift, cy * size // 2 + size // 16 + shift
        x1, y1 = min(size, x0 + size // 3), min(size, y0 + size // 3)
        m = np.ones((y1 - y0, x1 - x0), dtype=bool)  # the mask over its box
        insts.append(Instance(i + 1, f"object {i}", f"a red object number {i}", m, (x0, y0, x1, y1)))
    return luma, insts


class ModuleStates:
    """Fresh and trained-like weights of the engine's MT-Color modules, swapped in place."""

    def __init__(self, engine: MTColorEngine) -> None:
        self.engine = engine
        self.fresh = copy.deepcopy(engine.modules.state_dict())
        trained = copy.deepcopy(engine.modules)
        self.redrawn = trained_like(trained)
        self.trained = trained.state_dict()

    def use(self, kind: str) -> None:
        self.engine.modules.load_state_dict(self.fresh if kind == "fresh" else self.trained)


def plain_pipeline(engine: MTColorEngine) -> Any:
    """diffusers' StableDiffusionControlNetPipeline over the engine's own components."""
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(
        vae=getattr(engine.vae, "vae", engine.vae),  # the diffusers VAE inside a PrecisionVAE
        text_encoder=engine.text_encoder,
        tokenizer=engine.tokenizer,
        unet=engine.unet,
        controlnet=engine.controlnet,
        scheduler=engine.sampler.scheduler_factory(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclasses.dataclass
class Row:
    name: str
    key: str
    seconds: float  # wall, per image
    cpu: float  # process CPU seconds, per image
    calls: int  # batched denoiser calls per image
    peak_gib: float
    # one-call mode: (wall s, cpu s, calls) per phase, composed per step count by ``at``
    phases: dict[str, tuple[float, float, int]] = dataclasses.field(default_factory=dict)
    instances: int = 0
    refresh: int = 1  # sampling.branch_refresh: the instance branches run at every Nth branch step

    def at(self, steps: int, alpha: float) -> Row:
        """This row composed for ``steps`` denoising steps (one-call rows; others as measured)."""
        if not self.phases:
            return self
        ph = self.phases
        if "plain" in ph:
            counts = {"setup": 1, "plain": steps}
        else:
            k = fusion_steps(alpha, steps) if self.instances else 0
            runs = -(-k // self.refresh)  # branch steps that run the branches; the rest are global-only
            counts = {"setup": 1, "first": min(runs, 1), "branch": max(runs - 1, 0), "fused": steps - runs}
        total = [sum(n * ph.get(name, (0.0, 0.0, 0))[i] for name, n in counts.items()) for i in range(3)]
        return dataclasses.replace(self, seconds=total[0], cpu=total[1], calls=int(total[2]))


def _timed(fn: Callable[[], int], device: torch.device, repeats: int) -> tuple[float, float, int, float]:
    """Median wall s, median CPU s, calls of one run, peak GiB (CUDA) over ``repeats`` runs of fn."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    walls, cpus, calls = [], [], 0
    for _ in range(repeats):
        t, p = time.perf_counter(), time.process_time()
        calls = fn()
        if cuda:
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - p)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return float(np.median(walls)), float(np.median(cpus)), calls, peak


class Bench:
    """Everything timed shares one engine, one pipeline, one plan and one scene generator."""

    def __init__(self, engine: MTColorEngine, plan: Plan, size: int, repeats: int, warmup: int) -> None:
        self.engine, self.plan, self.size = engine, plan, size
        self.repeats, self.warmup = repeats, warmup
        self.pipe = plain_pipeline(engine)
        self.states = ModuleStates(engine)
        self.k = fusion_steps(plan.alpha, plan.steps)
        self.fused: dict[tuple[str, int], tuple[float, float, int, float]] = {}
        self.steps: dict[tuple[str, int, int, str], Row] = {}  # one-call rows by what their steps run
        self.paired: list[tuple[float, float, int]] = []  # plain steps timed next to MT-Color ones
        self.image_run = ExitStack()  # the sampling run of the image mt_setup last prepared

    # ----------------------------------------------------------------------- plain SD+ControlNet
    def _plain_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        luma, _ = scene(self.size, 0)
        control = torch.from_numpy(luma)[None, None].expand(1, 3, self.size, self.size).contiguous()
        seq, _pooled = self.engine.encode_text([self.plan.prompt, self.plan.negative_prompt])
        return control, seq[:1], seq[1:]

    def plain_image(self) -> int:
        """One whole image through the diffusers pipeline, then the same decode as MT-Color."""
        self.engine.denoiser.uninstall()  # the plain UNet, as diffusers ships it
        try:
            return self._plain_image()
        finally:
            self.engine.denoiser.install()

    def _plain_image(self) -> int:
        control, prompt, negative = self._plain_inputs()
        calls = 0

        def count(_pipe: Any, _i: int, _t: Any, kwargs: dict) -> dict:
            nonlocal calls
            calls += 1
            return kwargs

        latents = self.pipe(
            prompt_embeds=prompt,
            negative_prompt_embeds=negative,
            image=control.to(self.engine.device, self.engine.dtype),
            height=self.size,
            width=self.size,
            num_inference_steps=self.plan.steps,
            guidance_scale=self.plan.guidance_scale,
            controlnet_conditioning_scale=self.plan.controlnet_scale,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="latent",
            callback_on_step_end=count,
        ).images
        from skimage.color import rgb2lab

        canvas = SimpleNamespace(height=self.size, width=self.size)
        rgb = self.engine.sampler.decode_rgb(latents.float(), canvas)  # type: ignore[arg-type]
        rgb2lab(rgb)
        return calls

    def plain_step(self, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> int:
        """One denoising step exactly as the pipeline runs it (both CFG halves in one batch)."""
        self.engine.denoiser.uninstall()
        try:
            return self._plain_step(inputs or self._plain_inputs())
        finally:
            self.engine.denoiser.install()

    def _plain_step(self, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> int:
        control, prompt, negative = inputs
        dev, dt = self.engine.device, self.engine.dtype
        sched = self.pipe.scheduler
        sched.set_timesteps(self.plan.steps, device=dev)
        t = sched.timesteps[0]
        lat = torch.randn(1, 4, self.size // 8, self.size // 8, generator=torch.Generator().manual_seed(0))
        lat = lat.to(dev)
        with torch.no_grad():
            x = sched.scale_model_input(torch.cat([lat] * 2), t).to(dt)
            emb = torch.cat([negative, prompt]).to(dt)
            ctl = torch.cat([control] * 2).to(dev, dt)
            down, mid = self.pipe.controlnet(
                x,
                t,
                encoder_hidden_states=emb,
                controlnet_cond=ctl,
                conditioning_scale=self.plan.controlnet_scale,
                guess_mode=False,
                return_dict=False,
            )
            eps = self.pipe.unet(
                x,
                t,
                encoder_hidden_states=emb,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
                return_dict=False,
            )[0]
            un, co = eps.chunk(2)
            sched.step(un + self.plan.guidance_scale * (co - un), t, lat)
        return 1

    # ---------------------------------------------------------------------------------- MT-Color
    def mt_image(self, n: int, crop: int, uncond: str = "own", refresh: int = 1) -> int:
        luma, insts = scene(self.size, n)
        c0 = self.engine.unet_calls
        plan = dataclasses.replace(self.plan, branch_crop=crop, branch_uncond=uncond, branch_refresh=refresh)
        self.engine.colorize(luma, insts, plan)
        return self.engine.unet_calls - c0

    def mt_setup(self, n: int, crop: int, uncond: str = "own") -> tuple[Plan, Any, Any, torch.Tensor]:
        """What the sampler does once per image before its steps: texts, canvas (region maps), noise,
        and a new sampling run, within which the steps reuse the hints' ControlNet embeddings (the
        step that first shows a window pays for embedding it: the warm-up run, with ``--warmup``)."""
        luma, insts = scene(self.size, n)
        sampler = self.engine.sampler
        self.image_run.close()  # the previous image's run
        if sampler.hints is not None:
            self.image_run.enter_context(sampler.hints.reuse())
        plan = dataclasses.replace(self.plan, branch_crop=crop, branch_uncond=uncond)
        texts = sampler.texts(plan, insts)
        canvas = sampler.canvas(luma, insts, texts, plan, tiled=False)
        z0 = sampler.initial_noise(torch.Generator().manual_seed(0), canvas.latent_size)
        return plan, canvas, texts, z0

    def mt_step(self, setup: tuple[Plan, Any, Any, torch.Tensor], phase: str) -> int:
        """One step of the sampling loop: ``fused`` (one latent), ``first`` (the first multi-instance
        step: all branches batched, unconditional halves shared) or ``branch`` (a later one)."""
        plan, canvas, texts, z0 = setup
        sampler = self.engine.sampler
        scheduler = sampler.scheduler_factory()
        scheduler.set_timesteps(plan.steps, device=self.engine.device)  # type: ignore[attr-defined]
        t = scheduler.timesteps[0]  # type: ignore[attr-defined]
        n = canvas.n_instances if phase != "fused" else 0
        branches = [0, *range(1, n + 1)]
        z = z0.repeat(len(branches), 1, 1, 1)
        c0 = self.engine.unet_calls
        with torch.no_grad():
            eps = sampler.predict(z, branches, t, canvas, texts, plan, scheduler, shared=phase == "first")
            scheduler.step(eps, t, z)  # type: ignore[attr-defined]
        return self.engine.unet_calls - c0

    # ------------------------------------------------------------------------------------- runs
    def measure(self, fn: Callable[[], int]) -> tuple[float, float, int, float]:
        for _ in range(self.warmup):
            fn()
        return _timed(fn, self.engine.device, self.repeats)

    def measure_paired(self, fn: Callable[[], int]) -> tuple[float, float, int, float]:
        """A one-call MT-Color step, each timed run right after a timed plain step.

        A shared machine drifts by several percent over minutes; a plain step next to every
        MT-Color one sees the same drift, so the median of those pairs (:attr:`paired`) is the base.
        """
        inputs = self._plain_inputs()
        for _ in range(self.warmup):
            fn()
        runs = []
        for _ in range(self.repeats):
            self.paired.append(_timed(lambda: self.plain_step(inputs), self.engine.device, 1)[:3])
            runs.append(_timed(fn, self.engine.device, 1))
        walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
        return float(np.median(walls)), float(np.median(cpus)), runs[-1][2], max(r[3] for r in runs)

    def row_plain(self, one_call: bool) -> Row:
        if one_call:
            inputs = self._plain_inputs()
            ph = {
                "setup": self.measure(lambda: (self._plain_inputs(), 0)[1])[:3],
                "plain": self.measure(lambda: self.plain_step(inputs))[:3],
            }
            row = Row("plain SD+ControlNet (diffusers)", "plain", 0, 0, 0, float("nan"), ph)
            return row.at(self.plan.steps, self.plan.alpha)
        s, c, calls, peak = self.measure(self.plain_image)
        return Row("plain SD+ControlNet (diffusers)", "plain", s, c, calls, peak)

    def row_mt(
        self, kind: str, n: int, one_call: bool, crop: int = 0, uncond: str = "own", refresh: int = 1
    ) -> Row:
        self.states.use(kind)
        label = "trained-like" if kind == "trained" else "fresh"
        name = f"MT-Color {label}, {n} inst" + (f", crop {crop}" if crop and n else "")
        key = f"{kind}-{n}" if not crop else f"{kind}-{n}-crop{crop}"
        if uncond != "own" and n:
            name, key = f"{name}, uncond {uncond}", f"{key}-{uncond}"
        if refresh != 1 and n:
            name, key = f"{name}, refresh {refresh}", f"{key}-refresh{refresh}"
        if not one_call:
            s, c, calls, peak = self.measure(lambda: self.mt_image(n, crop, uncond, refresh))
            return Row(name, key, s, c, calls, peak)
        measured = self.steps.get((kind, n, crop, uncond))  # refresh changes only the composition
        if measured is not None:
            row = dataclasses.replace(measured, name=name, key=key, refresh=refresh)
            return row.at(self.plan.steps, self.plan.alpha)
        setup = self.mt_setup(n, crop, uncond)
        ph = {"setup": self.measure(lambda: (self.mt_setup(n, crop, uncond), 0)[1])}
        fused_key = (kind, n)  # the fused step does not depend on the crop: measured once
        if fused_key not in self.fused:
            self.fused[fused_key] = self.measure_paired(lambda: self.mt_step(setup, "fused"))
        ph["fused"] = self.fused[fused_key]
        if n:
            ph["first"] = self.measure_paired(lambda: self.mt_step(setup, "first"))
            # A later branch step differs from the first only where the first shares work (uncropped,
            # own unconditional halves); with the global branch's unconditional it never does.
            crops = setup[1].crops
            same = uncond == "global" or (bool(crops) and all(c != setup[1].boxes[0] for c in crops))
            ph["branch"] = ph["first"] if same else self.measure_paired(lambda: self.mt_step(setup, "branch"))
        peaks = [v[3] for v in ph.values() if not np.isnan(v[3])]
        phases = {k: v[:3] for k, v in ph.items()}
        row = Row(name, key, 0, 0, 0, max(peaks) if peaks else float("nan"), phases, n, refresh)
        self.steps[(kind, n, crop, uncond)] = row
        return row.at(self.plan.steps, self.plan.alpha)


def print_rows(rows: list[Row], old: dict[str, tuple[float, float]] | None, one_call: bool) -> None:
    base = rows[0]
    unit = "s/image (composed)" if one_call else "s/image"
    print(
        f"\n{'setting':<52} {unit:>18} {'x plain':>8} {'cpu s':>8} {'x cpu':>6} {'calls':>6} {'peak GiB':>9}"
        + (f" | {'old cpu-s':>9} {'old x':>6}" if old else "")
    )
    for r in rows:
        line = (
            f"{r.name:<52} {r.seconds:>18.2f} {r.seconds / base.seconds:>8.2f} {r.cpu:>8.2f} "
            f"{r.cpu / base.cpu:>6.2f} {r.calls:>6d} {r.peak_gib:>9.2f}"
        )
        if old:
            o = old.get(r.key)
            line += f" | {o[0]:>9.2f} {o[1]:>5.2f}x" if o else f" | {'-':>9} {'-':>6}"
        print(line)


def parse_row(text: str, refresh: int) -> tuple[str, int, int, str, int]:
    """``modules:instances:crop[:own|global[:refresh]]`` -> (modules, n, crop, branch_uncond, refresh)."""
    parts = text.split(":")
    if len(parts) not in (3, 4, 5) or (len(parts) >= 4 and parts[3] not in ("own", "global")):
        raise SystemExit(f"--rows: '{text}' is not modules:instances:crop[:own|global[:refresh]]")
    uncond = parts[3] if len(parts) >= 4 else "own"
    return parts[0], int(parts[1]), int(parts[2]), uncond, int(parts[4]) if len(parts) == 5 else refresh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full-size", action="store_true", help="SD 1.5-size random weights")
    ap.add_argument("--bundle", type=Path, help="bundle folder (default: a fresh tiny bundle)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--profile", default="default", help="profile whose sampling values are used")
    ap.add_argument("--steps", type=int, help="override the profile's steps")
    ap.add_argument("--size", type=int, default=512, help="square image side (default 512)")
    ap.add_argument("--modules", choices=("trained", "fresh"), default="trained")
    ap.add_argument("--instances", default="0,4", help="instance counts (default 0,4)")
    ap.add_argument("--table", action="store_true", help="the issue's four settings, old figures beside")
    ap.add_argument("--one-call", action="store_true", help="time one step per phase and compose")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per setting")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per setting first")
    ap.add_argument("--compile", action="store_true", help="EngineOptions.compile (CUDA)")
    ap.add_argument("--vae-dtype", default="auto")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--attention", default="auto", help="auto | sparse | flex | dense (the reference)")
    ap.add_argument("--branch-crop", type=int, help="sampling.branch_crop px for the MT-Color rows")
    ap.add_argument("--branch-refresh", type=int, help="sampling.branch_refresh for the MT-Color rows")
    ap.add_argument(
        "--rows", help="settings as modules:instances:crop[:own|global],... (replaces --table's list)"
    )
    ap.add_argument("--compose", default="", help="one-call: also compose at these step counts (5,20)")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    profile = load_profile(
        args.profile,
        {
            "sampling.steps": args.steps,
            "sampling.branch_crop": args.branch_crop,
            "sampling.branch_refresh": args.branch_refresh,
        },
    )
    sampling = profile.sampling.model_copy(update={"working_long_side": max(args.size, 8)})
    options = EngineOptions(
        vae_dtype=args.vae_dtype,
        channels_last=not args.no_channels_last,
        compile=args.compile,
        attention=args.attention,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.full_size:
            engine = full_size_engine(args.device, args.dtype, Path(tmp), options=options)
        else:
            from mtcolor_batch.testing.tiny_sd15 import write_tiny_bundle

            bundle = args.bundle or write_tiny_bundle(Path(tmp) / "tiny", perception=False)
            engine = MTColorEngine.load(bundle, device=args.device, dtype=args.dtype, options=options)
        plan = make_plan((args.size, args.size), sampling, seed=0, prompt="an old photograph")
        bench = Bench(engine, plan, args.size, args.repeats, args.warmup)
        build_s = time.perf_counter() - t0
        k = fusion_steps(plan.alpha, plan.steps)
        print(
            f"model: {engine.info['bundle']} ({'SD1.5-size random' if args.full_size else 'tiny'}), "
            f"device {engine.info['device']}, dtype {engine.info['dtype']}, vae {engine.info['vae_dtype']}, "
            f"compile {engine.info['compile']}, attention {engine.info['attention']}, "
            f"built/loaded in {build_s:.1f} s; "
            f"trained-like re-drew {bench.states.redrawn} zero tensors"
        )
        print(
            f"image {args.size}x{args.size}, steps {plan.steps}, guidance {plan.guidance_scale}, "
            f"alpha {plan.alpha} (K={k}), max_batch {plan.max_batch}, "
            f"mode {'one-call (composed)' if args.one_call else 'full image'}, "
            f"{args.repeats} timed + {args.warmup} warm-up runs each"
        )
        crop, uncond, refresh = plan.branch_crop, plan.branch_uncond, plan.branch_refresh
        settings = (
            [(m, n, c, uncond, refresh) for m, n, c in TABLE]
            if args.table
            else [(args.modules, int(v), crop, uncond, refresh) for v in args.instances.split(",")]
        )
        if args.rows:
            settings = [parse_row(r, refresh) for r in args.rows.split(",")]
        if args.one_call and not args.warmup:
            bench.plain_step()  # one untimed step first: the first call of a process pays set-up costs
        rows = [bench.row_plain(args.one_call)]
        for kind, n, crop, uncond, refresh in settings:
            rows.append(bench.row_mt(kind, n, args.one_call, crop, uncond, refresh))
            phases = ", ".join(f"{name} {v[1]:.2f}" for name, v in rows[-1].phases.items())
            print(f"  measured {rows[-1].name}: {rows[-1].cpu:.2f} cpu-s ({phases})", flush=True)
        if args.one_call and bench.paired:  # a shared machine drifts over minutes: pair the base
            before = rows[0].phases["plain"]
            paired = bench.paired
            base = (
                float(np.median([p[0] for p in paired])),
                float(np.median([p[1] for p in paired])),
                paired[0][2],
            )
            print(
                f"  plain step before the MT-Color rows {before[1]:.2f} cpu-s; beside each MT-Color step "
                f"{min(p[1] for p in paired):.2f}-{max(p[1] for p in paired):.2f} ({len(paired)} runs); "
                f"the base is their median, {base[1]:.2f}",
                flush=True,
            )
            rows[0] = dataclasses.replace(rows[0], phases={**rows[0].phases, "plain": base})
            rows[0] = rows[0].at(plan.steps, plan.alpha)
    old_steps = 5 if args.full_size else 20
    old = (OLD_FULL if args.full_size else OLD_TINY) if args.table else None
    compose = [int(v) for v in args.compose.split(",") if v] if args.one_call else []
    for steps in [plan.steps, *[c for c in compose if c != plan.steps]]:
        if args.one_call:
            k_at = fusion_steps(plan.alpha, steps)
            print(f"\ncomposed at {steps} steps (K = {k_at}):", end="")
        print_rows(
            [r.at(steps, plan.alpha) for r in rows], old if steps == old_steps else None, args.one_call
        )
    if old:
        print(
            "old = before this benchmark (issue 13), CPU s of whole images through MT-Color itself "
            f"({'5 steps' if args.full_size else 'the default 20 steps'}); 'plain' there = fresh modules, "
            "0 instances. New ratios are to diffusers' pipeline; compare x columns at equal steps."
        )
    if args.full_size and engine.device.type == "cuda":
        r = rows[-1]
        print(
            f"\npaper (A40, 512x512): {PAPER_S} s, {PAPER_GB} GB per image | here, {r.name}: "
            f"{r.seconds:.1f} s ({r.seconds / PAPER_S:.2f}x), "
            f"{r.peak_gib:.1f} GiB ({r.peak_gib / PAPER_GB:.2f}x)"
        )


if __name__ == "__main__":
    main()
