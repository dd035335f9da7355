"""`mtcolor-batch report`: the page is complete, escaped, self-contained and opens in headless Chromium.

The browser test needs Debian's `chromium`; it skips locally without it but FAILS in CI (CI=true),
where .ci/run installs it, so a missing browser can never pass silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from eval_fixture import DONE, FAIL_REASON, FAILED, ODD_NAME, XSS
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.evaluate.report import REPORT_DIR, build_report

ENTRY = re.compile(r'<article class="entry (done|failed)"')


@pytest.fixture(scope="module")
def report(eval_out, tmp_path_factory) -> Path:
    """The fixture run's report, built on a copy so other tests see the folder untouched."""
    out = tmp_path_factory.mktemp("report") / "out"
    shutil.copytree(eval_out["out"], out)
    return build_report(out)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    message = "headless Chromium not found: install it with `apt-get install -y chromium`"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=3000",
        "--window-size=1400,3000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_report_lists_every_file_and_failure(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    kinds = ENTRY.findall(text)
    assert kinds.count("done") == len(DONE) and kinds.count("failed") == len(FAILED)
    thumbs = sorted((report.parent / REPORT_DIR / "thumbs").iterdir())
    assert len(thumbs) == 2 * len(DONE)
    with Image.open(thumbs[0]) as im:
        assert im.format == "JPEG" and max(im.size) <= 640
    assert "TINY MODEL" in text and "tiny test model" in text  # three of the four fixtures are tiny
    assert 'data-hinted="1"' in text and "dark green" in text and "3.50" in text  # hint + its ΔE00
    assert "seed" in text and "fixture-bundle" in text


def test_report_escapes_everything_from_files(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert XSS not in text and "<script>alert" not in text and "<b>&" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert FAIL_REASON not in text
    # a file name with '#', '<', '&' and a quote links to its output through a URL-quoted href
    assert 'href="odd%20%231%20%3Cb%3E%26%27.color.png"' in text
    assert (report.parent / f"{Path(ODD_NAME).stem}.color.png").is_file()
    # only local, relative resources: nothing to fetch from a network
    assert not re.search(r'(src|href)="(https?:)?//', text)


def test_report_command_and_rebuild(eval_out, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(eval_out["out"], out)
    res = CliRunner().invoke(app, ["report", str(out), "--no-metrics"])
    assert res.exit_code == 0, res.output
    first = (out / "report.html").read_text()
    assert "colourfulness" not in first.split("<main", 1)[1]  # --no-metrics
    res = CliRunner().invoke(app, ["report", str(out), "--scans", str(eval_out["scans"])])
    assert res.exit_code == 0, res.output
    assert "max ΔL* vs scan" in (out / "report.html").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(f".{REPORT_DIR}")]  # no staging left behind
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "output folder not found" in res.output


def test_report_refuses_a_folder_that_is_not_an_output_folder(eval_out, tmp_path: Path) -> None:
    """A folder of originals (no .mtcolor/, no records of its own) is never written into."""
    scans = tmp_path / "scans"
    shutil.copytree(eval_out["scans"], scans)
    nested = scans / "sub" / "scans-colorized"  # an earlier run's output inside the tree does not count
    shutil.copytree(eval_out["out"], nested)
    shutil.rmtree(nested / ".mtcolor")
    (nested / ".mtcolor").mkdir()
    before = sorted(p.relative_to(scans).as_posix() for p in scans.rglob("*"))
    res = CliRunner().invoke(app, ["report", str(scans)])
    assert res.exit_code == 2, res.output
    assert "not an output folder" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert sorted(p.relative_to(scans).as_posix() for p in scans.rglob("*")) == before

    copied = tmp_path / "copied"  # records without the journal: still a run's folder
    shutil.copytree(eval_out["out"], copied)
    shutil.rmtree(copied / ".mtcolor")
    assert CliRunner().invoke(app, ["report", str(copied), "--no-metrics"]).exit_code == 0


@pytest.mark.slow
def test_report_opens_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    url = report.resolve().as_uri()
    dom = _run_chromium(["--dump-dom", url], tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    root = re.search(r"<html[^>]*>", dom.stdout)
    assert root, dom.stdout[:500]
    assert 'data-ready="1"' in root.group(0), "report.js did not run to the end"
    assert 'data-js-errors="0"' in root.group(0), root.group(0)
    assert _console_lines(dom.stderr) == []
    assert len(ENTRY.findall(dom.stdout)) == len(DONE) + len(FAILED)
    assert f"{len(DONE) + len(FAILED)} of {len(DONE) + len(FAILED)} shown" in dom.stdout

    failed_only = _run_chromium(["--dump-dom", url + "#failed"], tmp_path / "p4")  # the filter, via the URL
    assert '<body data-filter="failed">' in failed_only.stdout
    assert f"{len(FAILED)} of {len(DONE) + len(FAILED)} shown" in failed_only.stdout

    shot = tmp_path / "report.png"
    res = _run_chromium([f"--screenshot={shot}", url], tmp_path / "p2")
    assert res.returncode == 0, res.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1400, 3000)
        assert len(set(im.convert("L").resize((64, 64)).getdata())) > 20  # drawn, not a blank page


@pytest.mark.slow
def test_error_trap_catches_a_broken_page(report: Path, tmp_path: Path) -> None:
    """The zero above means something: a missing thumbnail is reported by the same check."""
    broken = tmp_path / "broken"
    shutil.copytree(report.parent, broken)
    (broken / REPORT_DIR / "thumbs" / "0000-after.jpg").unlink()
    dom = _run_chromium(["--dump-dom", (broken / "report.html").as_uri()], tmp_path / "p3")
    root = re.search(r"<html[^>]*>", dom.stdout)
    assert root and 'data-js-errors="0"' not in root.group(0)
    assert "0000-after.jpg" in root.group(0)
