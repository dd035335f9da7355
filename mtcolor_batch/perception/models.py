"""Load the perception components of a model bundle (``sam/`` and ``detector/``).

Both are plain transformers folders (``save_pretrained`` output, safetensors). Processors are
rebuilt from their PIL-backend classes on purpose: the default "fast" SAM and OWLv2 image
processors import torchvision, which cannot load beside the CPU torch wheel this project pins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtcolor_batch.core.device import flush_cpu_denormals, resolve_device
from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.perception.segmenter import Segmenter

SAM_DIR = "sam"
DETECTOR_DIR = "detector"
RAM_DIR = "ram"


@dataclass
class Detector:
    """An open-vocabulary detector (OWLv2) and its processor, on one device."""

    model: torch.nn.Module
    processor: Any
    device: torch.device


@dataclass
class Perception:
    """Everything perception needs for one run, loaded once and reused for every scan."""

    bundle_dir: Path
    device: torch.device
    segmenter: Segmenter | None
    detector: Detector | None
    notes: list[str] = field(default_factory=list)
    ram_tagger: object | None = None  # tagger.RamTagger, loaded on first use (needs the `ram` package)

    @property
    def can_auto_segment(self) -> bool:
        """Auto instances need both halves: the detector finds boxes, SAM turns them into masks."""
        return self.segmenter is not None and self.detector is not None


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def bundle_can_auto_segment(bundle_dir: Path) -> bool:
    """Whether a bundle can find instances by itself (SAM + detector weights), without loading them."""
    return _has_weights(Path(bundle_dir) / SAM_DIR) and _has_weights(Path(bundle_dir) / DETECTOR_DIR)


def sam_processor(folder: Path) -> object:
    """SAM's processor from ``sam/`` (PIL backend), as the hub ships it or as transformers saves it."""
    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    return SamProcessor(image_processor=SamImageProcessorPil.from_pretrained(folder))


def detector_processor(folder: Path) -> object:
    """OWLv2's processor from ``detector/``: PIL image processor + the folder's CLIP tokenizer."""
    from transformers import CLIPTokenizer, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    return Owlv2Processor(
        image_processor=Owlv2ImageProcessorPil.from_pretrained(folder),
        tokenizer=CLIPTokenizer.from_pretrained(folder),
    )


def load_sam(folder: Path, device: torch.device, *, long_side: int = 1024) -> Segmenter:
    """``sam/`` -> :class:`Segmenter` (weights through safetensors only)."""
    from transformers import SamModel

    try:
        model = SamModel.from_pretrained(folder, use_safetensors=True)
        processor = sam_processor(folder)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load SAM: {exc}", path=folder) from exc
    return Segmenter(model, processor, device, long_side=long_side)


def load_detector(folder: Path, device: torch.device) -> Detector:
    """``detector/`` -> :class:`Detector` (OWLv2, safetensors, CLIP tokenizer from the folder)."""
    from transformers import Owlv2ForObjectDetection

    try:
        model = Owlv2ForObjectDetection.from_pretrained(folder, use_safetensors=True)
        processor = detector_processor(folder)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the detector: {exc}", path=folder) from exc
    return Detector(model=model.to(device).eval(), processor=processor, device=device)


def load_perception(
    bundle_dir: Path, device: str | torch.device = "auto", *, long_side: int = 1024
) -> Perception | None:
    """Load ``sam/`` and ``detector/`` from a bundle; ``None`` when it has neither.

    A bundle with only ``sam/`` still serves sidecar box/point hints; one with only
    ``detector/`` cannot make masks, so it is reported in ``notes`` and auto instances stay off.
    """
    flush_cpu_denormals()  # before any model loads (see there)
    bundle_dir = Path(bundle_dir)
    sam_dir, det_dir = bundle_dir / SAM_DIR, bundle_dir / DETECTOR_DIR
    has_sam, has_det = _has_weights(sam_dir), _has_weights(det_dir)
    if not has_sam and not has_det:
        return None
    dev = resolve_device(device)
    notes: list[str] = []
    segmenter = load_sam(sam_dir, dev, long_side=long_side) if has_sam else None
    detector = load_detector(det_dir, dev) if has_det else None
    if segmenter is None:
        notes.append("bundle has no sam/: auto instances and box/point hints are off")
    if detector is None:
        notes.append("bundle has no detector/: auto instances are off")
    return Perception(bundle_dir=bundle_dir, device=dev, segmenter=segmenter, detector=detector, notes=notes)
