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
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
