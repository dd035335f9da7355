"""``hints check``: every sidecar and folder rules file under a folder validated, file:line:column.

Orphan sidecars (no scan picks them up) and shadowed ones (two sidecars for one scan) are warned
about, because their hints would be silently unused; so is a scan named ``mtcolor-folder.*``, whose
short sidecar name is the folder rules file's.
"""

from __future__ import annotations

from pathlib import Path

from mtcolor_batch.core.errors import HintError, UserError
from mtcolor_batch.hints.folder_rules import (
    check_folder_file,
    folder_chain,
    missing_colour_errors,
    needs_colour,
)
from mtcolor_batch.hints.mask_files import resolve_mask_path
from mtcolor_batch.hints.schema import check_instance_count, check_sidecar, load_sidecar
from mtcolor_batch.scan.discover import IMAGE_EXTENSIONS, SIDECAR_EXTENSIONS, discover
from mtcolor_batch.scan.folder_files import FOLDER_RULES_NAME, collides_with_rules, is_folder_rules_name
from mtcolor_batch.scan.imageio import upright_size
from mtcolor_batch.scan.sidecars import find_sidecar, shadowed_sidecar, sidecar_candidates


def _image_for(sidecar: Path) -> Path | None:
    """The scan a sidecar file belongs to (``photo.jpg.yaml`` or ``photo.yaml`` -> ``photo.jpg``)."""
    for candidate in (sidecar.with_suffix(""), *sorted(sidecar.parent.glob(sidecar.stem + ".*"))):
        if (
            candidate.suffix.lower() in IMAGE_EXTENSIONS
            and candidate.is_file()
            and sidecar in sidecar_candidates(candidate)
        ):
            return candidate
    return None


def _sidecars_to_check(scans: Path) -> tuple[list[tuple[Path, Path | None]], list[Path]]:
    """((sidecar, its scan or None) pairs, orphan sidecars) for a folder, a scan or a sidecar file.

    An orphan is a ``.yaml``/``.yml`` in the tree that no scan picks up (``photo.jpeg.yaml`` for
    ``photo.jpg``, ``photo.jpg.yml``): its hints would be silently unused, so check says so.
    """
    if scans.is_file() and is_folder_rules_name(scans.name):
        return [], []
    if scans.is_file() and scans.suffix.lower() in SIDECAR_EXTENSIONS:
        image = _image_for(scans)
        return [(scans, image)], ([] if image is not None else [scans])
    pairs: list[tuple[Path, Path | None]] = []
    for f in discover(scans):
        sidecar = find_sidecar(f.path)
        if sidecar is not None:
            pairs.append((sidecar, f.path))
    orphans: list[Path] = []
    if scans.is_dir():
        used = {sc.resolve() for sc, _ in pairs}
        for ext in SIDECAR_EXTENSIONS:
            for path in sorted(scans.rglob(f"*{ext}")):
                rel = path.relative_to(scans).parts
                if any(part.startswith(".") for part in rel) or is_folder_rules_name(path.name):
                    continue
                if path.resolve() not in used and _image_for(path) is None:
                    orphans.append(path)
    return pairs, orphans


def _mask_problems(sidecar_path: Path, scan_root: Path, max_bytes: int) -> list[str]:
    """Mask files that are missing or leave the scan folder, with the line of their hint."""
    out = []
    sidecar = load_sidecar(sidecar_path, max_bytes=max_bytes)
    for hint in sidecar.instances:
        if hint.mask is None:
            continue
        try:
            resolve_mask_path(hint.mask, sidecar_path, scan_root)
        except HintError as exc:
            err = HintError(
                f"instance {hint.position}: {exc.message}",
                path=sidecar_path,
                line=hint.line,
                column=hint.column,
                hint=exc.hint,
            )
            out.append(err.one_line())
    return out


def check_sidecars(
    scans: Path, max_bytes: int, max_instances: int | None = None
) -> tuple[list[str], list[str], int]:
    """(problem lines, warning lines, sidecars checked) for everything under ``scans``."""
    pairs, orphans = _sidecars_to_check(scans)
    scan_root = scans if scans.is_dir() else scans.parent
    problems: list[str] = []
    warnings = [f"{o}: warning: no scan uses this sidecar (name it <scan file>.yaml)" for o in orphans]
    for sidecar, image in pairs:
        size = None
        if image is not None:
            try:
                size = upright_size(image)
            except UserError as exc:
                problems.append(exc.one_line())
            shadow = shadowed_sidecar(image)
            if shadow is not None:
                warnings.append(f"{shadow}: warning: ignored because {sidecar.name} exists for the same scan")
        # scan_root turns on run's own mask checks (inside the tree, regular file, decodable, scan-sized)
        checked_errors = check_sidecar(sidecar, max_bytes=max_bytes, scan_size=size, scan_root=scan_root)
        found = [err.one_line() for err in checked_errors]
        if not found and max_instances is not None:
            try:  # the run's own per-sidecar cap
                check_instance_count(load_sidecar(sidecar, max_bytes=max_bytes), sidecar, max_instances)
            except HintError as exc:
                found = [exc.one_line()]
        if not found:
            found = _mask_problems(sidecar, scan_root, max_bytes)
        if not found and image is not None:
            found = _rule_colour_problems(sidecar, image, scan_root, max_bytes)
        problems.extend(found)
    return problems, warnings, len(pairs)


def _rule_colour_problems(sidecar_path: Path, image: Path, scan_root: Path, max_bytes: int) -> list[str]:
    """Drawn hints with a label and no colour that no folder rule (nor label hint) colours: the run
    would fail them at this line, so check says so now."""
    sidecar = load_sidecar(sidecar_path, max_bytes=max_bytes)
    if not any(needs_colour(h) for h in sidecar.instances):
        return []
    try:
        chain = folder_chain(image, scan_root, max_bytes)
    except HintError:
        return []  # the rules file's own problems are reported with its lines
    return [e.one_line() for e in missing_colour_errors(sidecar.instances, sidecar_path, chain)]


def folder_files_under(scans: Path) -> list[Path]:
    """The rules files ``hints check`` validates: under a folder (hidden folders skipped), or the
    rules file it was given."""
    if scans.is_file():
        return [scans] if is_folder_rules_name(scans.name) else []
    if not scans.is_dir():
        return []
    return sorted(
        p
        for p in scans.rglob(FOLDER_RULES_NAME)
        if not any(part.startswith(".") for part in p.relative_to(scans).parts)
    )


def check_folder_files(scans: Path, max_bytes: int) -> tuple[list[str], list[str], int]:
    """(problem lines, warning lines, rules files checked): every ``mtcolor-folder.yaml`` under
    ``scans``, with the sidecar's file:line:column messages, and the scans whose short sidecar name
    would be the rules file's."""
    root = scans if scans.is_dir() else scans.parent
    files = folder_files_under(scans)
    problems = [
        e.one_line() for f in files for e in check_folder_file(f, max_bytes=max_bytes, scan_root=root)[1]
    ]
    warnings = []
    if scans.is_dir():
        for item in discover(scans):
            if collides_with_rules(item.path):
                warnings.append(
                    f"{item.path}: warning: this scan's short sidecar name would be {FOLDER_RULES_NAME}, the "
                    f"folder rules file's; give it a sidecar named {item.path.name}.yaml, or rename the scan"
                )
    return problems, warnings, len(files)
