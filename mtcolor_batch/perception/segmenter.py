"""SAM prompts (boxes, clicks) -> masks at scan resolution.

Runs transformers' port of SAM (``SamModel`` + ``SamProcessor``: the same architecture and weights
as ``segment-anything``) because ``segment-anything`` imports torchvision, which cannot load beside
the pinned CPU torch. The image processor is always the PIL backend: the default (fast) SAM image
processor imports torchvision too.

The image encoder is the expensive part (a ViT over 1024x1024), the prompt decoder is cheap, so the
embedding is computed once per scan and reused for every prompt: auto detections and the sidecar's
boxes/points all share it. The cache key is a hash of the exact pixels SAM sees, so a different scan
can never reuse a stale embedding.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from mtcolor_batch.core.types import Box

BOX_CHUNK = 16
"""Boxes decoded per mask-decoder call: bounds memory on scans with many detections."""


def _hw(size: Any) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    return h, w


@dataclass
class _Embedded:
    key: str
    source: weakref.ref[np.ndarray]  # the luma array it came from: the same object skips re-hashing
    long_side: int
    image_size: tuple[int, int]  # (w, h) of the RGB image given to the processor
    embeddings: torch.Tensor
    original_size: tuple[int, int]  # (h, w) of the image given to the processor
    reshaped_size: tuple[int, int]  # (h, w) after the processor's longest-side resize


def luma_to_rgb_image(luma: np.ndarray, long_side: int | None = None) -> Image.Image:
    """Gray scan -> 8-bit RGB PIL image, optionally shrunk so its long side is ``long_side``.

    Shrinking first keeps a 100 MP scan from being handed whole to the processors, which resize
    to about 1000 px anyway.
    """
    gray = np.clip(np.asarray(luma, dtype=np.float32), 0.0, 1.0)
    image = Image.fromarray(np.round(gray * 255.0).astype(np.uint8), mode="L")
    if long_side is not None and max(image.size) > long_side:
        scale = long_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return image.convert("RGB")


def upscale_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bool mask -> bool mask of ``size`` (h, w); bilinear on 0/255 then threshold for smooth edges."""
    h, w = size
    if mask.shape == (h, w):
        return mask.astype(bool, copy=False)
    image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    return np.asarray(image.resize((w, h), Image.Resampling.BILINEAR)) >= 128


def clip_to_box(mask: np.ndarray, box: Box, margin: float) -> np.ndarray:
    """Zero a mask outside ``box`` grown by ``margin`` of its size (at least 2 px).

    SAM sometimes leaks a box prompt into a similar-looking neighbour (a whole facade for one
    window); the user's or detector's box is the stronger statement of where the thing is.
    """
    h, w = mask.shape
    x0, y0, x1, y1 = box
    mx = max(2, round((x1 - x0) * margin))
    my = max(2, round((y1 - y0) * margin))
    keep = np.zeros_like(mask, dtype=bool)
    keep[max(0, y0 - my) : min(h, y1 + my), max(0, x0 - mx) : min(w, x1 + mx)] = True
    return mask & keep


class Segmenter:
    """Box and point prompts through SAM, on the run's device, one image embedding per scan."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        device: torch.device,
        *,
        long_side: int = 1024,
        box_margin: float = 0.1,
    ) -> None:
        self.model: Any = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.long_side = long_side
        self.box_margin = box_margin
        self.embed_count = 0  # image encoder runs: tests and benchmarks check the once-per-scan rule
        self._cached: _Embedded | None = None

    # -- embedding -------------------------------------------------------------------------
    def _embed(self, luma: np.ndarray, long_side: int | None = None) -> tuple[_Embedded, tuple[int, int]]:
        """Embedding for ``luma`` (cached) and the (w, h) of the image SAM was given.

        ``long_side`` (default: the one loaded with) is per call, so callers sharing this model never
        change each other's embedding size.
        """
        side = long_side or self.long_side
        cached = self._cached
        if cached is not None and cached.source() is luma and cached.long_side == side:
            return cached, cached.image_size  # same array object: skip converting a huge scan again
        image = luma_to_rgb_image(luma, side)
        key = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + f"{image.size}"
        if cached is not None and cached.key == key:
            cached.source = weakref.ref(luma)
            return cached, image.size
        inputs = self.processor(images=image, return_tensors="pt")
        with torch.inference_mode():
            pixel_values = inputs["pixel_values"].to(self.device, dtype=self._dtype())
            embeddings = self.model.get_image_embeddings(pixel_values)
        self.embed_count += 1
        self._cached = _Embedded(
            key=key,
            source=weakref.ref(luma),
            long_side=side,
            image_size=image.size,
            embeddings=embeddings,
            original_size=_hw(inputs["original_sizes"][0]),
            reshaped_size=_hw(inputs["reshaped_input_sizes"][0]),
        )
        return self._cached, image.size

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def clear(self) -> None:
        """Drop the cached embedding (frees GPU memory between scans)."""
        self._cached = None

    def _to_masks(self, pred_masks: torch.Tensor, emb: _Embedded) -> np.ndarray:
        """Low-res mask logits (B, K, h, w) -> bool (B, K, H, W) at the processor's input size."""
        masks = self.processor.image_processor.post_process_masks(
            pred_masks.float().cpu(),
            torch.tensor([emb.original_size]),
            torch.tensor([emb.reshaped_size]),
        )[0]
        return masks.numpy().astype(bool)

    # -- prompts ---------------------------------------------------------------------------
    def at(self, long_side: int) -> SegmenterAt:
        """This model's prompts at one embedding size (what ``perceive`` used), for the hints stage."""
        return SegmenterAt(self, long_side)

    def segment_boxes_scored(
        self, luma: np.ndarray, boxes: Sequence[Box], *, clip: bool = True, long_side: int | None = None
    ) -> list[tuple[np.ndarray, float]]:
        """One (mask, SAM IoU score) per box; masks are bool at ``luma``'s shape.

        Boxes are (x0, y0, x1, y1) in ``luma`` pixels, x1/y1 exclusive. With ``clip`` each mask
        is limited to its box's neighbourhood (see :func:`clip_to_box`). A mask may be empty:
        callers decide whether that drops the instance or falls back to the box.
        """
        return list(self.iter_boxes_scored(luma, boxes, clip=clip, long_side=long_side))

    def iter_boxes_scored(
        self, luma: np.ndarray, boxes: Sequence[Box], *, clip: bool = True, long_side: int | None = None
    ) -> Iterator[tuple[np.ndarray, float]]:
        """:meth:`segment_boxes_scored` one box at a time, so a caller that crops each mask never
        holds more than one image-sized mask (detections on a 100 MP scan are 100 MB each)."""
        if not boxes:
            return
        full_h, full_w = luma.shape
        emb, (iw, ih) = self._embed(luma, long_side)
        sx, sy = iw / full_w, ih / full_h
        for start in range(0, len(boxes), BOX_CHUNK):
            chunk = boxes[start : start + BOX_CHUNK]
            scaled = [[x0 * sx, y0 * sy, x1 * sx, y1 * sy] for x0, y0, x1, y1 in chunk]
            input_boxes = self._normalize_boxes(scaled, emb)
            with torch.inference_mode():
                out = self.model(
                    image_embeddings=emb.embeddings,
                    input_boxes=input_boxes.to(self.device, dtype=self._dtype()),
                    multimask_output=False,
                )
            masks = self._to_masks(out.pred_masks, emb)  # (n, 1, h, w)
            scores = out.iou_scores[0, :, 0].float().cpu().numpy()
            for i, box in enumerate(chunk):
                mask = upscale_mask(masks[i, 0], (full_h, full_w))
                if clip:
                    mask = clip_to_box(mask, box, self.box_margin)
                yield mask, float(scores[i])

    def segment_boxes(
        self, luma: np.ndarray, boxes: Sequence[Box], *, clip: bool = True, long_side: int | None = None
    ) -> list[np.ndarray]:
        """Masks only; see :meth:`segment_boxes_scored`."""
        return [mask for mask, _ in self.segment_boxes_scored(luma, boxes, clip=clip, long_side=long_side)]

    def segment_points(
        self,
        luma: np.ndarray,
        points: Sequence[tuple[float, float]],
        labels: Sequence[int] | None = None,
        *,
        long_side: int | None = None,
    ) -> tuple[np.ndarray, float]:
        """All clicks describe ONE thing -> (bool mask at ``luma``'s shape, SAM IoU score).

        ``points`` are (x, y) in ``luma`` pixels; ``labels`` 1 = inside (default), 0 = outside.
        A single click is ambiguous (a button, the coat, the person), so SAM's three candidate
        masks are scored and the best kept, as segment-anything's predictor recommends.
        """
        if not points:
            raise ValueError("segment_points needs at least one point")
        labels = [1] * len(points) if labels is None else list(labels)
        if len(labels) != len(points):
            raise ValueError("one label per point")
        full_h, full_w = luma.shape
        emb, (iw, ih) = self._embed(luma, long_side)
        sx, sy = iw / full_w, ih / full_h
        coords = torch.tensor([[[[x * sx, y * sy] for x, y in points]]], dtype=torch.float32)
        coords = self._scale_to_model(coords, emb)
        with torch.inference_mode():
            out = self.model(
                image_embeddings=emb.embeddings,
                input_points=coords.to(self.device, dtype=self._dtype()),
                input_labels=torch.tensor([[labels]], dtype=torch.long, device=self.device),
                multimask_output=len(points) == 1,
            )
        masks = self._to_masks(out.pred_masks, emb)  # (1, k, h, w)
        scores = out.iou_scores[0, 0].float().cpu().numpy()
        best = int(np.argmax(scores))
        return upscale_mask(masks[0, best], (full_h, full_w)), float(scores[best])

    # -- coordinates -----------------------------------------------------------------------
    def _scale_to_model(self, coords: torch.Tensor, emb: _Embedded) -> torch.Tensor:
        """Image px -> the resized frame SAM's prompt encoder expects (ResizeLongestSide)."""
        (oh, ow), (rh, rw) = emb.original_size, emb.reshaped_size
        scale = torch.tensor([rw / ow, rh / oh], dtype=coords.dtype)
        return coords * scale

    def _normalize_boxes(self, boxes: list[list[float]], emb: _Embedded) -> torch.Tensor:
        coords = torch.tensor(boxes, dtype=torch.float32).reshape(1, -1, 2, 2)
        return self._scale_to_model(coords, emb).reshape(1, -1, 4)


@dataclass(frozen=True)
class SegmenterAt:
    """A :class:`Segmenter`'s prompts at one embedding size: per-call data, not a changed setting.

    ``perceive`` embeds a scan at ``perception.size``; the hints stage prompts the same model
    through this view so sidecar boxes and points reuse that one embedding.
    """

    segmenter: Segmenter
    long_side: int

    def segment_boxes(self, luma: np.ndarray, boxes: Sequence[Box], *, clip: bool = True) -> list[np.ndarray]:
        return self.segmenter.segment_boxes(luma, boxes, clip=clip, long_side=self.long_side)

    def segment_points(
        self, luma: np.ndarray, points: Sequence[tuple[float, float]], labels: Sequence[int] | None = None
    ) -> tuple[np.ndarray, float]:
        return self.segmenter.segment_points(luma, points, labels, long_side=self.long_side)
