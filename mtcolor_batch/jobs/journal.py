"""The job journal: one SQLite row per input, so an overnight run can stop anywhere and resume.

WAL mode keeps readers (``--dry-run``, a status check) from blocking the writer, and each state
change is one committed transaction, so after a crash (even kill -9) every row is either the old
state or the new one. A row's fingerprint combines everything that changes the output bytes: the
input's sha256, the sidecar's sha256, the profile hash and the model hash. Rows left ``running`` by
a crash are simply retried.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtcolor_batch.core.errors import UserError

STATES = ("pending", "running", "done", "failed", "skipped")
_ADDED_COLUMNS = {  # column -> declaration, for journals written before the column existed
    "crashes": "INTEGER NOT NULL DEFAULT 0",
    "scan_root": "TEXT",  # the scan folder the file came from (an output folder may hold several)
    "output_stats": "TEXT NOT NULL DEFAULT '{}'",  # output relpath -> [size, mtime_ns, sha256]
}
_ROW_COLUMNS = (
    "relpath, fingerprint, state, attempts, completions, error, outputs, timings,"
    " input_size, input_mtime, input_sha256, scan_root, output_stats"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    relpath      TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending','running','done','failed','skipped')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    completions  INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    outputs      TEXT NOT NULL DEFAULT '[]',
    timings      TEXT NOT NULL DEFAULT '{}',
    input_size   INTEGER,
    input_mtime  INTEGER,
    input_sha256 TEXT,
    updated_at   REAL NOT NULL,
    crashes      INTEGER NOT NULL DEFAULT 0,
    scan_root    TEXT,
    output_stats TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Row:
    """One journal row as the runner sees it."""

    relpath: str
    fingerprint: str
    state: str
    attempts: int
    completions: int
    error: str | None
    outputs: list[str]
    timings: dict[str, float]
    input_size: int | None
    input_mtime: int | None
    input_sha256: str | None
    scan_root: str | None = None
    output_stats: dict[str, list[Any]] = field(default_factory=dict)


def journal_path(out_dir: Path, shard: tuple[int, int] | None) -> Path:
    """``<out>/.mtcolor/journal.sqlite``, or one file per shard (a cluster job array)."""
    name = "journal.sqlite" if shard is None else f"journal-shard-{shard[0]}-of-{shard[1]}.sqlite"
    return Path(out_dir) / ".mtcolor" / name


def lock_path(out_dir: Path, shard: tuple[int, int] | None) -> Path:
    name = "lock" if shard is None else f"lock-shard-{shard[0]}-of-{shard[1]}"
    return Path(out_dir) / ".mtcolor" / name


def rebuild_hint(out_dir: Path) -> str:
    return (
        f"rebuild it from the outputs' .color.json records with `mtcolor-batch journal rebuild {out_dir}` "
        "(the damaged file is kept aside)"
    )


class JournalDamagedError(UserError):
    """The journal exists but SQLite cannot read it (garbage, truncated, a bad page)."""


def _damaged(path: Path, exc: BaseException | str) -> JournalDamagedError:
    out_dir = Path(path).parent.parent
    return JournalDamagedError(f"the job journal is damaged ({exc})", path=path, hint=rebuild_hint(out_dir))


class Journal:
    """Thin typed access to the journal; every method commits its own transaction.

    Opening checks the file (``PRAGMA quick_check`` and the table layout): a damaged journal raises
    :class:`JournalDamagedError` (one line, exit 2) instead of a traceback mid-run, and a journal
    that cannot be created (read-only folder, disk full) raises a plain setup :class:`UserError`.
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        except OSError as exc:
            raise UserError(f"cannot create the job journal: {exc.strerror or exc}", path=self.path) from exc
        except sqlite3.Error as exc:
            raise UserError(f"cannot open the job journal: {exc}", path=self.path) from exc
        try:
            fresh = not readonly and self.path.stat().st_size == 0
            if not fresh:
                self._check_readable()
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: always consistent; a power cut can only lose the last commits,
                # which means a file is redone (outputs are replaced atomically), never a corrupt journal.
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
                columns = {r[1] for r in self.db.execute("PRAGMA table_info(files)")}
                for name, decl in _ADDED_COLUMNS.items():  # journals written before these existed
                    if name not in columns:
                        self.db.execute(f"ALTER TABLE files ADD COLUMN {name} {decl}")
        except JournalDamagedError:
            self.db.close()
            raise
        except sqlite3.DatabaseError as exc:
            self.db.close()
            if isinstance(exc, sqlite3.OperationalError) and _is_setup_problem(exc):
                raise UserError(f"cannot write the job journal: {exc}", path=self.path) from exc
            raise _damaged(self.path, exc) from exc
        except OSError as exc:
            self.db.close()
            raise UserError(f"cannot read the job journal: {exc.strerror or exc}", path=self.path) from exc
        # A read-only view of an older journal lacks the newer columns: read them as NULL.
        present = {r[1] for r in self.db.execute("PRAGMA table_info(files)")}
        picked = [c if c in present else f"NULL AS {c}" for c in _ROW_COLUMNS.replace(" ", "").split(",")]
        self._select = f"SELECT {', '.join(picked)} FROM files"

    def _check_readable(self) -> None:
        """quick_check plus our own table: anything else is a damaged journal, said out loud."""
        try:
            result = [r[0] for r in self.db.execute("PRAGMA quick_check").fetchall()]
            if result != ["ok"]:
                raise _damaged(self.path, "; ".join(str(r) for r in result[:3]))
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "files" not in tables:
                raise _damaged(self.path, "it has no files table")
            self.db.execute("SELECT relpath, state, outputs FROM files LIMIT 1").fetchall()
        except sqlite3.OperationalError as exc:
            if _is_setup_problem(exc):
                raise
            raise _damaged(self.path, exc) from exc
        except sqlite3.DatabaseError as exc:
            raise _damaged(self.path, exc) from exc

    @classmethod
    def open_existing(cls, path: Path) -> Journal | None:
        """Read-only view for ``--dry-run``: never creates anything in the output folder.

        A zero-byte file is reported as no journal (None): its state is what matters to the caller.
        """
        path = Path(path)
        if not path.exists() or path.stat().st_size == 0:
            return None
        return cls(path, readonly=True)

    def is_empty(self) -> bool:
        return self.db.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, relpath: str) -> Row | None:
        cur = self.db.execute(f"{self._select} WHERE relpath = ?", (relpath,))
        rec = cur.fetchone()
        return _row(rec) if rec else None

    def all(self) -> list[Row]:
        cur = self.db.execute(f"{self._select} ORDER BY relpath")
        return [_row(r) for r in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        cur = self.db.execute("SELECT state, COUNT(*) FROM files GROUP BY state")
        out = dict.fromkeys(STATES, 0)
        out.update(dict(cur.fetchall()))
        return out

    def upsert_pending(
        self,
        relpath: str,
        fingerprint: str,
        *,
        size: int | None,
        mtime: int | None,
        sha256: str | None,
        keep_crashes: bool = False,
        scan_root: str | None = None,
    ) -> None:
        """(Re)plan a file: new or changed rows become pending; attempts survive for the record.

        The crash count starts over unless ``keep_crashes`` (the file is retried after a crash).
        """
        self.db.execute(
            "INSERT INTO files (relpath, fingerprint, state, input_size, input_mtime, input_sha256,"
            " updated_at, scan_root)"
            " VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)"
            " ON CONFLICT(relpath) DO UPDATE SET fingerprint = excluded.fingerprint, state = 'pending',"
            " error = NULL, input_size = excluded.input_size, input_mtime = excluded.input_mtime,"
            " input_sha256 = excluded.input_sha256, updated_at = excluded.updated_at,"
            " scan_root = COALESCE(excluded.scan_root, scan_root),"
            " crashes = CASE WHEN ? THEN crashes ELSE 0 END",
            (relpath, fingerprint, size, mtime, sha256, time.time(), scan_root, keep_crashes),
        )

    def note_crash(self, relpath: str) -> int:
        """A row found ``running`` at planning: the process died on it. Return its crash count."""
        self.db.execute("UPDATE files SET crashes = crashes + 1 WHERE relpath = ?", (relpath,))
        rec = self.db.execute("SELECT crashes FROM files WHERE relpath = ?", (relpath,)).fetchone()
        return int(rec[0]) if rec else 0

    def recorded_outputs(self) -> dict[str, str]:
        """Every output path the journal records (lowercased) -> the relpath that wrote it."""
        out: dict[str, str] = {}
        for relpath, outputs in self.db.execute("SELECT relpath, outputs FROM files"):
            for o in json.loads(outputs):
                out.setdefault(str(o).lower(), relpath)
        return out

    def mark_running(self, relpath: str) -> None:
        self.db.execute(
            "UPDATE files SET state = 'running', attempts = attempts + 1, error = NULL, updated_at = ?"
            " WHERE relpath = ?",
            (time.time(), relpath),
        )

    def mark_done(
        self,
        relpath: str,
        outputs: list[str],
        timings: dict[str, float],
        *,
        fingerprint: str | None = None,
        output_stats: dict[str, list[Any]] | None = None,
    ) -> None:
        """A finished file. ``fingerprint``: the one of the bytes actually used (the sidecar or input
        may have changed since planning); ``output_stats``: what each output was written as, so a
        later run can tell a truncated or replaced output from a done one."""
        self.db.execute(
            "UPDATE files SET state = 'done', completions = completions + 1, error = NULL, outputs = ?,"
            " timings = ?, updated_at = ?, fingerprint = COALESCE(?, fingerprint), output_stats = ?"
            " WHERE relpath = ?",
            (
                json.dumps(outputs),
                json.dumps(timings, sort_keys=True),
                time.time(),
                fingerprint,
                json.dumps(output_stats or {}, sort_keys=True),
                relpath,
            ),
        )

    def set_output_stats(self, relpath: str, output_stats: dict[str, list[Any]]) -> None:
        """Remember what a done file's outputs are now (rows written before outputs were recorded)."""
        self.db.execute(
            "UPDATE files SET output_stats = ? WHERE relpath = ?",
            (json.dumps(output_stats, sort_keys=True), relpath),
        )

    def meta(self) -> dict[str, str]:
        """The journal's ``meta`` entries (owner, profile, model; see ``jobs.owner``)."""
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:  # a read-only view of a journal that never had one
            return {}
        return {str(k): str(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def claim_rows(self, scan_root: str) -> None:
        """Rows written before rows named their scan folder belong to the journal's own."""
        self.db.execute("UPDATE files SET scan_root = ? WHERE scan_root IS NULL", (scan_root,))

    def mark_failed(self, relpath: str, error: str, timings: dict[str, float] | None = None) -> None:
        self.db.execute(
            "UPDATE files SET state = 'failed', error = ?, timings = ?, updated_at = ? WHERE relpath = ?",
            (error, json.dumps(timings or {}, sort_keys=True), time.time(), relpath),
        )

    def set_input_stat(self, relpath: str, size: int | None, mtime: int | None, sha256: str | None) -> None:
        """Remember the size and mtime a done file's hash was checked at (the planning fast path)."""
        self.db.execute(
            "UPDATE files SET input_size = ?, input_mtime = ?, input_sha256 = ? WHERE relpath = ?",
            (size, mtime, sha256, relpath),
        )

    def mark_pending(self, relpath: str) -> None:
        """Roll a file back after an interrupt: it was not finished, so it is simply to do again."""
        self.db.execute(
            "UPDATE files SET state = 'pending', updated_at = ? WHERE relpath = ?", (time.time(), relpath)
        )

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def check(self) -> list[str]:
        """Consistency problems (empty when fine): SQLite integrity plus our own invariants."""
        problems = [r[0] for r in self.db.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        for row in self.all():
            if row.state == "done" and not row.outputs:
                problems.append(f"{row.relpath}: done without outputs")
            if row.state == "done" and row.completions < 1:
                problems.append(f"{row.relpath}: done but never completed")
        return problems


def _is_setup_problem(exc: sqlite3.OperationalError) -> bool:
    """Disk full, read-only or locked: the folder's fault, not the journal's content."""
    text = str(exc).lower()
    return any(
        k in text for k in ("disk is full", "readonly", "read-only", "unable to open", "locked", "disk i/o")
    )


def journal_state(path: Path) -> str:
    """``missing`` | ``empty`` (zero bytes, or no rows) | ``ok``; raises JournalDamagedError when damaged."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    journal = Journal(path, readonly=True)
    try:
        return "empty" if journal.is_empty() else "ok"
    finally:
        journal.close()


def _row(rec: tuple[Any, ...]) -> Row:
    return Row(
        relpath=rec[0],
        fingerprint=rec[1],
        state=rec[2],
        attempts=rec[3],
        completions=rec[4],
        error=rec[5],
        outputs=json.loads(rec[6]),
        timings=json.loads(rec[7]),
        input_size=rec[8],
        input_mtime=rec[9],
        input_sha256=rec[10],
        scan_root=rec[11],
        output_stats=json.loads(rec[12] or "{}"),
    )
