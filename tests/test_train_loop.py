"""Trainer mechanics: what each stage trains, warm-up, checkpoints, exact resume, the output bundle, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.model.bundle import load_bundle, read_manifest, save_bundle
from mtcolor_batch.model.registry import MODULES_FILE
from mtcolor_batch.testing.synthetic import TruthFinder, write_shapes_folder
from mtcolor_batch.train.checkpoint import list_checkpoints
from mtcolor_batch.train.config import TrainConfig, load_train_config
from mtcolor_batch.train.dataset import build_dataset
from mtcolor_batch.train.trainer import (
    LOSS_LOG,
    STAGE_STEPS,
    load_components,
    param_groups,
    train,
    trainable_parameters,
)


@pytest.fixture(scope="module")
def small(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle without perception, 8-photo shapes dataset): the cheapest complete training setup."""
    root = tmp_path_factory.mktemp("train-loop")
    bundle = root / "bundle"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("sam", "detector", "mtcolor.json"))
    save_bundle(bundle, name="tiny-random", revision="seed-0", tiny=True)
    truth = write_shapes_folder(root / "photos", 8, size=32, seed=5)
    build_dataset(root / "photos", root / "data", finder=TruthFinder(truth))
    return bundle, root / "data"


def _cfg(**kw: object) -> TrainConfig:
    base = dict(
        steps=4,
        batch_size=2,
        grad_accum=2,
        lr=1e-3,
        warmup_steps=2,
        resolution=32,
        checkpoint_every=2,
        max_instances=2,
        num_workers=0,
        log_every=1,
        seed=7,
    )
    base.update(kw)
    return load_train_config(None, base)


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / LOSS_LOG).read_text().splitlines()]


def test_shipped_training_defaults_follow_the_paper() -> None:
    cfg = load_train_config()
    assert (cfg.lr, cfg.warmup_steps, cfg.null_prob) == (5e-5, 500, 0.5)
    assert cfg.steps is None and STAGE_STEPS[1] == 25000 and STAGE_STEPS[2] == 20000
    assert cfg.controlnet_init == "bundle" and cfg.projection_lr_scale == 0.1
    with pytest.raises(UserError, match="lr"):
        load_train_config(None, {"lr": -1})


def test_stage_1_trains_the_copied_branch_projections_at_a_fraction_of_lr(small) -> None:
    """W_Qp/W_Kp/W_Vp/W_O (copied from the UNet) get lr x projection_lr_scale; every other part lr."""
    bundle, _ = small
    parts = load_components(bundle, torch.device("cpu"))
    params = trainable_parameters(parts, 1)
    layers = parts.modules.guidance.layers
    cfg = _cfg(lr=2e-3, projection_lr_scale=0.25)
    fast, slow = param_groups(parts, params, 1, cfg)
    assert slow["lr"] == pytest.approx(5e-4) and "lr" not in fast  # the rest take the optimizer's lr
    ids = {id(p) for p in slow["params"]}
    for layer in layers.values():
        copied = (layer.to_q.weight, layer.to_k.weight, layer.to_v.weight, layer.to_out.weight)
        assert {id(p) for p in (*copied, layer.to_out.bias)} <= ids
        assert id(layer.gate) not in ids and id(layer.proj.weight) not in ids
        assert id(layer.norm.weight) not in ids
    assert len(slow["params"]) == 5 * len(layers)
    assert len(fast["params"]) + len(slow["params"]) == len(params)
    assert {id(p) for p in fast["params"]} | ids == {id(p) for p in params.values()}
    assert len(param_groups(parts, params, 1, _cfg(projection_lr_scale=1.0))) == 1
    assert len(param_groups(parts, trainable_parameters(parts, 2), 2, cfg)) == 1


@pytest.mark.slow
def test_unset_steps_take_the_stage_default(small, tmp_path: Path) -> None:
    bundle, data = small
    lines: list[str] = []
    cfg = _cfg(steps=None, grad_accum=1)
    train(
        stage=1,
        data=data,
        bundle=bundle,
        out=tmp_path,
        config=cfg,
        device="cpu",
        stop_after=1,
        log=lines.append,
    )
    assert any(line.startswith("step 1/25000 ") for line in lines), lines


def test_controlnet_init_from_the_unet(small) -> None:
    from mtcolor_batch.train.trainer import load_components

    bundle, _ = small
    ours = load_components(bundle, torch.device("cpu"), "unet")
    theirs = load_components(bundle, torch.device("cpu"), "bundle")
    unet_down = ours.unet.down_blocks.state_dict()
    copied = ours.controlnet.down_blocks.state_dict()
    assert all(torch.equal(copied[k], unet_down[k]) for k in unet_down)
    # The bundle's ControlNet has trained-like (non-zero) zero convs; the fresh copy starts at zero.
    assert all(conv.weight.any() for conv in theirs.controlnet.controlnet_down_blocks)
    assert not any(conv.weight.any() for conv in ours.controlnet.controlnet_down_blocks)
    assert ours.modules.pmam.channels == theirs.modules.pmam.channels


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.slow
def test_resume_repeats_the_uninterrupted_run_exactly(small, tmp_path: Path, stage: int) -> None:
    bundle, data = small
    cfg = _cfg()
    full = train(stage=stage, data=data, bundle=bundle, out=tmp_path / "full", config=cfg, device="cpu")
    cut = tmp_path / "cut"
    train(stage=stage, data=data, bundle=bundle, out=cut, config=cfg, device="cpu", stop_after=3)
    assert [s for s, _ in list_checkpoints(cut / "checkpoints")] == [2]
    assert not (cut / "bundle").exists()
    with pytest.raises(UserError, match="--resume"):
        train(stage=stage, data=data, bundle=bundle, out=cut, config=cfg, device="cpu")
    with pytest.raises(UserError, match="config"):
        train(stage=stage, data=data, bundle=bundle, out=cut, config=_cfg(lr=2e-3), device="cpu", resume=True)
    resumed = train(stage=stage, data=data, bundle=bundle, out=cut, config=cfg, device="cpu", resume=True)
    assert len(full.losses) == 4 and resumed.losses == full.losses  # bit-identical, not just close
    assert _losses(cut) == _losses(tmp_path / "full")
    a, b = (
        load_file(str(p / "checkpoints" / "step-0000004" / "trainable.safetensors"))
        for p in (tmp_path / "full", cut)
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Warm-up: lr rises linearly to its value over warmup_steps, then stays.
    lrs = [json.loads(x)["lr"] for x in (cut / LOSS_LOG).read_text().splitlines()]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    # Checkpoints hold only safetensors + JSON (nothing that needs pickle to read).
    names = {p.name for p in (cut / "checkpoints" / "step-0000004").iterdir()}
    assert names == {"trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"}


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.slow
def test_each_stage_trains_only_its_parts_and_writes_a_loadable_bundle(
    small, tmp_path: Path, stage: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """... and stage 1 trains the instance module on its own: no ControlNet call, no PMAM (counted)."""
    from diffusers import ControlNetModel

    from mtcolor_batch.model.denoiser import MTColorModules
    from mtcolor_batch.model.engine import MTColorEngine
    from mtcolor_batch.model.pmam import PMAMBlock

    calls = {"controlnet": 0, "pmam": 0}

    def counting(cls: type, key: str) -> None:
        forward = cls.forward

        def wrapped(self: object, *a: object, **k: object) -> object:
            calls[key] += 1
            return forward(self, *a, **k)

        monkeypatch.setattr(cls, "forward", wrapped)

    counting(ControlNetModel, "controlnet")
    counting(PMAMBlock, "pmam")
    bundle, data = small
    result = train(stage=stage, data=data, bundle=bundle, out=tmp_path, config=_cfg(steps=2), device="cpu")
    micro_batches = 2 * 2  # steps x grad_accum
    if stage == 1:
        assert calls == {"controlnet": 0, "pmam": 0}
    else:
        blocks = len(MTColorModules.load(bundle / MODULES_FILE).pmam.blocks)
        assert calls["controlnet"] == micro_batches and calls["pmam"] == micro_batches * blocks
    monkeypatch.undo()
    new = load_bundle(result.bundle)  # hashes verified
    old = read_manifest(bundle)
    assert new.revision == f"{old.revision}+s{stage}-2" and new.sources["training"][0]["stage"] == stage
    changed = {rel for rel in new.files if new.files[rel] != old.files.get(rel)}
    assert MODULES_FILE in changed
    assert any(rel.startswith("controlnet/") for rel in changed) == (stage == 2)
    assert not any(rel.startswith(("unet/", "vae/", "text_encoder/")) for rel in changed)
    before, after = (
        MTColorModules.load(bundle / MODULES_FILE),
        MTColorModules.load(result.bundle / MODULES_FILE),
    )
    moved = {
        name.split(".")[0]
        for name, p in after.state_dict().items()
        if not torch.equal(p, before.state_dict()[name])
    }
    assert moved == ({"guidance"} if stage == 1 else {"pmam"})
    engine = MTColorEngine.load(result.bundle, device="cpu")
    assert engine.info["revision"] == new.revision


@pytest.mark.slow
def test_cli_train_stage_1_then_2(small, tmp_path: Path) -> None:
    bundle, data = small
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_cfg(steps=2).model_dump(mode="json")))
    runner = CliRunner()
    one = runner.invoke(
        app,
        [
            "train",
            "--stage",
            "1",
            "--data",
            str(data),
            "--bundle",
            str(bundle),
            "--out",
            str(tmp_path / "s1"),
            "--config",
            str(config),
            "--device",
            "cpu",
        ],
    )
    assert one.exit_code == 0, one.output
    assert "stage 1: 2 steps" in one.output
    two = runner.invoke(
        app,
        [
            "train",
            "--stage",
            "2",
            "--data",
            str(data),
            "--bundle",
            str(tmp_path / "s1" / "bundle"),
            "--out",
            str(tmp_path / "s2"),
            "--config",
            str(config),
            "--device",
            "cpu",
            "--steps",
            "1",
            "--controlnet-init",
            "unet",
        ],
    )
    assert two.exit_code == 0, two.output
    trained = load_bundle(tmp_path / "s2" / "bundle")
    assert trained.revision.endswith("+s1-2+s2-1")
    assert trained.sources["training"][-1]["config"]["controlnet_init"] == "unet"
    bad = runner.invoke(
        app,
        [
            "train",
            "--stage",
            "1",
            "--data",
            str(tmp_path / "nodata"),
            "--bundle",
            str(bundle),
            "--out",
            str(tmp_path / "s3"),
            "--device",
            "cpu",
        ],
    )
    assert bad.exit_code == 2 and "dataset folder not found" in bad.output
