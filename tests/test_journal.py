"""Journal states and the output-folder lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mtcolor_batch.jobs.journal import Journal, journal_path, lock_path
from mtcolor_batch.jobs.lock import LockedError, OutputLock


def test_state_transitions_and_counts(tmp_path: Path) -> None:
    path = journal_path(tmp_path, None)
    with Journal(path) as j:
        j.upsert_pending("a.jpg", "fp1", size=10, mtime=1, sha256="aa")
        j.upsert_pending("b.jpg", "fp2", size=20, mtime=2, sha256="bb")
        j.mark_running("a.jpg")
        j.mark_done("a.jpg", ["a.color.jpg", "a.color.json"], {"total": 1.5})
        j.mark_running("b.jpg")
        j.mark_failed("b.jpg", "b.jpg: corrupt")
        assert j.counts()["done"] == 1 and j.counts()["failed"] == 1
        a = j.get("a.jpg")
        assert a and a.attempts == 1 and a.completions == 1 and a.outputs == ["a.color.jpg", "a.color.json"]
        assert a.timings == {"total": 1.5} and a.input_sha256 == "aa"
        j.upsert_pending("b.jpg", "fp2", size=20, mtime=2, sha256="bb")  # --retry-failed
        b = j.get("b.jpg")
        assert b and b.state == "pending" and b.error is None and b.attempts == 1
        assert j.check() == []
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_readonly_view_creates_nothing(tmp_path: Path) -> None:
    assert Journal.open_existing(tmp_path / "none.sqlite") is None
    assert not (tmp_path / "none.sqlite").exists()


def test_shards_have_their_own_journal_and_lock(tmp_path: Path) -> None:
    assert journal_path(tmp_path, (2, 4)).name == "journal-shard-2-of-4.sqlite"
    assert lock_path(tmp_path, (2, 4)) != lock_path(tmp_path, (1, 4)) != lock_path(tmp_path, None)


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    path = lock_path(tmp_path, None)
    with OutputLock(path):
        with pytest.raises(LockedError) as info:
            OutputLock(path).acquire()
        assert "another mtcolor-batch run" in info.value.one_line()
    with OutputLock(path):  # released on exit: can be taken again
        pass
