"""The instance layout as tensors, built in one place for training and inference.

Both the trainer and the sampler turn instance masks into a :class:`RegionBatch` here, and the
denoiser turns that into the attention masks of PMAM and of the instance branch through
:class:`RegionMaps`. Training and inference therefore see the same regions for the same masks, which
the model depends on: a label map built one way in training and another at run time would put
borders where the model never learned them.

Regions are exclusive: every latent cell belongs to exactly one region (0 = background, k = slot k),
the one that covers most of its 8x8 pixels, even where instance masks overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from mtcolor_batch.core.types import LATENT_FACTOR
from mtcolor_batch.model.region_attention import RegionLayout, region_attention

MASK_INPUT_SIZE = 64
"""Side of the mask encoder's input: every instance mask is area-resized to this square first, so
what the encoder reads does not depend on the image's resolution (nor does its memory)."""


def label_map(masks: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """(N, 8h, 8w) float masks in [0, 1] -> (h, w) long labels: the majority owner of each cell.

    The background's share of a cell is what the instances leave uncovered; ties go to the lower
    label (background first), so a cell half covered by an instance stays background.
    """
    h, w = latent_size
    if masks.shape[0] == 0:
        return torch.zeros(h, w, dtype=torch.long, device=masks.device)
    coverage = F.adaptive_avg_pool2d(masks.float(), (h, w))
    background = (1 - coverage.sum(0, keepdim=True)).clamp(min=0)
    return torch.cat([background, coverage]).argmax(0)


def cell_coverage(mask: torch.Tensor) -> torch.Tensor:
    """(8h, 8w) 0/1 mask -> (h, w) share of each 8x8 cell it covers (multiples of 1/64, exact)."""
    h, w = mask.shape[-2] // LATENT_FACTOR, mask.shape[-1] // LATENT_FACTOR
    return F.adaptive_avg_pool2d(mask.float()[None], (h, w))[0]


def label_map_of_boxes(
    coverages: Iterable[tuple[tuple[int, int, int, int], torch.Tensor]], latent_size: tuple[int, int]
) -> torch.Tensor:
    """:func:`label_map` from each instance's :func:`cell_coverage` inside its latent box only.

    ``coverages`` yields (latent box, coverage) for slots 1..n in order (an empty box for an empty
    instance). Coverages of 0/1 masks are multiples of 1/64, so their sum is exact in any order, and
    a strict ``>`` keeps the first maximum as ``argmax`` does: the same labels as :func:`label_map`
    on the full masks, with one latent-sized plane however many instances there are.
    """
    h, w = latent_size
    items = list(coverages)
    total = torch.zeros(h, w)
    for (x0, y0, x1, y1), cov in items:
        total[y0:y1, x0:x1] += cov
    best = (1 - total).clamp(min=0)
    labels = torch.zeros(h, w, dtype=torch.long)
    for k, ((x0, y0, x1, y1), cov) in enumerate(items, start=1):
        win = best[y0:y1, x0:x1]
        better = cov > win
        win[better] = cov[better]
        labels[y0:y1, x0:x1][better] = k
    return labels


def mask_input(masks: torch.Tensor) -> torch.Tensor:
    """(M, H, W) 0/1 masks -> (M, S, S) float32, S = :data:`MASK_INPUT_SIZE`: the mask encoder's input.

    The same area resize the encoder applies (its own resize of an S x S input is the identity), done
    where the full mask is at hand so that a region batch carries S x S per slot, not the image.
    """
    return F.adaptive_avg_pool2d(masks.float()[:, None], MASK_INPUT_SIZE)[:, 0]


def one_hot(labels: torch.Tensor, n: int) -> torch.Tensor:
    """(..., h, w) labels -> (n, ..., h, w) float {0, 1} masks of regions 1..n (exclusive)."""
    slots = torch.arange(1, n + 1, device=labels.device).view(n, *([1] * labels.ndim))
    return (labels[None] == slots).float()


def labels_at(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Region labels (B, h, w) resampled to ``size`` by nearest neighbour, flattened to (B, h'*w').

    Nearest (not area) resampling keeps labels integral: a pixel belongs to exactly one region at
    every resolution, so the masks below stay exclusive.
    """
    if tuple(labels.shape[-2:]) != tuple(size):
        labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return labels.flatten(1)


def same_region_mask(labels: torch.Tensor) -> torch.Tensor:
    """Bool mask (B, 1, S, S): True where query pixel and key pixel share a region.

    Every row contains its own pixel, so no row is fully masked and SDPA never yields NaN.
    """
    return (labels[:, :, None] == labels[:, None, :])[:, None]


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | RegionLayout
) -> torch.Tensor:
    """(B, H, S, d) queries over (B, H, S', d) keys/values under a bool (B, 1, S, S') mask or a layout.

    The single masked attention of PMAM and the instance branch: masking happens before the
    softmax, so a pixel's weights are renormalised over what it may see. A :class:`RegionLayout`
    computes the same thing region by region (``model.region_attention``); a bool mask is the dense
    reference.
    """
    if isinstance(mask, RegionLayout):
        return region_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@dataclass(frozen=True)
class RegionBatch:
    """Instance layout of a batch of B images with N instance slots, at latent size h x w.

    label_map: (B, h, w) long, 0 = background, k = slot k (1..N); exclusive regions (PMAM and the
        instance branch's masks).
    inst_masks: (B, N, S, S) float32, S = :data:`MASK_INPUT_SIZE`: each slot's mask over this image
        (or window), area-resized for the mask encoder (:func:`mask_input`); zero for empty slots.
        It stays float32 whatever the batch's dtype, so the encoder reads the values it would have
        computed from the full-resolution mask itself.
    inst_text: (B, N, D_text) float, pooled CLIP text embedding of each instance's text.
    inst_valid: (B, N) bool: slot k carries an instance token. False for padding slots and for the
        null condition (classifier-free guidance), which keeps the regions and drops only the texts.
    """

    label_map: torch.Tensor
    inst_masks: torch.Tensor
    inst_text: torch.Tensor
    inst_valid: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.label_map.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.inst_valid.shape[1])

    @classmethod
    def from_masks(
        cls,
        masks: Sequence[np.ndarray | torch.Tensor] | torch.Tensor,
        texts: torch.Tensor,
        latent_size: tuple[int, int],
        slots: int | None = None,
    ) -> RegionBatch:
        """One image (B=1) from its instance masks (H, W bool/float, any size) and texts (N, D_text).

        Masks are resized to 8h x 8w (nearest), then to the mask encoder's input (:func:`mask_input`);
        :func:`label_map` gives each latent cell its owner. ``slots`` pads to a fixed N with invalid,
        empty slots.
        """
        h, w = latent_size
        n = len(masks)
        slots = n if slots is None else slots
        if texts.ndim != 2 or texts.shape[0] != n:
            raise ValueError(f"texts must be ({n}, D_text), got {tuple(texts.shape)}")
        if slots < n:
            raise ValueError(f"{n} instances do not fit in {slots} slots")
        size = (LATENT_FACTOR * h, LATENT_FACTOR * w)
        device = texts.device
        inst_masks = torch.zeros(1, slots, MASK_INPUT_SIZE, MASK_INPUT_SIZE, device=device)
        full = torch.zeros(0, *size, device=device)
        if n:
            stacked = torch.stack(
                [torch.as_tensor(np.asarray(m) if not torch.is_tensor(m) else m) for m in masks]
            )
            stacked = stacked.float().to(device)
            if tuple(stacked.shape[-2:]) != size:
                stacked = F.interpolate(stacked[None], size=size, mode="nearest")[0]
            full = stacked.clamp(0, 1)
            inst_masks[0, :n] = mask_input(full)
        labels = label_map(full, latent_size)[None]
        inst_text = torch.zeros(1, slots, texts.shape[-1], dtype=texts.dtype, device=device)
        inst_text[0, :n] = texts
        valid = torch.zeros(1, slots, dtype=torch.bool, device=device)
        valid[0, :n] = True
        return cls(labels, inst_masks, inst_text, valid)

    @classmethod
    def cat(cls, batches: Sequence[RegionBatch]) -> RegionBatch:
        """Stack along the batch axis; slots are padded to the largest N with invalid slots."""
        if not batches:
            raise ValueError("no region batches to concatenate")
        n = max(rb.num_slots for rb in batches)

        def pad(t: torch.Tensor, k: int) -> torch.Tensor:
            extra = n - k
            if extra == 0:
                return t
            return torch.cat([t, t.new_zeros(t.shape[0], extra, *t.shape[2:])], dim=1)

        return cls(
            torch.cat([rb.label_map for rb in batches]),
            torch.cat([pad(rb.inst_masks, rb.num_slots) for rb in batches]),
            torch.cat([pad(rb.inst_text, rb.num_slots) for rb in batches]),
            torch.cat([pad(rb.inst_valid, rb.num_slots) for rb in batches]),
        )

    def repeat(self, times: int) -> RegionBatch:
        """The whole batch ``times`` times, e.g. ``repeat(2)`` for [uncond; cond] classifier-free guidance."""
        return RegionBatch.cat([self] * times)

    def drop_tokens(self, drop: torch.Tensor | None = None) -> RegionBatch:
        """The null instance condition: same regions, no instance tokens (slots invalid).

        ``drop`` (B,) bool picks the images to drop (default: all). Classifier-free guidance's
        unconditional half and training's null dropout both use this, so they agree.
        """
        if drop is None:
            return replace(self, inst_valid=torch.zeros_like(self.inst_valid))
        keep = ~drop.to(device=self.inst_valid.device, dtype=torch.bool)
        return replace(self, inst_valid=self.inst_valid & keep[:, None])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> RegionBatch:
        """Move every field; ``dtype`` applies to the texts only (labels stay long, valid bool and
        the mask encoder's input float32: a half dtype would round its fractions)."""
        return RegionBatch(
            self.label_map.to(device=device),
            self.inst_masks.to(device=device),
            self.inst_text.to(device=device, dtype=dtype),
            self.inst_valid.to(device=device),
        )

    def check(self, batch: int, latent_size: tuple[int, int]) -> None:
        """Raise ValueError unless the batch matches ``batch`` latents of ``latent_size``."""
        b, n = self.batch_size, self.num_slots
        h, w = latent_size
        want = {
            "label_map": (b, h, w),
            "inst_masks": (b, n, MASK_INPUT_SIZE, MASK_INPUT_SIZE),
            "inst_valid": (b, n),
        }
        for name, shape in want.items():
            if tuple(getattr(self, name).shape) != shape:
                got = tuple(getattr(self, name).shape)
                raise ValueError(f"RegionBatch.{name} is {got}, expected {shape}")
        if tuple(self.inst_text.shape[:2]) != (b, n):
            got = tuple(self.inst_text.shape)
            raise ValueError(f"RegionBatch.inst_text is {got}, expected ({b}, {n}, D)")
        if b != batch:
            raise ValueError(f"RegionBatch has batch {b} but latents have batch {batch} (repeat it for CFG)")


@dataclass(frozen=True)
class InsidePixels:
    """The instance pixels of a batch at one resolution, gathered: where the instance branch runs.

    The branch's output is zero outside every instance, and no instance pixel attends a
    background one, so the branch can run on the instance pixels alone (projections, LayerNorm,
    attention, output projection) and its output be put back: the same values for a fraction of
    the work. Rows with fewer instance pixels are padded (label -1: no keys, never a key, zero
    output) to the batch's largest count.
    """

    index: torch.Tensor  # (B, S_in) long: position of each gathered pixel; padding -> S (a dummy row)
    layout: RegionLayout  # over the S_in gathered queries and [S_in pixels ; N tokens] keys
    inside: torch.Tensor  # (B, S_in, 1) bool, False on padding
    seq_len: int  # S

    @classmethod
    def of(cls, labels: torch.Tensor, valid: torch.Tensor, impl: str) -> InsidePixels:
        """From (B, S) labels (0 = background) and (B, N) valid token slots."""
        b, s = labels.shape
        inside = labels > 0
        counts = inside.sum(1)
        s_in = int(counts.max()) if b else 0  # one device sync per call and resolution
        order = torch.argsort((~inside).to(torch.uint8), dim=1, stable=True)[:, :s_in]  # pixels first
        pad = torch.arange(s_in, device=labels.device)[None] >= counts[:, None]
        index = torch.where(pad, s, order)
        gathered = torch.where(pad, -1, labels.gather(1, order))
        layout = RegionLayout.with_tokens(gathered, valid, background_queries=False, impl=impl)
        return cls(index, layout, ~pad[:, :, None], s)

    @property
    def empty(self) -> bool:
        """No instance pixel in the whole batch: the branch adds exactly zero."""
        return self.index.shape[1] == 0

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, C) -> (B, S_in, C): the instance pixels (padding reads a zero row)."""
        padded = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], dim=1)
        return padded.gather(1, self.index[:, :, None].expand(-1, -1, x.shape[2]))

    def put(self, y: torch.Tensor) -> torch.Tensor:
        """(B, S_in, C) -> (B, S, C): back in place, zero on every other pixel."""
        out = y.new_zeros(y.shape[0], self.seq_len + 1, y.shape[2])
        out.scatter_(1, self.index[:, :, None].expand(-1, -1, y.shape[2]), y)
        return out[:, : self.seq_len]


class RegionMaps:
    """The masks of one denoiser call, built once per resolution and shared by every layer.

    PMAM and the instance branch at the same resolution share the labels. ``attention`` picks how
    the layers attend (:meth:`same_region_attention`, :meth:`branch_attention`): ``dense`` hands them
    the bool masks below (the reference), any other value of ``model.region_attention.IMPLS`` a
    :class:`RegionLayout` that attends region by region, grouped once per call and resolution.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        valid: torch.Tensor,
        latent_size: tuple[int, int],
        attention: str = "dense",
    ) -> None:
        self.label_map = labels
        self.valid = valid
        self.latent_size = (int(latent_size[0]), int(latent_size[1]))
        self.attention = attention
        self._layouts: dict[tuple[str, int, int], RegionLayout] = {}
        self._labels: dict[tuple[int, int], torch.Tensor] = {}
        self._same: dict[tuple[int, int], torch.Tensor] = {}
        self._branch: dict[tuple[int, int], torch.Tensor] = {}
        self._sizes: dict[int, tuple[int, int]] = {}
        self._inside_pixels: dict[tuple[int, int], InsidePixels] = {}

    @classmethod
    def of(cls, regions: RegionBatch, attention: str = "dense") -> RegionMaps:
        size = (int(regions.label_map.shape[-2]), int(regions.label_map.shape[-1]))
        return cls(regions.label_map, regions.inst_valid, size, attention)

    def same_region_attention(self, size: tuple[int, int]) -> torch.Tensor | RegionLayout:
        """What PMAM attends with at ``size``: :meth:`same_region`, or its region layout."""
        size = (int(size[0]), int(size[1]))
        if self.attention == "dense":
            return self.same_region(size)
        key = ("same", *size)
        if key not in self._layouts:
            self._layouts[key] = RegionLayout.self_attention(self.labels(size), impl=self.attention)
        return self._layouts[key]

    def branch_attention(self, size: tuple[int, int]) -> torch.Tensor | RegionLayout:
        """What the instance branch attends with at ``size``: :meth:`branch`, or its region layout.

        The layout gives background pixels no keys at all: the branch zeroes their rows anyway
        (:meth:`inside`), so they are not computed.
        """
        size = (int(size[0]), int(size[1]))
        if self.attention == "dense":
            return self.branch(size)
        key = ("branch", *size)
        if key not in self._layouts:
            self._layouts[key] = RegionLayout.with_tokens(
                self.labels(size), self.valid, background_queries=False, impl=self.attention
            )
        return self._layouts[key]

    def inside_pixels(self, size: tuple[int, int]) -> InsidePixels | None:
        """The instance pixels at ``size`` gathered for the instance branch (:class:`InsidePixels`);
        None for the dense reference and on the meta device (no label values), which run the
        branch on every pixel."""
        if self.attention == "dense" or self.label_map.is_meta:
            return None
        size = (int(size[0]), int(size[1]))
        if size not in self._inside_pixels:
            self._inside_pixels[size] = InsidePixels.of(self.labels(size), self.valid, self.attention)
        return self._inside_pixels[size]

    def labels(self, size: tuple[int, int]) -> torch.Tensor:
        """(B, h*w) labels at ``size``."""
        size = (int(size[0]), int(size[1]))
        if size not in self._labels:
            self._labels[size] = labels_at(self.label_map, size)
        return self._labels[size]

    def same_region(self, size: tuple[int, int]) -> torch.Tensor:
        """PMAM's (B, 1, S, S) mask at ``size``."""
        size = (int(size[0]), int(size[1]))
        if size not in self._same:
            self._same[size] = same_region_mask(self.labels(size))
        return self._same[size]

    def branch(self, size: tuple[int, int]) -> torch.Tensor:
        """The instance branch's (B, 1, S, S + N) mask: latent queries over [latents ; tokens].

        Latent part (M_self, Eq. 7): a pixel of instance k sees the pixels of instance k only. Rows
        of background pixels are left on their own region (never an empty row, so no NaN); the
        branch zeroes their output (:meth:`inside`), which is exactly Eq. 7's all-zero row.
        Token part (M_cross, Eq. 8): a pixel of instance k sees token k only, and only if slot k
        holds a text (``valid``); padding and dropped slots are never attended.
        """
        size = (int(size[0]), int(size[1]))
        if size not in self._branch:
            n = self.valid.shape[1]
            slots = torch.arange(1, n + 1, device=self.label_map.device)
            token = (self.labels(size)[:, :, None] == slots) & self.valid[:, None, :].bool()
            self._branch[size] = torch.cat([self.same_region(size), token[:, None]], dim=-1)
        return self._branch[size]

    def inside(self, size: tuple[int, int]) -> torch.Tensor:
        """(B, S, 1) bool: pixels inside some instance (the only ones the instance branch writes)."""
        return (self.labels(size) > 0)[:, :, None]

    def any_inside(self) -> bool:
        """Whether any pixel of the batch lies in an instance (one device sync)."""
        return bool(self.label_map.any())

    def size_for(self, seq_len: int) -> tuple[int, int]:
        """Spatial size of a layer from its token count: the latent size halved (ceil) k times."""
        if seq_len not in self._sizes:
            h, w = self.latent_size
            while h * w > seq_len and (h > 1 or w > 1):
                h, w = -(-h // 2), -(-w // 2)
            if h * w != seq_len:
                raise ValueError(f"cannot map {seq_len} tokens onto latent size {self.latent_size}")
            self._sizes[seq_len] = (h, w)
        return self._sizes[seq_len]
