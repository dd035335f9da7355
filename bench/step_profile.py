"""Where one denoising step's CPU time goes: ControlNet, UNet, PMAM, instance branch, the rest.

Times one step of the real sampling loop per phase (``plain``: diffusers' UNet + ControlNet on both
CFG halves; ``fused``: MT-Color after the fusion; ``branch``: the first K steps, all instance
branches batched) with process-time timers around the modules, so the MT-Color overhead beyond the
UNet/ControlNet share is visible. Trained-like modules (every zero weight re-drawn), as
``bench/model_step.py``.

    python bench/step_profile.py --full-size --phases plain,fused,branch --instances 4
    python bench/step_profile.py --full-size --phases branch --branch-crop 0

``--branch-crop`` defaults to the profile's ``sampling.branch_crop`` (what ``run`` uses).

Figures are inclusive per module kind; ``unet (own)`` is the UNet minus the PMAM and instance-branch
time spent inside it; ``sampler + python`` is the step minus the denoiser calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mtcolor_batch.cli import quiet_libraries

quiet_libraries()  # the CLI's own switch, before diffusers / huggingface_hub are imported below

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size import full_size_engine  # noqa: E402
from model_step import Bench  # noqa: E402

from mtcolor_batch.core.config import load_profile  # noqa: E402
from mtcolor_batch.model.engine import EngineOptions, MTColorEngine  # noqa: E402
from mtcolor_batch.model.instance_guidance import GuidedLayer, InstanceGuidance  # noqa: E402
from mtcolor_batch.model.pmam import PMAMBlock  # noqa: E402
from mtcolor_batch.model.region_attention import RegionLayout  # noqa: E402
from mtcolor_batch.stages.plan import make_plan  # noqa: E402


class Timers:
    """Process-time accumulators around module forwards and plain functions."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.cpu[name] += time.process_time() - t
                self.count[name] += 1

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, original))

    def module(self, module: torch.nn.Module, name: str) -> None:
        self.wrap(module, "forward", name)

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        t = time.process_time()
        try:
            yield
        finally:
            self.cpu[name] += time.process_time() - t
            self.count[name] += 1


def instrument(engine: MTColorEngine, timers: Timers) -> None:
    timers.module(engine.controlnet, "controlnet")
    timers.module(engine.unet, "unet")
    for m in engine.modules.modules():
        if isinstance(m, PMAMBlock):
            timers.module(m, "pmam")
        elif isinstance(m, GuidedLayer):
            timers.module(m, "instance branch")
    timers.wrap(InstanceGuidance, "encode", "instance tokens")
    timers.wrap(RegionLayout, "_build_groups", "region layout build")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; ``branch_crop`` resolved from the profile when not given (the product's default)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full-size", action="store_true", help="SD 1.5-size random weights")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--phases", default="plain,fused,first,branch", help="plain, fused, first, branch")
    ap.add_argument("--branch-crop", type=int, default=None, help="default: the profile's branch_crop")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--warmup", type=int, default=0)
    args = ap.parse_args(argv)
    if args.branch_crop is None:
        args.branch_crop = load_profile(args.profile, {}).sampling.branch_crop
    return args


def main() -> None:
    args = parse_args()
    torch.set_grad_enabled(False)
    profile = load_profile(args.profile, {})
    sampling = profile.sampling.model_copy(update={"working_long_side": args.size, "steps": 5})
    options = EngineOptions(attention=args.attention)
    with tempfile.TemporaryDirectory() as tmp:
        if args.full_size:
            engine = full_size_engine("cpu", "float32", Path(tmp), options=options)
        else:
            from mtcolor_batch.testing.tiny_sd15 import write_tiny_bundle

            engine = MTColorEngine.load(
                write_tiny_bundle(Path(tmp) / "tiny", perception=False), options=options
            )
        plan = make_plan((args.size, args.size), sampling, seed=0, prompt="an old photograph")
        bench = Bench(engine, dataclasses.replace(plan, branch_crop=args.branch_crop), args.size, 1, 0)
        bench.states.use("trained")
        for phase in args.phases.split(","):
            if phase == "plain":
                inputs = bench._plain_inputs()
                step: Callable[[], int] = lambda i=inputs: bench.plain_step(i)  # noqa: E731
            else:
                setup = bench.mt_setup(args.instances, args.branch_crop)
                step = lambda p=phase, su=setup: bench.mt_step(su, p)  # noqa: E731
            for _ in range(args.warmup):
                step()
            timers = Timers()
            instrument(engine, timers)
            with timers.section("step"):
                calls = step()
            timers.remove()
            c = timers.cpu
            denoise = c["controlnet"] + c["unet"]
            rows = [
                ("step", c["step"]),
                ("controlnet", c["controlnet"]),
                ("unet (own)", c["unet"] - c["pmam"] - c["instance branch"]),
                ("pmam", c["pmam"]),
                ("instance branch", c["instance branch"]),
                ("  in those: region layout build", c["region layout build"]),
                ("instance tokens", c["instance tokens"]),
                ("sampler + python", c["step"] - denoise - c["instance tokens"]),  # set-up excluded
            ]
            label = phase if phase == "plain" else f"{phase}, {args.instances} inst, crop {args.branch_crop}"
            print(f"\n== {label}: {calls} denoiser call(s)")
            for name, v in rows:
                print(f"  {name:<32} {v:8.2f} cpu-s  {100 * v / max(c['step'], 1e-9):5.1f}%")


if __name__ == "__main__":
    main()
