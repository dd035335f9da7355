"""Accelerators: a distilled LoRA in the bundle, fused once per engine, recorded and verified.

The LoRAs here are random, built locally in the published files' key format (kohya-style keys,
``mtcolor_batch/testing/tiny_lora.py``); no weights are downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.core.config import load_profile
from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.model import accelerators as acc
from mtcolor_batch.model.bundle import read_manifest, verify_problems
from mtcolor_batch.testing.tiny_lora import kohya_key, lora_targets, random_kohya_lora, write_kohya_lora

HUB = Path(__file__).parent / "fixtures" / "hub"
SD15_UNET = HUB / "stable-diffusion-v1-5" / "stable-diffusion-v1-5" / "unet"


@pytest.fixture()
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dest)
    return dest


def _unet(bundle: Path):  # noqa: ANN202
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(bundle / "unet")


def _lora(bundle: Path, tmp_path: Path, **kw: object) -> Path:
    return write_kohya_lora(tmp_path / "lora.safetensors", random_kohya_lora(_unet(bundle), std=0.1, **kw))


@pytest.mark.slow
def test_lora_loads_fuses_and_changes_the_unet(bundle: Path, tmp_path: Path) -> None:
    """Added to the bundle, loaded with diffusers' loader and fused once: every adapted layer's weight
    moves, the layers stay plain torch layers, the outputs change, and the record names the file."""
    from mtcolor_batch.model.engine import EngineOptions, MTColorEngine

    added = acc.add_accelerator(bundle, _lora(bundle, tmp_path), "lcm", acc.KNOWN["lcm"].recipe)
    assert added.file == "accelerators/lcm.safetensors" and not verify_problems(read_manifest(bundle))
    plain = MTColorEngine.load(bundle, device="cpu")
    fused = MTColorEngine.load(bundle, device="cpu", options=EngineOptions(accelerator="lcm"))
    before, after = plain.unet.state_dict(), fused.unet.state_dict()
    assert set(before) == set(after)  # no adapter layers left behind
    targets = lora_targets(plain.unet)
    moved = {k.rsplit(".", 1)[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == set(targets)
    assert all(
        type(m).__module__.startswith("torch.nn") for n, m in fused.unet.named_modules() if n in targets
    )
    assert fused.info["accelerator"]["sha256"] == added.sha256 and plain.info["accelerator"] is None
    from mtcolor_batch.stages.plan import make_plan

    plan = make_plan((64, 64), load_profile("default").sampling.model_copy(update={"steps": 2}), seed=1)
    luma = np.linspace(0.1, 0.9, 64 * 64, dtype=np.float32).reshape(64, 64)
    assert not np.array_equal(plain.colorize(luma, [], plan), fused.colorize(luma, [], plan))


def test_misfit_lora_is_refused_naming_the_first_bad_key(bundle: Path, tmp_path: Path) -> None:
    state = random_kohya_lora(_unet(bundle), rank=2)
    bad = kohya_key("down_blocks.7.attentions.0.proj_in")
    state[f"{bad}.lora_down.weight"] = torch.zeros(2, 8)
    state[f"{bad}.lora_up.weight"] = torch.zeros(8, 2)
    path = write_kohya_lora(tmp_path / "sdxl_like.safetensors", state)
    with pytest.raises(ModelError) as err:
        acc.add_accelerator(bundle, path, "odd", acc.Recipe("lcm", 4, 1.0))
    message = err.value.one_line()
    assert "unet.down_blocks.7.attentions.0.proj_in.lora_A.weight" in message and "\n" not in message
    assert "odd" not in acc.bundle_accelerators(read_manifest(bundle))
    assert not (bundle / "accelerators" / "odd.safetensors").exists()


def test_real_lora_layout_fits_the_sd15_unet_on_meta() -> None:
    """The published SD 1.5 accelerators' layout, checked on an SD 1.5-size UNet built on the meta
    device: rank 64 over the 278 layers kohya-keyed here, in fp16 with an alpha per layer, is a
    safetensors file of exactly 134,621,524 bytes, the size the hub lists for PCM's sd15 LoRAs
    (tests/fixtures/hub/SOURCES.md); LCM-LoRA and TCD list the same 135 MB. Every key, as diffusers
    converts it, names a layer of that UNet."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_UNET))
    modules = dict(unet.named_modules())
    targets = lora_targets(unet)
    assert len(targets) == 278
    state: dict[str, torch.Tensor] = {}
    for name in targets:
        m = modules[name]
        conv = isinstance(m, torch.nn.Conv2d)
        down = (64, m.in_channels, *m.kernel_size) if conv else (64, m.in_features)
        up = (m.out_channels, 64, 1, 1) if conv else (m.out_features, 64)
        key = kohya_key(name)
        state[f"{key}.lora_down.weight"] = torch.zeros(down, dtype=torch.float16)
        state[f"{key}.lora_up.weight"] = torch.zeros(up, dtype=torch.float16)
        state[f"{key}.alpha"] = torch.tensor(64.0, dtype=torch.float16)
    assert len(save(state)) == 134_621_524
    converted, _ = acc._loader().lora_state_dict({k: v[..., :1] if v.dim() else v for k, v in state.items()})
    assert acc.first_misfit(converted, set(modules), set()) is None


def test_models_accelerator_add_list_and_verify(bundle: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    lora = _lora(bundle, tmp_path)
    added = runner.invoke(app, ["models", "accelerator", "add", str(bundle), str(lora), "--name", "tcd"])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["models", "accelerator", "list", str(bundle)])
    assert "tcd" in listed.output and "local file" in listed.output
    manifest = json.loads((bundle / "mtcolor.json").read_text())
    entry = manifest["sources"]["accelerators"]["tcd"]
    assert entry["recipe"] == {"scheduler": "tcd", "steps": 4, "guidance": 1.0}
    assert runner.invoke(app, ["models", "verify", str(bundle)]).exit_code == 0
    (bundle / "accelerators" / "tcd.safetensors").write_bytes(lora.read_bytes()[:-8] + b"12345678")
    bad = runner.invoke(app, ["models", "verify", str(bundle)])
    assert bad.exit_code == 1 and "accelerators/tcd.safetensors" in bad.output
    custom = runner.invoke(app, ["models", "accelerator", "add", str(bundle), str(lora), "--name", "mine"])
    assert custom.exit_code == 2 and "--scheduler" in custom.output


def test_pull_accelerator_pins_revision_and_checks_the_digest(bundle: Path, tmp_path: Path) -> None:
    """`models pull --accelerator` fetches the pinned file (a stand-in hub here) and records it."""
    lora = _lora(bundle, tmp_path)
    calls: list[tuple[str, str, str]] = []

    def download(repo_id: str, filename: str, *, revision: str, cache_dir: str) -> str:
        calls.append((repo_id, filename, revision))
        out = Path(cache_dir) / "snapshots" / revision / filename
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lora, out)
        return str(out)

    got = acc.pull_accelerator(bundle, "pcm-4", download=download, cache_dir=tmp_path / "hub")
    known = acc.KNOWN["pcm-4"]
    assert calls == [(known.repo_id, known.filename, known.revision)]
    assert got.revision == known.revision and got.recipe == known.recipe
    with pytest.raises(ModelError, match="pinned file"):  # Hyper-SD's LFS digest is pinned
        acc.pull_accelerator(bundle, "hyper-sd-8", download=download, cache_dir=tmp_path / "hub")


def test_pinned_files_are_in_the_recorded_hub_listings() -> None:
    """Each known accelerator's repo, commit and file are those of a listing in tests/fixtures/hub."""
    for known in acc.KNOWN.values():
        listing = json.loads((HUB / known.repo_id / "files.json").read_text())
        assert listing["commit"] == known.revision and known.filename in listing["files"], known.name
        assert len(known.revision) == 40


def test_recommendations_apply_unless_the_user_set_them(bundle: Path, tmp_path: Path) -> None:
    acc.add_accelerator(bundle, _lora(bundle, tmp_path), "hyper-sd-8", acc.KNOWN["hyper-sd-8"].recipe)
    prof, note = acc.apply_accelerator(
        load_profile("default", {"sampling.accelerator": "hyper-sd-8"}), bundle, set()
    )
    s = prof.sampling
    assert (s.accelerator, s.scheduler, s.steps, s.guidance_scale, note) == (
        "hyper-sd-8",
        "ddim-trailing",
        8,
        1.0,
        None,
    )
    mine = {"sampling.accelerator": "hyper-sd-8", "sampling.steps": 6}
    prof, _ = acc.apply_accelerator(load_profile("default", mine), bundle, set(mine))
    assert prof.sampling.steps == 6 and prof.sampling.scheduler == "ddim-trailing"
    cpu, _ = acc.apply_accelerator(load_profile("cpu"), bundle, set())
    assert (cpu.sampling.accelerator, cpu.sampling.steps, cpu.sampling.guidance_scale) == (
        "hyper-sd-8",
        4,
        1.0,
    )
    with pytest.raises(ModelError, match="accelerator 'missing' is not in the bundle"):
        acc.apply_accelerator(load_profile("default", {"sampling.accelerator": "missing"}), bundle, set())


def test_auto_without_an_accelerator_says_so_once(bundle: Path) -> None:
    prof, note = acc.apply_accelerator(load_profile("fast"), bundle, set())
    assert prof.sampling.accelerator == "none"
    assert (prof.sampling.scheduler, prof.sampling.steps) == ("dpmpp-2m", 12)
    assert note is not None and "dpmpp-2m at 12 steps" in note
    cpu, note = acc.apply_accelerator(load_profile("cpu"), bundle, set())
    assert (cpu.sampling.scheduler, cpu.sampling.steps, cpu.sampling.working_long_side) == (
        "dpmpp-2m",
        8,
        512,
    )


def test_the_editor_previews_with_the_accelerator_run_would_use(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hints edit --profile cpu` resolves `accelerator: auto` against the bundle as `run` does, so
    "Colorize this one" samples as the night run will (it ran `auto` as no accelerator before)."""
    from PIL import Image

    import mtcolor_batch.editor.server as server

    acc.add_accelerator(bundle, _lora(bundle, tmp_path), "lcm", acc.KNOWN["lcm"].recipe)
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.new("L", (32, 24), 128).save(scans / "a.png")
    seen: list[object] = []
    monkeypatch.setattr(server, "serve", lambda session, *a, **k: seen.append(session.profile))
    runner = CliRunner(env={"MTCOLOR_HOME": str(tmp_path / "home")})
    args = ["hints", "edit", str(scans), "--model", str(bundle), "--no-browser", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--profile", "cpu"])
    assert result.exit_code == 0, result.output
    (profile,) = seen
    ran, note = acc.load_run_profile("cpu", {"device": "cpu"}, bundle)  # what `run --profile cpu` uses
    assert note is None and profile.sampling == ran.sampling  # type: ignore[attr-defined]
    assert (ran.sampling.accelerator, ran.sampling.scheduler, ran.sampling.steps) == ("lcm", "lcm", 4)
