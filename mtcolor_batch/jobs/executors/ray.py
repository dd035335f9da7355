"""Run a batch on a Ray cluster: the same unit of work as the local executor, on many GPU actors.

Why this shape:

- The driver plans exactly as the local runner does (``jobs.runner.run_batch`` with this module as
  its ``executor``): same discovery, lock, fingerprints and journal. Only the loop differs.
- Workers are Ray Data actors (``map_batches`` with a callable class and an ``ActorPoolStrategy``):
  each loads the model once (``stages.pipeline.Pipeline.load``) and runs
  ``stages.pipeline.process_one`` (as the local executor does) on one file at a time, reading the
  file itself from the shared scan tree. ``read_images`` is not used: it drops per-file metadata
  and 16-bit depth, which the pipeline must keep.
- Workers write outputs atomically into the shared output tree (``core.fs``, as locally) and
  return only small results (state, error, outputs, timings). The driver alone writes
  the SQLite journal, as results stream back through ``iter_batches``: SQLite WAL must never be
  written from many hosts over a network filesystem.
- Fault tolerance: every dispatched file is marked ``running`` before dispatch. A worker that dies
  loses only its in-flight files: Ray restarts the actor and retries its tasks (one file per block,
  so a retry redoes just that file). A file that kills its worker ``MAX_TASK_RETRIES + 1`` times is
  recorded as failed instead of stalling the run. If the driver itself dies, rows stay ``running``
  and the next run re-queues them (the runner's ``retry-crashed``): the journal stays the one record.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape

from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.jobs.batch import (
    ExecContext,
    Outcome,
    PlannedFile,
    file_progress,
    record_result,
    run_one,
)
from mtcolor_batch.output.credentials import prepare_credentials
from mtcolor_batch.scan.discover import ScanFile
from mtcolor_batch.stages.pipeline import Pipeline, WorkResult

RAY_MISSING = (
    "--executor ray needs Ray, which is not installed: "
    "pip install 'mtcolor-batch[ray]' (or pip install 'ray[data]')"
)
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node IP is 127.0.0.1
MAX_TASK_RETRIES = 3  # a file that kills its worker this many more times fails instead of looping
MAX_BLOCKS = 50_000  # one file per block (exact retries) up to here; beyond, a few files per block
RESULT_KEYS = (
    "relpath",
    "state",
    "error",
    "outputs",
    "timings",
    "seconds",
    "engine_seconds",
    "fingerprint",
    "output_sha256",
    "warnings",
    "worker",
)
FaultHook = Callable[[str, int, str], None]
"""``fault(stage, files_started, worker)``: a test hook (see ``mtcolor_batch.testing.faults``)."""


class RayMissingError(UserError):
    """``--executor ray`` without Ray installed."""


def require_ray() -> Any:
    """Import Ray or raise the one-line install hint (checked before any output is created)."""
    try:
        import ray
        import ray.data  # noqa: F401  (the Data extra: pyarrow, pandas)
    except ImportError as exc:
        raise RayMissingError(RAY_MISSING) from exc
    return ray


def worker_profile(profile: Profile) -> Profile:
    """The profile the workers get: with signing on, the C2PA credentials pinned as absolute paths.

    They travel as the bundle does (a path on the shared filesystem); each worker reads and checks
    the key itself in ``Pipeline.load``, so the key is never pickled into a task argument.
    """
    if profile.output.c2pa != "sign":
        return profile
    pinned = profile.model_copy(deep=True)
    prepare_credentials(pinned.output)
    return pinned


class FileWorker:
    """A Ray Data actor: loads the model once, then colorizes files named by relative path.

    ``fault`` is a fault-injection hook for the tests (``mtcolor_batch.testing.faults``), called
    at every stage as ``fault(stage, files_started, worker)``.
    """

    def __init__(
        self,
        profile: Profile,
        bundle_dir: str,
        scan_root: str,
        out_dir: str,
        fault: FaultHook | None = None,
    ) -> None:

        _quiet_worker_logs()
        self.scan_root = Path(scan_root)
        self.out_dir = Path(out_dir)
        self.pipeline = Pipeline.load(profile, Path(bundle_dir), self.scan_root, Path(out_dir))
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.fault = fault
        self.count = 0

    def _on_stage(self, stage: str) -> None:
        if self.fault is not None:
            self.fault(stage, self.count, self.worker)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        import json

        out: dict[str, list[Any]] = {k: [] for k in RESULT_KEYS}
        rows = zip(batch["relpath"], batch["stem"], batch["rawpath"], batch["note"], strict=True)
        for rel, stem, raw, note in rows:
            rel, stem = str(rel), str(stem)
            self.count += 1
            # The real path travels as hex of its bytes: an old archive's non-UTF-8 name has no text form.
            item = ScanFile(Path(os.fsdecode(bytes.fromhex(str(raw)))), rel, stem, str(note))
            work = run_one(self.pipeline, item, self._on_stage, self.out_dir)
            res = dataclasses.asdict(work)
            res["outputs"] = json.dumps(res["outputs"])  # flat columns travel best through Arrow
            res["warnings"] = json.dumps(res["warnings"])
            res["timings"] = json.dumps(res["timings"], sort_keys=True)
            res["output_sha256"] = json.dumps(res["output_sha256"], sort_keys=True)
            res["worker"] = self.worker
            for key in RESULT_KEYS:
                out[key].append(res[key])
        return out


def _quiet_worker_logs() -> None:
    """Ray forwards every worker line to the driver: drop the per-actor weight-loading bars."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _connect(ray: Any, address: str | None) -> bool:
    """Join ``address`` (``auto``: the running cluster) or start a local Ray; True if we started it."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise UserError(
            f"cannot connect to a Ray cluster at '{address}'",
            hint="start one with `ray start --head`, or leave out --address to use this machine only",
        ) from exc
    return True


def _quiet_ray_data(ray: Any) -> None:
    """Our own progress bar and summary replace Ray Data's; one dropped file must not stop the run."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = -1  # a file whose worker keeps dying fails alone (see _record_lost)
    # A block dropped after its retries is logged by Ray Data with a long traceback; the file's own
    # failed row (and Ray's "(raylet) worker died" lines) already say what happened.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def check_ray_options(address: str | None, workers: int | None, gpus_per_worker: float | None) -> None:
    """The Ray options, checked when the command line is read: before the journal exists, and
    before Ray is imported (a bad value is a setup error, not a traceback halfway into the run)."""
    if workers is not None and workers < 1:
        raise UserError(f"bad --workers {workers}", hint="need at least 1")
    if gpus_per_worker is not None and not (math.isfinite(gpus_per_worker) and gpus_per_worker >= 0):
        raise UserError(f"bad --gpus-per-worker {gpus_per_worker}", hint="0 (CPU), a fraction, or 1+")
    if address is None:
        return
    if not address.strip():
        raise UserError(
            "--address is empty (an unset variable in the job script?)",
            hint="give the head node as HOST:PORT, auto for the running cluster, or leave out --address",
        )
    if address.lower().startswith(("http://", "https://")):
        raise UserError(
            f"--address {address} is a web address (the dashboard or jobs API), not the cluster's",
            hint="give the head node as HOST:PORT (port 6379 by default), ray://HOST:10001, or auto",
        )


class RayExecutor:
    """The ``executor`` that ``run_batch`` calls with the planned files (see module docstring)."""

    def __init__(
        self,
        *,
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float | None = None,
        fault: FaultHook | None = None,
    ) -> None:
        check_ray_options(address, workers, gpus_per_worker)
        if address is None:
            # A Ray started by this command serves this machine alone: bind it to the loopback
            # address rather than the public interface (Ray reads this switch at import time).
            os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")
        self.ray = require_ray()
        self.address = address
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.fault = fault

    def resources(self) -> tuple[int, float]:
        """(actors, GPUs per actor): a GPU each when the cluster has GPUs, else CPU actors."""
        total = self.ray.cluster_resources()
        gpus = float(total.get("GPU", 0.0))
        per = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if per > gpus:
            raise UserError(
                f"--gpus-per-worker {per:g} but the Ray cluster has {gpus:g} GPU(s)",
                hint="use --gpus-per-worker 0 for CPU workers",
            )
        if self.workers is not None:
            return self.workers, per
        n = int(gpus // per) if per else int(total.get("CPU", 1))
        return max(1, n), per

    def __call__(self, todo: list[PlannedFile], ctx: ExecContext) -> bool:
        ray = self.ray
        started_ray = _connect(ray, self.address)
        try:
            return self._run(todo, ctx)
        finally:
            if started_ray:
                ray.shutdown()

    def _run(self, todo: list[PlannedFile], ctx: ExecContext) -> bool:
        ray = self.ray
        _quiet_ray_data(ray)
        workers, gpus = self.resources()
        ctx.console.print(
            f"Ray: {workers} worker(s), {gpus:g} GPU each, model {escape(str(ctx.bundle_dir))}; "
            f"journal written by this driver only."
        )
        items = [
            {
                "relpath": p.item.relpath,
                "stem": p.item.stem,
                "rawpath": os.fsencode(os.path.abspath(p.item.path)).hex(),
                "note": p.item.name_note,
            }
            for p in todo
        ]
        _mark_dispatched(ctx, todo)
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing actor options as **ray_remote_args, but max_task_retries has
            # no named parameter yet, and Ray Data's default (-1: retry forever) would let one file that
            # always kills its worker (a driver crash, an OOM) stall the whole run.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
            ds = self._map(ds, ctx, workers, gpus)
        pending = {p.item.relpath for p in todo}
        interrupted = False
        with file_progress(ctx.console) as progress:
            task = progress.add_task(f"starting {workers} Ray worker(s)", total=len(todo))
            batches = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)
            try:
                for batch in batches:
                    for res in _rows(batch):
                        if res["relpath"] not in pending:
                            continue  # a retried task reporting twice: the first report stands
                        pending.discard(res["relpath"])
                        record_result(_work_result(res), ctx)
                        progress.update(task, description=f"{res['relpath']} [dim]{res['worker']}[/dim]")
                        progress.advance(task)
                    if ctx.stop.requested or ctx.halted:  # Ctrl-C, or the disk is full
                        interrupted = True
                        break
            except KeyboardInterrupt:  # second Ctrl-C: stop at once; unrecorded files go back to pending
                interrupted = True
            finally:
                close = getattr(batches, "close", None)
                if close:
                    close()
            progress.update(task, description="interrupted" if interrupted else "finished")
        if interrupted or ctx.stop.requested:
            for rel in sorted(pending):
                ctx.journal.mark_pending(rel)
                ctx.outcomes.append(Outcome(rel, "pending", "not finished (interrupted)"))
            return True
        self._record_lost(sorted(pending), ctx)
        return False

    def _map(self, ds: Any, ctx: ExecContext, workers: int, gpus: float) -> Any:
        """One actor per worker, one file per call; up to 2 calls queued per actor to hide dispatch."""
        return ds.map_batches(
            FileWorker,
            fn_constructor_kwargs={
                "profile": worker_profile(ctx.profile),
                "bundle_dir": str(ctx.bundle_dir),
                "scan_root": str(ctx.scan_root),
                "out_dir": str(ctx.out_dir),
                "fault": self.fault,
            },
            batch_size=1,
            batch_format="numpy",
            compute=self.ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2),
            num_cpus=1,
            num_gpus=gpus,
            max_restarts=-1,
            max_task_retries=MAX_TASK_RETRIES,
        )

    @staticmethod
    def _record_lost(lost: list[str], ctx: ExecContext) -> None:
        """Files whose task failed even after retries (their worker died every time) fail alone."""
        for rel in lost:
            reason = f"{rel}: the Ray worker died {MAX_TASK_RETRIES + 1} times while processing this file"
            ctx.journal.mark_failed(rel, reason)
            ctx.outcomes.append(Outcome(rel, "failed", reason))
            ctx.console.print("[red]failed[/red] " + escape(reason), soft_wrap=True, highlight=False)


def _mark_dispatched(ctx: ExecContext, todo: list[PlannedFile]) -> None:
    """Mark every file ``running`` before dispatch, in one transaction (one fsync, not one per file).

    A driver crash then leaves exactly these rows ``running``, and the next run retries them.
    """
    db = ctx.journal.db
    db.execute("BEGIN IMMEDIATE")
    try:
        for p in todo:
            ctx.journal.mark_running(p.item.relpath)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A numpy batch of worker results -> one plain dict per file."""
    import json

    n = len(batch["relpath"])
    rows = []
    for i in range(n):
        rows.append(
            {
                "relpath": str(batch["relpath"][i]),
                "state": str(batch["state"][i]),
                "error": str(batch["error"][i]),
                "outputs": json.loads(str(batch["outputs"][i])),
                "timings": json.loads(str(batch["timings"][i])),
                "seconds": float(batch["seconds"][i]),
                "engine_seconds": float(batch["engine_seconds"][i]),
                "fingerprint": str(batch["fingerprint"][i]),
                "output_sha256": json.loads(str(batch["output_sha256"][i])),
                "warnings": json.loads(str(batch["warnings"][i])),
                "worker": str(batch["worker"][i]),
            }
        )
    return rows


def _work_result(row: dict[str, Any]) -> WorkResult:
    """A decoded result row (the worker's name dropped) -> the result every executor records."""
    return WorkResult(**{k: v for k, v in row.items() if k != "worker"})
