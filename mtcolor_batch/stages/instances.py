"""Scan + folder rules + sidecar -> the instances a file is colorized with: the one chain ``run``,
``hints`` and the editor share.

``run`` (through :mod:`mtcolor_batch.stages.pipeline`), ``hints init`` and ``hints show`` all call
these functions, so what ``hints show`` draws is exactly what ``run`` uses: auto instances from
perception (minus the ``exclude`` lists; plus the labels folder rules name, asked of the detector),
the folder rules (``mtcolor-folder.yaml``, nearest wins) and the sidecar's hints bound or drawn
(:func:`mtcolor_batch.hints.resolve.resolve_hints`), then merged, capped, made exclusive and
numbered (:func:`mtcolor_batch.perception.instances.finalize`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mtcolor_batch.core.config import HintSettings, Profile
from mtcolor_batch.core.types import Instance, Scan
from mtcolor_batch.hints.folder_rules import NO_FOLDER_RULES, FolderChain, folder_chain
from mtcolor_batch.hints.mask_files import mask_digests
from mtcolor_batch.hints.resolve import NO_SEGMENTER_NOTE, ResolvedHints, effective_exclude, resolve_hints
from mtcolor_batch.hints.schema import Sidecar, check_instance_count, load_sidecar
from mtcolor_batch.perception import perceive
from mtcolor_batch.perception.instances import finalize
from mtcolor_batch.perception.models import Perception
from mtcolor_batch.scan.imageio import load_scan
from mtcolor_batch.scan.sidecars import find_sidecar


@dataclass(frozen=True)
class SidecarInput:
    """A scan's sidecar as read for one run: where it is, what it says, and its hash (fingerprints)."""

    path: Path | None = None
    hints: Sidecar | None = None
    sha256: str | None = None


NO_SIDECAR = SidecarInput()


@dataclass
class ScanInstances:
    """The instances of one scan and what the sidecar says beyond them (seed, prompt)."""

    instances: list[Instance]
    warnings: list[str] = field(default_factory=list)
    seed: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None  # the nearest folder rules file's
    folder_files: dict[str, str] = field(default_factory=dict)  # applying rules files: {relpath: sha256}


def read_sidecar(scan: Scan, settings: HintSettings) -> SidecarInput:
    """Find and validate the sidecar of ``scan`` (``photo.jpg.yaml`` first, then ``photo.yaml``)."""
    path = find_sidecar(Path(scan.source))
    if path is None:
        return NO_SIDECAR
    hints = load_sidecar(path, max_bytes=settings.max_sidecar_bytes, scan_size=scan.size)
    check_instance_count(hints, path, settings.max_sidecar_instances)
    return SidecarInput(path=path, hints=hints, sha256=hints.sha256)


def sidecar_masks(sidecar: SidecarInput, scan_root: Path) -> dict[str, str]:
    """sha256 of each mask file the sidecar names (its fingerprint part; empty without masks)."""
    if sidecar.hints is None or sidecar.path is None:
        return {}
    raws = [h.mask for h in sidecar.hints.instances if h.mask is not None]
    return mask_digests(raws, sidecar.path, scan_root)


def read_folder_rules(scan: Scan, scan_root: Path, settings: HintSettings) -> FolderChain:
    """The ``mtcolor-folder.yaml`` files from ``scan_root`` down to the scan's folder, merged."""
    return folder_chain(Path(scan.source), Path(scan_root), settings.max_sidecar_bytes)


def find_instances(
    scan: Scan,
    sidecar: SidecarInput,
    perception: Perception | None,
    profile: Profile,
    scan_root: Path,
    folder: FolderChain = NO_FOLDER_RULES,
) -> ScanInstances:
    """Perceive, apply the folder rules and the sidecar, finalize; ``scan_root`` is the folder mask
    files stay inside. A rule's label is added to the detector's queries, so a "tram" rule looks
    for trams in every scan it covers."""
    exclude = sorted(effective_exclude(sidecar.hints, folder))
    # sidecar boxes and points and perceive share one SAM embedding (same model, same size)
    sam = perception.segmenter if perception is not None else None
    segmenter = sam.at(profile.perception.size) if sam is not None else None

    def resolve(autos: list[Instance]) -> ResolvedHints:
        return resolve_hints(
            sidecar.hints, sidecar.path, scan, autos, segmenter, scan_root, profile.hints, folder
        )

    # No hint or rule binding to a detection: the drawn regions are what the sidecar gives whatever
    # is detected, and where they fill max_instances finalize keeps no auto instance.
    alone = resolve([]) if _drawn_may_fill(sidecar, folder, profile.perception.max_instances) else None
    room = None if alone is None else profile.perception.max_instances - _with_pixels(alone.instances)
    autos = perceive(scan, perception, profile.perception, exclude, folder.queries(), room)
    resolved = alone if alone is not None and room is not None and room <= 0 else resolve(autos)
    warnings = _count_box_only(list(resolved.warnings))
    instances = finalize(resolved.instances, scan.size, profile.perception, warnings)
    seed = int(resolved.seed) if resolved.seed is not None else None
    return ScanInstances(
        instances, warnings, seed, resolved.prompt, resolved.negative_prompt, resolved.folder_files
    )


def _drawn_may_fill(sidecar: SidecarInput, folder: FolderChain, max_instances: int) -> bool:
    """True when nothing binds to a detected instance (no label hint, no folder rule) and the drawn
    hints are enough to fill ``max_instances`` (each gives at most one instance), so resolving them
    alone first is worth it: elsewhere detection runs and the hints are resolved once."""
    hints = sidecar.hints.instances if sidecar.hints is not None else []
    drawn_only = not folder.rules and all(h.region != "label" for h in hints)
    return drawn_only and len(hints) >= max_instances


def _with_pixels(instances: list[Instance]) -> int:
    """How many instances finalize counts against max_instances (those with any pixel)."""
    return sum(bool(inst.mask.any()) for inst in instances)


def _count_box_only(warnings: list[str]) -> list[str]:
    """One line with a count, where the first box hint drawn without a segmenter stood, instead of
    one line per box: a 300-box sidecar without SAM said the same thing 300 times."""
    suffix = f": {NO_SEGMENTER_NOTE}"
    boxes = [w for w in warnings if w.endswith(suffix)]
    if len(boxes) < 2:
        return warnings
    first = warnings.index(boxes[0])
    rest = [w for w in warnings if not w.endswith(suffix)]
    where = boxes[0].removesuffix(suffix)
    rest.insert(
        first,
        f"{len(boxes)} box hints ({where} and {len(boxes) - 1} more): no segmentation model, "
        "so each whole box is used as its region",
    )
    return rest


def scan_instances(
    photo: Path, scan_root: Path, profile: Profile, perception: Perception | None
) -> tuple[Scan, ScanInstances]:
    """Load ``photo`` and find its instances exactly as ``run`` does (``hints show``)."""
    scan = load_scan(Path(photo), Path(scan_root), profile.scan)
    sidecar = read_sidecar(scan, profile.hints)
    folder = read_folder_rules(scan, Path(scan_root), profile.hints)
    return scan, find_instances(scan, sidecar, perception, profile, Path(scan_root), folder)
