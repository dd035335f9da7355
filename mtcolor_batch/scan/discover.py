"""Find the scans of an archive tree, in a stable order, without surprises.

Why a custom walk: archives contain hidden folders (``.thumbnails``, ``.mtcolor``), the run's own
output folder when a user puts it inside the tree, sidecar masks that are PNGs but not scans, and
symlinks that can loop. The order is the sorted relative path so that progress, shards and logs are
the same on every machine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from mtcolor_batch.core.errors import UserError, path_text
from mtcolor_batch.core.regular import open_regular
from mtcolor_batch.scan.folder_files import is_folder_rules_name
from mtcolor_batch.scan.sidecars import find_sidecar, shadow_message, shadowed_sidecar, sidecar_mask_paths

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"})
SIDECAR_EXTENSIONS = (".yaml", ".yml")
MASK_SUFFIXES = (".mask", "_mask")  # photo.mask.png / photo_mask.png are hint masks, never scans


@dataclass(frozen=True)
class ScanFile:
    """One discovered input: its path and its path relative to the scan root (posix, the journal key)."""

    path: Path
    relpath: str
    out_stem: str = ""  # output file stem; set by discover() so photo.jpg and photo.tif never collide
    name_note: str = ""  # why the output stem differs from the scan's own (recorded in provenance)

    @property
    def stem(self) -> str:
        return self.out_stem or Path(self.relpath).stem


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; ``None`` -> no sharding.

    An empty or blank spec is refused: it is what ``--shard "$SLURM_SHARD"`` gives when the job
    script's variable is unset, and running the whole archive in every array task is the worst
    reading of it.
    """
    if spec is None:
        return None
    if not spec.strip():
        raise UserError(
            "--shard is empty (an unset variable in the job script?)",
            hint="use K/N, e.g. --shard 2/8, or leave out --shard to run every file",
        )
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


def _mask_refs(sidecar: Path, max_bytes: int) -> set[Path]:
    """Mask files a sidecar points at, so the walk can tell masks from scans.

    A path no file can have (a NUL byte) names nothing here; the hints stage fails that scan with
    the sidecar's line. It must not stop discovery, and with it every file of the run."""
    return {_real(sidecar.parent / raw) for raw in sidecar_mask_paths(sidecar, max_bytes) if "\0" not in raw}


def _real(path: Path) -> Path:
    """Canonical path that never raises (``Path.resolve`` raises on symlink loops in Python 3.11)."""
    return Path(os.path.realpath(path))


def _is_mask_name(name: str) -> bool:
    stem = name.rsplit(".", 1)[0].lower()
    return stem.endswith(MASK_SUFFIXES)


OUTPUT_FOLDER_MARK = ".mtcolor"
"""A folder holding this is an mtcolor-batch output folder: never scanned as originals."""
REPORT_FOLDER = "report_files"
"""The report's folder (thumbnails) beside ``.mtcolor/`` in an output folder: never scanned."""
MASK_FOLDER_SUFFIXES = ("mask", "masks")
DEFAULT_MAX_SIDECAR_BYTES = 256 * 1024


@dataclass
class Discovery:
    """The scans found, plus what the walk could not see or chose to skip (for the run summary)."""

    files: list[ScanFile]
    warnings: list[str] = field(default_factory=list)
    taken: set[tuple[str, str]] = field(default_factory=set)  # (folder, stem lowercased), whole tree


def discover(
    root: Path,
    *,
    exclude: list[Path] | None = None,
    shard: tuple[int, int] | None = None,
    max_sidecar_bytes: int = DEFAULT_MAX_SIDECAR_BYTES,
) -> list[ScanFile]:
    """All scans under ``root`` (or ``root`` itself if it is a file), sorted by relative path."""
    return discover_report(root, exclude=exclude, shard=shard, max_sidecar_bytes=max_sidecar_bytes).files


def discover_report(
    root: Path,
    *,
    exclude: list[Path] | None = None,
    shard: tuple[int, int] | None = None,
    max_sidecar_bytes: int = DEFAULT_MAX_SIDECAR_BYTES,
) -> Discovery:
    """:func:`discover` plus warnings: unreadable folders, skipped output folders, masks kept as scans.

    ``exclude`` holds folders never entered (the output folder); so is any folder holding
    ``.mtcolor/`` (an earlier run's outputs). Directory symlinks are followed once: a folder
    already seen by (device, inode) is skipped, which breaks loops and duplicates. Entries named
    like images are kept whatever they are (FIFO, socket, link to a device): loading refuses them
    unopened, so they end as failed rows with their reason instead of vanishing.
    """
    root = Path(root)
    if not root.exists():
        raise UserError("scan folder not found", path=root)
    if root.is_file() or (root.suffix.lower() in IMAGE_EXTENSIONS and not root.is_dir()):
        if root.suffix.lower() not in IMAGE_EXTENSIONS:
            raise UserError("not a supported image file", path=root, hint=", ".join(sorted(IMAGE_EXTENSIONS)))
        single = [ScanFile(root, path_text(root.name))]
        return Discovery(single, _sidecar_warnings(single, []))
    excluded = {_real(p) for p in (exclude or [])}
    seen_dirs: set[tuple[int, int]] = set()
    candidates: list[tuple[Path, str]] = []
    masks: dict[Path, Path] = {}  # mask file -> first sidecar naming it
    mask_named: list[tuple[Path, str]] = []  # images named *_mask / *.mask: hint masks, never scans
    unreadable: list[str] = []
    output_folders: list[str] = []

    def _unreadable(exc: OSError) -> None:
        unreadable.append(path_text(exc.filename or "?"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=_unreadable):
        here = Path(dirpath)
        try:
            st = here.stat()
        except OSError:
            dirnames[:] = []
            unreadable.append(path_text(here))
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs or _real(here) in excluded:
            dirnames[:] = []
            continue
        if here != root and OUTPUT_FOLDER_MARK in dirnames:
            dirnames[:] = []
            output_folders.append(path_text(here.relative_to(root).as_posix()))
            continue
        if OUTPUT_FOLDER_MARK in dirnames and REPORT_FOLDER in dirnames:  # SCANS is an output folder:
            dirnames.remove(REPORT_FOLDER)  # its report's thumbnails carry no XMP mark to skip them by
            output_folders.append(path_text((here / REPORT_FOLDER).relative_to(root).as_posix()))
        seen_dirs.add(key)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            path = here / name
            suffix = path.suffix.lower()
            if is_folder_rules_name(name):
                continue  # mtcolor-folder.yaml: neither a scan nor a sidecar (it names no mask files)
            if suffix in SIDECAR_EXTENSIONS:
                for ref in _mask_refs(path, max_sidecar_bytes):
                    masks.setdefault(ref, path)
            elif suffix in IMAGE_EXTENSIONS:
                rel = path.relative_to(root).as_posix()
                (mask_named if _is_mask_name(name) else candidates).append((path, rel))
    warnings: list[str] = []
    if unreadable:
        warnings.append(
            f"{len(unreadable)} folder(s) could not be read and were skipped: {', '.join(sorted(unreadable))}"
        )
    if output_folders:
        warnings.append(
            f"{len(output_folders)} earlier output folder(s) inside the tree (they hold .mtcolor/) were not "
            f"scanned: {', '.join(sorted(output_folders))}"
        )
    ours = [(path, rel) for path, rel in candidates if _is_our_output(path)]
    if ours:
        candidates = [c for c in candidates if c not in ours]
        shown = ", ".join(path_text(rel) for _, rel in sorted(ours, key=lambda c: c[1])[:5])
        warnings.append(
            f"{len(ours)} file(s) are outputs of mtcolor-batch (they carry its XMP mark) and were not "
            f"colorized again: {shown}{', ...' if len(ours) > 5 else ''} (give the folder of the originals)"
        )
    files: list[ScanFile] = []
    by_key: dict[str, Path] = {}
    for path, rel in sorted(candidates, key=lambda c: os.fsencode(c[1])):
        sidecar = masks.get(_real(path))
        name_key = path_text(rel)
        if sidecar is not None:
            if _mask_only(path):
                continue
            by = path_text(sidecar.relative_to(root).as_posix())
            warnings.append(
                f"{name_key}: named as a mask by {by} and colorized as a scan too (rename it <name>_mask.png "
                "or move it into a masks/ folder to make it a mask only)"
            )
        if name_key in by_key:  # only a non-UTF-8 name can escape to another file's name
            other = path_text(by_key[name_key])
            warnings.append(f"{path_text(path)}: skipped: its name reads the same as {other}")
            continue
        by_key[name_key] = path
        files.append(ScanFile(path, name_key))
    files.sort(key=lambda f: f.relpath)
    files = _disambiguate(files)
    taken = {(Path(f.relpath).parent.as_posix(), f.stem.lower()) for f in files}
    if shard is not None:
        files = [f for f in files if shard_of(f.relpath, shard[1]) == shard[0]]
        mask_named = [m for m in mask_named if shard_of(m[1], shard[1]) == shard[0]]
    warnings += _sidecar_warnings(files, sorted(mask_named, key=lambda m: m[1]))
    return Discovery(files, warnings, taken)


def _sidecar_warnings(files: list[ScanFile], mask_named: list[tuple[Path, str]]) -> list[str]:
    """Sidecar surprises, said once per file in the run's warnings rather than at every lookup.

    - both ``photo.jpg.yaml`` and ``photo.yaml`` exist: the first is used;
    - a ``*_mask`` image has a sidecar of its own: by the naming rule it is a hint mask and is not
      colorized, but a sidecar says the user meant it as a scan.
    """
    out: list[str] = []
    for f in files:
        other = shadowed_sidecar(f.path)
        used = find_sidecar(f.path)
        if other is not None and used is not None:
            out.append(f"{f.relpath}: {shadow_message(used, other)}")
    for path, rel in mask_named:
        own = find_sidecar(path)
        if own is not None:
            out.append(
                f"{path_text(rel)}: not colorized: its name ends in _mask/.mask, which marks a hint mask, "
                f"but it has its own sidecar {path_text(own.name)} (rename it without the _mask ending "
                "to colorize it)"
            )
    return out


OUTPUT_XMP_MARK = b'xmp:CreatorTool="mtcolor-batch '
"""What ``output.provenance.build_xmp`` writes into every output (all formats but BMP carry XMP)."""


def _is_our_output(path: Path) -> bool:
    """True for an image an earlier run wrote (its XMP names this tool), from the header alone.

    Why: a folder of outputs passed as SCANS (or outputs copied among the originals) would be
    colorized a second time, a colorized image read as gray. Pillow reads XMP while opening (JPEG
    APP1, PNG iTXt before the pixels, TIFF tag 700, WebP chunk), so no pixel is decoded.
    """
    import warnings as _warnings

    from PIL import Image

    try:
        with open_regular(path) as fh, _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            with Image.open(fh) as img:
                xmp = img.info.get("xmp")
    except Exception:  # unreadable or not an image: loading reports it as a scan
        return False
    return isinstance(xmp, bytes) and OUTPUT_XMP_MARK in xmp


def _mask_only(path: Path) -> bool:
    """The mask-naming rule for a file some sidecar names under ``mask:``.

    It is a mask and not a scan when its folder's name ends in ``mask``/``masks`` (``masks/``,
    ``photo_masks/``) or when it holds at most two tones (a painted black-and-white mask; no scan
    worth colorizing is bilevel). Otherwise it stays a scan and the caller warns. Names ending
    ``_mask``/``.mask`` never reach here: they are never scans.
    """
    if path.parent.name.lower().endswith(MASK_FOLDER_SUFFIXES):
        return True
    import warnings as _warnings

    from PIL import Image

    try:
        with open_regular(path) as fh, _warnings.catch_warnings():
            _warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as img:
                return img.mode == "1" or img.getcolors(maxcolors=2) is not None
    except Exception:  # unreadable, too large or not an image: loading reports it as a scan
        return False


def _disambiguate(files: list[ScanFile]) -> list[ScanFile]:
    """Give every scan an output stem no other scan of the tree shares (case-insensitively).

    ``photo.jpg`` + ``photo.tif`` in one folder become ``photo_jpg`` / ``photo_tif``; anything still
    clashing after that (``photo.JPG`` + ``photo.jpg``; ``a.png`` + ``a.jpg`` + ``a_png.png``) gets
    ``~2``, ``~3`` in relative-path order, and the renamed file carries a note saying why (it goes
    into its provenance record). Decided over the whole tree (not the shard), so every shard of a
    job array names outputs the same way; case-insensitive because archives travel on such disks.
    """
    groups: dict[tuple[str, str], int] = {}
    for f in files:
        rel = Path(f.relpath)
        key = (rel.parent.as_posix(), rel.stem.lower())
        groups[key] = groups.get(key, 0) + 1
    wanted: list[str] = []
    for f in files:
        rel = Path(f.relpath)
        clash = groups[(rel.parent.as_posix(), rel.stem.lower())] > 1
        wanted.append(f"{rel.stem}_{rel.suffix.lstrip('.').lower()}" if clash else rel.stem)
    taken: dict[tuple[str, str], str] = {}  # (folder, stem lowercased) -> relpath that holds it
    for f, stem in zip(files, wanted, strict=True):
        taken.setdefault((Path(f.relpath).parent.as_posix(), stem.lower()), f.relpath)
    out = []
    for f, stem in zip(files, wanted, strict=True):
        folder = Path(f.relpath).parent.as_posix()
        note = ""
        if taken[(folder, stem.lower())] != f.relpath:
            n = 2
            while (folder, f"{stem}~{n}".lower()) in taken:
                n += 1
            holder = taken[(folder, stem.lower())]
            note = (
                f"output named '{stem}~{n}' because '{Path(holder).name}' already takes '{stem}' "
                "in this folder"
            )
            stem = f"{stem}~{n}"
            taken[(folder, stem.lower())] = f.relpath
        out.append(ScanFile(f.path, f.relpath, stem if stem != Path(f.relpath).stem else "", note))
    return out
