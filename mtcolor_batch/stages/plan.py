"""Plan one scan: the chroma working resolution, the tile grid and every sampling value.

Why a working resolution: colour varies far more slowly than archival detail, and the luminance
lock (``render/chroma.py``) puts the scan's own full-resolution luminance back after sampling, so
the sampler only has to get colour right at a modest size. The engine therefore always runs at
``sampling.working_long_side`` (default 1024) on the long side: a 100 MP scan costs the same
sampler work as a 1 MP scan; only the cheap guided upsampling grows with pixels.

Decisions recorded here (and in provenance via the Plan):
- Scans larger than the working size are scaled down keeping their aspect ratio.
- Scans smaller than the working size are never scaled up: they run at their own size.
- Both sides are then rounded to the nearest multiple of 8 (at least 8), because the VAE works on
  8x8 blocks. This moves each side by at most 4 px (a tiny scan such as 1x1 or 7x3000 becomes
  8 px on the short side); compose maps the whole working canvas onto the whole scan, so the
  geometry stays exact and nothing needs padding or cropping later.
- Tiles come from ``render.tiling.tile_boxes`` at the working size, aligned to 8 so they map
  exactly onto latents; a working image that fits one tile gives one box covering it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from mtcolor_batch.core.config import SamplingSettings
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.types import LATENT_FACTOR, Plan
from mtcolor_batch.render.tiling import axis_starts, canvas_tiles


def _round8(value: float) -> int:
    return max(LATENT_FACTOR, int(round(value / LATENT_FACTOR)) * LATENT_FACTOR)


def working_size(scan_size: tuple[int, int], long_side: int, square: bool = False) -> tuple[int, int]:
    """(h, w) the engine runs at for a scan of ``scan_size`` (h, w); multiples of 8.

    ``square`` (``sampling.working_square``): always ``long_side`` x ``long_side``, as the paper.
    """
    h, w = scan_size
    if h < 1 or w < 1:
        raise UserError(f"empty scan ({w}x{h} px)")
    if long_side < LATENT_FACTOR:
        raise UserError(f"sampling.working_long_side must be >= {LATENT_FACTOR} (got {long_side})")
    if square:
        return _round8(long_side), _round8(long_side)
    scale = min(1.0, long_side / max(h, w))
    return _round8(h * scale), _round8(w * scale)


def make_plan(
    scan_size: tuple[int, int],
    settings: SamplingSettings,
    seed: int,
    prompt: str | None = None,
    negative_prompt: str | None = None,
) -> Plan:
    """The Plan for one scan of ``scan_size`` (h, w) under the profile's sampling settings.

    ``prompt`` is the global text (from the sidecar or a folder rules file) and ``negative_prompt``
    a folder rules file's; ``None`` or empty falls back to the setting. Raises UserError for tile
    settings the latent grid cannot honour.
    """
    wh, ww = working_size(scan_size, settings.working_long_side, settings.working_square)
    tiles = canvas_tiles(wh, ww, settings.tile_size, settings.tile_overlap)
    # Every Plan field named like a sampling setting takes the setting's value: a knob added to both
    # reaches the sampler without a line here.
    shared = {
        f.name: getattr(settings, f.name)
        for f in fields(Plan)
        # the hints' texts may win over these two
        if f.name in SamplingSettings.model_fields and f.name not in ("prompt", "negative_prompt")
    }
    return Plan(
        **shared,
        scan_size=(int(scan_size[0]), int(scan_size[1])),
        working_size=(wh, ww),
        tiles=tiles,
        seed=int(seed),
        prompt=prompt or settings.prompt,
        negative_prompt=negative_prompt or settings.negative_prompt,
    )


def plan_summary(plan: Plan) -> dict[str, Any]:
    """Compact, JSON-ready description of the plan's geometry for provenance and logs."""
    wh, ww = plan.working_size
    rows = len(axis_starts(wh, plan.tile_size, plan.tile_overlap, LATENT_FACTOR))
    cols = len(axis_starts(ww, plan.tile_size, plan.tile_overlap, LATENT_FACTOR))
    return {
        "scan_size": list(plan.scan_size),
        "working_size": [wh, ww],
        "tile_size": plan.tile_size,
        "tile_overlap": plan.tile_overlap,
        "tile_grid": [rows, cols],
        "tiles": [list(b) for b in plan.tiles],
    }
