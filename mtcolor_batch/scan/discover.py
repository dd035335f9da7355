"""Find the scans of an archive tree, in a stable order, without surprises.

Why a custom walk: archives contain hidden folders (``.thumbnails``, ``.mtcolor``), the run's own
output folder when a user puts it inside the tree, sidecar masks that are PNGs but not scans, and
symlinks that can loop. The order is the sorted relative path so that progress, shards and logs are
the same on every machine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from mtcolor_batch.core.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"})
SIDECAR_EXTENSIONS = (".yaml", ".yml")
MASK_SUFFIXES = (".mask", "_mask")  # photo.mask.png / photo_mask.png are hint masks, never scans


@dataclass(frozen=True)
class ScanFile:
    """One discovered input: its path and its path relative to the scan root (posix, the journal key)."""

    path: Path
    relpath: str
    out_stem: str = ""  # output file stem; set by discover() so photo.jpg and photo.tif never collide

    @property
    def stem(self) -> str:
        return self.out_stem or Path(self.relpath).stem


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; ``None`` -> no sharding."""
    if spec is None or spec == "":
        return None
    try:
        k_text, n_text = spec.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError as exc:
        raise UserError(f"bad --shard '{spec}'", hint="use K/N, e.g. --shard 2/8") from exc
    if n < 1 or not 1 <= k <= n:
        raise UserError(f"bad --shard '{spec}'", hint="need 1 <= K <= N")
    return k, n


def shard_of(relpath: str, n: int) -> int:
    """Stable shard (1..n) of a relative path: sha1, so every host and Python version agrees."""
    digest = hashlib.sha1(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def _mask_refs(sidecar: Path) -> set[Path]:
    """Mask files a sidecar points at, so the walk does not treat them as scans.

    Parsing errors are ignored here on purpose: the hints stage reports them with file:line for the
    scan the sidecar belongs to; discovery must not fail the whole run over one bad sidecar.
    """
    try:
        data = yaml.safe_load(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return set()
    refs: set[Path] = set()
    if isinstance(data, dict) and isinstance(data.get("instances"), list):
        for item in data["instances"]:
            if isinstance(item, dict) and isinstance(item.get("mask"), str):
                refs.add(_real(sidecar.parent / item["mask"]))
    return refs


def _real(path: Path) -> Path:
    """Canonical path that never raises (``Path.resolve`` raises on symlink loops in Python 3.11)."""
    return Path(os.path.realpath(path))


def _is_mask_name(name: str) -> bool:
    stem = name.rsplit(".", 1)[0].lower()
    return stem.endswith(MASK_SUFFIXES)


def discover(
    root: Path, *, exclude: list[Path] | None = None, shard: tuple[int, int] | None = None
) -> list[ScanFile]:
    """All scans under ``root`` (or ``root`` itself if it is a file), sorted by relative path.

    ``exclude`` holds folders never entered (the output folder). Directory symlinks are followed
    once: a folder already seen by (device, inode) is skipped, which breaks loops and duplicates.
    """
    root = Path(root)
    if not root.exists():
        raise UserError("scan folder not found", path=root)
    if root.is_file():
        if root.suffix.lower() not in IMAGE_EXTENSIONS:
            raise UserError("not a supported image file", path=root, hint=", ".join(sorted(IMAGE_EXTENSIONS)))
        return [ScanFile(root, root.name)]
    excluded = {_real(p) for p in (exclude or [])}
    seen_dirs: set[tuple[int, int]] = set()
    candidates: list[tuple[Path, str]] = []
    masks: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        try:
            st = here.stat()
        except OSError:
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs or _real(here) in excluded:
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            path = here / name
            suffix = path.suffix.lower()
            if suffix in SIDECAR_EXTENSIONS:
                masks |= _mask_refs(path)
            elif suffix in IMAGE_EXTENSIONS and not _is_mask_name(name):
                candidates.append((path, path.relative_to(root).as_posix()))
    files: list[ScanFile] = []
    for path, rel in candidates:
        if _real(path) in masks:  # a dangling or looping link is kept: loading reports it as failed
            continue
        files.append(ScanFile(path, rel))
    files.sort(key=lambda f: f.relpath)
    files = _disambiguate(files)
    if shard is not None:
        files = [f for f in files if shard_of(f.relpath, shard[1]) == shard[0]]
    return files


def _disambiguate(files: list[ScanFile]) -> list[ScanFile]:
    """Give ``photo.jpg`` and ``photo.tif`` in one folder distinct output stems (``photo_jpg``...).

    Without this both would write ``photo.color.json``. Decided over the whole tree (not the shard),
    so every shard of a job array names outputs the same way.
    """
    groups: dict[tuple[str, str], int] = {}
    for f in files:
        rel = Path(f.relpath)
        key = (rel.parent.as_posix(), rel.stem.lower())
        groups[key] = groups.get(key, 0) + 1
    out = []
    for f in files:
        rel = Path(f.relpath)
        if groups[(rel.parent.as_posix(), rel.stem.lower())] > 1:
            f = ScanFile(f.path, f.relpath, f"{rel.stem}_{rel.suffix.lstrip('.').lower()}")
        out.append(f)
    return out
