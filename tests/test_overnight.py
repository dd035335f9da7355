"""Regression tests for the overnight-proofing classes: one bad file never stops the archive, no
output overwrites another, a damaged journal is said out loud, setup errors are setup errors.

Each test targets one class of the adversarial sweep and fails on the code before the fix; the
whole tree of attacks goes through the real CLI in ``test_adversarial.py``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.core.config import ScanSettings
from mtcolor_batch.core.errors import ScanError, UserError
from mtcolor_batch.output.writer import output_path
from mtcolor_batch.scan.discover import discover
from mtcolor_batch.scan.imageio import load_scan
from mtcolor_batch.testing.profiles import fast_profile_yaml

PROFILE = fast_profile_yaml(None, auto_instances=False)


def gray(path: Path, value: int = 90, size: tuple[int, int] = (40, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    arr = np.clip(rng.normal(value, 20, (size[1], size[0])), 0, 255).astype(np.uint8)
    Image.fromarray(arr, "L").save(path)
    return path


def invoke(*args: str | Path):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture()
def profile(tmp_path: Path) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(PROFILE)
    return path


def run(scans: Path, bundle: Path, profile: Path, *extra: str | Path):
    return invoke("run", scans, "--model", bundle, "--profile", profile, "--device", "cpu", *extra)


def _in_thread(fn, timeout: float = 20.0):
    """Run ``fn`` in a thread; (finished, result or exception)."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["value"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box.get("value")


# -- a single file must not stop the run -----------------------------------------------------------


@pytest.mark.slow
def test_non_utf8_names_go_end_to_end(tmp_path: Path, tiny_bundle: Path, profile: Path) -> None:
    scans = tmp_path / "scans"
    raw = os.fsdecode(b"caf\xe9.png")
    gray(scans / raw)
    gray(scans / "plain.png", 120)
    result = run(scans, tiny_bundle, profile)
    assert result.exit_code == 0, result.output
    out = tmp_path / "scans-colorized"
    db = sqlite3.connect(out / ".mtcolor" / "journal.sqlite")
    rows = dict(db.execute("SELECT relpath, state FROM files").fetchall())
    assert rows == {"caf\\xe9.png": "done", "plain.png": "done"}
    rec = json.loads((out / "caf\\xe9.color.json").read_text(encoding="utf-8"))
    assert rec["input"]["relpath"] == "caf\\xe9.png" and (out / rec["output"]["path"]).is_file()
    for k in (1, 2):  # the shard hash takes the name too
        assert run(scans, tiny_bundle, profile, "--out", tmp_path / "sh", "--shard", f"{k}/2").exit_code == 0


@pytest.mark.slow
def test_deeply_nested_sidecar_does_not_stop_discovery_or_hints_check(tmp_path: Path) -> None:
    gray(tmp_path / "a.png")
    gray(tmp_path / "b.png")
    (tmp_path / "a.png.yaml").write_text("instances:\n  - " + "[" * 600 + "]" * 600 + "\n")
    assert [f.relpath for f in discover(tmp_path)] == ["a.png", "b.png"]
    result = invoke("hints", "check", tmp_path)
    assert result.exit_code == 1 and "nesting deeper" in result.output


def test_profile_file_uses_the_guarded_loader(tmp_path: Path) -> None:
    from mtcolor_batch.core.config import load_profile

    deep = tmp_path / "deep.yaml"
    deep.write_text("sampling: " + "[" * 600 + "]" * 600 + "\n")
    with pytest.raises(UserError, match="nesting deeper"):
        load_profile(deep)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(UserError, match="not UTF-8"):
        load_profile(latin)


def test_sidecar_size_cap_is_checked_before_reading(tmp_path: Path, monkeypatch) -> None:
    import builtins
    import io

    gray(tmp_path / "a.png")
    big = tmp_path / "a.png.yaml"
    with open(big, "wb") as fh:
        fh.truncate(50 * 1024 * 1024)  # sparse: costs no disk
    opened: list[str] = []
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def spy(real):
        def wrapper(file, *args, **kwargs):  # type: ignore[no-untyped-def]
            opened.append(os.fspath(file) if isinstance(file, str | Path) else "")
            return real(file, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(builtins, "open", spy(real_open))
    monkeypatch.setattr(io, "open", spy(real_io_open))
    monkeypatch.setattr(os, "open", spy(real_os_open))
    assert [f.relpath for f in discover(tmp_path)] == ["a.png"]
    assert str(big) not in opened


@pytest.mark.parametrize("kind", ["fifo", "fifo-sidecar", "dev-null-link", "socket"])
def test_non_regular_files_fail_alone_and_are_never_opened(tmp_path: Path, kind: str) -> None:
    import socket

    from mtcolor_batch.jobs.runner import plan_files

    scans = tmp_path / "scans"
    gray(scans / "good.png")
    target = scans / "x.jpg"
    sock = None
    done = True
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "fifo-sidecar":
        gray(target)
        os.mkfifo(scans / "x.jpg.yaml")
    elif kind == "dev-null-link":
        os.symlink("/dev/null", target)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(target))
    try:
        done, files = _in_thread(lambda: discover(scans))
        assert done, "discovery blocked on a non-regular file"
        assert [f.relpath for f in files] == ["good.png", "x.jpg"]
        done, planned = _in_thread(
            lambda: plan_files(files, None, profile_fp="p", model_fp="m", out_dir=tmp_path / "out")
        )
        assert done, "planning blocked on a non-regular file"
        assert not isinstance(planned, BaseException), planned
        if kind != "fifo-sidecar":
            done, err = _in_thread(lambda: load_scan(target, scans, ScanSettings()))
            assert done and isinstance(err, ScanError) and "not a regular file" in err.message
    finally:
        if sock is not None:
            sock.close()
        if kind.startswith("fifo") and not done:  # unblock a stuck reader so the test process can end
            fd = os.open(scans / ("x.jpg" if kind == "fifo" else "x.jpg.yaml"), os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)


def test_mislabelled_huge_file_is_refused_from_its_header(tmp_path: Path, monkeypatch) -> None:
    import mtcolor_batch.jobs.runner as runner
    import mtcolor_batch.scan.imageio as imageio
    from mtcolor_batch.jobs.runner import plan_files

    big = tmp_path / "big.tif"
    with open(big, "wb") as fh:
        fh.write(b"this is no TIFF header at all")
        fh.truncate(64 * 1024 * 1024)

    def no_hash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a non-image was hashed")

    monkeypatch.setattr(imageio.hashlib, "sha256", no_hash)  # hashlib is global: undone below
    with pytest.raises(ScanError, match="not an image"):
        load_scan(big, tmp_path, ScanSettings())
    monkeypatch.undo()
    monkeypatch.setattr(runner, "sha256_file", no_hash)
    [planned] = plan_files(discover(tmp_path), None, profile_fp="p", model_fp="m", out_dir=tmp_path / "o")
    assert planned.sha256 is None


# -- no output may overwrite another --------------------------------------------------------------


def test_output_names_are_unique_and_renames_are_noted(tmp_path: Path) -> None:
    for name in ("photo.JPG", "photo.jpg", "a.png", "a.jpg", "a_png.png", "a_png~2.png", "b.png"):
        gray(tmp_path / name)
    files = discover(tmp_path)
    names = [output_path(tmp_path, f.relpath, ".color", stem=f.stem).name.lower() for f in files]
    records = [output_path(tmp_path, f.relpath, ".color", True, f.stem).name.lower() for f in files]
    assert len(set(names)) == len(names) and len(set(records)) == len(records)
    noted = {f.relpath: f.name_note for f in files if f.name_note}
    assert set(noted) == {"photo.jpg", "a_png.png"} and "already takes" in noted["a_png.png"]
    assert [f.stem for f in files if f.relpath == "b.png"] == ["b"]
    assert files == discover(tmp_path)  # deterministic


def test_out_holding_originals_is_refused(tmp_path: Path, tiny_bundle: Path, profile: Path) -> None:
    scans = tmp_path / "scans"
    gray(scans / "f1.png")
    out = tmp_path / "out"
    original = gray(out / "f1.color.png", 7)
    before = original.read_bytes()
    result = run(scans, tiny_bundle, profile, "--out", out)
    assert result.exit_code == 2 and "not mtcolor-batch outputs" in result.output
    assert original.read_bytes() == before and not (out / ".mtcolor").exists()


def test_output_folders_inside_the_tree_are_not_scanned(tmp_path: Path) -> None:
    gray(tmp_path / "a.png")
    gray(tmp_path / "old-run" / "a.color.png")
    (tmp_path / "old-run" / ".mtcolor").mkdir()
    from mtcolor_batch.scan.discover import discover_report

    found = discover_report(tmp_path)
    assert [f.relpath for f in found.files] == ["a.png"]
    assert any("old-run" in w for w in found.warnings)


def test_a_scan_named_as_a_mask_stays_a_scan_with_a_warning(tmp_path: Path) -> None:
    gray(tmp_path / "a.png")
    gray(tmp_path / "b.png")
    gray(tmp_path / "masks" / "m.png")
    gray(tmp_path / "a_masks" / "n.png")
    Image.new("1", (40, 32), 1).save(tmp_path / "bilevel.png")
    two = np.zeros((32, 40), np.uint8)
    two[5:20, 5:20] = 255
    Image.fromarray(two, "L").save(tmp_path / "painted.png")
    (tmp_path / "a.png.yaml").write_text(
        "instances:\n"
        + "".join(f"  - mask: {m}\n    color: red\n" for m in ("b.png", "masks/m.png", "a_masks/n.png"))
        + "".join(f"  - mask: {m}\n    color: red\n" for m in ("bilevel.png", "painted.png"))
    )
    from mtcolor_batch.scan.discover import discover_report

    found = discover_report(tmp_path)
    assert [f.relpath for f in found.files] == ["a.png", "b.png"]  # the others are masks by the rule
    assert any(w.startswith("b.png: named as a mask by a.png.yaml") for w in found.warnings)


# -- the journal ------------------------------------------------------------------------------------


def _done_run(tmp_path: Path, bundle: Path, profile: Path, n: int = 2) -> tuple[Path, Path]:
    scans = tmp_path / "scans"
    for i in range(n):
        gray(scans / f"s{i}.png", 60 + 30 * i)
    result = run(scans, bundle, profile)
    assert result.exit_code == 0, result.output
    return scans, tmp_path / "scans-colorized"


@pytest.mark.parametrize("damage", ["zero-bytes", "deleted", "garbage", "truncated"])
@pytest.mark.slow
def test_lost_or_damaged_journal_stops_the_run_and_rebuild_restores_it(
    tmp_path: Path, tiny_bundle: Path, profile: Path, damage: str
) -> None:
    scans, out = _done_run(tmp_path, tiny_bundle, profile)
    journal = out / ".mtcolor" / "journal.sqlite"
    outputs = {p: p.read_bytes() for p in out.glob("*.color.*")}
    data = journal.read_bytes()
    if damage == "zero-bytes":
        journal.write_bytes(b"")
    elif damage == "deleted":
        journal.unlink()
    elif damage == "garbage":
        journal.write_bytes(os.urandom(len(data)))
    else:
        journal.write_bytes(data[: len(data) // 2] + b"\x00" * 100)
    for extra in ((), ("--dry-run",)):
        result = run(scans, tiny_bundle, profile, *extra)
        assert result.exit_code == 2, result.output
        assert "journal rebuild" in result.output and "Traceback" not in result.output
    assert {p: p.read_bytes() for p in out.glob("*.color.*")} == outputs  # nothing redone
    rebuilt = invoke("journal", "rebuild", out)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "2 file(s) done" in rebuilt.output
    again = run(scans, tiny_bundle, profile)
    assert again.exit_code == 0, again.output
    db = sqlite3.connect(journal)
    assert dict(db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall()) == {"done": 2}
    assert dict(db.execute("SELECT relpath, completions FROM files").fetchall()) == {"s0.png": 1, "s1.png": 1}
    assert all(r[0] is not None for r in db.execute("SELECT input_size FROM files"))  # fast path restored
    assert {p: p.read_bytes() for p in out.glob("*.color.*")} == outputs


@pytest.mark.slow
def test_rebuild_does_not_trust_a_record_whose_output_changed(
    tmp_path: Path, tiny_bundle: Path, profile: Path
) -> None:
    scans, out = _done_run(tmp_path, tiny_bundle, profile)
    (out / ".mtcolor" / "journal.sqlite").unlink()
    with open(out / "s1.color.png", "ab") as fh:
        fh.write(b"tampered")
    result = invoke("journal", "rebuild", out)
    assert result.exit_code == 0 and "1 file(s) done" in result.output and "does not match" in result.output


def test_verify_inputs_rehashes_a_same_size_change_with_mtime_restored(tmp_path: Path) -> None:
    from mtcolor_batch.core.fs import sha256_file as file_sha256
    from mtcolor_batch.jobs.journal import Journal
    from mtcolor_batch.jobs.runner import plan_files
    from mtcolor_batch.stages.pipeline import fingerprint

    scan = gray(tmp_path / "s" / "a.png")
    files = discover(tmp_path / "s")
    st = scan.stat()
    with Journal(tmp_path / "j.sqlite") as journal:
        fp = fingerprint(file_sha256(scan), None, "p", "m")
        journal.upsert_pending("a.png", fp, size=st.st_size, mtime=st.st_mtime_ns, sha256=file_sha256(scan))
        journal.mark_done("a.png", [], {})
        data = bytearray(scan.read_bytes())
        data[-20] ^= 0xFF  # same size, different bytes
        scan.write_bytes(bytes(data))
        os.utime(scan, ns=(st.st_atime_ns, st.st_mtime_ns))
        trusting = plan_files(files, journal, profile_fp="p", model_fp="m", out_dir=tmp_path)
        verifying = plan_files(
            files, journal, profile_fp="p", model_fp="m", out_dir=tmp_path, verify_inputs=True
        )
    assert trusting[0].fingerprint == fp  # the documented fast path
    assert verifying[0].action == "changed"


# -- setup errors are setup errors ------------------------------------------------------------------


def test_out_is_a_file(tmp_path: Path, tiny_bundle: Path, profile: Path) -> None:
    gray(tmp_path / "scans" / "a.png")
    (tmp_path / "out").write_text("x")
    result = run(tmp_path / "scans", tiny_bundle, profile, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "is an existing file" in result.output


def test_read_only_output_folder(tmp_path: Path, tiny_bundle: Path, profile: Path, monkeypatch) -> None:
    gray(tmp_path / "scans" / "a.png")
    real_mkdir = Path.mkdir

    def read_only(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.is_relative_to(tmp_path / "out"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = run(tmp_path / "scans", tiny_bundle, profile, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "Read-only file system" in result.output


def test_disk_full_before_the_journal_exists(
    tmp_path: Path, tiny_bundle: Path, profile: Path, monkeypatch
) -> None:
    import mtcolor_batch.jobs.journal as journal_mod

    gray(tmp_path / "scans" / "a.png")

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(journal_mod.sqlite3, "connect", full)
    result = run(tmp_path / "scans", tiny_bundle, profile)
    assert result.exit_code == 2 and "disk is full" in result.output


def test_non_utf8_manifest_is_a_setup_error(tmp_path: Path, tiny_bundle: Path, profile: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = bundle / "mtcolor.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"name"', b'"n\xe9me"', 1))
    gray(tmp_path / "scans" / "a.png")
    result = run(tmp_path / "scans", bundle, profile)
    assert result.exit_code == 2 and "not UTF-8" in result.output
    verify = invoke("models", "verify", bundle)
    assert verify.exit_code == 2 and "not UTF-8" in verify.output


@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1", str(2**63)])
def test_seed_out_of_range_is_refused_up_front(
    tmp_path: Path, tiny_bundle: Path, profile: Path, seed: str
) -> None:
    gray(tmp_path / "scans" / "a.png")
    result = run(tmp_path / "scans", tiny_bundle, profile, "--seed", seed)
    assert result.exit_code == 2 and "out of range" in result.output
    assert not (tmp_path / "scans-colorized").exists()


def test_unreadable_folder_is_a_counted_warning(tmp_path: Path, monkeypatch) -> None:
    gray(tmp_path / "a.png")
    gray(tmp_path / "locked" / "b.png")
    real_scandir = os.scandir

    def scandir(path=".", *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path, *args, **kwargs)

    if os.geteuid() == 0:  # root reads a chmod 000 folder anyway: make it unreadable for the walk
        monkeypatch.setattr(os, "scandir", scandir)
    else:
        (tmp_path / "locked").chmod(0)
    try:
        from mtcolor_batch.scan.discover import discover_report

        found = discover_report(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert [f.relpath for f in found.files] == ["a.png"]
    assert any(w.startswith("1 folder(s) could not be read") and "locked" in w for w in found.warnings)


# -- the checks must agree -------------------------------------------------------------------------


@pytest.mark.parametrize("mask", ["wrong-size", "not-an-image", "truncated", "bomb"])
@pytest.mark.slow
def test_hints_check_runs_the_mask_checks_run_runs(tmp_path: Path, mask: str) -> None:
    gray(tmp_path / "a.png", size=(40, 32))
    path = tmp_path / "a_coat.png"
    if mask == "wrong-size":
        Image.new("L", (20, 20), 255).save(path)
    elif mask == "not-an-image":
        path.write_bytes(b"not a png at all")
    elif mask == "bomb":
        Image.new("1", (20000, 20000)).save(path)  # 400 MP declared in a few kB
    else:
        Image.new("L", (40, 32), 255).save(path)
        path.write_bytes(path.read_bytes()[:-30])
    (tmp_path / "a.png.yaml").write_text("instances:\n  - mask: a_coat.png\n    color: red\n")
    result = invoke("hints", "check", tmp_path)
    assert result.exit_code == 1, result.output
    assert "a.png.yaml:2" in result.output and "mask 'a_coat.png'" in result.output


def test_verify_refuses_a_listed_pickle(tmp_path: Path, tiny_bundle: Path) -> None:
    from mtcolor_batch.model.bundle import sha256_file

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    pickle = bundle / "unet" / "diffusion_pytorch_model.bin"
    pickle.write_bytes(b"\x80\x04K\x01.")  # a pickle
    manifest = json.loads((bundle / "mtcolor.json").read_text())
    manifest["files"]["unet/diffusion_pytorch_model.bin"] = sha256_file(pickle)
    (bundle / "mtcolor.json").write_text(json.dumps(manifest))
    result = invoke("models", "verify", bundle)
    assert result.exit_code == 1 and "pickle" in result.output


# -- temps, locks, collisions with the journal, crashes, interrupts (runner/writer/lock) -------------


def test_temp_names_are_short_whatever_the_target_name(tmp_path: Path) -> None:
    from mtcolor_batch.core.fs import atomic_write_bytes

    target = tmp_path / ("n" * 230 + ".color.png")  # 240 bytes: the old temp name passed 255
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_temp_cleanup_spares_a_live_writer(tmp_path: Path) -> None:
    import subprocess
    import sys

    from mtcolor_batch.core.fs import TEMP_MARK, clean_stale_temps, temp_path

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    try:
        mine = temp_path(tmp_path)
        theirs = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{live.pid}-"))
        gone = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-"))
        other_host = tmp_path / f".mt000000-{int(dead.stdout)}-0123abcd{TEMP_MARK}"
        for p in (theirs, gone, other_host):
            p.write_bytes(b"half")
        assert clean_stale_temps(tmp_path) == [gone]
        assert theirs.exists() and other_host.exists()
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_plain_and_shard_runs_exclude_each_other(tmp_path: Path, tiny_bundle: Path, profile: Path) -> None:
    from mtcolor_batch.jobs.lock import RunLock

    scans = tmp_path / "scans"
    for i in range(3):
        gray(scans / f"s{i}.png", 50 + 40 * i)
    out = tmp_path / "out"
    (out / ".mtcolor").mkdir(parents=True)
    with RunLock(out, None):  # a plain run holds the folder
        result = run(scans, tiny_bundle, profile, "--out", out, "--shard", "1/2")
        assert result.exit_code == 2 and "plain run" in result.output
    with RunLock(out, (2, 2)):  # shard 2 runs: shard 1 may run beside it, a plain run may not
        assert run(scans, tiny_bundle, profile, "--out", out, "--shard", "1/2").exit_code == 0
        result = run(scans, tiny_bundle, profile, "--out", out)
        assert result.exit_code == 2 and "--shard runs are using" in result.output
        result = run(scans, tiny_bundle, profile, "--out", out, "--shard", "2/2")
        assert result.exit_code == 2 and "shard 2/2 is already running" in result.output


@pytest.mark.slow
def test_an_output_the_journal_records_for_another_file_is_never_replaced(
    tmp_path: Path, tiny_bundle: Path, profile: Path
) -> None:
    scans = tmp_path / "scans"
    gray(scans / "x.PNG", 40)
    assert run(scans, tiny_bundle, profile).exit_code == 0
    out = tmp_path / "scans-colorized"
    first = (out / "x.color.png").read_bytes()
    (scans / "x.PNG").unlink()
    gray(scans / "x.png", 200)  # a different scan that would write the same output name
    result = run(scans, tiny_bundle, profile)
    assert result.exit_code == 0, result.output
    assert (out / "x.color.png").read_bytes() == first
    rec = json.loads((out / "x~2.color.json").read_text())
    assert rec["input"]["relpath"] == "x.png" and any("x.PNG" in w for w in rec["warnings"])


CRASHER = """
import os, sys
from pathlib import Path
from mtcolor_batch.core.config import load_profile
from mtcolor_batch.jobs.runner import RunRequest, run_batch
from mtcolor_batch.stages.pipeline import Pipeline

class Crashing:
    def __init__(self, inner):
        self.inner, self.device = inner, inner.device
    def process(self, item, stage):
        if item.relpath == "b_poison.png":
            os._exit(137)  # as the OOM killer would
        return self.inner.process(item, stage)

req = RunRequest(scans=Path(sys.argv[1]), profile=load_profile(sys.argv[2]), model=sys.argv[3])
sys.exit(run_batch(req, pipeline_factory=lambda *a: Crashing(Pipeline.load(*a))))
"""


@pytest.mark.slow
def test_a_file_that_kills_the_process_every_time_is_capped(
    tmp_path: Path, tiny_bundle: Path, profile: Path
) -> None:
    import subprocess
    import sys

    scans = tmp_path / "scans"
    for name in ("a.png", "b_poison.png", "c.png", "d.png"):
        gray(scans / name, 30 + len(name) * 9)
    cmd = [sys.executable, "-c", CRASHER, str(scans), str(profile), str(tiny_bundle)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    codes = [subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300) for _ in range(3)]
    assert [c.returncode for c in codes] == [137, 137, 1], [c.stderr[-2000:] for c in codes]
    db = sqlite3.connect(tmp_path / "scans-colorized" / ".mtcolor" / "journal.sqlite")
    rows = {r[0]: r[1:] for r in db.execute("SELECT relpath, state, error, completions FROM files")}
    assert {k: v[0] for k, v in rows.items()} == {
        "a.png": "done",
        "b_poison.png": "failed",
        "c.png": "done",
        "d.png": "done",
    }
    assert "crashed the process 2 times" in rows["b_poison.png"][1]
    assert all(v[2] == 1 for k, v in rows.items() if k != "b_poison.png")  # each good file done once
    assert "crashed the process 2 times" in codes[2].stderr


@pytest.mark.slow
def test_sidecar_instance_cap(tmp_path: Path, tiny_bundle: Path, profile: Path) -> None:
    gray(tmp_path / "scans" / "a.png")
    gray(tmp_path / "scans" / "b.png", 150)
    boxes = "".join(f"  - box: [0, 0, {1 + i % 30}, 10]\n    color: red\n" for i in range(300))
    (tmp_path / "scans" / "a.png.yaml").write_text("instances:\n" + boxes)
    result = run(tmp_path / "scans", tiny_bundle, profile)
    assert result.exit_code == 1 and "300 instances, over the limit of 256" in " ".join(result.output.split())
    check = invoke("hints", "check", tmp_path / "scans")
    assert check.exit_code == 1 and "over the limit of 256" in check.output


DOUBLE_CTRL_C_PROFILE = fast_profile_yaml(None, steps=6, auto_instances=False)


@pytest.mark.slow
def test_double_ctrl_c_always_exits_130_cleanly(tmp_path: Path, tiny_bundle: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    scans = tmp_path / "scans"
    for i in range(12):
        gray(scans / f"f{i:02d}.png", 20 * i)
    prof = tmp_path / "p.yaml"
    prof.write_text(DOUBLE_CTRL_C_PROFILE)
    cmd = [sys.executable, "-m", "mtcolor_batch", "run", str(scans), "--model", str(tiny_bundle)]
    cmd += ["--profile", str(prof), "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    journal = tmp_path / "scans-colorized" / ".mtcolor" / "journal.sqlite"
    for gap in (0.0, 0.01, 0.2):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 120
        while time.monotonic() < end and proc.poll() is None:  # wait for the loop to be running
            try:
                db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1)
                running = db.execute("SELECT COUNT(*) FROM files WHERE state = 'running'").fetchone()[0]
                db.close()
            except sqlite3.Error:
                running = 0
            if running:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # a third one during shutdown changes nothing
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (gap, proc.returncode, err[-2000:])
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
        assert not list((tmp_path / "scans-colorized").rglob("*mtcolor-tmp*"))
