"""CLIP score of each instance crop against the text it was coloured with.

MT-Color conditions every instance on its own text, so "does the crop look like its text" is the
per-instance check the paper's CLIP score stands for. The Stable Diffusion bundle carries only a
CLIP *text* encoder, so scoring needs a full CLIP (text + vision) as an optional ``clip/``
component of the bundle (transformers ``CLIPModel`` + tokenizer + image processor in one folder,
safetensors). Without it, eval says so and leaves the column empty rather than guessing.

Two scores, named apart because they differ by two orders of magnitude:

- ``clip_mask_cos``: the paper's. The instance cropped by its *mask* (outside the mask filled with
  neutral gray, so a neighbour's colour does not count) against its text, raw cosine (about 0.2-0.3
  for a matching pair with a real CLIP).
- ``clip_box_x100``: 100 * max(cos, 0) of the *box* crop, the torchmetrics / Hessel et al.
  convention this tool reported first; kept for comparing with earlier runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mtcolor_batch.core.errors import ModelError

CLIP_COMPONENT = "clip"


def find_clip_dir(path: Path) -> Path | None:
    """The CLIP folder for a bundle dir (its ``clip/``) or a CLIP folder given directly; None if absent."""
    for candidate in (path / CLIP_COMPONENT, path):
        cfg = candidate / "config.json"
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if data.get("model_type") == "clip":
                return candidate
    return None


def image_processor_class() -> Any:
    """transformers 5 routes ``CLIPImageProcessor`` to a torchvision backend we cannot load; use PIL."""
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def _features(out: object) -> Any:
    """``get_*_features`` returns a tensor in transformers 4 and an output object in 5."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise ModelError("unexpected CLIP feature output type: " + type(out).__name__)
    return pooled


class ClipScorer:
    """A loaded CLIP model scoring image crops against texts, on CPU or a given device."""

    def __init__(self, clip_dir: Path, device: str = "cpu") -> None:
        import torch
        from transformers import CLIPModel, CLIPTokenizer

        try:
            self.model = CLIPModel.from_pretrained(clip_dir, use_safetensors=True).to(device).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
            self.processor = image_processor_class().from_pretrained(clip_dir)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load CLIP: {exc}", path=clip_dir) from exc
        self.device = device
        self.clip_dir = clip_dir
        self._torch = torch

    def score(self, crops: Sequence[Image.Image | np.ndarray], texts: Sequence[str]) -> list[float]:
        """100 * max(cos, 0) of ``crops[i]`` against ``texts[i]`` (the torchmetrics convention)."""
        return [100.0 * max(c, 0.0) for c in self.cosine(crops, texts)]

    def cosine(self, crops: Sequence[Image.Image | np.ndarray], texts: Sequence[str]) -> list[float]:
        """Raw cosine similarity of ``crops[i]`` and ``texts[i]`` in CLIP's joint space (the paper's)."""
        if len(crops) != len(texts):
            raise ValueError("one text per crop")
        if not crops:
            return []
        torch = self._torch
        images = [c if isinstance(c, Image.Image) else Image.fromarray(_to_uint8(c)) for c in crops]
        pix = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        max_len = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        tok = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            img = _features(self.model.get_image_features(pixel_values=pix))
            txt = _features(self.model.get_text_features(**tok))
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            cos = (img * txt).sum(dim=-1)
        return [float(v) for v in cos.cpu()]


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def crop_box(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
    """The instance's box from a full-resolution output, clipped to the image; None when empty."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
    if x1 <= x0 or y1 <= y0:
        return None
    return rgb[y0:y1, x0:x1]


NEUTRAL_FILL = 0.5
"""Outside-the-mask pixels of a mask crop: mid gray, which carries no colour for CLIP to match."""


def crop_mask(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The mask's bounding box from ``rgb`` with every pixel outside the mask set to neutral gray.

    ``mask`` is bool at ``rgb``'s resolution; None when it is empty.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.array(rgb[y0:y1, x0:x1], dtype=np.float32, copy=True)
    crop[~mask[y0:y1, x0:x1]] = NEUTRAL_FILL
    return crop
