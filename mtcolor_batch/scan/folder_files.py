"""Which folder rules files (``mtcolor-folder.yaml``) apply to a scan: the naming and finding rules.

Why in ``scan``: discovery must never take the rules file for a scan or a sidecar, the short sidecar
name of a scan called ``mtcolor-folder.jpg`` would collide with it, and the journal hashes the files
that apply to a scan before any hint is validated; the hints package parses them on these rules.
"""

from __future__ import annotations

import os
from pathlib import Path

from mtcolor_batch.core.errors import path_text
from mtcolor_batch.core.fs import sha256_file
from mtcolor_batch.core.regular import not_regular_reason

__all__ = [
    "FOLDER_RULES_NAME",
    "collides_with_rules",
    "folder_file_digests",
    "folder_rule_files",
    "is_folder_rules_name",
    "rules_relpath",
]

FOLDER_RULES_NAME = "mtcolor-folder.yaml"
"""The one name of a folder rules file; it applies to every scan in its folder and below."""


def is_folder_rules_name(name: str) -> bool:
    """True for ``mtcolor-folder.yaml`` (any case: on a case-insensitive disk they are one file)."""
    return name.lower() == FOLDER_RULES_NAME


def collides_with_rules(image_path: Path) -> bool:
    """A scan named ``mtcolor-folder.*``: its short sidecar name is the rules file's name."""
    return Path(image_path).stem.lower() == Path(FOLDER_RULES_NAME).stem


def folder_rule_files(image_path: Path, scan_root: Path) -> list[Path]:
    """The rules files that apply to ``image_path``, farthest (``scan_root``'s) first, nearest last.

    Only folders from ``scan_root`` down to the scan's own are looked in: a run of one subfolder
    does not pick up rules from above the folder it was given, so what applies is what the user
    pointed the run at. ``lexists``, not ``is_file``: a FIFO or a link named like the rules file
    must fail the scan with its reason (the guarded reader refuses it unopened), not vanish.
    """
    root = Path(scan_root)
    folder = Path(image_path).parent
    try:
        parts = folder.relative_to(root).parts
    except ValueError:  # a scan outside the root it was given: only its own folder
        root, parts = folder, ()
    folders = [root, *(root.joinpath(*parts[: i + 1]) for i in range(len(parts)))]
    return [f / FOLDER_RULES_NAME for f in folders if os.path.lexists(f / FOLDER_RULES_NAME)]


def rules_relpath(path: Path, scan_root: Path | None) -> str:
    """How records and fingerprints name a rules file: posix, relative to the scan root."""
    if scan_root is not None:
        try:
            return path_text(Path(path).relative_to(scan_root).as_posix())
        except ValueError:
            pass
    return path_text(Path(path).name)


def folder_file_digests(
    image_path: Path, scan_root: Path, cache: dict[Path, str] | None = None
) -> dict[str, str]:
    """{relpath: sha256} of the rules files that apply to a scan: the journal fingerprint's part.

    Hashed from bytes, unvalidated (a broken file still changes the fingerprint; the hints stage
    fails the scan with its line). A FIFO or device is never opened: ``unreadable``. ``cache``
    (path -> digest) lets one planning pass hash each file once for thousands of scans.
    """
    out: dict[str, str] = {}
    for path in folder_rule_files(image_path, scan_root):
        if cache is not None and path in cache:
            digest = cache[path]
        else:
            try:
                digest = "unreadable" if not_regular_reason(path) is not None else sha256_file(path)
            except OSError:
                digest = "unreadable"
            if cache is not None:
                cache[path] = digest
        out[rules_relpath(path, scan_root)] = digest
    return out
