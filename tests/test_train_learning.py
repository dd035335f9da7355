"""Training really learns: a tiny bundle learns to colour shapes the colour their instance texts say.

The synthetic task (testing/synthetic.py): shapes on gray, each red or royal blue, and the two colours
have the same luminance, so the gray input cannot tell them apart. Every training layout is written
twice, once with its colours exchanged, so even memorising the training photos does not give the
colours away: only the instance texts can. Every photo has both shapes, as the held-out images have:
the paper's branch keeps instances apart (M_self, M_cross), so each shape is an example of its own,
and two per photo double what a step learns from (with one shape per photo the texts were learned
weakly and erratically). The bundle is the tiny one with a UNet that attends at the latent
resolution and a wider text encoder (``write_learning_bundle`` says why). Its random parts are first
made workable, as real SD already is: the VAE is fitted to reconstruct the images, and the backbone
(UNet + ControlNet, "stage 0", not a CLI stage) is trained as a text-blind gray-to-colour model
(every sample's texts null), so it cannot know which colour a shape is; half of its batches run
without the ControlNet so that its UNet also works alone, as SD's does. Then the paper's stage 1
trains the instance guidance alone, with everything else frozen and, as in the paper, without the
ControlNet or PMAM in its forward pass; the branch projections copied from the UNet move at the
trainer's default 0.1 x lr (``projection_lr_scale``), the rest at GUIDANCE_LR.

Held-out measure: new layouts (another seed) with a square and a circle, coloured through
``MTColorEngine.colorize`` (alpha 0, so the instance texts act only through the trained guidance;
classifier-free guidance GUIDANCE_SCALE against the null instance condition), once with the square
told "red" and the circle "royal blue", once with the texts swapped. Each region's colour is its mean
CIELAB (a*, b*) projected on the axis from royal blue to red (0 = royal blue, ~150 = red). The
effect of one image is (told-red region minus told-blue region), computed in both orientations.
The held-out set also has instance-free images: on those the trained bundle must give exactly what
the bundle before stage 1 gives (no instance, no branch output), i.e. an image without instances
runs the network training ran on instance-free (null) samples, not an untrained one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2lab

from mtcolor_batch.core.config import SamplingSettings
from mtcolor_batch.core.types import Instance, Plan
from mtcolor_batch.scan.imageio import rgb_to_gray
from mtcolor_batch.stages.plan import make_plan
from mtcolor_batch.testing.synthetic import (
    BLUE,
    RED,
    TruthFinder,
    fit_tiny_vae,
    shapes_image,
    write_learning_bundle,
    write_shapes_folder,
)
from mtcolor_batch.train.config import load_train_config
from mtcolor_batch.train.dataset import build_dataset
from mtcolor_batch.train.dataset_config import load_dataset_config
from mtcolor_batch.train.trainer import train

SIZE = 64
PHOTOS = 64  # 32 layouts x 2 colourings
VAE_STEPS = 120
BACKBONE_STEPS = 300
GUIDANCE_STEPS = 400
GUIDANCE_LR = 2e-3
NULL_PROB = 0.5  # the paper's (and train.yaml's) null-condition rate, kept as is
HELD_OUT = 8
GUIDANCE_SCALE = 5.0
MIN_MEAN_EFFECT = 25.0
"""Measured (mean effect per orientation, images following both ways), stage 1 at lr 2e-3 with the
copied branch projections at 0.1x (``projection_lr_scale``, the default) on two-shape photos:
400 steps 46.1 / 38.3, 8 of 8; 600 steps 53.4 / 54.9, 7 of 8; 800 steps 64.6 / 33.3, 7 of 8.
Before (one shape per photo, every parameter at 3e-3): 18.9 / 44.5 (5 of 8) at 400 steps, 4.5 / 3.2
(3 of 8) at 600, 20.2 / 19.5 (4 of 8) at 800. The control below is exactly 0, so 25 units on the
~150-unit axis is a real effect."""
MIN_FOLLOWING = 6
"""Images (of HELD_OUT) that must follow the texts in both orientations (measured 7-8 of 8 at 400,
600 and 800 steps, also with the dense attention's other float summation order)."""

pytestmark = pytest.mark.slow


def _cfg(steps: int, **kw: object):
    base = dict(
        steps=steps,
        batch_size=8,
        grad_accum=1,
        lr=1e-3,
        warmup_steps=20,
        resolution=SIZE,
        checkpoint_every=steps,
        max_instances=2,
        num_workers=0,
        log_every=steps,
        weight_decay=0.0,
        cache_latents=True,
        seed=0,
    )
    base.update(kw)
    return load_train_config(None, base)


@pytest.fixture(scope="module")
def trained(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("train-learning")
    bundle = write_learning_bundle(tiny_bundle, root / "bundle")
    truth = write_shapes_folder(root / "photos", PHOTOS, size=SIZE, seed=0, single=False, paired=True)
    all_train = load_dataset_config(None, {"split": {"test_fraction": 0.0}})  # keep every colour pair
    # Ground-truth texts in the words the held-out measure uses (the builder's namer would say "blue",
    # which the character-level tiny tokenizer tells from "red" less well than "royal blue").
    finder = TruthFinder(truth, colour_words=("red", "royal blue"))
    build_dataset(root / "photos", root / "data", finder=finder, config=all_train)
    vae_mse = fit_tiny_vae(bundle, [t.rgb for t in truth.values()], steps=VAE_STEPS)
    backbone = train(
        stage=0,
        data=root / "data",
        bundle=bundle,
        out=root / "s0",
        config=_cfg(BACKBONE_STEPS, null_prob=1.0),
        device="cpu",
    )
    guided = train(
        stage=1,
        data=root / "data",
        bundle=backbone.bundle,
        out=root / "s1",
        config=_cfg(GUIDANCE_STEPS, lr=GUIDANCE_LR, null_prob=NULL_PROB),
        device="cpu",
    )
    return {"vae_mse": vae_mse, "backbone": backbone, "guided": guided}


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def test_loss_falls(trained: dict) -> None:
    """The trainer really optimises: the backbone's noise-prediction loss drops by more than 1.5x."""
    assert trained["vae_mse"] < 0.05
    losses = trained["backbone"].losses
    first, last = _mean(losses[:25]), _mean(losses[-50:])
    print(f"backbone loss {first:.3f} -> {last:.3f} ({first / last:.2f}x)")
    assert first / last > 1.5
    guided = trained["guided"].losses
    assert len(guided) == GUIDANCE_STEPS and np.isfinite(guided).all()


def _plan(seed: int) -> Plan:
    settings = SamplingSettings(
        working_long_side=SIZE, steps=10, guidance_scale=GUIDANCE_SCALE, alpha=0.0, negative_prompt=""
    )
    plan = make_plan((SIZE, SIZE), settings, seed, prompt="")
    return dataclasses.replace(plan, prompt="")  # no global text: the instance texts alone


def _red_blue_scores(bundle: Path) -> np.ndarray:
    """(HELD_OUT, 2) effects: told-red minus told-blue region score, square told red, then swapped."""
    from mtcolor_batch.model.engine import MTColorEngine

    engine = MTColorEngine.load(bundle, device="cpu")
    red_ab, blue_ab = (rgb2lab(np.array([[c]], np.float64) / 255)[0, 0, 1:] for c in (RED, BLUE))
    axis = (red_ab - blue_ab) / np.linalg.norm(red_ab - blue_ab)
    rng = np.random.default_rng(1234)  # held out: the training photos used seed 0
    out = []
    for trial in range(HELD_OUT):
        image = shapes_image(rng, SIZE)
        luma = rgb_to_gray(image.rgb.astype(np.float32) / 255)
        scores: list[float] = []
        for square, circle in (("red", "royal blue"), ("royal blue", "red")):
            instances = [
                Instance(1, "square", f"a {square} square", image.square, (0, 0, SIZE, SIZE)),
                Instance(2, "circle", f"a {circle} circle", image.circle, (0, 0, SIZE, SIZE)),
            ]
            plan = _plan(trial)
            ab = engine.colorize(luma, instances, plan)
            scores += [float((ab[:, m].mean(1) - blue_ab) @ axis) for m in (image.square, image.circle)]
        sq_red, ci_blue, sq_blue, ci_red = scores
        print(
            f"told square red: square {sq_red:.1f} circle {ci_blue:.1f} | "
            f"swapped: square {sq_blue:.1f} circle {ci_red:.1f}"
        )
        out.append((sq_red - ci_blue, ci_red - sq_blue))
    return np.array(out)


def test_trained_model_colours_regions_as_told_and_swaps(trained: dict) -> None:
    """Told "red", a held-out region comes out redder than the one told "royal blue", and the swap follows.

    Asserted on HELD_OUT new layouts: in BOTH orientations the mean effect (told-red minus told-blue
    score, on the ~150-unit blue-to-red axis) exceeds MIN_MEAN_EFFECT, so the square-minus-circle
    difference changes sign when the texts swap; and a majority (MIN_FOLLOWING) of the 8 images
    follow the texts in both orientations. Control: the bundle before stage 1 (zero, no-op guidance)
    gives no effect at all (swapping the texts changes no colour), so the effect is what stage 1
    learned, not the texts reaching the backbone some other way.
    """
    effects = _red_blue_scores(trained["guided"].bundle)
    print("effects (square told red, swapped):", effects.round(1).tolist())
    print("mean effect per orientation:", effects.mean(0).round(1).tolist())
    assert (effects.mean(0) > MIN_MEAN_EFFECT).all()
    assert int((effects > 0).all(1).sum()) >= MIN_FOLLOWING
    # Control: with no text effect both orientations give (d, -d) for the same colours d, sum 0.
    control = _red_blue_scores(trained["backbone"].bundle)
    assert np.abs(control.sum(1)).max() < 1e-3


def test_instance_free_held_out_images_run_the_trained_null_network(trained: dict) -> None:
    """Without instances the trained bundle is bit for bit the backbone (stage 1 changed nothing there)."""
    from mtcolor_batch.model.engine import MTColorEngine

    guided = MTColorEngine.load(trained["guided"].bundle, device="cpu")
    backbone = MTColorEngine.load(trained["backbone"].bundle, device="cpu")
    assert any(layer.gate.abs().max() > 0 for layer in guided.modules.guidance.layers.values())
    rng = np.random.default_rng(99)
    for trial in range(3):
        image = shapes_image(rng, SIZE)
        luma = rgb_to_gray(image.rgb.astype(np.float32) / 255)
        ours = guided.colorize(luma, [], _plan(trial))
        assert np.isfinite(ours).all()
        assert np.array_equal(ours, backbone.colorize(luma, [], _plan(trial)))
