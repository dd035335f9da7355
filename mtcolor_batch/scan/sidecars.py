"""Which sidecar belongs to which scan, and the mask files a sidecar names.

Why in ``scan``: discovery needs these naming rules to tell scans from hint masks and to warn about
shadowed sidecars, before any hint is validated; the hints package builds on the same rules.
"""

from __future__ import annotations

import os
from pathlib import Path

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.yaml_guarded import read_yaml
from mtcolor_batch.scan.folder_files import is_folder_rules_name

__all__ = ["find_sidecar", "shadow_message", "shadowed_sidecar", "sidecar_candidates", "sidecar_mask_paths"]


def sidecar_candidates(image_path: Path) -> list[Path]:
    """``photo.jpg.yaml`` then ``photo.yaml``: the order is the precedence.

    A scan named ``mtcolor-folder.*`` has only the long form: its short name is the folder rules
    file's, which is never a sidecar (``hints check`` warns about such a scan).
    """
    image_path = Path(image_path)
    long, short = (
        image_path.with_name(image_path.name + ".yaml"),
        image_path.with_name(image_path.stem + ".yaml"),
    )
    return [long] if is_folder_rules_name(short.name) else [long, short]


def find_sidecar(image_path: Path) -> Path | None:
    """The sidecar that applies to ``image_path``, or None.

    When both forms exist the first (``photo.jpg.yaml``) wins. Not logged here: this is asked several
    times per file (planning, hashing, the hints stage); the run's discovery warns once per scan
    (:func:`shadow_message`) and resolve_hints puts it into the file's provenance record.
    """
    # lexists, not is_file: a FIFO or a link to a device named photo.jpg.yaml must fail the scan with
    # its reason (the reader refuses it unopened), not vanish as "no sidecar".
    found = [p for p in sidecar_candidates(image_path) if os.path.lexists(p)]
    return found[0] if found else None


def shadowed_sidecar(image_path: Path) -> Path | None:
    """The second sidecar ignored because the first exists too, or None."""
    found = [p for p in sidecar_candidates(image_path) if os.path.lexists(p)]
    return found[1] if len(found) > 1 else None


def shadow_message(used: Path, ignored: Path) -> str:
    return f"both {used.name} and {ignored.name} exist; using {used.name} ({ignored.name} is ignored)"


def sidecar_mask_paths(sidecar_path: Path, max_bytes: int) -> list[str]:
    """The ``mask:`` paths a sidecar names, as written, without validating the rest of it.

    Read with the guarded loader (size cap before reading, regular files only, no aliases, bounded
    nesting), so a hostile sidecar costs nothing. A sidecar that does not parse names no mask here on
    purpose: the hints stage fails its file with file:line; discovery and fingerprinting must not
    fail the whole run over one bad sidecar.
    """
    try:
        data = read_yaml(sidecar_path, max_bytes=max_bytes)
    except UserError:
        return []
    items = data.get("instances") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    return [i["mask"] for i in items if isinstance(i, dict) and isinstance(i.get("mask"), str)]
