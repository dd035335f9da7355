"""Region-sparse attention inside the model: PMAM and the instance branch give the dense results."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mtcolor_batch.core.config import SamplingSettings
from mtcolor_batch.core.types import Instance
from mtcolor_batch.model.engine import EngineOptions, MTColorEngine
from mtcolor_batch.model.regions import RegionBatch
from mtcolor_batch.stages.plan import make_plan

TRAINED_LIKE_SEED = 5
"""The shared ``engine`` fixture (conftest) fills the MT-Color modules with this seed."""


def test_the_engine_runs_every_mt_color_module(engine: MTColorEngine) -> None:
    """Every test here relies on PMAM and instance guidance acting, as in a trained bundle."""
    assert all(engine.modules.pmam.active()) and all(engine.modules.guidance.active().values())


def _square(size: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _regions(text_dim: int) -> RegionBatch:
    """CFG-style batch: [uncond (tokens dropped); cond] of one image with two instances, an empty
    padding slot and a one-cell instance, plus an image without instances."""
    g = torch.Generator().manual_seed(0)
    masks = [_square(64, 0, 24, 0, 32), _square(64, 32, 64, 16, 64), _square(64, 40, 48, 0, 8)]
    texts = torch.randn(3, text_dim, generator=g)
    one = RegionBatch.from_masks(masks, texts, (8, 8), slots=4)
    none = RegionBatch.from_masks([], torch.zeros(0, text_dim), (8, 8), slots=4)
    return RegionBatch.cat([one.drop_tokens(), one, none])


@pytest.mark.parametrize("impl", ["sparse", "flex", "auto"])
@pytest.mark.slow
def test_denoiser_region_attention_equals_dense(engine: MTColorEngine, impl: str) -> None:
    den = engine.denoiser
    regions = _regions(engine.modules.guidance.text_dim)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(3, 4, 8, 8, generator=g)
    text = torch.randn(3, 77, engine.text_encoder.config.hidden_size, generator=g)
    control = torch.rand(3, 3, 64, 64, generator=g)
    outs = {}
    try:
        for mode in ("dense", impl):
            den.attention = mode
            with torch.no_grad():
                outs[mode] = den(latents, 500, text, control, regions)
    finally:
        den.attention = "auto"
    torch.testing.assert_close(outs[impl], outs["dense"], atol=1e-5, rtol=1e-4)


def test_sampling_with_region_attention_matches_dense(tiny_bundle: Path, engine: MTColorEngine) -> None:
    """A whole multi-instance sample: the dense reference and the default agree within float noise."""
    settings = SamplingSettings(steps=2, working_long_side=64, alpha=0.5)
    plan = dataclasses.replace(make_plan((64, 64), settings, seed=3, prompt="a street"))
    luma = np.linspace(0.1, 0.9, 64 * 64, dtype=np.float32).reshape(64, 64)
    insts = [
        Instance.from_full_mask(1, "tram", "a red tram", _square(64, 8, 40, 16, 48)),
        Instance.from_full_mask(2, "sky", "a blue sky", _square(64, 0, 8, 0, 64)),
    ]
    dense = MTColorEngine.load(tiny_bundle, device="cpu", options=EngineOptions(attention="dense"))
    dense.modules.load_state_dict(engine.modules.state_dict())
    assert dense.info["attention"] == "dense" and engine.info["attention"] == "auto"
    np.testing.assert_allclose(
        engine.colorize(luma, insts, plan), dense.colorize(luma, insts, plan), atol=1e-3
    )


@pytest.mark.parametrize("impl", ["sparse", "flex"])
def test_instance_branch_on_instance_pixels_equals_every_pixel(engine: MTColorEngine, impl: str) -> None:
    """The branch run on the gathered instance pixels alone (rows padded to the longest) gives the
    dense reference's output, zero on background, for rows with different and with no instances."""
    from mtcolor_batch.model.instance_guidance import InstanceAttnProcessor, InstanceCall
    from mtcolor_batch.model.regions import RegionMaps

    guidance = engine.modules.guidance
    key = next(iter(guidance.layers.keys()))
    proc = InstanceAttnProcessor(None, guidance.layer(key), key)
    regions = _regions(guidance.text_dim)
    dim = guidance.layer(key).norm.normalized_shape[0]
    x = torch.randn(3, 64, dim, generator=torch.Generator().manual_seed(2))
    tokens = guidance.encode(regions.inst_text, regions.inst_masks)
    with torch.no_grad():
        out = {
            mode: proc.delta(x, InstanceCall(tokens, RegionMaps.of(regions, mode)))
            for mode in ("dense", impl)
        }
    pixels = RegionMaps.of(regions, impl).inside_pixels((8, 8))
    assert pixels is not None and 0 < pixels.index.shape[1] < 64  # fewer rows than pixels
    torch.testing.assert_close(out[impl], out["dense"], atol=1e-5, rtol=1e-4)
    background = (regions.label_map.flatten(1) == 0)[:, :, None].expand_as(x)
    assert not out[impl][background].any() and out[impl][2].abs().sum() == 0  # row 2: no instance
    assert out[impl][1].abs().sum() > 0
