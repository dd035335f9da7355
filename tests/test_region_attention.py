"""Region-sparse attention equals the dense masked reference (float tolerance) on awkward layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtcolor_batch.model.region_attention import (
    RegionLayout,
    dense_region_attention,
    region_attention,
    region_mask,
)


def _qkv(b: int, h: int, sq: int, sk: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, s, d, generator=g) for s in (sq, sk, sk))


def _labels(b: int, s: int, n: int, seed: int) -> torch.Tensor:
    """Random regions with a 75% background, one one-pixel region and one empty label (n + 1)."""
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(1, n + 1, (b, s), generator=g)
    lab[torch.rand(b, s, generator=g) < 0.75] = 0
    lab[lab == 2] = 1  # label 2 becomes empty ...
    lab[:, 5] = 2  # ... except one pixel: a one-pixel region
    return lab


@pytest.mark.parametrize("impl", ["sparse", "flex"])
@pytest.mark.slow
def test_self_attention_layout_matches_dense(impl: str) -> None:
    b, h, s = 3, 2, 96
    labels = _labels(b, s, 4, seed=1)
    labels[1] = labels[0]  # two identical rows share one group (like both CFG halves)
    q, k, v = _qkv(b, h, s, s)
    layout = RegionLayout.self_attention(labels)
    ref = dense_region_attention(q, k, v, labels, labels)
    # The reference itself is the plain masked SDPA whenever every row has a key (true here).
    plain = F.scaled_dot_product_attention(q, k, v, attn_mask=region_mask(labels, labels)[:, None])
    torch.testing.assert_close(ref, plain)
    out = region_attention(q, k, v, layout, impl=impl)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert len(layout.groups()) == 2


@pytest.mark.parametrize("impl", ["sparse", "flex"])
def test_tokens_layout_matches_paper_mask(impl: str) -> None:
    """Pixels over [pixels ; tokens]: own region's pixels plus own (valid) token, never another's."""
    b, h, s, n = 2, 2, 80, 4
    labels = _labels(b, s, n, seed=2)
    valid = torch.tensor([[True, True, False, True], [True, False, True, True]])
    layout = RegionLayout.with_tokens(labels, valid)
    mask = layout.dense_mask()
    slots = torch.arange(1, n + 1)
    paper = torch.cat(
        [labels[:, :, None] == labels[:, None, :], (labels[:, :, None] == slots) & valid[:, None, :]], -1
    )
    assert torch.equal(mask, paper)
    q, k, v = _qkv(b, h, s, s + n, seed=3)
    ref = dense_region_attention(q, k, v, layout.q_labels, layout.k_labels)
    torch.testing.assert_close(region_attention(q, k, v, layout, impl=impl), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["dense", "sparse", "flex"])
def test_queries_without_keys_get_zero(impl: str) -> None:
    """Queries of a region with no keys (label only among queries, or keys all negative) give 0."""
    b, h, s = 2, 2, 40
    q_labels = torch.zeros(b, s, dtype=torch.long)
    q_labels[:, :10] = 3  # region 3 has no keys at all
    k_labels = torch.zeros(b, s, dtype=torch.long)
    k_labels[:, -7:] = -1  # never attended
    k_labels[1] = -1  # row 1: no key is visible to anyone
    q, k, v = _qkv(b, h, s, s, seed=4)
    out = region_attention(q, k, v, RegionLayout(q_labels, k_labels), impl=impl)
    assert torch.isfinite(out).all()
    assert out[0, :, :10].abs().max() == 0
    assert out[1].abs().max() == 0
    keep = k_labels[0] == 0
    want = F.scaled_dot_product_attention(q[:1, :, 10:], k[:1, :, keep], v[:1, :, keep])
    torch.testing.assert_close(out[:1, :, 10:], want, atol=1e-5, rtol=1e-5)


def test_single_region_is_plain_attention() -> None:
    """All one label (the null-region CFG half): the sparse path is exactly unmasked SDPA."""
    q, k, v = _qkv(2, 2, 64, 64, seed=5)
    labels = torch.zeros(2, 64, dtype=torch.long)
    layout = RegionLayout.self_attention(labels)
    assert layout.groups()[0].identity
    assert torch.equal(region_attention(q, k, v, layout), F.scaled_dot_product_attention(q, k, v))


def test_empty_and_mismatched_inputs() -> None:
    q, k, v = _qkv(1, 1, 16, 16)
    layout = RegionLayout.self_attention(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="layout is for"):
        region_attention(q, k, v, layout)
    with pytest.raises(ValueError, match="unknown region attention"):
        region_attention(q, k, v, RegionLayout.self_attention(torch.zeros(1, 16, dtype=torch.long)), impl="x")
    with pytest.raises(ValueError, match="unknown region attention"):
        RegionLayout.self_attention(torch.zeros(1, 16, dtype=torch.long), impl="fast")
    with pytest.raises(ValueError, match="labels must be"):
        RegionLayout(torch.zeros(16, dtype=torch.long), torch.zeros(1, 16, dtype=torch.long))


def test_sparse_is_differentiable_like_dense() -> None:
    """Training goes through the same function: gradients agree with the dense reference."""
    labels = _labels(2, 48, 3, seed=6)
    layout = RegionLayout.self_attention(labels)
    grads = []
    for impl in ("dense", "sparse"):
        q, k, v = (t.requires_grad_() for t in _qkv(2, 2, 48, 48, seed=7))
        region_attention(q, k, v, layout, impl=impl).square().sum().backward()
        grads.append([t.grad for t in (q, k, v)])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_background_queries_can_be_left_out() -> None:
    """``background_queries=False``: background rows are zero, instance rows unchanged."""
    b, h, s, n = 2, 2, 64, 3
    labels = _labels(b, s, n, seed=8)
    valid = torch.ones(b, n, dtype=torch.bool)
    q, k, v = _qkv(b, h, s, s + n, seed=9)
    full = region_attention(q, k, v, RegionLayout.with_tokens(labels, valid))
    for impl in ("dense", "sparse"):
        part = region_attention(
            q, k, v, RegionLayout.with_tokens(labels, valid, background_queries=False), impl
        )
        inside = (labels > 0)[:, None, :, None]
        assert part.masked_select(~inside).abs().max() == 0
        torch.testing.assert_close(part, torch.where(inside, full, 0.0), atol=1e-5, rtol=1e-5)


def test_meta_tensors_take_the_dense_path() -> None:
    """Shape-only runs (meta device) work: the grouping, which needs values, is not attempted."""
    q, k, v = (torch.empty(2, 2, 16, 8, device="meta") for _ in range(3))
    layout = RegionLayout.self_attention(torch.empty(2, 16, dtype=torch.long, device="meta"))
    assert region_attention(q, k, v, layout, impl="sparse").shape == (2, 2, 16, 8)
