"""Whose results a journal holds: the scan folder, the output folder and the run-wide settings.

Why it is recorded: a journal row only names a file relative to its scan folder, so a second archive
run into the same ``--out`` (both holding ``scan_01.png``) would otherwise take over the first
archive's rows and replace its outputs, and a journal merged in from another output folder would
vouch for outputs it never wrote. The journal's ``meta`` table holds the owner; ``run`` refuses a
different scan folder unless asked (``--allow-other-scans``), ``journal merge`` refuses rows from
another output folder or made with other settings.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mtcolor_batch.core.errors import UserError, path_text

SCAN_ROOT, OUT_DIR, SETTINGS = "scan_root", "out_dir", "settings"


def folder_key(path: Path) -> str:
    """A folder as the journal records it: absolute, links resolved, valid UTF-8 text."""
    return path_text(os.path.realpath(path))


def settings_fingerprint(profile_fp: str, model_fp: str) -> str:
    """The one fingerprint of the run-wide settings a journal's rows were made with.

    Each row's own fingerprint already holds these (a changed profile redoes its file); this one is
    what a merge compares between journals, without reading every row.
    """
    return hashlib.sha256(f"{profile_fp}|{model_fp}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JournalOwner:
    """What one journal was written for (values as :func:`folder_key` and :func:`settings_fingerprint`)."""

    scan_root: str | None
    out_dir: str | None
    settings: str | None

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> JournalOwner:
        return cls(meta.get(SCAN_ROOT), meta.get(OUT_DIR), meta.get(SETTINGS))

    def meta(self) -> dict[str, str]:
        pairs = ((SCAN_ROOT, self.scan_root), (OUT_DIR, self.out_dir), (SETTINGS, self.settings))
        return {k: v for k, v in pairs if v is not None}


def check_scan_root(recorded: str | None, root: Path, out_dir: Path, *, allow_other: bool) -> None:
    """Refuse a run of another scan folder into an output folder that holds one archive's results."""
    here = folder_key(root)
    if recorded is None or recorded == here or allow_other:
        return
    raise UserError(
        f"this output folder holds the results of the scans in {recorded}, not of {here}",
        path=out_dir,
        hint="give this archive its own --out; or pass --allow-other-scans to add its files beside "
        "them (a file whose name the other archive already has is then failed, never replaced)",
    )


def same_out_dir(journal: Path, recorded: str | None, target_out: Path) -> bool:
    """Whether a journal belongs to ``target_out``: it lies in ``<target_out>/.mtcolor/`` or says so.

    Where it lies wins over what it says (a cluster may mount the folder under another path); a loose
    journal file that says nothing (written before journals recorded their folder) is taken at its word.
    """
    target = folder_key(target_out)
    journal = Path(journal)
    located = folder_key(journal.parent.parent) if journal.parent.name == ".mtcolor" else None
    if target in (located, recorded):
        return True
    return located is None and recorded is None
