"""Model bundles: round trip, verification errors, safetensors-only, offline pull, CLI."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.model import bundle as bundle_mod
from mtcolor_batch.model.bundle import load_bundle, read_manifest, save_bundle, verify_problems
from mtcolor_batch.model.registry import COMPONENTS, MANIFEST_FILE, MODULES_FILE, REQUIRED_FOLDERS


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(tiny_bundle, dest)
    return dest


def test_tiny_bundle_layout_and_manifest(tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    assert b.tiny is True
    for folder in REQUIRED_FOLDERS:
        assert (tiny_bundle / folder).is_dir()
    assert (tiny_bundle / MODULES_FILE).is_file()
    assert b.has_perception  # testing.tiny_perception writes it
    on_disk = sorted(p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file())
    assert sorted(b.files) == [r for r in on_disk if r != MANIFEST_FILE]
    weights = [r for r in b.files if r.endswith(".safetensors")]
    assert len(weights) >= 6 and not [r for r in on_disk if r.endswith((".bin", ".pt", ".ckpt"))]
    data = json.loads((tiny_bundle / MANIFEST_FILE).read_text())
    assert data["weights_sha256"] == b.weights_sha256 and data["tiny"] is True


def test_round_trip_resave_is_identical(bundle_copy: Path) -> None:
    before = read_manifest(bundle_copy)
    (bundle_copy / MANIFEST_FILE).unlink()
    again = save_bundle(
        bundle_copy, name=before.name, revision=before.revision, tiny=True, sources=before.sources
    )
    assert again.files == before.files
    assert again.weights_sha256 == before.weights_sha256
    assert load_bundle(bundle_copy).components == before.components


def test_hash_mismatch_names_the_file(bundle_copy: Path) -> None:
    target = bundle_copy / "unet" / "diffusion_pytorch_model.safetensors"
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(ModelError) as info:
        load_bundle(bundle_copy)
    line = str(info.value)
    assert "\n" not in line
    assert "unet/diffusion_pytorch_model.safetensors" in line and "sha256" in line and "re-pull" in line


def test_missing_component_and_missing_file(bundle_copy: Path) -> None:
    (bundle_copy / "vae" / "config.json").unlink()
    with pytest.raises(ModelError, match=r"vae/config.json: file listed in mtcolor.json is missing"):
        load_bundle(bundle_copy)
    shutil.rmtree(bundle_copy / "controlnet")
    problems = verify_problems(read_manifest(bundle_copy))
    assert any("controlnet: component folder is missing" in p for p in problems)
    with pytest.raises(ModelError, match="controlnet"):
        load_bundle(bundle_copy)
    with pytest.raises(ModelError, match="controlnet"):
        load_bundle(bundle_copy, verify=False)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="mtcolor.json is missing"):
        load_bundle(tmp_path)
    with pytest.raises(ModelError, match="not found"):
        load_bundle(tmp_path / "nope")


def test_pickle_weights_refused(bundle_copy: Path) -> None:
    (bundle_copy / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not safe")
    with pytest.raises(ModelError, match="safetensors only"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST_FILE).unlink()
    with pytest.raises(ModelError, match="safetensors only"):
        save_bundle(bundle_copy, name="x", revision="y")


def _fake_hub(tiny_bundle: Path, root: Path) -> dict[str, Path]:
    """Local stand-ins for the four hub repos, in the hub's own layouts (base with fp16 variants)."""
    repos = {c.key: root / c.repo_id.replace("/", "--") / ("a" * 40) for c in COMPONENTS}
    base = repos["base"]
    for folder in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(tiny_bundle / folder, base / folder)
    # The hub's base repo ships fp16 variants beside fp32 files, and pickles; only one set may land.
    for folder, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model")):
        shutil.copy(base / folder / f"{name}.safetensors", base / folder / f"{name}.fp16.safetensors")
        (base / folder / f"{name}.safetensors").write_bytes(b"fp32 weights that must not be chosen")
        (base / folder / f"{name}.bin").write_bytes(b"pickle")
        (base / folder / f"{name}.non_ema.safetensors").write_bytes(b"unused copy")
    shutil.copytree(tiny_bundle / "controlnet", repos["controlnet"])
    shutil.copytree(tiny_bundle / "sam", repos["sam"])
    shutil.copytree(tiny_bundle / "detector", repos["detector"])
    return repos


def test_pull_offline_with_fake_hub(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repos = _fake_hub(tiny_bundle, tmp_path / "hub")
    calls: list[tuple[str, str, list[str]]] = []

    def fake_snapshot_download(
        repo_id: str, *, revision: str, allow_patterns: list[str], ignore_patterns: list[str], cache_dir: str
    ) -> str:
        calls.append((repo_id, revision, list(allow_patterns)))
        assert "*.bin" in ignore_patterns and "*.non_ema.*" in ignore_patterns
        key = next(c.key for c in COMPONENTS if c.repo_id == repo_id)
        src = repos[key]
        out = Path(cache_dir) / key / src.name
        for f in src.rglob("*"):
            rel = f.relative_to(src).as_posix()
            wanted = any(fnmatch.fnmatch(rel, p) for p in allow_patterns)
            if f.is_file() and wanted and not any(fnmatch.fnmatch(rel, p) for p in ignore_patterns):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, out / rel)
        return str(out)

    monkeypatch.setattr(bundle_mod, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("MTCOLOR_HOME", str(tmp_path / "home"))
    dest = tmp_path / "home" / "bundles" / "pulled"
    pulled = bundle_mod.pull_bundle(dest, revisions={"controlnet": "v2"})
    b = load_bundle(dest)
    assert not b.tiny and b.has_perception and pulled.weights_sha256 == b.weights_sha256
    assert b.sources["base"]["commit"] == "a" * 40 and b.sources["controlnet"]["revision"] == "v2"
    unet_w = (dest / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert unet_w == (tiny_bundle / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert not list(dest.rglob("*.bin")) and not list(dest.rglob("*.fp16.safetensors"))
    assert any("unet/*.fp16.safetensors" in c[2] for c in calls)
    assert not any(p.endswith(".bin") for c in calls for p in c[2])
    # --variant none takes the plain files, still never the non-EMA copy or a pickle.
    plain = bundle_mod.pull_bundle(tmp_path / "plain", variant=None, perception=False)
    assert (plain.path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes().startswith(b"fp32")
    assert sorted(p.name for p in (plain.path / "unet").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert not plain.has_perception
    # The pulled bundle runs.
    from mtcolor_batch.model.engine import MTColorEngine

    engine = MTColorEngine.load(dest, device="cpu")
    assert engine.info["tiny"] is False and engine.info["weights_sha256"] == b.weights_sha256
    # `models list` sees it in the cache and verifies it.
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "pulled" in result.output and "yes" in result.output


def test_pull_without_network_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*_a: object, **_k: object) -> str:
        raise OSError("outgoing traffic has been disabled")

    monkeypatch.setattr(bundle_mod, "snapshot_download", offline)
    with pytest.raises(ModelError, match="needs the network"):
        bundle_mod.pull_bundle(tmp_path / "b")
    assert not [p for p in tmp_path.iterdir() if p.name != "b"]  # no staging folder left behind


def test_cli_verify_and_tiny(bundle_copy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["models", "verify", str(bundle_copy)])
    assert ok.exit_code == 0 and "verified" in ok.output
    (bundle_copy / "scheduler" / "scheduler_config.json").write_text("{}")
    bad = runner.invoke(app, ["models", "verify", str(bundle_copy)])
    assert bad.exit_code == 1 and "scheduler/scheduler_config.json" in bad.output
    exists = runner.invoke(app, ["models", "tiny", str(bundle_copy)])
    assert exists.exit_code == 2 and "already exists" in exists.output  # a setup error
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    busy = runner.invoke(app, ["models", "tiny", str(tmp_path / "notes")])
    assert busy.exit_code == 2 and busy.output.count("\n") == 1 and "not empty" in busy.output, busy.output


def test_engine_info_marks_tiny(tiny_bundle: Path) -> None:
    from mtcolor_batch.model.engine import MTColorEngine

    info = MTColorEngine.load(tiny_bundle, device="cpu").info
    assert info["tiny"] is True and info["device"] == "cpu" and info["dtype"] == "float32"
    assert len(info["weights_sha256"]) == 64 and info["bundle"] == "tiny-random"
    assert np.isfinite(info["sources"]["seed"])


def test_device_and_dtype_choice() -> None:
    from mtcolor_batch.core.device import resolve_device, resolve_dtype

    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(ModelError, match="float16 is not supported on CPU"):
        resolve_dtype("float16", cpu)
    with pytest.raises(ModelError, match="unknown dtype"):
        resolve_dtype("fp8", cpu)
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("toaster")


def test_bundle_with_old_format_modules_is_refused(bundle_copy: Path) -> None:
    """A bundle whose modules predate the instance branch's own weights: verify and load refuse it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from mtcolor_batch.model.engine import MTColorEngine

    path = bundle_copy / MODULES_FILE
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["mtcolor_modules"])
    config["format"] = 1
    save_file(load_file(str(path)), str(path), metadata={"mtcolor_modules": json.dumps(config)})
    manifest = read_manifest(bundle_copy)
    save_bundle(bundle_copy, name=manifest.name, revision=manifest.revision, tiny=True)
    bad = CliRunner().invoke(app, ["models", "verify", str(bundle_copy)])
    assert bad.exit_code == 1 and "format 1" in bad.output and "mtcolor-batch train" in bad.output
    with pytest.raises(ModelError, match="retrain") as err:
        MTColorEngine.load(bundle_copy, device="cpu")
    assert "\n" not in err.value.one_line()
