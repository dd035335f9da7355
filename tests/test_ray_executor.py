"""``run --executor ray`` on a local 2-CPU Ray instance with the tiny bundle (CPU, tiny images).

One 30-file tree is colorized by the local runner (the reference), by Ray with a worker killed
mid-run, and by a Ray driver that is itself killed with SIGKILL and then restarted. Each must give
the reference's bytes, every file exactly once, and a consistent journal.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.core.config import Profile, load_profile
from mtcolor_batch.evaluate.verify import verify_folder
from mtcolor_batch.jobs.journal import Journal, journal_path
from mtcolor_batch.jobs.runner import RunRequest, console_for_run, run_batch
from mtcolor_batch.testing.c2pa_strip import without_manifest
from mtcolor_batch.testing.faults import CrashOnce

N_FILES = 30
FAST = {
    "device": "cpu",
    "sampling.steps": 2,
    "sampling.working_long_side": 32,
    "sampling.tile_size": 64,
    "sampling.tile_overlap": 0,
    "perception.size": 64,
}
FAST_YAML = """\
name: test-ray
device: cpu
sampling: {steps: 2, working_long_side: 32, tile_size: 64, tile_overlap: 0}
perception: {size: 64}
"""


def make_tree(root: Path, n: int = N_FILES) -> list[str]:
    """``n`` small gray scans in 3 folders and 3 formats (PNG, JPEG, TIFF); returns relative paths."""
    rng = np.random.default_rng(7)
    rels = []
    for i in range(n):
        ext = (".png", ".jpg", ".tif")[i % 3]
        rel = f"box{i % 3}/scan{i:02d}{ext}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:48, 0:64]
        img = (96 + 60 * np.sin(xx / (4 + i % 5)) + rng.normal(0, 8, (48, 64))).clip(0, 255)
        Image.fromarray(img.astype(np.uint8), "L").save(root / rel)
        rels.append(rel)
    return sorted(rels)


def fast_profile() -> Profile:
    return load_profile(None, FAST)


def outputs(out: Path) -> dict[str, bytes]:
    """Every visible file of an output tree (hidden .mtcolor and temps excluded)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    }


def images(out: Path) -> dict[str, bytes]:
    """Output images only, without their C2PA manifests (signed anew by each run, see
    test_content_credentials): the JSON records carry the clock and per-run timings by design."""
    found = {}
    for rel, data in outputs(out).items():
        if rel.endswith(".tif"):  # the manifest sits inside the TIFF's IFDs: compare the pixels
            found[rel] = tifffile.imread(io.BytesIO(data)).tobytes()
        elif not rel.endswith(".json"):
            found[rel] = without_manifest(data)
    return found


def temps(out: Path) -> list[Path]:
    return [p for p in out.rglob("*mtcolor-tmp*")]


def rows(out: Path) -> dict[str, dict]:
    db = sqlite3.connect(f"file:{journal_path(out, None)}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return {r["relpath"]: dict(r) for r in db.execute("SELECT * FROM files")}
    finally:
        db.close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("ray") / "scans"
    return root, make_tree(root)


@pytest.fixture(scope="module")
def reference(tree, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local runner's outputs, with the 1 torch thread (conftest) that Ray gives each 1-CPU worker.

    CPU float reductions depend on the thread count, so byte identity holds at equal thread counts
    (as on equal GPUs); ``OMP_NUM_THREADS=1 mtcolor-batch run ...`` reproduces Ray's CPU outputs.
    """

    root, _ = tree
    out = tmp_path_factory.mktemp("ray-ref") / "local"
    code = run_batch(RunRequest(scans=root, profile=fast_profile(), out=out, model=str(tiny_bundle)))
    assert code == 0
    return out


def ray_run(root: Path, out: Path, bundle: Path, **kwargs) -> int:
    from mtcolor_batch.jobs.executors.ray import RayExecutor

    executor = RayExecutor(workers=2, gpus_per_worker=0, **kwargs)
    request = RunRequest(scans=root, profile=fast_profile(), out=out, model=str(bundle))
    return run_batch(request, console_for_run(), executor=executor)


def assert_complete(out: Path, reference: Path, rels: list[str]) -> dict[str, dict]:
    """Every file done once in the journal, the reference's image bytes, no extra or temp file."""
    journal = rows(out)
    assert sorted(journal) == rels
    assert all(r["state"] == "done" and r["completions"] == 1 for r in journal.values()), journal
    assert images(out) == images(reference)
    assert all(v.valid for v in verify_folder(out))  # every worker signed what it wrote
    assert set(outputs(out)) == set(outputs(reference))  # exactly one image + one record per file
    assert not temps(out)
    with Journal(journal_path(out, None)) as j:
        assert j.check() == []
    return journal


@pytest.mark.slow
def test_worker_killed_mid_run_matches_local_runner(ray_local, tree, reference, tiny_bundle, tmp_path):
    """A Ray run in which one worker dies (os._exit) mid-file: same bytes as local, nothing lost."""
    root, rels = tree
    flag = tmp_path / "worker-died"
    code = ray_run(root, tmp_path / "out", tiny_bundle, fault=CrashOnce(str(flag), 4))
    assert code == 0
    assert flag.exists(), "the fault hook never fired: no worker was killed"
    journal = assert_complete(tmp_path / "out", reference, rels)
    assert all(r["attempts"] == 1 for r in journal.values())  # dispatched once; Ray retried in place
    assert len(rels) == N_FILES


@pytest.mark.slow
def test_driver_killed_then_restarted_resumes_from_journal(ray_local, tree, reference, tiny_bundle, tmp_path):
    """SIGKILL the driver (a CLI process on the same Ray cluster) mid-run, then run again."""
    root, rels = tree
    out = tmp_path / "out"
    profile = tmp_path / "fast.yaml"
    profile.write_text(FAST_YAML)
    address = ray_local.get_runtime_context().gcs_address
    cmd = [
        sys.executable, "-m", "mtcolor_batch", "run", str(root), "--out", str(out),
        "--model", str(tiny_bundle), "--profile", str(profile),
        "--executor", "ray", "--address", address, "--workers", "2", "--gpus-per-worker", "0",
    ]  # fmt: skip
    log = (tmp_path / "driver.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    done_at_kill = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal_path(out, None).exists():
                try:
                    done_at_kill = sum(r["state"] == "done" for r in rows(out).values())
                except sqlite3.Error:
                    done_at_kill = 0
                if done_at_kill >= 3:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "driver.log").read_text()[-3000:]
    before = rows(out)
    done_before = {k for k, r in before.items() if r["state"] == "done"}
    assert 3 <= len(done_before) < N_FILES
    assert {r["state"] for k, r in before.items() if k not in done_before} == {"running"}

    code = ray_run(root, out, tiny_bundle)  # the restarted driver
    assert code == 0
    journal = assert_complete(out, reference, rels)
    for rel, row in journal.items():
        # done before the kill: skipped, not redone; in flight or queued: dispatched again
        assert row["attempts"] == (1 if rel in done_before else 2), (rel, row)


def test_missing_ray_is_one_clear_line(tmp_path: Path, tiny_bundle: Path, monkeypatch) -> None:
    """No Ray installed: exit 2, one line saying how to install it, nothing created."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.new("L", (32, 32), 90).save(scans / "a.png")
    result = CliRunner().invoke(app, ["run", str(scans), "--model", str(tiny_bundle), "--executor", "ray"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--executor ray needs Ray" in text and "mtcolor-batch[ray]" in text
    assert "Traceback" not in result.output
    assert not (tmp_path / "scans-colorized").exists()


def test_ray_options_need_ray_executor(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(tmp_path), "--workers", "2"])
    assert result.exit_code == 2 and "need --executor ray" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("resources", "workers", "per", "expected"),
    [
        ({"CPU": 16.0, "GPU": 4.0}, None, None, (4, 1.0)),  # one worker per GPU by default
        ({"CPU": 16.0, "GPU": 4.0}, None, 0.5, (8, 0.5)),  # two model copies per GPU
        ({"CPU": 16.0, "GPU": 4.0}, 3, None, (3, 1.0)),
        ({"CPU": 8.0}, None, None, (8, 0.0)),  # CPU-only cluster: one worker per CPU
        ({"CPU": 8.0}, 2, 0, (2, 0.0)),
    ],
)
def test_worker_count_and_gpus_follow_the_cluster(monkeypatch, resources, workers, per, expected) -> None:
    """The GPU defaults, checked without GPUs: the sizing reads only ``ray.cluster_resources()``."""
    from types import SimpleNamespace

    from mtcolor_batch.jobs.executors import ray as ray_executor

    fake = SimpleNamespace(cluster_resources=lambda: resources)
    monkeypatch.setattr(ray_executor, "require_ray", lambda: fake)
    executor = ray_executor.RayExecutor(workers=workers, gpus_per_worker=per)
    assert executor.resources() == expected


def test_more_gpus_per_worker_than_the_cluster_has_is_a_user_error(monkeypatch) -> None:
    from types import SimpleNamespace

    from mtcolor_batch.core.errors import UserError
    from mtcolor_batch.jobs.executors import ray as ray_executor

    fake = SimpleNamespace(cluster_resources=lambda: {"CPU": 4.0, "GPU": 1.0})
    monkeypatch.setattr(ray_executor, "require_ray", lambda: fake)
    with pytest.raises(UserError, match="--gpus-per-worker 2 but the Ray cluster has 1 GPU"):
        ray_executor.RayExecutor(gpus_per_worker=2).resources()
    with pytest.raises(UserError, match="bad --workers 0"):
        ray_executor.RayExecutor(workers=0)
