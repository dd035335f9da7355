"""One archive holding every attack of the adversarial sweep, through the real CLI in a subprocess.

The tree mixes good scans with bad names (Latin-1 bytes, 230-byte names, names whose outputs
collide), non-regular files (FIFO, socket, a link to /dev/zero), hostile sidecars (600 levels deep,
50 MB, a FIFO, 300 boxes, a wrong-size mask), lying files (a 64 MB "TIFF" of zeros, a truncated
JPEG, an empty PNG), an earlier run's output folder and a scan that a sidecar names as a mask.
Then: every good file is done exactly once, every bad one fails alone with its one-line reason, no
output overwrites another, no original changes, a rerun redoes nothing, and a journal emptied
afterwards stops the next run until ``journal rebuild`` restores it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

PROFILE = (
    "sampling:\n  steps: 2\n  working_long_side: 32\n  tile_size: 64\n  tile_overlap: 0\n"
    "perception:\n  size: 64\n  auto_instances: false\n"
)
LONG = "n" * 226 + ".png"  # its output name (226 + .color.png) still fits 255 bytes; old temps did not
LATIN1 = os.fsdecode(b"caf\xe9.png")

GOOD = {  # journal key -> output stem expected
    "a.jpg": "a_jpg",
    "a.png": "a_png",
    "a_png.png": "a_png~2",
    "photo.JPG": "photo_jpg",
    "photo.jpg": "photo_jpg~2",
    "caf\\xe9.png": "caf\\xe9",
    LONG: LONG[:-4],
    "nested/deep/c.tif": "c",
    "maskref/x.png": "x",
    "maskref/y.png": "y",  # named as a mask by x.png.yaml, but an ordinary scan: kept, with a warning
}
BAD = {  # journal key -> what its one-line reason must say
    "bad/pipe.jpg": "FIFO",
    "bad/sock.png": "socket",
    "bad/zero.png": "character device",
    "bad/fifoside.png": "sidecar is a FIFO",
    "bad/deep.png": "nesting deeper than",
    "bad/bigside.png": "over the 262144-byte limit",
    "bad/huge.tif": "not an image",
    "bad/trunc.jpg": "corrupt or truncated",
    "bad/empty.png": "empty file",
    "bad/wm.png": "is 10x10 px but the scan is 40x32",
    "bad/many.png": "300 instances, over the limit of 256",
}


def _gray(path: Path, seed: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (32, 40), dtype=np.uint8)
    Image.fromarray(arr, "L").save(path, format=fmt)


def build_tree(root: Path) -> list[socket.socket]:
    """The archive; returns the sockets to close at the end."""
    seed = iter(range(1000))
    for name in ("a.jpg", "a.png", "a_png.png", "photo.JPG", "photo.jpg", LATIN1, LONG):
        _gray(root / name, next(seed), "JPEG" if name.lower().endswith(".jpg") else "PNG")
    _gray(root / "nested" / "deep" / "c.tif", next(seed), "TIFF")
    _gray(root / "maskref" / "x.png", next(seed))
    _gray(root / "maskref" / "y.png", next(seed))
    (root / "maskref" / "x.png.yaml").write_text("instances:\n  - mask: y.png\n    color: navy\n")
    _gray(root / "masked" / "m0.png", next(seed))
    Image.new("L", (40, 32), 255).save(root / "masked" / "masks_m.png")
    (root / "masked" / "m0.png.yaml").write_text("instances:\n  - mask: masks_m.png\n    color: red\n")
    GOOD["masked/m0.png"] = "m0"  # masks_m.png holds one tone: only a mask (the mask-naming rule)
    old = root / "old-run"
    (old / ".mtcolor").mkdir(parents=True)
    _gray(old / "a.color.png", next(seed))  # an earlier run's output left in the tree: never scanned
    bad = root / "bad"
    bad.mkdir()
    os.mkfifo(bad / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(bad / "sock.png"))
    os.symlink("/dev/zero", bad / "zero.png")
    _gray(bad / "fifoside.png", next(seed))
    os.mkfifo(bad / "fifoside.png.yaml")
    _gray(bad / "deep.png", next(seed))
    (bad / "deep.png.yaml").write_text("instances:\n  - " + "[" * 600 + "]" * 600 + "\n")
    _gray(bad / "bigside.png", next(seed))
    with open(bad / "bigside.png.yaml", "wb") as fh:
        fh.truncate(50 * 1024 * 1024)
    with open(bad / "huge.tif", "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    _gray(bad / "trunc.jpg", next(seed), "JPEG")
    data = (bad / "trunc.jpg").read_bytes()
    (bad / "trunc.jpg").write_bytes(data[: len(data) // 3])
    (bad / "empty.png").write_bytes(b"")
    _gray(bad / "wm.png", next(seed))
    Image.new("L", (10, 10), 255).save(bad / "wm_mask.png")
    (bad / "wm.png.yaml").write_text("instances:\n  - mask: wm_mask.png\n    color: red\n")
    _gray(bad / "many.png", next(seed))
    boxes = "".join(f"  - box: [0, 0, {1 + i % 30}, 10]\n    color: red\n" for i in range(300))
    (bad / "many.png.yaml").write_text("instances:\n" + boxes)
    return [sock]


def snapshot(root: Path) -> dict[bytes, tuple[str, str]]:
    """Every entry (raw name) -> (kind, sha256 for regular files): links and FIFOs are never read."""
    out: dict[bytes, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = os.fsencode(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256()
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
                out[rel] = ("file", digest.hexdigest())
            else:
                out[rel] = (
                    stat.filemode(st.st_mode)[0],
                    os.readlink(path) if stat.S_ISLNK(st.st_mode) else "",
                )
    return out


def rows(journal: Path) -> dict[str, dict]:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        cur = db.execute("SELECT relpath, state, error, outputs, completions FROM files")
        return {
            r[0]: {"state": r[1], "error": r[2], "outputs": json.loads(r[3]), "completions": r[4]}
            for r in cur
        }
    finally:
        db.close()


def test_one_archive_with_every_attack(tmp_path: Path, tiny_bundle: Path) -> None:
    root = tmp_path / "archive"
    socks = build_tree(root)
    out = tmp_path / "archive-colorized"
    profile = tmp_path / "p.yaml"
    profile.write_text(PROFILE)
    cmd = [sys.executable, "-m", "mtcolor_batch", "run", str(root), "--model", str(tiny_bundle)]
    cmd += ["--profile", str(profile), "--device", "cpu", "--seed", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="300")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=600)

    try:
        before = snapshot(root)
        first = cli()
        assert first.returncode == 1, first.stderr[-3000:]
        assert "Traceback" not in first.stderr
        journal = out / ".mtcolor" / "journal.sqlite"
        got = rows(journal)
        assert set(got) == set(GOOD) | set(BAD), sorted(set(got) ^ (set(GOOD) | set(BAD)))
        for rel, stem in GOOD.items():  # every good file done exactly once, under its own name
            assert got[rel]["state"] == "done" and got[rel]["completions"] == 1, (rel, got[rel])
            image = Path(got[rel]["outputs"][0])
            assert image.name.startswith(stem + ".color."), (rel, image)
            record = json.loads((out / got[rel]["outputs"][1]).read_text(encoding="utf-8"))
            assert record["input"]["relpath"] == rel
        for rel, why in BAD.items():  # every bad file failed alone, with its one-line reason
            assert got[rel]["state"] == "failed", (rel, got[rel])
            assert why in got[rel]["error"] and "\n" not in got[rel]["error"], (rel, got[rel]["error"])
        outputs = [o.lower() for r in got.values() for o in r["outputs"]]
        assert len(outputs) == len(set(outputs)) == 2 * len(GOOD)  # no output overwrites another
        on_disk = [p for p in out.rglob("*") if p.is_file() and ".mtcolor" not in p.parts]
        assert len(on_disk) == 2 * len(GOOD) and not list(out.rglob("*mtcolor-tmp*"))
        assert snapshot(root) == before  # no original changed (and no FIFO or link was replaced)
        assert "maskref/y.png: named as a mask by maskref/x.png.yaml" in first.stderr
        assert "old-run" in first.stderr  # the earlier output folder was seen and skipped, out loud

        again = cli()  # a rerun redoes nothing
        assert again.returncode == 1 and "Traceback" not in again.stderr
        assert {k: v["completions"] for k, v in rows(journal).items()} == {
            k: v["completions"] for k, v in got.items()
        }

        journal.write_bytes(b"")  # the journal is lost: said out loud, nothing redone
        lost = cli()
        assert lost.returncode == 2 and "journal rebuild" in lost.stderr and "Traceback" not in lost.stderr
        rebuilt = subprocess.run(
            [sys.executable, "-m", "mtcolor_batch", "journal", "rebuild", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rebuilt.returncode == 0 and f"{len(GOOD)} file(s) done" in rebuilt.stderr, rebuilt.stderr
        final = cli()
        assert final.returncode == 1, final.stderr[-3000:]
        after = rows(journal)
        assert all(after[k]["state"] == "done" and after[k]["completions"] == 1 for k in GOOD)
        assert snapshot(root) == before
    finally:
        for s in socks:
            s.close()


# ---- overnight (issue 22): setup errors, stale results, stop requests --------------------------
# Each case below is run through the CLI; a setup error is exit 2 with one line, and leaves no
# journal behind (nothing was journaled, so nothing to untangle).

SETUP_ERRORS = {  # case -> (extra CLI args, profile YAML or None, what the one line must say)
    "guidance inf": (["--guidance", "inf"], None, "sampling.guidance_scale: Input should be a finite"),
    "guidance 1e308": (["--guidance", "1e308"], None, "sampling.guidance_scale: Input should be less"),
    "controlnet inf": (["--controlnet-scale", "inf"], None, "sampling.controlnet_scale: Input should be a"),
    "megapixels inf": (["--max-megapixels", "inf"], None, "scan.max_megapixels: Input should be a finite"),
    "megapixels 1e308": (["--max-megapixels", "1e308"], None, "scan.max_megapixels: Input should be less"),
    "seed 5000 digits": ([], "seed: " + "9" * 5000 + "\n", "number too long (5000 characters)"),
    "suffix 300 chars": ([], "output:\n  suffix: " + "x" * 300 + "\n", "output.suffix is 300 characters"),
    "suffix newline": ([], 'output:\n  suffix: ".a\\nb"\n', "control characters"),
    "suffix dots": ([], 'output:\n  suffix: ".."\n', "must not contain '..'"),
    "shard empty": (["--shard", ""], None, "--shard is empty"),
    "gpus nan": (["--executor", "ray", "--gpus-per-worker", "nan"], None, "bad --gpus-per-worker nan"),
    "address empty": (["--executor", "ray", "--address", ""], None, "--address is empty"),
    "address http": (["--executor", "ray", "--address", "http://head:8265"], None, "is a web address"),
}


@pytest.mark.parametrize("case", sorted(SETUP_ERRORS))
def test_overnight_absurd_settings_are_setup_errors(case: str, tmp_path: Path, tiny_bundle: Path) -> None:
    from typer.testing import CliRunner

    from mtcolor_batch.cli import app

    args, profile_text, why = SETUP_ERRORS[case]
    _gray(tmp_path / "arc" / "a.png", 1)
    out = tmp_path / "out"
    cmd = ["run", str(tmp_path / "arc"), "--out", str(out), "--model", str(tiny_bundle), "--device", "cpu"]
    if profile_text is not None:
        (tmp_path / "p.yaml").write_text(profile_text)
        cmd += ["--profile", str(tmp_path / "p.yaml")]
    result = CliRunner().invoke(app, [*cmd, *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and why in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (out / ".mtcolor").exists()  # nothing journaled


def test_overnight_model_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mtcolor_batch.cli import app

    _gray(tmp_path / "arc" / "a.png", 1)
    (tmp_path / "weights").mkdir()
    result = CliRunner().invoke(app, ["run", str(tmp_path / "arc"), "--model", str(tmp_path / "weights")])
    assert result.exit_code == 2
    assert "not a model bundle: mtcolor.json is missing" in result.output, result.output


def _overnight_cli(*args: str | Path) -> tuple[int, str]:
    """The CLI in this process (a tiny model loads in a second, a subprocess costs five)."""
    from typer.testing import CliRunner

    from mtcolor_batch.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def _overnight_run(scans: Path, out: Path, bundle: Path, tmp: Path, *extra: str | Path) -> tuple[int, str]:
    profile = tmp / "p.yaml"
    profile.write_text(PROFILE)
    return _overnight_cli(
        "run", scans, "--out", out, "--model", bundle, "--profile", profile, "--device", "cpu", *extra
    )


def test_overnight_second_archive_never_replaces_the_first(tmp_path: Path, tiny_bundle: Path) -> None:
    arc1, arc2, out = tmp_path / "arc1", tmp_path / "arc2", tmp_path / "out"
    _gray(arc1 / "scan_01.png", 1)
    _gray(arc2 / "scan_01.png", 2)
    _gray(arc2 / "scan_02.png", 3)
    assert _overnight_run(arc1, out, tiny_bundle, tmp_path)[0] == 0
    first = {p.name: p.read_bytes() for p in out.glob("scan_01.*")}
    journal = out / ".mtcolor" / "journal.sqlite"
    before = rows(journal)

    code, text = _overnight_run(arc2, out, tiny_bundle, tmp_path)  # another archive: refused
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "--allow-other-scans" in errors[0], text
    assert str(arc1.resolve()) in errors[0]
    assert rows(journal) == before and {p.name: p.read_bytes() for p in out.glob("scan_01.*")} == first

    code, text = _overnight_run(arc2, out, tiny_bundle, tmp_path, "--allow-other-scans")  # asked for
    assert code == 1, text
    got = rows(journal)
    assert got["scan_01.png"] == before["scan_01.png"]  # arc1's row and outputs stay arc1's
    assert {p.name: p.read_bytes() for p in out.glob("scan_01.*")} == first
    assert got["scan_02.png"]["state"] == "done"
    assert "scan_01.png: the output folder holds a file of this name from" in text

    assert _overnight_run(arc1, out, tiny_bundle, tmp_path)[0] == 0  # arc1 again: nothing redone
    assert rows(journal)["scan_01.png"]["completions"] == 1


def test_overnight_done_means_the_output_is_still_what_was_written(tmp_path: Path, tiny_bundle: Path) -> None:
    arc, out = tmp_path / "arc", tmp_path / "out"
    _gray(arc / "a.png", 1)
    _gray(arc / "b.png", 2)
    assert _overnight_run(arc, out, tiny_bundle, tmp_path)[0] == 0
    journal = out / ".mtcolor" / "journal.sqlite"
    a_out, b_out = out / "a.color.png", out / "b.color.png"
    good_a = a_out.read_bytes()
    a_out.write_bytes(good_a[: len(good_a) // 2])  # truncated: redone by a plain rerun
    data = bytearray(b_out.read_bytes())  # same size, same mtime, other bytes: only a rehash sees it
    st = b_out.stat()
    data[-20] ^= 0xFF
    b_out.write_bytes(bytes(data))
    os.utime(b_out, ns=(st.st_atime_ns, st.st_mtime_ns))

    assert _overnight_run(arc, out, tiny_bundle, tmp_path)[0] == 0
    got = rows(journal)
    assert got["a.png"]["completions"] == 2
    import io

    redone, first = Image.open(a_out), Image.open(io.BytesIO(good_a))
    assert np.array_equal(np.asarray(redone), np.asarray(first))  # whole again, the same pixels
    assert got["b.png"]["completions"] == 1  # the cheap check trusts an unchanged size + mtime
    assert _overnight_run(arc, out, tiny_bundle, tmp_path, "--verify-outputs")[0] == 0
    assert rows(journal)["b.png"]["completions"] == 2
    assert _overnight_run(arc, out, tiny_bundle, tmp_path, "--verify-outputs")[0] == 0
    assert {k: v["completions"] for k, v in rows(journal).items()} == {"a.png": 2, "b.png": 2}


def test_overnight_merge_refuses_another_folders_or_settings_rows(tmp_path: Path, tiny_bundle: Path) -> None:
    arc = tmp_path / "arc"
    for i in range(4):
        _gray(arc / f"s{i}.png", i)
    a, b = tmp_path / "a", tmp_path / "b"
    assert _overnight_run(arc, a, tiny_bundle, tmp_path, "--seed", "1")[0] == 0
    assert _overnight_run(arc, b, tiny_bundle, tmp_path, "--seed", "2")[0] == 0
    code, text = _overnight_cli(
        "journal", "merge", b / ".mtcolor" / "journal.sqlite", "--into", a / ".mtcolor" / "journal.sqlite"
    )
    assert code == 2 and "belongs to the output folder" in text, text
    assert _overnight_run(arc, a, tiny_bundle, tmp_path, "--seed", "2")[0] == 0  # seed 2: all redone
    assert all(r["completions"] == 2 for r in rows(a / ".mtcolor" / "journal.sqlite").values())

    c = tmp_path / "c"  # the shards of one folder, one of them run with another seed
    assert _overnight_run(arc, c, tiny_bundle, tmp_path, "--seed", "1", "--shard", "1/2")[0] == 0
    assert _overnight_run(arc, c, tiny_bundle, tmp_path, "--seed", "2", "--shard", "2/2")[0] == 0
    code, text = _overnight_cli("journal", "merge", c)
    assert code == 2 and "other settings" in text, text
    assert not (c / ".mtcolor" / "journal.sqlite").exists()


def test_overnight_sidecar_edited_while_its_file_runs(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtcolor_batch.stages.pipeline import Pipeline

    arc, out = tmp_path / "arc", tmp_path / "out"
    _gray(arc / "a.png", 1)
    sidecar = arc / "a.png.yaml"
    planned_text, edited_text = "prompt: a red barn\n", "prompt: a blue barn\n"
    sidecar.write_text(planned_text)
    real = Pipeline.process

    def edit_then_process(self, item, stage):  # the user saves the sidecar between planning and reading
        def on_stage(name: str) -> None:
            if name == "hints":
                sidecar.write_text(edited_text)
            stage(name)

        return real(self, item, on_stage)

    monkeypatch.setattr(Pipeline, "process", edit_then_process)
    assert _overnight_run(arc, out, tiny_bundle, tmp_path)[0] == 0
    monkeypatch.setattr(Pipeline, "process", real)
    record = json.loads((out / "a.color.json").read_text())
    assert record["sidecar"]["sha256"] == hashlib.sha256(edited_text.encode()).hexdigest()

    sidecar.write_text(planned_text)  # the edit is reverted: the output (made from it) is stale
    assert _overnight_run(arc, out, tiny_bundle, tmp_path)[0] == 0
    assert rows(out / ".mtcolor" / "journal.sqlite")["a.png"]["completions"] == 2
    record = json.loads((out / "a.color.json").read_text())
    assert record["sidecar"]["sha256"] == hashlib.sha256(planned_text.encode()).hexdigest()
    assert _overnight_run(arc, out, tiny_bundle, tmp_path)[0] == 0  # and now it is done for good
    assert rows(out / ".mtcolor" / "journal.sqlite")["a.png"]["completions"] == 2


def test_overnight_disk_full_stops_the_run_and_a_plain_rerun_resumes(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from mtcolor_batch.core.fs import OutputBatch

    arc, out = tmp_path / "arc", tmp_path / "out"
    for i in range(4):
        _gray(arc / f"s{i}.png", i)
    real_add, written = OutputBatch.add, []

    def fills_up(self, target, write):  # room for one file's outputs, then the disk is full
        if len(written) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        written.append(target)
        return real_add(self, target, write)

    monkeypatch.setattr(OutputBatch, "add", fills_up)
    code, text = _overnight_run(arc, out, tiny_bundle, tmp_path)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, text
    assert "the disk is full" in errors[0] and "the 3 file(s) left need about" in errors[0], errors
    assert "run the same command again" in errors[0]
    assert "failed s" not in text  # no file was failed for it
    journal = out / ".mtcolor" / "journal.sqlite"
    states = sorted(r["state"] for r in rows(journal).values())
    assert states.count("done") == 1 and "failed" not in states and "running" not in states, states

    monkeypatch.setattr(OutputBatch, "add", real_add)  # space freed: a plain rerun resumes
    assert _overnight_run(arc, out, tiny_bundle, tmp_path)[0] == 0
    got = rows(journal)
    assert all(r["state"] == "done" and r["completions"] == 1 for r in got.values()), got


def test_overnight_only_a_file_in_flight_counts_a_crash(tmp_path: Path, tiny_bundle: Path) -> None:
    """A killed Ray driver leaves every dispatched file ``running``; one worker was on s0.png."""
    from mtcolor_batch.jobs.inflight import marker

    arc, out = tmp_path / "arc", tmp_path / "out"
    for i in range(4):
        _gray(arc / f"s{i}.png", i)
    assert _overnight_run(arc, out, tiny_bundle, tmp_path)[0] == 0
    journal = out / ".mtcolor" / "journal.sqlite"
    db = sqlite3.connect(journal)
    db.execute("UPDATE files SET state = 'running', crashes = 1")  # the second kill of the driver
    db.commit()
    db.close()
    marker(out, "s0.png").parent.mkdir(parents=True, exist_ok=True)
    marker(out, "s0.png").touch()  # the file its worker was colorizing
    code, text = _overnight_run(arc, out, tiny_bundle, tmp_path)
    assert code == 1, text
    got = rows(journal)
    assert got["s0.png"]["state"] == "failed" and "crashed the process 2 times" in got["s0.png"]["error"]
    assert all(got[f"s{i}.png"]["state"] == "done" for i in (1, 2, 3)), got
    assert not list(marker(out, "s0.png").parent.iterdir())


@pytest.mark.parametrize("tiled", [False, True])
def test_overnight_sigterm_stops_within_one_denoising_step(
    tiled: bool, tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (what timeout, systemd and Slurm send) mid-sampling: the file is rolled back within a
    step, not after the whole sampling stage (9 minutes for a 500-step tiled run), and the run exits
    130 with the resume command."""
    import signal

    from mtcolor_batch.model.sampler import MTColorSampler

    arc, out = tmp_path / "arc", tmp_path / "out"
    arc.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        side = (96, 128) if tiled else (32, 40)  # tiled: a 128 px working size over 64 px tiles
        pixels = np.random.default_rng(i).integers(0, 256, side, dtype=np.uint8)
        Image.fromarray(pixels, "L").save(arc / name)
    calls = {"n": 0, "at": -1}
    real = MTColorSampler.predict

    def predict(self, *args, **kwargs):  # one call per denoising step (and per tile batch)
        calls["n"] += 1
        if calls["n"] == 3:
            calls["at"] = calls["n"]
            signal.raise_signal(signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MTColorSampler, "predict", predict)
    # tiled: the documented maximum of steps (its first step used to be an IndexError)
    size = ["--working-size", "128", "--tile-size", "64", "--steps", "1000"] if tiled else ["--steps", "200"]
    code, text = _overnight_run(arc, out, tiny_bundle, tmp_path, *size)
    assert code == 130, text
    assert calls["n"] - calls["at"] <= 2, calls  # the step in flight (and its tiles), then stop
    assert "Resume with:" in text
    got = rows(out / ".mtcolor" / "journal.sqlite")
    assert {r["state"] for r in got.values()} == {"pending"}, got
    assert not [p for p in out.iterdir() if p.name != ".mtcolor"]


# == Section "hostile" (issue 22: items 8-12 and the weak spots on names, reports, profiles, inputs) ==
# Every case goes through the real CLI in a subprocess. Each hostile file or sidecar must fail alone
# with one line (or be skipped with a note) while every other file of the archive goes on.

HOSTILE_LONG = "L" * 246 + ".png"  # its output name (246 + .color.json) is over 255 bytes
HOSTILE_CTRL = "ctl\x01\x1b[31m.png"  # control characters: the XMP must stay valid XML
HOSTILE_RTL = "evil\u202egnp.exe.png"  # a right-to-left override: shown escaped in the report


def _png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG of any channel count (Pillow cannot write one with alpha)."""
    from test_hostile_inputs import png16

    path.write_bytes(png16(arr))


def build_hostile_tree(root: Path) -> dict[str, str]:
    """The archive of hostile files (items 8-12) beside a good scan; returns journal key -> what its
    one-line failure must say ("" for the good file)."""
    seed = iter(range(100, 200))
    _gray(root / "good.png", next(seed))
    expect = {"good.png": ""}
    _gray(root / HOSTILE_LONG, next(seed))  # item 11
    expect[HOSTILE_LONG] = "over the 255-byte limit"
    Image.new("1", (20000, 20000)).save(root / "bomb.png")  # items 9/12: 400 MP declared, 50 KB
    (root / "bomb.png.yaml").write_text("instances:\n  - box: [0, 0, 5, 5]\n    color: red\n")
    expect["bomb.png"] = "image too large"
    _gray(root / "nul.png", next(seed))  # item 10: a NUL byte in a mask path
    (root / "nul.png.yaml").write_text('instances:\n  - mask: "x\\0y.png"\n    color: red\n')
    expect["nul.png"] = "holds a NUL character"
    _gray(root / "digits.png", next(seed))  # item 10: an integer of 5000 digits
    (root / "digits.png.yaml").write_text("seed: " + "9" * 5000 + "\ninstances: []\n")
    expect["digits.png"] = "number too long"
    _gray(root / "laughs.png", next(seed))  # item 8: alias bomb (refused by every reader)
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdefg", "bcdefgh", strict=True)
    )
    (root / "laughs.png.yaml").write_text(laughs)
    expect["laughs.png"] = "alias"
    return expect


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="300")
    cmd = [sys.executable, "-m", "mtcolor_batch", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _run_args(tmp_path: Path, tiny_bundle: Path) -> list[str]:
    profile = tmp_path / "p.yaml"
    profile.write_text(PROFILE)
    return ["--model", str(tiny_bundle), "--profile", str(profile), "--device", "cpu", "--seed", "3"]


def test_hostile_files_fail_alone_through_every_command(tmp_path: Path, tiny_bundle: Path) -> None:
    """Items 8, 10, 11, 12: `hints check`, `run --dry-run` and a first `run` into a fresh --out."""
    root = tmp_path / "archive"
    root.mkdir()
    expect = build_hostile_tree(root)
    out = tmp_path / "out"
    common = _run_args(tmp_path, tiny_bundle)

    check = _cli("hints", "check", str(root))  # items 10, 12: no traceback, each sidecar its line
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr[-2000:]
    for name, why in (("bomb.png", "image too large"), ("nul.png", "NUL"), ("digits", "number too long")):
        assert any(name in line and why in line for line in check.stdout.splitlines()), (name, check.stdout)

    dry = _cli("run", str(root), "--out", str(out), *common, "--dry-run")  # item 10: discovery survives
    assert dry.returncode == 0 and "Traceback" not in dry.stderr, dry.stderr[-2000:]

    first = _cli("run", str(root), "--out", str(out), *common)  # item 11: a fresh --out
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr[-3000:]
    got = rows(out / ".mtcolor" / "journal.sqlite")
    assert set(got) == set(expect), sorted(set(got) ^ set(expect))
    for rel, why in expect.items():
        if why:
            assert got[rel]["state"] == "failed" and why in got[rel]["error"], (rel, got[rel])
            assert "\n" not in got[rel]["error"] and "internal error" not in got[rel]["error"]
        else:
            assert got[rel]["state"] == "done", (rel, got[rel])


def test_hostile_names_depth_records_and_earlier_outputs(tmp_path: Path, tiny_bundle: Path) -> None:
    """16-bit PNG with alpha keeps 16 bits; control characters keep the XMP valid; an RTL override
    is shown escaped in the report; a hand-edited record of the wrong type is skipped with a note;
    the output folder passed back as SCANS colorizes nothing again."""
    import xml.dom.minidom

    root = tmp_path / "archive"
    for k, name in enumerate(("good.png", HOSTILE_CTRL, HOSTILE_RTL)):
        _gray(root / name, 300 + k)
    gray16 = np.random.default_rng(7).integers(0, 65536, (32, 40), dtype=np.uint16)
    _png16(root / "alpha16.png", np.stack([gray16, gray16, gray16, np.full_like(gray16, 65535)], -1))
    out = tmp_path / "out"
    common = _run_args(tmp_path, tiny_bundle)
    first = _cli("run", str(root), "--out", str(out), *common)
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr[-3000:]
    got = rows(out / ".mtcolor" / "journal.sqlite")

    alpha = json.loads((out / got["alpha16.png"]["outputs"][1]).read_text(encoding="utf-8"))
    assert alpha["input"]["bit_depth"] == 16 and alpha["output"]["bit_depth"] == 16, alpha["input"]
    assert (out / got["alpha16.png"]["outputs"][0]).read_bytes()[24] == 16  # IHDR bit depth

    with Image.open(out / got[HOSTILE_CTRL]["outputs"][0]) as img:
        packet = img.info["xmp"]
    text = xml.dom.minidom.parseString(packet).getElementsByTagName("stRef:filePath")[0].firstChild.data
    assert text == "ctl\\x01\\x1b[31m.png"  # valid XML, the name still readable

    record = out / got["good.png"]["outputs"][1]
    edited = json.loads(record.read_text(encoding="utf-8"))
    edited["seed"] = "not a number"
    record.write_text(json.dumps(edited), encoding="utf-8")
    report = _cli("report", str(out), "--no-metrics")
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr[-2000:]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "wrong type" in page  # the hand-edited record is skipped with a note, the rest shown
    assert "\u202e" not in page and "evil\\u202egnp.exe.png" in page  # the RTL override, escaped

    again = _cli("run", str(out), "--out", str(tmp_path / "again"), *common)  # outputs as SCANS
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert "outputs of mtcolor-batch" in again.stderr and "not colorized again" in again.stderr
    assert not (tmp_path / "again").exists() or not rows(tmp_path / "again" / ".mtcolor" / "journal.sqlite")


def test_hostile_tree_opens_in_hints_edit(tmp_path: Path) -> None:
    """`hints edit` on the same archive: discovery survives, /api/scans lists every scan (the
    bomb's and the alias bomb's as that scan's problem), and the server stays small."""
    import re
    import urllib.request

    root = tmp_path / "archive"
    root.mkdir()
    build_hostile_tree(root)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "mtcolor_batch", "hints", "edit", str(root), "--no-browser"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = ""
        for _ in range(20):
            line = server.stdout.readline()
            if line.startswith("Open "):
                url = line.split()[1]
                break
        match = re.match(r"(http://127\.0\.0\.1:\d+)/#token=(\S+)", url)
        assert match, url
        request = urllib.request.Request(f"{match[1]}/api/scans", headers={"X-Editor-Token": match[2]})
        with urllib.request.urlopen(request, timeout=60) as answer:
            scans = {s["path"]: s["problems"] for s in json.load(answer)["scans"]}
        assert scans["bomb.png"] == scans["laughs.png"] == scans["nul.png"] == scans["digits.png"] == 1, scans
        assert scans["good.png"] == 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_hostile_profile_tags_on_collections_are_refused(tmp_path: Path, tiny_bundle: Path) -> None:
    """`!!python/object/apply` or `!!set` on a block was silently dropped; now a setup error."""
    root = tmp_path / "s"
    _gray(root / "a.png", 1)
    for body in (
        "sampling: !!python/object/apply:collections.OrderedDict\n  steps: 2\n",
        "perception: !!set {auto_instances}\n",
    ):
        profile = tmp_path / "tagged.yaml"
        profile.write_text(body)
        r = _cli("run", str(root), "--model", str(tiny_bundle), "--profile", str(profile), "--dry-run")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "tagged.yaml:1:" in r.stderr and "YAML tag" in r.stderr, r.stderr


# == end of section "hostile" ==
