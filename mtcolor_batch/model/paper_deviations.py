"""Where an output departs from the MT-Color paper, said in its provenance record.

Someone comparing a colorized scan with the paper's figures needs to know, from the record alone,
what was not the paper's method. Two kinds of departures exist:

* built into this implementation, whatever the profile (:data:`BUILT_IN`): design choices of the
  model code, each made on purpose (docs/mtcolor.md, "How this implements MT-Color", has the full reasons);
* chosen by the profile (:data:`SETTING_WHY`): the keys the built-in ``paper`` profile sets, wherever
  the run's profile holds another value (a key the paper profile does not set cannot depart from it).

The docs/mtcolor.md table is the long form of this list; ``tests/test_paper_deviations.py`` checks that every
entry here is named there, and that every key of the paper profile has its reason here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtcolor_batch.core.config import Profile, dotted


@dataclass(frozen=True)
class Deviation:
    """One built-in departure: a stable id, the paper element it concerns and the reason, in one line."""

    id: str
    element: str
    why: str


BUILT_IN: tuple[Deviation, ...] = (
    Deviation(
        "pmam-layernorm",
        "PMAM (Sec. 3.2)",
        "per-pixel LayerNorm before Q/K/V and a zero-initialised output projection: a fresh PMAM is an "
        "exact no-op and no instance can shift another through normalisation statistics",
    ),
    Deviation(
        "tanh-gate",
        "instance branch (Sec. 3.3)",
        "zero-initialised tanh gate (GLIGEN's): an untrained branch is an exact no-op",
    ),
    Deviation(
        "latent-layernorm",
        "instance branch (Sec. 3.3)",
        "LayerNorm on the latents only, not on the instance tokens: normalised tokens were not learned",
    ),
    Deviation(
        "mask-before-softmax",
        "M_self / M_cross (Eq. 7-8)",
        "masks applied before the softmax (weights renormalised over what a pixel may see)",
    ),
    Deviation(
        "exclusive-regions",
        "instance masks",
        "regions are exclusive: a latent cell belongs to the instance covering most of it",
    ),
    Deviation(
        "cfg-keeps-masks",
        "classifier-free guidance",
        "the unconditional half keeps the region masks and drops only texts and tokens, so within each "
        "layer no guided term crosses an instance border",
    ),
)

SETTING_WHY: dict[str, str] = {
    "sampling.working_long_side": "tiling: sampled at a working resolution in tiles, not 512x512, since "
    "archive scans are large and any aspect ratio",
    "sampling.working_square": "the scan's aspect ratio is kept instead of squashing it to a square",
    "sampling.tile_size": "tiles of another size than the paper's single 512 px image",
    "sampling.prompt": "a global prompt instead of the paper's empty one",
    "sampling.negative_prompt": "a negative prompt, which the paper does not use",
    "sampling.fusion": "multi-instance fusion other than Eq. 10 as printed (paste: instance latents "
    "pasted onto the global one without shrinking the background by beta)",
    "sampling.alpha": "another share of steps with per-instance branches than the paper's 0.2",
    "sampling.beta": "another background weight than the paper's 0.2",
    "sampling.branch_crop": "instance branches run on their box plus context, not the whole image, "
    "in the first alpha*T steps (faster; fused latents move by a few percent)",
    "sampling.branch_uncond": "instance branches guided by the global branch's unconditional prediction "
    "instead of their own in the first alpha*T steps (faster; an approximation)",
    "sampling.branch_refresh": "instance branches run at every Nth of the first alpha*T steps and carry "
    "their last deviation from the global branch in between, instead of running at every step (faster; "
    "an approximation)",
    "perception.auto_instances": "instances found automatically besides the sidecar's",
    "hints.strict": "hinted instances shifted to their hint colour after sampling",
    "output.luminance_lock": "the scan's own full-resolution lightness under the model's colour "
    "(luminance lock) instead of the decoded RGB",
}


SAMPLING_WHY: dict[str, tuple[Any, str]] = {
    "sampling.scheduler": (
        "ddim",
        "another denoising scheduler than the DDIM sampling this implementation follows the paper with",
    ),
    "sampling.accelerator": (
        "none",
        "a distilled LoRA fused into the UNet for few-step sampling; MT-Color's modules were trained "
        "against the base UNet and whether the two compose is unverified with real weights",
    ),
}
"""Few-step sampling (docs/few-step.md): departures whatever the paper profile sets, {key: (paper, why)}."""


def deviations(profile: Profile) -> dict[str, Any]:
    """The record's ``paper_deviations``: the built-in departures, and the profile's, with values."""
    chosen = [
        {"key": key, "value": mine, "paper": want, "why": SETTING_WHY.get(key, "")}
        for key, (mine, want) in profile.departures("paper").items()
    ]
    for key, (want, why) in SAMPLING_WHY.items():
        mine = dotted(profile.model_dump(mode="json")).get(key)
        if mine != want and key not in {c["key"] for c in chosen}:
            chosen.append({"key": key, "value": mine, "paper": want, "why": why})
    return {
        "built_in": [{"id": d.id, "element": d.element, "why": d.why} for d in BUILT_IN],
        "profile": chosen,
    }
