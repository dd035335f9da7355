"""``mtcolor-batch journal merge``: shard journals of a job array folded into one journal."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from test_ray_executor import make_tree
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.jobs.journal import Journal, journal_path
from mtcolor_batch.jobs.merge import merge_journals

FAST_YAML = """\
name: test-merge
device: cpu
sampling: {steps: 2, working_long_side: 32, tile_size: 64, tile_overlap: 0}
perception: {size: 64}
"""


def invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, " ".join(result.output.split())


def states(path: Path) -> dict[str, tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        return {r: (s, f) for r, s, f in db.execute("SELECT relpath, state, fingerprint FROM files")}
    finally:
        db.close()


def tick() -> None:
    time.sleep(0.01)  # updated_at is time.time(): keep "newer" unambiguous


def test_newest_finished_row_wins_and_merge_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s1, s2 = journal_path(out, (1, 2)), journal_path(out, (2, 2))
    with Journal(s1) as a, Journal(s2) as b:
        for j, rel, fp in ((a, "a.jpg", "fa"), (a, "b.jpg", "old"), (a, "c.jpg", "fc"), (b, "d.jpg", "fd")):
            j.upsert_pending(rel, fp, size=1, mtime=1, sha256="x")
        a.mark_running("a.jpg")
        a.mark_done("a.jpg", ["a.color.jpg"], {"total": 1.0})
        a.mark_running("b.jpg")
        a.mark_done("b.jpg", ["b.color.jpg"], {"total": 1.0})
        tick()
        b.upsert_pending("b.jpg", "new", size=1, mtime=1, sha256="y")  # redone later (e.g. N changed)
        b.mark_running("b.jpg")
        b.mark_done("b.jpg", ["b.color.jpg"], {"total": 2.0})
        a.mark_running("c.jpg")
        a.mark_failed("c.jpg", "c.jpg: corrupt")
        tick()
        b.upsert_pending("c.jpg", "fc", size=1, mtime=1, sha256="x")
        b.mark_running("c.jpg")  # newest, but unfinished (that shard was killed): the failure stands

    code, text = invoke("journal", "merge", out)
    assert code == 0, text
    target = journal_path(out, None)
    merged = states(target)
    assert merged == {
        "a.jpg": ("done", "fa"),
        "b.jpg": ("done", "new"),
        "c.jpg": ("failed", "fc"),
        "d.jpg": ("pending", "fd"),
    }
    assert "4 files from 2 journal(s); 2 in more than one (2 differing" in text
    with Journal(target) as j:
        assert j.check() == []
        assert j.get("c.jpg").error == "c.jpg: corrupt"
        assert j.get("b.jpg").timings == {"total": 2.0}

    again = merge_journals([s1, s2], target)  # the target joins as a source: nothing changes
    assert states(target) == merged and len(again.sources) == 3
    assert again.counts == {"pending": 1, "running": 0, "done": 2, "failed": 1, "skipped": 0}


def test_merge_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, text = invoke("journal", "merge", tmp_path / "empty")
    assert code == 2 and "no shard journals here" in text
    bogus = tmp_path / "bogus.sqlite"
    bogus.write_bytes(b"not a database at all" * 10)
    code, text = invoke("journal", "merge", bogus, "--into", tmp_path / "m.sqlite")
    assert code == 2 and "not a readable mtcolor-batch journal" in text


@pytest.mark.slow
def test_two_real_shard_runs_merge_into_a_journal_a_plain_run_resumes(tmp_path: Path, tiny_bundle: Path):
    """Shards 1/2 and 2/2 (as two array tasks would), merged; a plain run then finds all done."""

    from mtcolor_batch.core.config import load_profile
    from mtcolor_batch.jobs.runner import RunRequest, run_batch
    from mtcolor_batch.stages.pipeline import Pipeline

    scans, out = tmp_path / "scans", tmp_path / "out"
    rels = make_tree(scans, 6)
    profile = tmp_path / "fast.yaml"
    profile.write_text(FAST_YAML)
    loaded: list[Pipeline] = []

    def once(*args: object) -> Pipeline:  # one model load for both shards (the test's only shortcut)
        if not loaded:
            loaded.append(Pipeline.load(*args))
        return loaded[0]

    for k in (1, 2):
        req = RunRequest(scans, load_profile(profile), out=out, model=str(tiny_bundle), shard=(k, 2))
        assert run_batch(req, pipeline_factory=once) == 0
    shards = [set(states(journal_path(out, (k, 2)))) for k in (1, 2)]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(rels)

    code, text = invoke("journal", "merge", out)
    assert code == 0 and "6 files from 2 journal(s); 0 in more than one" in text, text
    assert {s for s, _ in states(journal_path(out, None)).values()} == {"done"}

    code, text = invoke("run", scans, "--out", out, "--model", tiny_bundle, "--profile", profile)
    assert code == 0, text  # no --shard: reads the merged journal, nothing left to do
    with Journal(journal_path(out, None)) as j:
        assert len(j.all()) == 6 and all(r.state == "done" and r.completions == 1 for r in j.all())
