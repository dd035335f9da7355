"""Crash safety with the real CLI in a subprocess: kill -9, Ctrl-C, double Ctrl-C, concurrent runs.

One 20-file tree goes through: a run that is paused (second run refused while it holds the lock)
and killed with SIGKILL; a resume stopped by one SIGINT; a final resume. At the end every file is
done exactly once, every output decodes, the journal is consistent and no temp file is left.
The second Ctrl-C ("stop at once") is tested in-process, where it can be delivered mid-write
deterministically.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtcolor_batch.jobs.journal import Journal

N_FILES = 20
PROFILE = (
    "sampling:\n  steps: 2\n  working_long_side: 32\n  tile_size: 64\n  tile_overlap: 0\n"
    "perception:\n  size: 64\n  auto_instances: false\n"  # perception is covered in test_run_e2e
)


def _counts(journal: Path) -> dict[str, int]:
    if not journal.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1)
        try:
            return dict(db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def _wait_done(journal: Path, at_least: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _counts(journal).get("done", 0) >= at_least:
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"run ended early (rc {proc.returncode}): {proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.02)
    raise AssertionError("timed out waiting for progress")


def _visible_outputs_decode(out: Path) -> int:
    n = 0
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix == ".json":
            json.loads(p.read_text())
        else:
            with Image.open(io.BytesIO(p.read_bytes())) as img:
                img.load()
        n += 1
    return n


def _temps(out: Path) -> list[Path]:
    return [p for p in out.rglob("*mtcolor-tmp*")]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> dict:
    base = tmp_path_factory.mktemp("crash")
    scans = base / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_FILES):
        img = Image.fromarray((rng.uniform(0, 1, (32, 40)) * 255).astype(np.uint8), "L")
        img.save(scans / f"f{i:02d}.{'png' if i % 2 else 'jpg'}")
    profile = base / "p.yaml"
    profile.write_text(PROFILE)
    cmd = [
        sys.executable,
        "-m",
        "mtcolor_batch",
        "run",
        str(scans),
        "--model",
        str(tiny_bundle),
        "--profile",
        str(profile),
        "--device",
        "cpu",
    ]
    # One thread: on a busy 2-core box OpenMP spin-waiting makes tiny-model steps ~50x slower.
    env = dict(
        os.environ,
        MTCOLOR_HOME=str(base / "home"),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    out = base / "scans-colorized"
    return {
        "cmd": cmd,
        "env": env,
        "out": out,
        "journal": out / ".mtcolor" / "journal.sqlite",
        "scans": scans,
    }


def _start(job: dict) -> subprocess.Popen:
    return subprocess.Popen(
        job["cmd"], env=job["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_crash_interrupts_and_resume(job: dict) -> None:
    journal, out = job["journal"], job["out"]

    # 1. A run is paused mid-way: a second run on the same folder is refused (exit 2); then kill -9.
    first = _start(job)
    _wait_done(journal, 1, first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run(job["cmd"], env=job["env"], capture_output=True, text=True, timeout=240)
        assert second.returncode == 2, second.stderr
        assert "another mtcolor-batch run" in second.stderr
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert _counts(journal).get("done", 0) < N_FILES
    _visible_outputs_decode(out)  # no partial or corrupt visible output after the crash
    with Journal(journal) as j:
        assert j.check() == []

    # 2. Resume, then one Ctrl-C: the current file finishes or rolls back, exit 130, resume hint.
    done_before = _counts(journal).get("done", 0)
    run = _start(job)
    _wait_done(journal, done_before + 1, run)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=240)
    assert run.returncode == 130, err
    assert "Resume with" in " ".join(err.split())
    counts = _counts(journal)
    assert counts.get("running", 0) == 0 and counts.get("done", 0) < N_FILES
    assert _temps(out) == []

    # 3. Final resume: everything done exactly once, all outputs decode, journal consistent.
    final = subprocess.run(job["cmd"], env=job["env"], capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    with Journal(journal) as j:
        rows = j.all()
        assert j.check() == []
    assert len(rows) == N_FILES
    assert all(r.state == "done" and r.completions == 1 for r in rows), [
        (r.relpath, r.state, r.completions) for r in rows
    ]
    assert _visible_outputs_decode(out) == 2 * N_FILES
    assert _temps(out) == []


@pytest.mark.slow
def test_second_ctrl_c_stops_mid_write_with_nothing_half_written(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two SIGINTs arrive while file 2's image is being encoded: no output, no temp, row pending."""
    from typer.testing import CliRunner

    import mtcolor_batch.stages.pipeline as pipeline_mod
    from mtcolor_batch.cli import app

    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(3):
        Image.new("L", (40, 32), 60 * i).save(scans / f"f{i}.png")
    profile = tmp_path / "p.yaml"
    profile.write_text(PROFILE)
    real_encode = pipeline_mod.encode_image
    calls = {"n": 0}
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / `&`

    def encode_then_ctrl_c_twice(fh, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            fh.write(b"\x89PNG half an image")
            os.kill(os.getpid(), signal.SIGINT)  # first: finish or roll back
            os.kill(os.getpid(), signal.SIGINT)  # second: stop at once (KeyboardInterrupt here)
        return real_encode(fh, *args, **kwargs)

    monkeypatch.setattr(pipeline_mod, "encode_image", encode_then_ctrl_c_twice)
    result = CliRunner().invoke(
        app, ["run", str(scans), "--model", str(tiny_bundle), "--profile", str(profile), "--device", "cpu"]
    )
    assert result.exit_code == 130, result.output
    out = tmp_path / "scans-colorized"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "f0.color.json",
        "f0.color.png",
    ]
    assert _temps(out) == []
    with Journal(out / ".mtcolor" / "journal.sqlite") as j:
        states = {r.relpath: r.state for r in j.all()}
        assert j.check() == []
    assert states == {"f0.png": "done", "f1.png": "pending", "f2.png": "pending"}
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_second_ctrl_c_inside_a_finalizer_is_not_lost() -> None:
    """A hard stop that lands in a garbage collector's ``__del__`` (where Python would swallow it and
    print "Exception ignored") is asked again once the finalizer has returned."""
    from rich.console import Console

    from mtcolor_batch.jobs.batch import StopController

    class Finalized:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C arrives during collection
            time.sleep(0.05)  # the handler has run in here (between bytecodes) and must not raise

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / `&`
    with StopController(Console(file=io.StringIO())) as stop:
        stop.requested = True  # the first Ctrl-C
        obj = Finalized()
        with pytest.raises(KeyboardInterrupt):
            del obj  # the finalizer returns normally; the stop arrives right after
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is before
