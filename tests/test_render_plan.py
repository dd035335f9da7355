"""Planning: working resolution, tile grid, provenance values, bad tile settings."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from mtcolor_batch.core.config import SamplingSettings
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.types import Plan
from mtcolor_batch.render.tiling import canvas_tiles
from mtcolor_batch.stages.plan import make_plan, plan_summary, working_size


@pytest.mark.parametrize(
    ("scan", "expected"),
    [
        ((8700, 11600), (768, 1024)),  # ~100 MP scan -> long side 1024
        ((11600, 8700), (1024, 768)),
        ((600, 400), (600, 400)),  # smaller than the working size: its own size, never upscaled
        ((1, 1), (8, 8)),  # degenerate: padded to the 8 px the VAE needs
        ((7, 3000), (8, 1024)),
        ((513, 513), (512, 512)),  # rounded to the latent grid
    ],
)
def test_working_size(scan, expected):
    assert working_size(scan, 1024) == expected


def test_plan_records_every_value_and_tiles_the_working_canvas():
    settings = SamplingSettings(steps=3, working_long_side=1024, tile_size=512, tile_overlap=128)
    plan = make_plan((8700, 11600), settings, seed=7, prompt="a street in 1910")
    assert plan.scan_size == (8700, 11600) and plan.working_size == (768, 1024)
    assert plan.seed == 7 and plan.steps == 3 and plan.prompt == "a street in 1910"
    assert plan.negative_prompt == settings.negative_prompt and plan.max_batch == settings.max_batch
    assert (plan.tile_size, plan.tile_overlap) == (512, 128)
    assert len(plan.tiles) == 6 and all(v % 8 == 0 for b in plan.tiles for v in b)
    summary = plan_summary(plan)
    assert summary["tile_grid"] == [2, 3] and summary["working_size"] == [768, 1024]
    assert make_plan((100, 100), settings, seed=1, prompt=None).prompt == settings.prompt


def test_the_profile_is_the_one_table_of_sampling_defaults():
    """Plan states no default of its own (it had branch_crop 0 where the profile says 64): every
    value a Plan holds comes from make_plan, and those named like a setting from the profile."""
    own_defaults = [f.name for f in dataclasses.fields(Plan) if f.default is not dataclasses.MISSING]
    assert own_defaults == []
    plan = make_plan((600, 400), SamplingSettings(), seed=1)
    shared = [f.name for f in dataclasses.fields(Plan) if f.name in SamplingSettings.model_fields]
    assert {"branch_crop", "branch_refresh", "max_batch", "fusion"} <= set(shared)
    assert all(getattr(plan, name) == getattr(SamplingSettings(), name) for name in shared)


def test_sampler_work_is_constant_once_the_scan_exceeds_the_working_size():
    settings = SamplingSettings()
    plans = [make_plan((h, w), settings, 0, "x") for h, w in [(1536, 2048), (6144, 8192), (12288, 16384)]]
    assert len({p.working_size for p in plans}) == 1
    assert len({tuple(p.tiles) for p in plans}) == 1


def test_small_working_image_is_one_tile():
    plan = make_plan((300, 200), SamplingSettings(), 0, "x")
    assert plan.working_size == (304, 200) and plan.tiles == [(0, 0, 200, 304)]


@pytest.mark.parametrize(("tile", "overlap"), [(500, 128), (512, 100), (512, 512)])
def test_bad_tile_settings_are_user_errors(tile, overlap):
    # refused when the profile is built (a setup error), and by the planner for any canvas
    with pytest.raises(ValidationError, match="sampling.tile"):
        SamplingSettings(tile_size=tile, tile_overlap=overlap)
    with pytest.raises(UserError, match="sampling.tile"):
        canvas_tiles(1000, 1000, tile, overlap)
