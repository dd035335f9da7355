"""What is in a scan, and where: labelled boxes that become SAM box prompts (Grounded-SAM).

Two taggers:

* ``detector`` (default, always available with a bundle): OWLv2 open-vocabulary detection over a
  curated vocabulary of things that matter in archival photos (``data/vocabulary.txt``).
* ``ram``: RAM / RAM++ from the optional ``ram`` package names the things actually present; the
  same detector then grounds those tags to boxes. ``ram`` is not on PyPI and needs torchvision,
  so it is imported only when asked for and its absence is one actionable line.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mtcolor_batch.core.errors import ModelError, UserError
from mtcolor_batch.perception.models import RAM_DIR, Detector

RAM_INSTALL = "pip install git+https://github.com/xinyu1205/recognize-anything"
NMS_IOU = 0.5  # same-label boxes overlapping more than this are one detection


@dataclass(frozen=True)
class Detection:
    """One labelled box in the pixels of the image the detector was given."""

    label: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float


@functools.lru_cache(maxsize=4)
def _read_vocabulary(text: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for line in text.splitlines():
        phrase = line.split("#", 1)[0].strip().lower()
        if phrase:
            seen.setdefault(phrase, None)
    return tuple(seen)


def load_vocabulary(path: Path | None = None) -> list[str]:
    """The detector's queries: one phrase a line, ``#`` comments, duplicates dropped, in order."""
    if path is None:
        text = (resources.files("mtcolor_batch") / "data" / "vocabulary.txt").read_text(encoding="utf-8")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read vocabulary: {exc}", path=path) from exc
    return list(_read_vocabulary(text))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) x0y0x1y1 boxes."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression; returns kept indices, best first (torchvision-free)."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if not order:
            break
        overlaps = box_iou(boxes[[best]], boxes[order])[0]
        order = [i for i, o in zip(order, overlaps, strict=True) if o <= iou]
    return keep


def detect(
    detector: Detector,
    image: Image.Image,
    queries: Sequence[str],
    *,
    threshold: float,
    max_detections: int,
) -> list[Detection]:
    """OWLv2 over ``queries`` -> labelled boxes in ``image`` pixels, best first.

    Each image patch votes for its best query; scores must exceed ``threshold``, then per-label NMS.
    Boxes are clipped to the image and degenerate ones dropped (OWLv2 pads the image to a square
    at the bottom/right, so a box can reach into the padding).
    """
    if not queries:
        return []
    inputs = detector.processor(text=[list(queries)], images=image, return_tensors="pt", truncation=True)
    inputs = {k: v.to(detector.device) for k, v in inputs.items()}
    with torch.inference_mode():
        out = detector.model(**inputs)
    logits = out.logits[0].float().cpu()  # (patches, queries)
    best = logits.max(dim=-1)
    scores = torch.sigmoid(best.values).numpy()
    labels = best.indices.numpy()
    cx, cy, bw, bh = out.pred_boxes[0].float().cpu().numpy().T
    side = float(max(image.size))
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1) * side
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image.width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, image.height)
    valid = (scores > threshold) & (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    found: list[Detection] = []
    for label in np.unique(labels[valid]):
        idx = np.flatnonzero(valid & (labels == label))
        for k in nms(boxes[idx], scores[idx], NMS_IOU):
            i = idx[k]
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            found.append(Detection(queries[int(label)], (x0, y0, x1, y1), float(scores[i])))
    found.sort(key=lambda d: (-d.score, d.label, d.box))
    return found[:max_detections]


class RamTagger:
    """RAM / RAM++ image tagging (names only; the detector grounds them to boxes)."""

    def __init__(self, checkpoint: Path, device: torch.device, image_size: int = 384) -> None:
        ram = require_ram()
        from ram.models import ram_plus  # type: ignore[import-not-found]
        from safetensors.torch import load_file

        self.device = device
        self.transform = ram.get_transform(image_size=image_size)
        # Built empty, then filled from safetensors: bundles refuse pickled .pth checkpoints.
        model = ram_plus(pretrained="", image_size=image_size, vit="swin_l")
        state = load_file(str(checkpoint))
        missing, _unexpected = model.load_state_dict(state, strict=False)
        if len(missing) > 0.05 * len(model.state_dict()):
            raise ModelError(
                f"RAM checkpoint does not fit RAM++ (swin_l): {len(missing)} tensors missing",
                path=checkpoint,
            )
        self.model = model.eval().to(device)
        self._inference = ram.inference_ram

    def tags(self, image: Image.Image) -> list[str]:
        """English tags RAM sees in the image, lower case, in RAM's order."""
        tensor = self.transform(image).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            english = self._inference(tensor, self.model)[0]
        return [t.strip().lower() for t in str(english).split("|") if t.strip()]


def ram_available() -> bool:
    """True when the ``ram`` package imports (it also needs torchvision)."""
    try:
        require_ram()
    except UserError:
        return False
    return True


def require_ram() -> Any:
    """Import ``ram`` or fail with the one line that says how to get it."""
    try:
        import ram  # type: ignore[import-not-found]
    except ImportError as exc:
        raise UserError(
            f"perception.tagger=ram needs the 'ram' package (RAM/RAM++), not installed: {RAM_INSTALL}",
            hint="or set perception.tagger=detector",
        ) from exc
    return ram


def find_ram_checkpoint(bundle_dir: Path) -> Path | None:
    """The RAM++ checkpoint (converted to safetensors) in the bundle's ``ram/`` folder, if any."""
    found = sorted((Path(bundle_dir) / RAM_DIR).glob("*.safetensors"))
    return found[0] if found else None


def load_ram_tagger(bundle_dir: Path, device: torch.device) -> RamTagger:
    """RAM from ``<bundle>/ram/*.pth``; the package check comes first (its message is the useful one)."""
    require_ram()
    checkpoint = find_ram_checkpoint(bundle_dir)
    if checkpoint is None:
        raise ModelError(
            "perception.tagger=ram but the bundle has no RAM checkpoint",
            path=Path(bundle_dir) / RAM_DIR,
            hint="convert ram_plus_swin_large_14m.pth's 'model' state dict to .safetensors and put it there",
        )
    return RamTagger(checkpoint, device)
