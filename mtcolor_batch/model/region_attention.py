"""Attention restricted to regions: a query only sees keys that carry its own region label.

MT-Color's masked attentions are all of this kind. PMAM lets a pixel attend to the ControlNet
features of its own instance; the instance branch lets a pixel attend to the pixels of its own region
(M_self) and to the token of its own instance (M_cross). Written as a dense S x S boolean mask such an
attention costs as much as full attention, builds an S x S mask per resolution, and (on CUDA) rules
out the flash kernels, which take no mask. Grouped by label, the same mask is block diagonal: once
queries and keys are sorted by region, each region is one small, unmasked attention.

Labels are integers per position. Query ``i`` attends key ``j`` iff ``q_labels[i] == k_labels[j]``
and ``k_labels[j] >= 0``; a negative key label is never attended (padding slots, invalid tokens).
A query whose region has no key gets a **zero** output (the dense reference follows the same
convention instead of SDPA's NaN), so the two always agree.

Implementations (``impl``):

* ``dense``: one SDPA with the boolean mask; the reference the others are tested against.
* ``sparse``: sort by label once per layout, one unmasked SDPA per region on views of the sorted
  tensors (flash/efficient kernels eligible on CUDA); batch rows with identical labels (both halves
  of classifier-free guidance, all branches of one tile) share every gather and every call.
* ``flex``: PyTorch FlexAttention with a ``BlockMask`` over the label-sorted sequence, so only the
  diagonal blocks are computed; compiled on CUDA, eager (slow, for tests) elsewhere.
* ``auto``: ``sparse`` (exact, no compilation, measured faster than ``dense`` on CPU; see
  docs/speed.md).

On the ``meta`` device (shape checks without data) every implementation runs the dense one: grouping
needs the labels' values.

A :class:`RegionLayout` holds the grouping; build it once per UNet call and resolution and reuse it
in every layer, so no per-layer Python work beyond the per-region calls remains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

Impl = Literal["auto", "dense", "sparse", "flex"]
IMPLS: tuple[str, ...] = ("auto", "dense", "sparse", "flex")


def region_mask(q_labels: torch.Tensor, k_labels: torch.Tensor) -> torch.Tensor:
    """Bool (B, Sq, Sk): True where a query may attend a key (same label, key label >= 0)."""
    return (q_labels[:, :, None] == k_labels[:, None, :]) & (k_labels[:, None, :] >= 0)


def dense_region_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_labels: torch.Tensor,
    k_labels: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference: one SDPA over (B, H, S, D) tensors with the dense region mask.

    Rows without any visible key are computed against all keys (so SDPA cannot produce NaN) and
    then zeroed: the module's convention for queries whose region has no keys. ``mask`` may pass
    a precomputed :func:`region_mask`.
    """
    mask = region_mask(q_labels, k_labels) if mask is None else mask
    has_key = mask.any(-1)  # (B, Sq)
    safe = mask | ~has_key[..., None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None])
    return out * has_key[:, None, :, None].to(out.dtype)


@dataclass
class _Group:
    """Batch rows that share identical query and key labels, with their label-sorted layout."""

    rows: torch.Tensor  # (nb,) long batch indices
    all_rows: bool  # rows == arange(B): index nothing
    identity: bool  # one region holding every query and every key: plain SDPA, no gather
    q_order: torch.Tensor  # (Sq,) queries sorted by label
    q_inverse: torch.Tensor  # (Sq,) undoes q_order
    k_order: torch.Tensor  # (Sk',) keys with label >= 0, sorted by label
    spans: list[tuple[int, int, int, int]]  # (q_start, q_len, k_start, k_len) per region with keys
    q_sorted_labels: torch.Tensor  # (Sq,) labels in sorted order (flex's mask_mod reads them)
    k_sorted_labels: torch.Tensor  # (Sk',)


def _spans(q_sorted: torch.Tensor, k_sorted: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(q_start, q_len, k_start, k_len) for every query region that has keys (one device sync)."""
    q_lab, q_cnt = torch.unique_consecutive(q_sorted, return_counts=True)
    k_lab, k_cnt = torch.unique_consecutive(k_sorted, return_counts=True)
    k_at: dict[int, tuple[int, int]] = {}
    start = 0
    for lab, cnt in zip(k_lab.tolist(), k_cnt.tolist(), strict=True):
        k_at[lab] = (start, cnt)
        start += cnt
    spans, start = [], 0
    for lab, cnt in zip(q_lab.tolist(), q_cnt.tolist(), strict=True):
        if lab in k_at:
            spans.append((start, cnt, *k_at[lab]))
        start += cnt
    return spans


@dataclass
class RegionLayout:
    """Queries' and keys' region labels and their grouping, computed once and reused per layer.

    ``q_labels`` (B, Sq) and ``k_labels`` (B, Sk) are integer labels (see the module docstring).
    The grouping (sorting, spans; a few device syncs) is built on first use and cached, as are the
    dense mask and the FlexAttention block masks.
    """

    q_labels: torch.Tensor
    k_labels: torch.Tensor
    impl: str = "auto"  # what :func:`region_attention` uses when called without ``impl``
    _groups: list[_Group] | None = field(default=None, repr=False)
    _mask: torch.Tensor | None = field(default=None, repr=False)
    _block_masks: dict[int, object] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.impl not in IMPLS:
            raise ValueError(f"unknown region attention '{self.impl}', use one of {', '.join(IMPLS)}")
        if (
            self.q_labels.ndim != 2
            or self.k_labels.ndim != 2
            or self.q_labels.shape[0] != self.k_labels.shape[0]
        ):
            raise ValueError(
                f"labels must be (B, Sq) and (B, Sk), got {tuple(self.q_labels.shape)} "
                f"and {tuple(self.k_labels.shape)}"
            )

    @classmethod
    def self_attention(cls, labels: torch.Tensor, impl: str = "auto") -> RegionLayout:
        """Pixels attending pixels of their own region (PMAM, M_self)."""
        return cls(labels, labels, impl)

    @classmethod
    def with_tokens(
        cls,
        labels: torch.Tensor,
        valid: torch.Tensor,
        *,
        background_queries: bool = True,
        impl: str = "auto",
    ) -> RegionLayout:
        """Pixels attending ``[pixels ; instance tokens]`` (M_self and M_cross together).

        Token k (slot k, label k in ``labels``) is labelled k when valid and -1 otherwise, so a pixel
        sees its own region's pixels plus its own instance's token; background (label 0) sees no token.
        ``background_queries=False`` gives background pixels no keys at all (zero output, nothing
        computed): for a branch that discards their output anyway (the paper's all-zero M_self rows).
        """
        n = valid.shape[1]
        slots = torch.arange(1, n + 1, device=labels.device, dtype=labels.dtype)
        token_labels = torch.where(valid.to(labels.device).bool(), slots, torch.full_like(slots, -1))
        keys = torch.cat([labels, token_labels.expand(labels.shape[0], -1)], dim=1)
        queries = labels if background_queries else torch.where(labels > 0, labels, -1)
        return cls(queries, keys, impl)

    @property
    def batch_size(self) -> int:
        return int(self.q_labels.shape[0])

    def dense_mask(self) -> torch.Tensor:
        if self._mask is None:
            self._mask = region_mask(self.q_labels, self.k_labels)
        return self._mask

    def groups(self) -> list[_Group]:
        if self._groups is None:
            self._groups = self._build_groups()
        return self._groups

    def _build_groups(self) -> list[_Group]:
        b, sq = self.q_labels.shape
        both = torch.cat([self.q_labels, self.k_labels], dim=1)
        if b == 1 or bool((both == both[:1]).all()):
            uniq, inverse = both[:1], torch.zeros(b, dtype=torch.long, device=both.device)
        else:
            uniq, inverse = torch.unique(both, dim=0, return_inverse=True)
        groups = []
        for gi in range(uniq.shape[0]):
            rows = (inverse == gi).nonzero().flatten()
            q_row, k_row = uniq[gi, :sq], uniq[gi, sq:]
            q_sorted, q_order = torch.sort(q_row, stable=True)
            k_keep = (k_row >= 0).nonzero().flatten()
            k_sorted, k_sub = torch.sort(k_row[k_keep], stable=True)
            k_order = k_keep[k_sub]
            spans = _spans(q_sorted, k_sorted)
            identity = len(spans) == 1 and spans[0][1] == sq and spans[0][3] == k_row.shape[0]
            groups.append(
                _Group(
                    rows=rows,
                    all_rows=uniq.shape[0] == 1,
                    identity=identity,
                    q_order=q_order,
                    q_inverse=torch.argsort(q_order),
                    k_order=k_order,
                    spans=spans,
                    q_sorted_labels=q_sorted,
                    k_sorted_labels=k_sorted,
                )
            )
        return groups

    def block_mask(self, gi: int, heads: int) -> object:
        """FlexAttention BlockMask of group ``gi`` over its label-sorted queries and keys (cached)."""
        if gi not in self._block_masks:
            from torch.nn.attention.flex_attention import create_block_mask

            g = self.groups()[gi]
            ql, kl = g.q_sorted_labels, g.k_sorted_labels

            def mask_mod(
                _b: torch.Tensor, _h: torch.Tensor, qi: torch.Tensor, ki: torch.Tensor
            ) -> torch.Tensor:
                return ql[qi] == kl[ki]

            self._block_masks[gi] = create_block_mask(
                mask_mod, None, None, ql.shape[0], kl.shape[0], device=ql.device
            )
        return self._block_masks[gi]


_FLEX: dict[str, Callable[..., torch.Tensor]] = {}


def _flex_fn(device: torch.device) -> Callable[..., torch.Tensor]:
    """flex_attention, compiled on CUDA (eager FlexAttention is a slow reference implementation)."""
    from torch.nn.attention.flex_attention import flex_attention

    key = device.type
    if key not in _FLEX:
        fn: Callable[..., torch.Tensor] = flex_attention
        _FLEX[key] = torch.compile(fn, dynamic=False) if key == "cuda" else fn
    return _FLEX[key]


def region_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: RegionLayout,
    impl: Impl | str | None = None,
) -> torch.Tensor:
    """Region-restricted attention of (B, H, Sq, D) queries over (B, H, Sk, D) keys/values.

    ``impl`` defaults to the layout's own.

    Every implementation gives the same result within floating-point tolerance
    (tests/test_region_attention.py); see the module docstring for what each one trades.
    """
    impl = layout.impl if impl is None else impl
    if impl not in IMPLS:
        raise ValueError(f"unknown region attention '{impl}', use one of {', '.join(IMPLS)}")
    b, _, sq, _ = q.shape
    if (b, sq) != tuple(layout.q_labels.shape) or k.shape[2] != layout.k_labels.shape[1]:
        raise ValueError(
            f"layout is for {tuple(layout.q_labels.shape)} queries / {layout.k_labels.shape[1]} keys, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if impl == "dense" or q.is_meta or layout.q_labels.is_meta:  # grouping needs the labels' values
        return dense_region_attention(q, k, v, layout.q_labels, layout.k_labels, layout.dense_mask())
    flex = impl == "flex"
    out: torch.Tensor | None = None
    for gi, g in enumerate(layout.groups()):
        qg, kg, vg = (q, k, v) if g.all_rows else (q[g.rows], k[g.rows], v[g.rows])
        if g.identity:
            og = F.scaled_dot_product_attention(qg, kg, vg)
        else:
            qs = qg.index_select(2, g.q_order)
            ks, vs = kg.index_select(2, g.k_order), vg.index_select(2, g.k_order)
            if flex and ks.shape[2] > 0:
                os_ = _flex_fn(q.device)(qs, ks, vs, block_mask=layout.block_mask(gi, q.shape[1]))
                # FlexAttention already yields 0 for rows without keys; spans without keys stay 0 below.
            else:
                os_ = qs.new_zeros(*qs.shape[:3], vg.shape[-1])
                for q0, qn, k0, kn in g.spans:
                    os_[:, :, q0 : q0 + qn] = F.scaled_dot_product_attention(
                        qs[:, :, q0 : q0 + qn], ks[:, :, k0 : k0 + kn], vs[:, :, k0 : k0 + kn]
                    )
            og = os_.index_select(2, g.q_inverse)
        if g.all_rows:
            return og
        if out is None:
            out = q.new_zeros(*q.shape[:3], v.shape[-1])
        out[g.rows] = og
    if out is None:  # B == 0
        return q.new_zeros(*q.shape[:3], v.shape[-1])
    return out
