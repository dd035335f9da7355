"""How stage 1 starts: branch copies from the UNet it trains beside, caption dropout, no steps lost to eps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.model.bundle import load_bundle, save_bundle
from mtcolor_batch.model.denoiser import MTColorModules
from mtcolor_batch.model.registry import MODULES_FILE
from mtcolor_batch.testing.synthetic import TruthFinder, write_shapes_folder
from mtcolor_batch.train import trainer
from mtcolor_batch.train.config import TrainConfig, load_train_config
from mtcolor_batch.train.dataset import build_dataset
from mtcolor_batch.train.trainer import drop_captions, load_components, start_branches_from_unet, train


@pytest.fixture(scope="module")
def small(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle without perception, 8-photo shapes dataset with colour texts)."""
    root = tmp_path_factory.mktemp("train-stage1")
    bundle = root / "bundle"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("sam", "detector", "mtcolor.json"))
    save_bundle(bundle, name="tiny-random", revision="seed-0", tiny=True)
    truth = write_shapes_folder(root / "photos", 8, size=32, seed=5)
    build_dataset(root / "photos", root / "data", finder=TruthFinder(truth, ("red", "royal blue")))
    return bundle, root / "data"


def _cfg(**kw: object) -> TrainConfig:
    base = dict(
        steps=2,
        batch_size=2,
        grad_accum=2,
        resolution=32,
        checkpoint_every=100,
        max_instances=2,
        num_workers=0,
        log_every=100,
        seed=3,
    )
    base.update(kw)
    return load_train_config(None, base)


def _copied(modules: MTColorModules) -> dict[str, torch.Tensor]:
    names = modules.guidance.copied_parameter_names()
    return {n: p.detach().clone() for n, p in modules.guidance.named_parameters() if n in names}


def _unet_attention(unet: torch.nn.Module, modules: MTColorModules) -> dict[str, torch.Tensor]:
    """The UNet's own self-attention weights under the branch parameter names they are copied to."""
    out = {}
    for name in modules.guidance.layer_dims:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        key = f"layers.{name.removesuffix('.processor').replace('.', '_')}"
        for mine, theirs in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v)):
            out[f"{key}.{mine}.weight"] = theirs.weight.detach().clone()
        out[f"{key}.to_out.weight"] = attn.to_out[0].weight.detach().clone()
        out[f"{key}.to_out.bias"] = attn.to_out[0].bias.detach().clone()
    return out


@pytest.mark.slow
def test_stage_1_copies_the_branch_projections_from_the_unet_it_trains_beside(small, tmp_path: Path) -> None:
    """A bundle whose UNet changed after its modules were written (a fine-tuned or replaced UNet, or
    the learning test's stage 0): stage 1 starts its branches from the UNet as it is now."""
    from diffusers import UNet2DConditionModel

    source, data = small
    bundle = tmp_path / "bundle"
    shutil.copytree(source, bundle)
    unet = UNet2DConditionModel.from_pretrained(bundle / "unet", use_safetensors=True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if ".attn1." in name:
                param.add_(0.2 * torch.randn(param.shape, generator=gen))
    unet.save_pretrained(bundle / "unet", safe_serialization=True)
    save_bundle(bundle, name="tiny-random", revision="seed-0+unet-tuned", tiny=True)
    stale = MTColorModules.load(bundle / MODULES_FILE)
    now = _unet_attention(unet, stale)
    assert not any(torch.equal(now[n], p) for n, p in _copied(stale).items())  # the copies are stale

    # projection_lr_scale 0: the copies get lr 0 (so no weight decay): the bundle shows where they started.
    result = train(
        stage=1,
        data=data,
        bundle=bundle,
        out=tmp_path / "s1",
        config=_cfg(projection_lr_scale=0.0),
        device="cpu",
    )
    trained = MTColorModules.load(result.bundle / MODULES_FILE)
    started = _copied(trained)
    assert started.keys() == now.keys()
    assert all(torch.equal(started[n], now[n]) for n in now)
    assert any(layer.gate.any() for layer in trained.guidance.layers.values())
    assert load_bundle(result.bundle).sources["training"][-1]["branches_copied_from_unet"] is True

    # Trained guidance (a gate moved) keeps its own projections: they are part of what was learned.
    parts = load_components(result.bundle, torch.device("cpu"))
    before = _copied(parts.modules)
    with torch.no_grad():
        for name, param in parts.unet.named_parameters():
            if ".attn1." in name:
                param.mul_(2.0)
    assert start_branches_from_unet(parts) is False
    assert all(torch.equal(before[n], p) for n, p in _copied(parts.modules).items())


def test_caption_dropout_rate_follows_the_seeded_generator() -> None:
    cfg = load_train_config(None, {"caption_dropout": 0.3})
    n = 20000
    texts = [f"a colour photograph, with a red square {k}" for k in range(n)]
    keep = torch.ones(n, dtype=torch.bool)
    keep[::4] = False
    texts = [t if bool(k) else "" for t, k in zip(texts, keep, strict=True)]
    out = drop_captions(texts, keep, torch.Generator().manual_seed(11), cfg)
    expected = torch.rand(n, generator=torch.Generator().manual_seed(11)) < 0.3
    dropped = torch.tensor([o == cfg.caption_dropout_prompt for o in out])
    assert torch.equal(dropped, expected & keep)  # one draw per sample, in order, from the generator
    assert abs(float(dropped[keep].float().mean()) - 0.3) < 0.015  # 5 binomial sd at n = 15000
    assert all(o == "" for o, k in zip(out, keep, strict=True) if not k)  # null stays null
    assert all(o == t for o, t, d in zip(out, texts, dropped, strict=True) if not d)
    none = drop_captions(
        texts, keep, torch.Generator().manual_seed(11), load_train_config(None, {"caption_dropout": 0.0})
    )
    assert none == texts


@pytest.mark.slow
def test_caption_dropout_is_on_by_default_colour_free_and_recorded(
    small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = load_train_config()
    assert shipped.caption_dropout == 0.5 and shipped.caption_dropout_prompt == "a colour photograph"
    with pytest.raises(UserError, match="names a colour"):
        load_train_config(None, {"caption_dropout_prompt": "a red photograph"})
    seen: list[str] = []
    text = trainer.FrozenCache.text

    def recording(self: trainer.FrozenCache, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        seen.extend(texts)
        return text(self, texts)

    monkeypatch.setattr(trainer.FrozenCache, "text", recording)
    bundle, data = small
    cfg = _cfg(steps=4, caption_dropout=0.5, caption_dropout_prompt="an old photograph")
    result = train(stage=1, data=data, bundle=bundle, out=tmp_path / "s1", config=cfg, device="cpu")
    assert "an old photograph" in seen
    record = load_bundle(result.bundle).sources["training"][-1]
    assert record["config"]["caption_dropout"] == 0.5
    assert record["config"]["caption_dropout_prompt"] == "an old photograph"
    seen.clear()
    train(stage=2, data=data, bundle=bundle, out=tmp_path / "s2", config=cfg, device="cpu")
    assert seen and "an old photograph" not in seen  # stage 2 keeps its captions


def test_text_path_takes_full_adam_steps_from_its_first_gradient(small, tmp_path: Path) -> None:
    """Shipped profile (lr 5e-5, 500 warm-up steps): behind the zero gates the text path's first
    gradients are tiny (proportional to tanh(gate) ~ lr/500); Adam must still take its full step.

    Step 1 moves only the gates (everything behind them has exactly zero gradient); step 2 is the
    text path's first gradient, and Adam's first step is |m_hat / sqrt(v_hat)| = 0.744 x lr there when
    |g| >> eps. With eps above |g| it is a fraction |g| / eps of that.
    """
    bundle, data = small
    cfg = _cfg(steps=2)  # the shipped lr, warm-up, weight decay, clipping and eps
    assert (cfg.lr, cfg.warmup_steps) == (5e-5, 500)
    result = train(stage=1, data=data, bundle=bundle, out=tmp_path / "s1", config=cfg, device="cpu")
    before = MTColorModules.load(bundle / MODULES_FILE).guidance
    after = MTColorModules.load(result.bundle / MODULES_FILE).guidance
    lr2 = cfg.lr * 2 / cfg.warmup_steps
    mlp = torch.cat(
        [
            (a - b).abs().flatten()
            for a, b in zip(after.mlp.parameters(), before.mlp.parameters(), strict=True)
        ]
    )
    moved = mlp[mlp > 0]
    print(f"text path (token MLP) step-2 update: median {float(moved.median().detach()):.3e}, lr_2 {lr2:.1e}")
    assert moved.numel() > 0.9 * mlp.numel()
    assert float(moved.median().detach()) > 0.5 * lr2
