"""The ControlNet's hint embedding is computed once per window and sampling run, with the same result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtcolor_batch.core.config import SamplingSettings
from mtcolor_batch.core.types import Instance
from mtcolor_batch.model.engine import MTColorEngine
from mtcolor_batch.stages.plan import make_plan

TRAINED_LIKE_SEED = 5
"""The shared ``engine`` fixture (conftest) fills the MT-Color modules with this seed."""


def _run(engine: MTColorEngine, size: int, crop: int, reuse: bool) -> tuple[torch.Tensor, int, int]:
    """Final latent, hints embedded, hints handed to the ControlNet, for one 6-step run."""
    yy, xx = np.mgrid[0:size, 0:size]
    luma = (0.2 + 0.6 * (xx + yy) / (2 * size)).astype(np.float32)
    mask = np.zeros((size, size), dtype=bool)
    mask[24:88, 40:120] = True
    insts = [Instance.from_full_mask(1, "tram", "a dark green tram", mask)]
    settings = SamplingSettings(
        steps=6, working_long_side=size, tile_size=128, tile_overlap=32, alpha=0.5, branch_crop=crop
    )
    plan = make_plan((size, size), settings, seed=3, prompt="a street")
    sampler = engine.sampler
    hints = sampler.hints
    assert hints is not None
    texts = sampler.texts(plan, insts)
    canvas = sampler.canvas(luma, insts, texts, plan)
    z0 = sampler.initial_noise(torch.Generator().manual_seed(0), canvas.latent_size)
    embedding = engine.controlnet.controlnet_cond_embedding
    handed = []
    hook = embedding.conv_in.register_forward_pre_hook(lambda _m, args: handed.append(args[0].shape[0]))
    before = hints.computed
    if not reuse:
        sampler.hints = None
    try:
        with torch.no_grad():
            z = sampler.denoise(canvas, texts, plan, z0)
    finally:
        sampler.hints = hints
        hook.remove()
    return z, hints.computed - before, sum(handed)


@pytest.mark.parametrize(("size", "crop"), [(128, 0), (192, 0), (192, 64)])  # one tile; tiles; crops
@pytest.mark.slow
def test_reused_hint_embeddings_give_the_same_latents(engine: MTColorEngine, size: int, crop: int) -> None:
    fresh, computed_fresh, handed_fresh = _run(engine, size, crop, reuse=False)
    reused, computed, handed = _run(engine, size, crop, reuse=True)
    assert computed_fresh == 0  # no run scope: the ControlNet embeds every hint of every call
    tiles = 1 if size == 128 else 4
    windows = tiles + (1 if crop else 0) * tiles  # at most one crop per tile holding the instance
    assert 0 < computed <= windows < handed_fresh
    assert computed <= handed < handed_fresh / 4  # only calls that show a new window embed (6 steps)
    # Same convolutions on the same pixels; only the batch an embedding was computed in differs.
    torch.testing.assert_close(reused, fresh, rtol=1e-5, atol=1e-5)


def test_the_controlnet_is_plain_diffusers_between_calls(engine: MTColorEngine) -> None:
    """The replaced ``forward`` lives for one call only, also when the call fails."""
    hints = engine.denoiser.hints
    embedding = engine.controlnet.controlnet_cond_embedding
    assert "forward" not in vars(embedding)
    hint = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain = embedding(hint)
    with torch.no_grad(), hints.reuse():
        with hints.call([(0, 0, 8, 8), (8, 0, 16, 8)]):
            assert "forward" in vars(embedding)
            first = embedding(hint)
        assert "forward" not in vars(embedding)
        assert torch.equal(first, plain)  # a new window: the ControlNet's own values, bit for bit
        with hints.call([(8, 0, 16, 8), (0, 0, 8, 8)]):
            again = embedding(torch.zeros_like(hint))  # the keys name the windows, not the pixels
        assert torch.equal(again, plain.flip(0))
        three = [(0, 0, 8, 8), (8, 0, 16, 8), (0, 8, 8, 16)]
        with pytest.raises(ValueError, match="3 window keys for a batch of 2"), hints.call(three):
            embedding(hint)
        assert "forward" not in vars(embedding)
    with hints.call([(0, 0, 8, 8)]):  # outside a run nothing is kept
        assert "forward" not in vars(embedding)


def test_an_instance_level_forward_is_put_back(engine: MTColorEngine) -> None:
    """A ``forward`` set on the embedding module by someone else (an offloading hook does that) is
    what the call wraps and what stays afterwards."""
    hints = engine.denoiser.hints
    embedding = engine.controlnet.controlnet_cond_embedding
    seen: list[int] = []
    class_forward = embedding.forward

    def hooked(cond: torch.Tensor) -> torch.Tensor:
        seen.append(cond.shape[0])
        return class_forward(cond)

    embedding.forward = hooked
    try:
        with torch.no_grad(), hints.reuse(), hints.call([(0, 0, 8, 8)]):
            embedding(torch.rand(1, 3, 64, 64))
        assert seen == [1]
        assert vars(embedding)["forward"] is hooked
    finally:
        del embedding.forward
