"""The provenance list of departures from the MT-Color paper stays complete and matches docs/mtcolor.md."""

from __future__ import annotations

from pathlib import Path

from mtcolor_batch.core.config import builtin_values, load_profile
from mtcolor_batch.model.paper_deviations import BUILT_IN, SETTING_WHY, deviations

MTCOLOR_PAGE = Path(__file__).resolve().parents[1] / "docs" / "mtcolor.md"

PAGE_PHRASE = {
    "pmam-layernorm": "per-pixel LayerNorm before Q/K/V",
    "tanh-gate": "zero-initialised **tanh gate**",
    "latent-layernorm": "normalises the latents only",
    "mask-before-softmax": "masking before the softmax",
    "exclusive-regions": "regions are exclusive",
    "cfg-keeps-masks": "the unconditional half keeps the region masks",
}
"""Where docs/mtcolor.md's "How this implements MT-Color" table gives each built-in departure's long form."""


def _mtcolor_section() -> str:
    text = MTCOLOR_PAGE.read_text(encoding="utf-8")
    start = text.index("## How this implements MT-Color")
    return text[start : text.index("\n## ", start + 1)]


def test_every_paper_profile_key_has_its_reason_and_no_reason_is_stale() -> None:
    paper_keys = set(builtin_values("paper"))
    assert paper_keys == set(SETTING_WHY)
    assert all(why.strip() for why in SETTING_WHY.values())


def test_every_built_in_departure_is_in_the_mtcolor_page_table() -> None:
    section = _mtcolor_section()
    assert {d.id for d in BUILT_IN} == set(PAGE_PHRASE)
    for ident, phrase in PAGE_PHRASE.items():
        assert phrase in section, ident


def test_every_profile_key_that_departs_is_in_the_mtcolor_page_section() -> None:
    section = _mtcolor_section()
    for key in SETTING_WHY:
        assert key.split(".")[-1] in section or key in section, key


def test_the_paper_profile_departs_only_by_construction() -> None:
    assert deviations(load_profile("paper"))["profile"] == []
    steps_only = load_profile("paper", {"sampling.steps": 3})  # a knob the paper does not fix
    assert deviations(steps_only)["profile"] == []
    default = {d["key"]: (d["value"], d["paper"]) for d in deviations(load_profile("default"))["profile"]}
    assert default["sampling.fusion"] == ("paste", "paper")
    assert default["sampling.branch_crop"] == (64, 0)
    assert default["sampling.branch_refresh"] == (2, 1)
    assert default["output.luminance_lock"] == (True, False)
    assert "sampling.tile_size" not in default  # 512 either way


def test_few_step_sampling_is_a_departure() -> None:
    """Another scheduler or an accelerator is listed under paper_deviations (and ends paper_profile)."""
    plain = {d["key"] for d in deviations(load_profile("paper"))["profile"]}
    assert "sampling.scheduler" not in plain and "sampling.accelerator" not in plain
    fast = load_profile("paper", {"sampling.scheduler": "lcm", "sampling.accelerator": "lcm"})
    listed = {d["key"]: (d["value"], d["paper"]) for d in deviations(fast)["profile"]}
    assert listed["sampling.scheduler"] == ("lcm", "ddim")
    assert listed["sampling.accelerator"] == ("lcm", "none")
