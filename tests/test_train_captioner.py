"""Caption chain (VLM -> BLIP-2 -> namer) with tiny random models on disk, the text filters, the namer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.evaluate.clip_score import NEUTRAL_FILL, crop_mask
from mtcolor_batch.hints.colors import color_table, srgb_to_lab
from mtcolor_batch.testing.tiny_captioners import write_tiny_blip2, write_tiny_vlm
from mtcolor_batch.train import naming, text_filters
from mtcolor_batch.train.captioner import build_chain
from mtcolor_batch.train.dataset_config import load_dataset_config
from mtcolor_batch.train.text_filters import TextRules, rejection

REFUSES = "i'm unable to describe this"


@pytest.fixture(scope="session")
def captioners(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints: a refusing VLM, a VLM naming a colour, BLIP-2s with/without a colour word."""
    root = tmp_path_factory.mktemp("captioners")
    return {
        "vlm_refuses": write_tiny_vlm(root / "vlm-refuses", REFUSES),
        "vlm_blue": write_tiny_vlm(root / "vlm-blue", "a blue circle"),
        "vlm_random": write_tiny_vlm(root / "vlm-random"),
        "blip2_red": write_tiny_blip2(root / "blip2-red", "a red square"),
        "blip2_colourless": write_tiny_blip2(root / "blip2-colourless", "a big square"),
        "blip2_short": write_tiny_blip2(root / "blip2-short", "a red square", max_positions=6),
    }


def _photo() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = np.full((24, 32, 3), 0.5, np.float32)
    rgb[4:14, 6:20] = (0.85, 0.05, 0.05)
    mask = np.zeros((24, 32), bool)
    mask[4:14, 6:20] = True
    return rgb, naming.rgb_to_lab(rgb), mask


def _chain(vlm: Path | None, blip2: Path | None, **filters: object):
    config = load_dataset_config(
        None,
        {
            "captioner": {"vlm": str(vlm) if vlm else None, "blip2": str(blip2) if blip2 else None},
            "filters": filters,
        },
    )
    return build_chain(config, "cpu")


@pytest.mark.slow
def test_chain_falls_through_in_the_papers_order(captioners: dict[str, Path]) -> None:
    rgb, lab, mask = _photo()
    # Primary VLM refuses -> BLIP-2 answers with a colour: BLIP-2's text is kept.
    chain = _chain(captioners["vlm_refuses"], captioners["blip2_red"])
    assert chain.names == ["vlm", "blip2", "namer"]
    answer = chain.instance_text(rgb, lab, mask, "square")
    assert (answer.text, answer.source) == ("a red square", "blip2")
    assert answer.rejected == [{"by": "vlm", "reason": "refusal", "text": REFUSES}]
    # Primary refuses, BLIP-2 names no colour -> the pixel namer closes the chain.
    chain = _chain(captioners["vlm_refuses"], captioners["blip2_colourless"])
    answer = chain.instance_text(rgb, lab, mask, "square")
    assert (answer.text, answer.source) == ("a red square", "namer")
    assert [(r["by"], r["reason"]) for r in answer.rejected] == [
        ("vlm", "refusal"),
        ("blip2", "no_colour_word"),
    ]
    # A link that fails to run (here BLIP-2's context is too short for the prompt) also falls through.
    chain = _chain(captioners["vlm_refuses"], captioners["blip2_short"])
    answer = chain.instance_text(rgb, lab, mask, "square")
    assert (answer.text, answer.source) == ("a red square", "namer")
    assert [(r["by"], r["reason"]) for r in answer.rejected] == [
        ("vlm", "refusal"),
        ("blip2", "captioner_error"),
    ]
    # An acceptable primary answer is kept and BLIP-2 is never asked.
    chain = _chain(captioners["vlm_blue"], captioners["blip2_red"])
    answer = chain.instance_text(rgb, lab, mask, "square")
    assert (answer.text, answer.source, answer.rejected) == ("a blue circle", "vlm", [])
    # Whole-image captions need no colour word, but refusals still fall through.
    chain = _chain(captioners["vlm_refuses"], captioners["blip2_colourless"])
    caption = chain.image_caption(rgb)
    assert (caption.text, caption.source) == ("a big square", "blip2")
    # Without models the namer alone answers and there is no whole-image captioner.
    alone = _chain(None, None)
    assert alone.names == ["namer"] and not alone.has_model
    assert alone.instance_text(rgb, lab, mask, "square").text == "a red square"


def test_random_vlm_junk_is_judged_by_the_filters(captioners: dict[str, Path]) -> None:
    """A random model's answer goes through the same filters; whatever it says, a text comes out."""
    rgb, lab, mask = _photo()
    chain = _chain(captioners["vlm_random"], None, max_words=6)
    vlm = chain.captioners[0]
    raw = text_filters.clean_text(vlm.describe(_view(chain, rgb, lab, mask)))
    expected = rejection(raw, TextRules(max_words=6))
    answer = chain.instance_text(rgb, lab, mask, "square")
    if expected is None:
        assert (answer.text, answer.source) == (raw, "vlm")
    else:
        assert answer.source == "namer" and answer.rejected == [
            {"by": "vlm", "reason": expected, "text": raw[:200]}
        ]


def _view(chain, rgb, lab, mask):
    from mtcolor_batch.train.captioner import InstanceView, to_pil

    return InstanceView(to_pil(crop_mask(rgb, mask)), "square", naming.mean_lab(lab, mask))


def test_unloadable_captioner_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as info:
        _chain(tmp_path / "empty", None)
    assert "cannot load the vlm captioner" in info.value.one_line() and "empty" in info.value.one_line()


@pytest.mark.parametrize(
    "text",
    [
        "I'm unable to determine the colour of this object.",
        "Unable to provide a description of the image",
        "I am not able to see the object",
        "Sorry, I cannot help with that",
        "I can't tell what colour it is",
        "As an AI, I have no eyes",
        "It is impossible to determine the colour",
    ],
)
def test_refusals_are_rejected(text: str) -> None:
    assert text_filters.is_refusal(text)
    assert rejection(text, TextRules()) == "refusal"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a red car", None),
        ("a reddish brick wall", None),
        ("Grey cat", None),
        ("a car parked by the road", "no_colour_word"),
        ("a sorrel horse", "no_colour_word"),  # rare colour words are not in the vocabulary on purpose
        ("", "empty"),
        ("a red car " + "that is parked " * 5, "too_long"),
    ],
)
def test_colour_word_length_and_empty_filters(text: str, reason: str | None) -> None:
    assert rejection(text, TextRules(max_words=12)) == reason


def test_whole_image_captions_need_no_colour_word() -> None:
    assert rejection("a man walking a dog", TextRules(), need_colour=False) is None


def test_clean_text() -> None:
    assert text_filters.clean_text('  "A red\n car."  ') == "A red car"


def test_duplicated_instances() -> None:
    a = np.zeros((10, 10), bool)
    a[2:8, 2:8] = True
    b = a.copy()
    b[7, 2] = False  # IoU 35/36
    c = np.zeros((10, 10), bool)
    c[0:3, 0:3] = True
    assert text_filters.duplicate_of([a, b, c, a], ["car", "car", "car", "dog"], 0.9) == [None, 0, None, None]
    assert text_filters.duplicate_of([a, b], ["car", "car"], 0.99) == [None, None]


def test_namer_uses_basic_terms_with_modifiers() -> None:
    def name(rgb: tuple[int, int, int]) -> str:
        return naming.color_name(srgb_to_lab((rgb[0] / 255, rgb[1] / 255, rgb[2] / 255)))

    assert name((220, 0, 0)) == "red"
    assert name((34, 92, 255)) == "blue"  # CSS would say "royal blue"
    assert name((200, 200, 200)) == "light gray" and name((60, 60, 60)) == "dark gray"
    assert name((144, 238, 144)) == "light green" and name((0, 100, 0)) == "dark green"
    assert name((128, 128, 0)) == "olive" and name((245, 245, 220)) == "cream"
    # Every CSS/archival colour gets a basic word: none of the rare names comes out.
    vocabulary = set(naming.basic_colour_names())
    assert len(vocabulary) < 50
    for entry in color_table():
        word = naming.color_name(entry.lab)
        assert word in vocabulary and naming.has_colour_word(word)
    assert "fawn" not in vocabulary and "olive drab" not in vocabulary and "white smoke" not in vocabulary


def test_captioners_see_the_mask_crop_with_a_neutral_background(captioners: dict[str, Path]) -> None:
    """The chain shows each captioner the eval's mask crop (box, gray outside the mask), not a box crop."""
    rgb, lab, mask = _photo()
    mask[4, 6] = False
    seen = []
    chain = _chain(None, None)
    namer = chain.captioners[0]
    original = namer.describe

    def spy(view):
        seen.append(np.asarray(view.crop))
        return original(view)

    namer.describe = spy  # type: ignore[method-assign]
    chain.instance_text(rgb, lab, mask, "square")
    (crop,) = seen
    assert crop.shape == (10, 14, 3)
    assert np.all(crop[0, 0] == round(NEUTRAL_FILL * 255))
    assert np.array_equal(crop[1:], np.round(rgb[5:14, 6:20] * 255).astype(np.uint8))


def test_dataset_config_checks_prompts(tmp_path: Path) -> None:
    bad = tmp_path / "dataset.yaml"
    bad.write_text("captioner:\n  vlm_instance_prompt: 'what colour is the {object}?'\n")
    with pytest.raises(UserError) as info:
        load_dataset_config(bad)
    assert "dataset.yaml" in info.value.one_line() and "vlm_instance_prompt" in info.value.one_line()
    config = load_dataset_config(None, {"filters": {"max_words": 5}})
    assert config.filters.max_words == 5 and config.split.test_fraction == 0.2
