"""Which captioner answers may become training texts, and which instances are the same one twice.

Why these filters: a VLM asked to describe a crop sometimes refuses ("I'm unable to determine the
colour..."), answers without any colour, or rambles; the paper's pipeline falls through to the next
captioner in those cases (Sec. 3.5). Detectors and annotation files also list one object twice, and a
doubled instance only doubles its weight in the loss. Every rejection is returned as a reason key so
the dataset summary can count them (``REASONS``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from mtcolor_batch.train.naming import has_colour_word

REFUSAL = "refusal"
NO_COLOUR = "no_colour_word"
TOO_LONG = "too_long"
EMPTY = "empty"
DUPLICATE = "duplicate"
ERROR = "captioner_error"
REASONS = (REFUSAL, NO_COLOUR, TOO_LONG, EMPTY, DUPLICATE, ERROR)
"""Every rejection reason, in the order the summary lists them."""

_REFUSAL_RE = re.compile(
    r"""
    \b(?:i\s*(?:'|’)?\s*m|i\s+am)\s+(?:not\s+able|unable|sorry)\b   # I'm unable / I am not able / I'm sorry
    | \b(?:unable|not\s+able|impossible)\s+to
      \s+(?:provide|determine|describe|identify|tell|see|say|answer|assist|help)\b
    | \bi\s+(?:can\s*not|cannot|can(?:'|’)?t|could\s*n(?:'|’)?t|won(?:'|’)?t)\b
    | \b(?:sorry|apolog(?:ise|ize|ies))\b
    | \bas\s+an\s+ai\b
    | \bno\s+(?:image|object|colou?r)\s+(?:is\s+)?(?:visible|provided|shown)\b
    | \b(?:not|hard|difficult)\s+(?:possible\s+)?to\s+(?:determine|tell|say)\b
    """,
    re.IGNORECASE | re.VERBOSE,
)


def is_refusal(text: str) -> bool:
    """Whether a captioner answer declines the task instead of describing the crop."""
    return bool(_REFUSAL_RE.search(text))


def word_count(text: str) -> int:
    return len(text.split())


def clean_text(text: str) -> str:
    """One line, single spaces, no trailing full stop or quotes: the form stored in the manifest."""
    text = " ".join(text.replace("\n", " ").split()).strip().strip("\"'`").strip()
    return text.rstrip(".").strip()


@dataclass(frozen=True)
class TextRules:
    """Limits of an accepted text (from the dataset profile's ``filters`` section)."""

    max_words: int = 12
    require_colour: bool = True


def rejection(text: str, rules: TextRules, *, need_colour: bool = True) -> str | None:
    """The reason ``text`` is rejected, or None when it may be used.

    ``need_colour`` is False for whole-image captions: "a street with people" is a good global
    caption, while an instance text must say the colour it binds to the mask.
    """
    if not text:
        return EMPTY
    if is_refusal(text):
        return REFUSAL
    if word_count(text) > rules.max_words:
        return TOO_LONG
    if need_colour and rules.require_colour and not has_colour_word(text):
        return NO_COLOUR
    return None


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def duplicate_of(masks: list[np.ndarray], labels: list[str], iou: float) -> list[int | None]:
    """For each instance, the index of an earlier kept instance it duplicates (same label, IoU >= iou).

    Earlier instances win: finders and annotation files list the more confident one first.
    """
    kept: list[int] = []
    out: list[int | None] = []
    for i, (mask, label) in enumerate(zip(masks, labels, strict=True)):
        twin = next((k for k in kept if labels[k] == label and mask_iou(masks[k], mask) >= iou), None)
        out.append(twin)
        if twin is None:
            kept.append(i)
    return out


def count(reasons: list[str]) -> dict[str, int]:
    """Reason keys -> counts, every reason present (zeros included) so summaries line up."""
    tally = Counter(reasons)
    return {reason: int(tally.get(reason, 0)) for reason in REASONS}
