"""Mask files named by sidecar hints: where they may be, and reading them.

Security rule: a sidecar may only name mask files inside the scan tree. ``hints check`` (through
the schema) and ``run`` (through resolve) apply the same rules from here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, ImageOps

from mtcolor_batch.core.errors import HintError
from mtcolor_batch.core.fs import sha256_file
from mtcolor_batch.core.regular import open_regular

UNREADABLE = "unreadable"
"""Stands for a mask's hash when it cannot be found or read: the hints stage fails the file with why."""


def resolve_mask_path(raw: str, sidecar_path: Path, scan_root: Path) -> Path:
    """The real path of a hint's mask file, refusing anything that leaves ``scan_root``.

    Rules: no absolute paths; the path is taken relative to the sidecar's folder; after following
    every symlink and '..' it must still be inside ``scan_root`` (so neither '../../etc/x.png' nor a
    symlink pointing out of the tree can make the tool read a file the archive does not contain).
    """
    if "\0" in raw:  # no file can have it; the OS calls would raise ValueError, not an OSError
        shown = raw.replace("\0", "\\0")
        raise HintError(f"mask path '{shown}' holds a NUL character", path=sidecar_path)
    if PurePosixPath(raw).is_absolute() or PureWindowsPath(raw).is_absolute() or raw.startswith(("~", "\\")):
        raise HintError(
            f"mask path '{raw}' is absolute",
            path=sidecar_path,
            hint="write it relative to the sidecar, inside the scan folder (e.g. masks/coat.png)",
        )
    root = Path(scan_root).resolve()
    candidate = Path(sidecar_path).parent / raw
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise HintError(
            f"mask file '{raw}' not found (looked for {candidate})",
            path=sidecar_path,
            hint="the path is relative to the folder the sidecar is in",
        ) from None
    except (OSError, RuntimeError) as exc:  # symlink loops
        raise HintError(f"mask path '{raw}' cannot be resolved: {exc}", path=sidecar_path) from None
    if not real.is_relative_to(root):
        if ".." in PurePosixPath(raw.replace("\\", "/")).parts and not _has_symlink(candidate):
            why = "uses '..' to leave the scan folder"
        else:
            why = f"is a symlink to {real}, outside the scan folder"
        raise HintError(
            f"mask path '{raw}' {why}",
            path=sidecar_path,
            hint=f"keep mask files inside {root}",
        )
    if not real.is_file():
        raise HintError(f"mask path '{raw}' is not a file", path=sidecar_path)
    return real


def check_mask_file(raw: str, sidecar_path: Path, scan_root: Path, size: tuple[int, int] | None) -> Path:
    """The mask checks ``run`` makes, for `hints check`, so the two never disagree.

    Path rules of :func:`resolve_mask_path`; with ``size`` (the scan's (h, w)) the very decode
    ``run`` does (:func:`load_mask_file`: size, readability, decompression-bomb limit); without
    it (the scan itself is unreadable) the header alone.
    """
    real = resolve_mask_path(raw, sidecar_path, scan_root)
    if size is not None:
        load_mask_file(real, size, sidecar_path, raw)
        return real
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(real) as image:
                mask_size = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise HintError(f"cannot read mask '{raw}': {exc}", path=sidecar_path) from None
    if size is not None:
        h, w = size
        if mask_size not in {(w, h), (h, w)}:
            raise HintError(
                f"mask '{raw}' is {mask_size[0]}x{mask_size[1]} px but the scan is {w}x{h}",
                path=sidecar_path,
                hint="paint the mask on a copy of the scan at its full size",
            )
    return real


def _has_symlink(path: Path) -> bool:
    current = Path(path)
    for part in [current, *current.parents]:
        try:
            if part.is_symlink():
                return True
        except OSError:
            return False
    return False


def load_mask_file(path: Path, size: tuple[int, int], sidecar_path: Path, raw: str) -> np.ndarray:
    """White (or, with transparency, opaque) pixels are the region; size must equal the scan's."""
    h, w = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_regular(path) as fh, Image.open(fh) as image:
                if image.size not in {(w, h), (h, w)}:  # (h, w): EXIF-rotated masks are turned below
                    raise HintError(
                        f"mask '{raw}' is {image.size[0]}x{image.size[1]} px but the scan is {w}x{h}",
                        path=sidecar_path,
                        hint="paint the mask on a copy of the scan at its full size",
                    )
                upright = ImageOps.exif_transpose(image)
                if upright.size != (w, h):
                    raise HintError(
                        f"mask '{raw}' is {upright.width}x{upright.height} px upright; the scan is {w}x{h}",
                        path=sidecar_path,
                        hint="paint the mask on a copy of the scan at its full size",
                    )
                bands = upright.getbands()
                if "A" in bands:
                    alpha = np.asarray(upright.getchannel("A"))
                    if alpha.min() < 255:
                        return alpha >= 128
                if upright.mode == "1":
                    return np.asarray(upright, dtype=bool)
                return np.asarray(upright.convert("L")) >= 128
    except HintError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise HintError(f"cannot read mask '{raw}': {exc}", path=sidecar_path) from None


def mask_digests(raws: Iterable[str], sidecar_path: Path, scan_root: Path) -> dict[str, str]:
    """sha256 of each named mask file, by its path as written: part of the file's fingerprint.

    Why: repainting a mask changes the output as surely as editing the sidecar, yet leaves the
    sidecar's bytes alone. Masks are always hashed (no size + mtime shortcut), as sidecars are. A
    path the tree rules refuse, or a file that cannot be read, gets :data:`UNREADABLE`.
    """
    digests: dict[str, str] = {}
    for raw in raws:
        try:
            digests[raw] = sha256_file(resolve_mask_path(raw, sidecar_path, scan_root))
        except (HintError, OSError):
            digests[raw] = UNREADABLE
    return digests
