"""``mtcolor-batch run SCANS``: the overnight batch job (thin: parse, build the profile, call the runner).

Every option that changes output maps to one profile key and is applied through
``core.config.load_profile`` overrides, so the effective profile (and thus fingerprints and provenance)
is the single source of truth. Options left unset keep the profile's value.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from mtcolor_batch.cli._common import fail
from mtcolor_batch.core.config import OutputSettings, load_profile
from mtcolor_batch.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UserError
from mtcolor_batch.evaluate.report import build_report  # added by "report" (issue 8)
from mtcolor_batch.jobs.executors.ray import RayExecutor
from mtcolor_batch.jobs.preflight import check_seed
from mtcolor_batch.jobs.runner import (
    RunRequest,
    console_for_run,
    default_out_dir,
    run_batch,
)
from mtcolor_batch.model.registry import find_bundle
from mtcolor_batch.output.credentials import prepare_credentials
from mtcolor_batch.scan.discover import parse_shard

_DEVICES = ("auto", "cpu", "cuda", "mps")


def run_command(
    scans: Path = typer.Argument(
        ..., metavar="SCANS", help="Folder of scans (searched recursively) or one image file."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder \\[default: <SCANS>-colorized beside it]."
    ),
    profile: str = typer.Option("default", "--profile", "-p", help="Built-in profile name or a YAML file."),
    model: str | None = typer.Option(None, "--model", "-m", help="Bundle folder or cached bundle id."),
    shard: str | None = typer.Option(
        None, "--shard", help="K/N: only this shard of the files (own journal)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (files, sidecars, done) and exit."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also redo files that failed before."),
    force: bool = typer.Option(False, "--force", help="Redo every file, even done ones."),
    verify_inputs: bool = typer.Option(
        False,
        "--verify-inputs",
        help="Rehash every input (default: trust an unchanged size + mtime, see docs/resume.md).",
    ),
    verify_outputs: bool = typer.Option(
        False,
        "--verify-outputs",
        help="Rehash every done output; one that differs is redone (default: size + mtime).",
    ),
    allow_other_scans: bool = typer.Option(
        False,
        "--allow-other-scans",
        help="Add another scan folder's files to an output folder that holds an earlier archive.",
    ),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N | mps."),
    steps: int | None = typer.Option(None, "--steps", help="Sampling steps (sampling.steps)."),
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        help="ddim | ddim-trailing | lcm | tcd | dpmpp-2m | unipc (sampling.scheduler; docs/few-step.md).",
    ),
    accelerator: str | None = typer.Option(
        None,
        "--accelerator",
        help="Distilled LoRA of the bundle to fuse (its name, auto or none); sets its recommended "
        "scheduler, steps and guidance unless given.",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Fixed seed \\[default: from each file's sha256]."),
    prompt: str | None = typer.Option(None, "--prompt", help="Global text when a sidecar gives none."),
    guidance: float | None = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
    controlnet_scale: float | None = typer.Option(None, "--controlnet-scale", help="ControlNet strength."),
    alpha: float | None = typer.Option(None, "--alpha", help="Fraction of steps sampled per instance."),
    beta: float | None = typer.Option(None, "--beta", help="Weight of the global branch in the fusion."),
    working_size: int | None = typer.Option(None, "--working-size", help="Chroma working long side (px)."),
    tile_size: int | None = typer.Option(
        None, "--tile-size", help="Tile size (px) above which tiling starts."
    ),
    dtype: str | None = typer.Option(None, "--dtype", help="auto | float32 | float16 | bfloat16."),
    vae_dtype: str | None = typer.Option(
        None, "--vae-dtype", help="auto (half on CUDA, float32 on overflow) | float32 | float16 | bfloat16."
    ),
    channels_last: bool | None = typer.Option(
        None, "--channels-last/--no-channels-last", help="Channels-last memory format on CUDA."
    ),
    branch_crop: int | None = typer.Option(
        None, "--branch-crop", help="Instance branches on box + PX of context (0 = whole tile)."
    ),
    branch_uncond: str | None = typer.Option(
        None, "--branch-uncond", help="own | global: whose unconditional half guides instance branches."
    ),
    branch_refresh: int | None = typer.Option(
        None,
        "--branch-refresh",
        help="Instance branches run at every Nth of the first alpha*T steps (1 = every step).",
    ),
    attention: str | None = typer.Option(
        None, "--attention", help="auto | sparse | flex | dense: region attention (dense = reference)."
    ),
    compile_models: bool | None = typer.Option(
        None, "--compile/--no-compile", help="torch.compile ControlNet and UNet (warm-up per tile shape)."
    ),
    max_instances: int | None = typer.Option(None, "--max-instances", help="Cap on instances per scan."),
    auto_instances: bool | None = typer.Option(
        None, "--auto-instances/--no-auto-instances", help="Detect instances automatically."
    ),
    strict_hints: bool | None = typer.Option(
        None, "--strict-hints/--no-strict-hints", help="Hold hinted instances to their hint colour."
    ),
    max_megapixels: float | None = typer.Option(
        None, "--max-megapixels", help="Decompression-bomb limit (MP)."
    ),
    jpeg_quality: int | None = typer.Option(None, "--jpeg-quality", help="JPEG/WebP output quality."),
    no_json: bool = typer.Option(False, "--no-json", help="Do not write <stem>.color.json records."),
    c2pa_cert: Path | None = typer.Option(
        None, "--c2pa-cert", help="Sign Content Credentials with this certificate chain (PEM, leaf first)."
    ),
    c2pa_key: Path | None = typer.Option(None, "--c2pa-key", help="The private key (PEM) of --c2pa-cert."),
    executor: str = typer.Option("local", "--executor", help="local (this process) | ray (a Ray cluster)."),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster; auto = the running one (default: start Ray here)."
    ),
    gpus_per_worker: float | None = typer.Option(
        None, "--gpus-per-worker", help="GPUs per Ray worker (default: 1 if the cluster has GPUs, else 0)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Ray workers (default: one per GPU, or one per CPU without GPUs)."
    ),
    report: bool = typer.Option(False, "--report", help="Write OUT/report.html (see `report`) at the end."),
) -> None:
    """Colorize every scan under SCANS, resumably; outputs go to <SCANS>-colorized by default.

    Exit codes: 0 all good, 1 some files failed, 2 usage/setup error, 130 interrupted (resume with
    the same command).
    """
    console = console_for_run()
    try:
        if device is not None and device.split(":")[0] not in _DEVICES:
            raise UserError(f"unknown --device '{device}'", hint="auto, cpu, cuda, cuda:N or mps")
        check_seed(seed)
        overrides = {
            "device": device,
            "seed": seed,
            "sampling.steps": steps,
            "sampling.prompt": prompt,
            "sampling.guidance_scale": guidance,
            "sampling.controlnet_scale": controlnet_scale,
            "sampling.alpha": alpha,
            "sampling.beta": beta,
            "sampling.working_long_side": working_size,
            "sampling.tile_size": tile_size,
            "sampling.dtype": dtype,
            "sampling.vae_dtype": vae_dtype,
            "sampling.channels_last": channels_last,
            "sampling.compile": compile_models,
            "sampling.attention": attention,
            "sampling.scheduler": scheduler,
            "sampling.accelerator": accelerator,
            "sampling.branch_crop": branch_crop,
            "sampling.branch_uncond": branch_uncond,
            "sampling.branch_refresh": branch_refresh,
            "perception.max_instances": max_instances,
            "perception.auto_instances": auto_instances,
            "hints.strict": strict_hints,
            "scan.max_megapixels": max_megapixels,
            "output.jpeg_quality": jpeg_quality,
            "output.write_json": False if no_json else None,
            "output.c2pa_cert": str(c2pa_cert) if c2pa_cert else None,
            "output.c2pa_key": str(c2pa_key) if c2pa_key else None,
        }
        effective = load_profile(profile, overrides)
        if effective.sampling.accelerator != "none":
            from mtcolor_batch.model.accelerators import load_run_profile  # deferred: loads torch

            effective, note = load_run_profile(profile, overrides, find_bundle(model))
            if note:
                console.print(escape(note), highlight=False)
        if effective.output.c2pa == "sign" and not dry_run:
            _credentials(console, effective.output)
        request = RunRequest(
            scans=scans,
            profile=effective,
            out=out,
            model=model,
            shard=parse_shard(shard),
            dry_run=dry_run,
            retry_failed=retry_failed,
            force=force,
            verify_inputs=verify_inputs,
            verify_outputs=verify_outputs,
            allow_other_scans=allow_other_scans,
            argv=sys.argv[1:],
        )
        code = run_batch(request, console, executor=_executor(executor, address, gpus_per_worker, workers))
        if report and not dry_run and code in (EXIT_OK, EXIT_FAILED):
            out_dir = Path(out).resolve() if out else default_out_dir(Path(scans))
            console.print(f"report: {escape(str(build_report(out_dir)))}", highlight=False)
    except UserError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:  # a second Ctrl-C outside the file loop (planning, summary): still 130
        console.print(
            "[yellow]Interrupted at once; the journal is consistent. Resume with the same command.[/yellow]"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(code)


def _credentials(console: Console, settings: OutputSettings) -> None:
    """Check the signing credentials before any file is touched; say once where generated ones lie."""
    paths, created = prepare_credentials(settings)
    if created:
        console.print(
            "Content Credentials: generated a local signing certificate in "
            f"{escape(str(paths.cert.parent))}; "
            "outputs signed with it read as \"untrusted\" until you configure your archive's own "
            "(--c2pa-cert/--c2pa-key, see docs/content-credentials.md).",
            highlight=False,
        )


def _executor(
    kind: str, address: str | None, gpus: float | None, workers: int | None
) -> Callable[..., bool] | None:
    """``--executor ray`` -> the Ray driver loop (Ray imported only then); ``local`` -> the runner's own."""
    if kind == "ray":
        return RayExecutor(address=address, workers=workers, gpus_per_worker=gpus)
    if kind != "local":
        raise UserError(f"unknown --executor '{kind}'", hint="local or ray")
    if address is not None or gpus is not None or workers is not None:
        raise UserError("--address, --gpus-per-worker and --workers need --executor ray")
    return None
