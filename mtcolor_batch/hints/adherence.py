"""Strict colour adherence: hold each hinted instance to its stated colour, and measure it always.

Why a mean shift: the model's chroma map carries useful local variation (folds in a coat, shading
on a tram). Adding one constant (a*, b*) offset per instance moves the instance's mean colour onto
the hint while keeping that variation; the offset is feathered to zero at the mask edge
(``feather_px``) so no hard seam appears, and rescaled so the mask mean still lands on the hint.

The luminance lock: the output's L* is the scan's (``render.chroma``), never the hint's. A hint of
navy (L* 13) on a coat the scan shows mid-grey (L* 50) can only ever look like a mid-tone navy.
Two CIEDE2000 figures are therefore reported per hinted instance:

- ``delta_e``: hint (L, a, b) vs the mean result colour with the scan's L: what a viewer sees,
  including the lightness difference no colorizer is allowed to fix;
- ``delta_e_chroma``: the same with the hint's L replaced by the instance's mean L: how well the
  colour itself (hue and chroma) was matched. Strict mode drives this one under 5.

What is measured is what compose will display: ``render.chroma.compose`` first smooths chroma
with a guided filter (a thin region borrows chroma from its neighbours) and then keeps L* and hue
while scaling chroma down into sRGB. Both steps are reproduced at working resolution and the shift
is corrected until the displayed mean meets the hint. Where that is impossible (a colour on the
sRGB boundary, such as navy = #000080, on pixels darker than itself; saturated blue on a near-white
region) ``limited`` is set and the figures say how far off it stayed: nothing is hidden.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt
from skimage.color import deltaE_ciede2000, rgb2lab

from mtcolor_batch.core.color import luma_to_lightness
from mtcolor_batch.core.config import HintSettings
from mtcolor_batch.core.types import Box, Instance, box_from_mask, check_box_inside
from mtcolor_batch.render.chroma import compose, guided_coefficients, lab_to_srgb_locked

__all__ = ["chroma_delta_e", "enforce", "feather_weights", "measure_rgb"]

MAX_ITERATIONS = 6
"""Displayed-colour evaluations per image; each correction closes most of the remaining gap."""
TOLERANCE = 0.25
"""a*/b* units: a remaining mean error below this needs no further correction."""
LIMIT_DELTA_E = 1.0
"""Chroma-only ΔE00 left after strict mode at or above which ``limited`` is reported."""
MIN_MEAN_WEIGHT = 0.5
"""Feathering is narrowed until the mean weight inside a mask is at least this (thin masks)."""


def feather_weights(mask: np.ndarray, feather_px: float) -> np.ndarray:
    """Weights in [0, 1]: 0 outside, rising smoothly to 1 at ``feather_px`` inside the edge.

    The ramp lies inside the mask so pixels of neighbouring instances are never touched; for thin
    masks it is narrowed so the offset needed to reach the mean (offset / mean weight) stays modest.
    """
    mask = np.asarray(mask, dtype=bool)
    if feather_px <= 0 or not mask.any():
        return mask.astype(np.float64)
    dist = distance_transform_edt(mask)  # 1 on the edge pixels, growing inwards
    width = float(feather_px)
    while True:
        t = np.clip(dist / width, 0.0, 1.0)
        weights = t * t * (3.0 - 2.0 * t)  # smoothstep: no visible kink where the ramp ends
        if width <= 1.0 or weights[mask].mean() >= MIN_MEAN_WEIGHT:
            return weights
        width /= 2.0


def chroma_delta_e(hint_lab: Sequence[float], mean_lab: Sequence[float]) -> float:
    """CIEDE2000 with the hint's L replaced by the result's L: hue/chroma match only."""
    a = np.array([mean_lab[0], hint_lab[1], hint_lab[2]], dtype=np.float64)
    b = np.asarray(mean_lab, dtype=np.float64)
    return float(deltaE_ciede2000(a, b))


def _delta_e(lab1: Sequence[float], lab2: Sequence[float]) -> float:
    return float(deltaE_ciede2000(np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64)))


def _compose_defaults() -> tuple[int, float]:
    params = inspect.signature(compose).parameters
    return int(params["radius"].default), float(params["eps"].default)


COMPOSE_RADIUS, COMPOSE_EPS = _compose_defaults()
"""compose's guided-upsampling settings: adherence predicts the displayed colour with the same ones."""


@dataclass
class _Patch:
    """An array over the sub-box [y0:y1, x0:x1] of the display crop; zero (or False) outside it.

    Every per-instance array of strict mode (mask, feather weights, filter response) is one of
    these, so its memory follows the instance's box, not the working image.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    data: np.ndarray

    def of(self, arr: np.ndarray) -> np.ndarray:
        """The view of a crop-sized array (..., h, w) under this patch."""
        return arr[..., self.y0 : self.y1, self.x0 : self.x1]

    def at(self, mask: _Patch) -> np.ndarray | None:
        """This patch's values at ``mask``'s pixels (in their order); None where it reaches none."""
        y0, y1 = max(self.y0, mask.y0), min(self.y1, mask.y1)
        x0, x1 = max(self.x0, mask.x0), min(self.x1, mask.x1)
        if y0 >= y1 or x0 >= x1:
            return None
        values = np.zeros(mask.data.shape, dtype=self.data.dtype)
        values[y0 - mask.y0 : y1 - mask.y0, x0 - mask.x0 : x1 - mask.x0] = self.data[
            y0 - self.y0 : y1 - self.y0, x0 - self.x0 : x1 - self.x0
        ]
        return values[mask.data]


def _tight_box(inst: Instance) -> Box | None:
    """The box of an instance's pixels (its own box may be larger after a resize), or None if empty."""
    local = box_from_mask(inst.mask)
    if local is None:
        return None
    x0, y0 = inst.box[0], inst.box[1]
    return x0 + local[0], y0 + local[1], x0 + local[2], y0 + local[3]


class _Display:
    """Predicts the mean colour compose will display inside each mask, for a given ab map.

    compose = guided filter (chroma follows the luma edges, averaging over a few working pixels)
    then per-pixel gamut reduction at the locked L*. Both are reproduced exactly at working
    resolution, on a crop around the instances and only for their pixels, so strict mode can
    correct for them (a thin hinted region loses chroma to its neighbours in the guided filter; a
    colour outside sRGB at the scan's lightness loses chroma to the gamut). The guided filter is
    linear in the chroma, so the response to each instance's offset is computed once.
    """

    def __init__(self, luma: np.ndarray, instances: Sequence[Instance]) -> None:
        h, w = luma.shape
        margin = 4 * COMPOSE_RADIUS + 2  # the guided filter reaches 2 * radius
        tight = [_tight_box(inst) for inst in instances]
        present = [t for t in tight if t is not None]
        if present:
            self.crop = (
                max(0, min(t[1] for t in present) - margin),
                min(h, max(t[3] for t in present) + margin),
                max(0, min(t[0] for t in present) - margin),
                min(w, max(t[2] for t in present) + margin),
            )
        else:
            self.crop = (0, 0, 0, 0)
        y0, y1, x0, x1 = self.crop
        self.luma = luma[y0:y1, x0:x1].astype(np.float64)
        self.masks: list[_Patch] = []  # each instance's pixels over its tight box, crop coordinates
        for inst, t in zip(instances, tight, strict=True):
            if t is None:
                self.masks.append(_Patch(0, 0, 0, 0, np.zeros((0, 0), dtype=bool)))
                continue
            tx0, ty0, tx1, ty1 = t
            self.masks.append(_Patch(ty0 - y0, ty1 - y0, tx0 - x0, tx1 - x0, inst.in_window(t)))
        self.lightness = [luma_to_lightness(m.of(self.luma)[m.data]) for m in self.masks]

    def filtered(self, maps: np.ndarray) -> np.ndarray:
        """Guided-filter output (2, h, w) of two crop-sized chroma maps (before the gamut step)."""
        coeffs = guided_coefficients(self.luma, maps, COMPOSE_RADIUS, COMPOSE_EPS)
        return np.stack([coeffs[0] * self.luma + coeffs[1], coeffs[2] * self.luma + coeffs[3]])

    def weights(self, mask: _Patch, feather_px: float) -> _Patch:
        """:func:`feather_weights` of one mask, computed on its box plus a one-pixel ring.

        The ring is background, so every distance inside the mask is the one the whole crop gives
        (the nearest background pixel is never beyond the ring); where the box meets the crop's
        edge there is no ring, as there is no pixel beyond the edge in the whole crop either.
        """
        h, w = self.luma.shape
        y0, y1 = max(0, mask.y0 - 1), min(h, mask.y1 + 1)
        x0, x1 = max(0, mask.x0 - 1), min(w, mask.x1 + 1)
        ringed = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        ringed[mask.y0 - y0 : mask.y1 - y0, mask.x0 - x0 : mask.x1 - x0] = mask.data
        return _Patch(y0, y1, x0, x1, feather_weights(ringed, feather_px))

    def response(self, weights: _Patch) -> _Patch:
        """Filtered a* (= b*) response to a unit offset spread by ``weights``.

        Computed on the weights' support plus the filter's reach only: outside it the response is
        exactly zero, and reflecting a zero border gives zero, so the sub-crop result is exact.
        """
        ys, xs = np.nonzero(weights.data)
        if ys.size == 0:
            return _Patch(0, 0, 0, 0, np.zeros((0, 0), dtype=np.float64))
        margin = 4 * COMPOSE_RADIUS + 2
        h, w = self.luma.shape
        y0, y1 = max(0, weights.y0 + ys.min() - margin), min(h, weights.y0 + ys.max() + 1 + margin)
        x0, x1 = max(0, weights.x0 + xs.min() - margin), min(w, weights.x0 + xs.max() + 1 + margin)
        sub = np.zeros((y1 - y0, x1 - x0), dtype=np.float64)
        sub[weights.y0 - y0 : weights.y1 - y0, weights.x0 - x0 : weights.x1 - x0] = weights.data
        luma = self.luma[y0:y1, x0:x1]
        coeffs = guided_coefficients(luma, np.stack([sub, sub]), COMPOSE_RADIUS, COMPOSE_EPS)
        return _Patch(y0, y1, x0, x1, coeffs[0] * luma + coeffs[1])

    def crop_of(self, ab: np.ndarray) -> np.ndarray:
        y0, y1, x0, x1 = self.crop
        return ab[:, y0:y1, x0:x1]

    def pixels(self, k: int, maps: np.ndarray) -> np.ndarray:
        """Values of crop-sized ``maps`` (..., h, w) at mask ``k``'s pixels."""
        m = self.masks[k]
        return m.of(maps)[..., m.data]

    def shown_mean(self, k: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Mean CIELAB of mask ``k`` once its filtered a*, b* pass compose's gamut step."""
        rgb = lab_to_srgb_locked(self.pixels(k, self.luma), a, b)
        shown = rgb2lab(rgb.reshape(-1, 1, 3), illuminant="D65", observer="2").reshape(-1, 3)
        return np.array([self.lightness[k].mean(), shown[:, 1].mean(), shown[:, 2].mean()])

    def means(self, pre: np.ndarray | None) -> list[np.ndarray | None]:
        """Mean displayed CIELAB (L from the scan) per mask from filtered chroma ``pre`` (crop)."""
        if pre is None:
            return [None for _ in self.masks]
        return [
            self.shown_mean(k, self.pixels(k, pre[0]), self.pixels(k, pre[1])) if m.data.any() else None
            for k, m in enumerate(self.masks)
        ]


def enforce(
    ab: np.ndarray,
    luma_w: np.ndarray,
    instances_w: Sequence[Instance],
    settings: HintSettings,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Apply strict adherence (when ``settings.strict``) and measure every instance.

    ``ab``: (2, h, w) float32 CIELAB a*, b* at working resolution; ``luma_w``: (h, w) working luma
    (sRGB-encoded gray, as ``render.chroma`` defines it); ``instances_w``: instances of the (h, w)
    working image, exclusive. Returns the (possibly) adjusted ``ab`` (a new array) and one stats dict per
    instance: ``id``, ``label``, ``source``, ``area``, ``hint`` ({name, lab} or None), ``mean_lab``
    and ``mean_lab_before`` (L from the scan, a*/b* as compose will display them), and for hinted
    instances ``delta_e`` / ``delta_e_chroma`` (after) and ``*_before``, ``strict``, ``shift_ab``
    (mean a*/b* offset applied) and ``limited`` (the hint could not be met within 1 ΔE00 of
    chroma: outside sRGB at the scan's lightness, or a region too thin for the chroma resolution).
    """
    ab = np.asarray(ab)
    if ab.ndim != 3 or ab.shape[0] != 2:
        raise ValueError(f"ab must be (2, h, w), got {ab.shape}")
    if luma_w.shape != ab.shape[1:]:
        raise ValueError(f"luma {luma_w.shape} and ab {ab.shape[1:]} differ in size")
    for inst in instances_w:
        check_box_inside(inst, luma_w.shape)
    base = ab.astype(np.float32, copy=True)
    display = _Display(luma_w, instances_w)
    has_pixels = display.crop[1] > display.crop[0]
    pre = display.filtered(display.crop_of(base).astype(np.float64)) if has_pixels else None
    before = display.means(pre)
    out = base
    after = before
    active = [
        k
        for k, inst in enumerate(instances_w)
        if settings.strict and inst.color is not None and before[k] is not None
    ]
    if active:
        assert pre is not None
        out, after = _shift(base, pre, display, [instances_w[k] for k in active], active, before, settings)
    stats: list[dict[str, Any]] = []
    for k, inst in enumerate(instances_w):
        entry: dict[str, Any] = {
            "id": inst.id,
            "label": inst.label,
            "source": inst.source,
            "area": inst.area,
            "hint": None if inst.color is None else {"name": inst.color.name, "lab": list(inst.color.lab)},
            "resolution": "working",
        }
        if before[k] is None:
            stats.append(entry)
            continue
        mean_before, mean_after = before[k], after[k]
        assert mean_before is not None and mean_after is not None  # a mask with pixels has both
        entry["mean_lab_before"] = [float(v) for v in mean_before]
        entry["mean_lab"] = [float(v) for v in mean_after]
        if inst.color is not None:
            hint = inst.color.lab
            entry["delta_e_before"] = _delta_e(hint, list(mean_before))
            entry["delta_e_chroma_before"] = chroma_delta_e(hint, list(mean_before))
            entry["delta_e"] = _delta_e(hint, list(mean_after))
            entry["delta_e_chroma"] = chroma_delta_e(hint, list(mean_after))
            entry["strict"] = bool(settings.strict)
            moved = (
                (display.pixels(k, display.crop_of(out)) - display.pixels(k, display.crop_of(base))).mean(
                    axis=1
                )
                if k in active
                else np.zeros(2)
            )
            entry["shift_ab"] = [float(moved[0]), float(moved[1])]
            entry["limited"] = bool(k in active and entry["delta_e_chroma"] >= LIMIT_DELTA_E)
        stats.append(entry)
    return out, stats


def _shift(
    base: np.ndarray,
    pre: np.ndarray,
    display: _Display,
    hinted: Sequence[Instance],
    index: Sequence[int],
    before: Sequence[np.ndarray | None],
    settings: HintSettings,
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Feathered constant offsets per hinted instance, corrected until the displayed means match.

    Offsets are capped (twice the first estimate + 20) so an unreachable hint saturates instead
    of running away; the residual is then reported as ``limited``. a*, b* are not clipped: compose
    takes any value and brings it into gamut itself.
    """
    masks = [display.masks[k] for k in index]  # each over its box, in crop coordinates
    weights = [display.weights(m, settings.feather_px) for m in masks]
    mean_w = [float(wt.at(m).mean()) for wt, m in zip(weights, masks, strict=True)]  # type: ignore[union-attr]
    # Filtered response at every hinted mask to a unit offset of each instance (linear filter);
    # None where one instance's response does not reach another's pixels (it is exactly zero there).
    response = [display.response(wt) for wt in weights]
    reach = [[response[j].at(m) for j in range(len(masks))] for m in masks]
    base_pre = [(display.pixels(k, pre[0]), display.pixels(k, pre[1])) for k in index]
    targets = [np.array(inst.color.lab[1:], dtype=np.float64) for inst in hinted]  # type: ignore[union-attr]
    offsets = [(t - before[k][1:]) / mw for t, k, mw in zip(targets, index, mean_w, strict=True)]  # type: ignore[index]
    caps = [2.0 * float(np.linalg.norm(o)) + 20.0 for o in offsets]
    for step in range(MAX_ITERATIONS):
        errors = []
        for i, k in enumerate(index):
            near = [(j, r) for j, r in enumerate(reach[i]) if r is not None]
            a = base_pre[i][0] + sum(offsets[j][0] * r for j, r in near)
            b = base_pre[i][1] + sum(offsets[j][1] * r for j, r in near)
            errors.append(targets[i] - display.shown_mean(k, a, b)[1:])
        if max(float(np.abs(e).max()) for e in errors) < TOLERANCE or step == MAX_ITERATIONS - 1:
            break
        for j, (err, mw, cap) in enumerate(zip(errors, mean_w, caps, strict=True)):
            new = offsets[j] + err / mw
            norm = float(np.linalg.norm(new))
            offsets[j] = new if norm <= cap else new * (cap / norm)
    out = base.copy()
    region = display.crop_of(out)
    pre_after = pre.copy()
    for wt, resp, off in zip(weights, response, offsets, strict=True):
        wt.of(region)[...] += (wt.data[None] * off[:, None, None]).astype(np.float32)
        resp.of(pre_after)[...] += resp.data[None] * off[:, None, None]
    return out, display.means(pre_after)


def measure_rgb(rgb: np.ndarray, instances: Sequence[Instance]) -> list[dict[str, Any]]:
    """Hint adherence of a finished sRGB image (H, W, 3 in [0, 1]) with instances at its resolution.

    The provenance figures ``enforce`` gives are at working resolution; this re-measures on the
    composed full-resolution output, i.e. exactly what is written to disk.
    """
    lab = rgb2lab(np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0), illuminant="D65", observer="2")
    out: list[dict[str, Any]] = []
    for inst in instances:
        check_box_inside(inst, lab.shape[:2])
        x0, y0, x1, y1 = inst.box
        entry: dict[str, Any] = {
            "id": inst.id,
            "label": inst.label,
            "area": inst.area,
            "resolution": "full",
        }
        if inst.color is not None and inst.area:
            mean = [float(v) for v in lab[y0:y1, x0:x1][inst.mask].mean(axis=0)]
            entry["mean_lab"] = mean
            entry["delta_e"] = _delta_e(inst.color.lab, mean)
            entry["delta_e_chroma"] = chroma_delta_e(inst.color.lab, mean)
        out.append(entry)
    return out
