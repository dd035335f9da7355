"""What the ``hints`` commands (init, show, edit) load once per invocation: profile and perception."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtcolor_batch.core.config import Profile, load_profile
from mtcolor_batch.model.registry import MANIFEST_FILE, default_bundle_dir, find_bundle
from mtcolor_batch.scan.discover import discover

if TYPE_CHECKING:  # heavy imports (torch, transformers) wait until a command needs them
    from mtcolor_batch.perception.models import Perception  # deferred: loads torch


@dataclass
class HintsContext:
    """What init/show load once per invocation."""

    profile: Profile
    perception: Perception | None
    bundle_dir: Path | None


def _bundle_folder(model: str | None) -> Path | None:
    """``--model DIR|ID`` -> its bundle; no option -> the pulled default bundle, or None (no perception)."""

    if model is None and not (default_bundle_dir() / MANIFEST_FILE).is_file():
        return None
    return find_bundle(model)


def load_hints_context(model: str | None, profile_name: str | None, device: str | None) -> HintsContext:
    """Profile + perception models; no bundle (or one without sam/detector) means no auto instances."""
    from mtcolor_batch.perception.models import load_perception  # deferred: loads torch

    profile = load_profile(profile_name)
    bundle_dir = _bundle_folder(model)
    perception = None
    if bundle_dir is not None:
        perception = load_perception(bundle_dir, device or profile.device, long_side=profile.perception.size)
    return HintsContext(profile=profile, perception=perception, bundle_dir=bundle_dir)


def scan_files(scans: Path) -> list[tuple[Path, Path]]:
    """(scan path, scan root) pairs: a folder is walked like ``run`` walks it; a file is itself."""

    root = scans if scans.is_dir() else scans.parent
    return [(f.path, root) for f in discover(scans)]
