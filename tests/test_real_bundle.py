"""The real default bundle, proven without downloading it.

``tests/fixtures/hub`` holds the public repos' own small files (configs, tokenizer settings, file
listings with the sizes the hub shows; sources in ``SOURCES.md``). :class:`FixtureHub` serves that
tree the way the hub does: ``snapshot_download`` filters the listing with huggingface_hub's own
``filter_repo_objects`` (the function the real one uses for allow/ignore patterns), resolves
``main`` or the pinned commit and nothing else, and ``model_info(files_metadata=True)`` /
``hf_hub_download`` answer the dry run. Weight files are placeholders (a one-element safetensors
naming the hub file it stands for): every shape is checked instead on models built on the ``meta``
device from the real configs, and their parameter counts are checked against the weight sizes
the hub lists.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.model import bundle as bundle_mod
from mtcolor_batch.model import pull_plan as pull_plan_mod
from mtcolor_batch.model.bundle import load_bundle
from mtcolor_batch.model.pull_plan import (
    config_problems,
    download_patterns,
    modules_size,
    plan_pull,
    select_component_files,
)
from mtcolor_batch.model.registry import COMPONENTS, MANIFEST_FILE, MODULES_FILE, component

FIXTURES = Path(__file__).parent / "fixtures" / "hub"
SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CONTROLNET = "latentcat/control_v1p_sd15_brightness"
SAM = "facebook/sam-vit-base"
OWL = "google/owlv2-base-patch16-ensemble"
_UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def displayed_bytes(text: str | None) -> int | None:
    """'1.72 GB' -> 1_720_000_000 (the hub shows decimal units, 3 significant digits)."""
    if text is None:
        return None
    value, unit = text.split()
    return round(float(value) * _UNITS[unit])


def derived_controlnet_config() -> bytes:
    """The ControlNet config diffusers derives from SD 1.5's UNet (ControlNetModel.from_unet).

    latentcat/control_v1p_sd15_brightness's own config.json was not found in any public copy
    (SOURCES.md), so the fixture hub serves this derivation in its place, labelled as such.
    """
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(FIXTURES / SD / "unet"))
        controlnet = ControlNetModel.from_unet(unet)
    return controlnet.to_json_string().encode()


def placeholder_weights(repo_id: str, path: str) -> bytes:
    """A valid one-element safetensors whose metadata names the hub file it stands in for."""
    from safetensors.torch import save

    return save({"placeholder": torch.zeros(1)}, metadata={"fixture_placeholder": f"{repo_id}/{path}"})


def placeholder_source(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return str((f.metadata() or {})["fixture_placeholder"])


class FixtureHub:
    """The four public repos as the hub would serve them, from ``tests/fixtures/hub``."""

    def __init__(self, root: Path = FIXTURES, overrides: dict[tuple[str, str], bytes] | None = None) -> None:
        self.root = root
        self.listings = {
            data["repo_id"]: data for data in (json.loads(p.read_text()) for p in root.rglob("files.json"))
        }
        self.overrides = dict(overrides or {})
        self.served: list[tuple[str, str]] = []
        self.snapshot_calls: list[tuple[str, str, list[str], list[str]]] = []
        self.info_calls: list[tuple[str, str]] = []

    def commit(self, repo_id: str, revision: str) -> str:
        """``main`` or the listing's commit resolve; any other revision is not found, as on the hub."""
        known = self.listings[repo_id]["commit"]
        if revision == "main":
            return known or "main"
        if revision != known:
            raise FileNotFoundError(f"Revision Not Found for {repo_id}@{revision}")
        return revision

    def content(self, repo_id: str, path: str) -> bytes:
        if (repo_id, path) in self.overrides:
            return self.overrides[repo_id, path]
        local = self.root / repo_id / path
        if local.is_file() and path != "files.json":
            return local.read_bytes()
        if repo_id == CONTROLNET and path == "config.json":
            return derived_controlnet_config()
        if path.endswith(".safetensors"):
            return placeholder_weights(repo_id, path)
        return f"fixture placeholder for {repo_id}/{path} (content not found publicly)".encode()

    def size(self, repo_id: str, path: str) -> int | None:
        listing = self.listings[repo_id]
        local = self.root / repo_id / path
        if local.is_file() and path not in listing.get("substitutes", {}):
            return local.stat().st_size
        return displayed_bytes(listing["files"][path])

    def _write(self, repo_id: str, path: str, base: Path) -> Path:
        self.served.append((repo_id, path))
        out = base / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(self.content(repo_id, path))
        return out

    def _snapshot_dir(self, cache_dir: str, repo_id: str, commit: str) -> Path:
        return Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit

    # -- the huggingface_hub calls the bundle code makes ---------------------------------------
    def snapshot_download(
        self,
        repo_id: str,
        *,
        revision: str,
        allow_patterns: list[str],
        ignore_patterns: list[str],
        cache_dir: str,
    ) -> str:
        from huggingface_hub.utils import filter_repo_objects

        commit = self.commit(repo_id, revision)
        self.snapshot_calls.append((repo_id, revision, list(allow_patterns), list(ignore_patterns)))
        names = filter_repo_objects(
            list(self.listings[repo_id]["files"]),
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
        )
        base = self._snapshot_dir(cache_dir, repo_id, commit)
        base.mkdir(parents=True, exist_ok=True)
        for name in names:
            self._write(repo_id, name, base)
        return str(base)

    def model_info(self, repo_id: str, *, revision: str, files_metadata: bool = False) -> SimpleNamespace:
        from huggingface_hub.hf_api import RepoSibling

        commit = self.commit(repo_id, revision)
        self.info_calls.append((repo_id, revision))
        siblings = [
            RepoSibling(rfilename=name, size=self.size(repo_id, name) if files_metadata else None)
            for name in self.listings[repo_id]["files"]
        ]
        return SimpleNamespace(id=repo_id, sha=None if commit == "main" else commit, siblings=siblings)

    def hf_hub_download(self, repo_id: str, filename: str, *, revision: str, cache_dir: str) -> str:
        commit = self.commit(repo_id, revision)
        return str(self._write(repo_id, filename, self._snapshot_dir(cache_dir, repo_id, commit)))

    def install(self, mp: pytest.MonkeyPatch) -> None:
        """Stand in for the three hub calls where the bundle code looks them up."""
        mp.setattr(bundle_mod, "snapshot_download", self.snapshot_download)
        mp.setattr(pull_plan_mod, "HfApi", lambda: SimpleNamespace(model_info=self.model_info))
        mp.setattr(pull_plan_mod, "hf_hub_download", self.hf_hub_download)


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, FixtureHub]]:
    """`mtcolor-batch models pull` of the default bundle from the fixture hub, through the CLI."""
    home = tmp_path_factory.mktemp("home")
    hub = FixtureHub()
    with pytest.MonkeyPatch.context() as mp:
        hub.install(mp)
        mp.setenv("MTCOLOR_HOME", str(home))
        result = CliRunner().invoke(app, ["models", "pull"])
        assert result.exit_code == 0, result.output
    yield home / "bundles" / "mtcolor-sd15", hub


def sd15_facts(bundle: Path) -> None:
    """What the real SD 1.5 configs say and everything downstream relies on (fails on a perturbed copy)."""
    from mtcolor_batch.model.engine import _load_scheduler
    from mtcolor_batch.testing.tiny_sd15 import sd15_scheduler

    unet = json.loads((bundle / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    assert unet["in_channels"] == 4 and unet["attention_head_dim"] == 8 and unet["layers_per_block"] == 2
    cls, config, name = _load_scheduler(bundle / "scheduler")
    assert name == "DDIMScheduler (from PNDMScheduler config)"
    ddim, ref = cls.from_config(config), sd15_scheduler()
    assert torch.equal(ddim.alphas_cumprod, ref.alphas_cumprod)
    ddim.set_timesteps(20)
    ref.set_timesteps(20)
    assert torch.equal(ddim.timesteps, ref.timesteps) and ddim.timesteps[0] == 951
    assert config["clip_sample"] is False and config["steps_offset"] == 1 and not config["set_alpha_to_one"]
    assert ddim.config.prediction_type == "epsilon" and ddim.final_alpha_cumprod == ref.final_alpha_cumprod


# ------------------------------------------------------------------------------------ fixtures
def test_fixture_files_have_the_sizes_the_hub_lists() -> None:
    """Each original fixture file is byte-for-byte the size the hub's listing shows for it."""
    checked = 0
    for listing_path in FIXTURES.rglob("files.json"):
        listing = json.loads(listing_path.read_text())
        repo = listing_path.parent
        for path, shown in listing["files"].items():
            local = repo / path
            if not local.is_file() or path in listing.get("substitutes", {}) or shown is None:
                continue
            size = local.stat().st_size
            value, unit = shown.split()
            if unit == "B":
                assert size == int(value), path
            else:
                assert f"{size / _UNITS[unit]:.3g}" == value, path
            checked += 1
        for path in listing.get("substitutes", {}):
            assert (repo / path).is_file(), f"substitute {path} listed but missing"
    assert checked == 13  # 8 SD 1.5 files, SAM preprocessor, 4 OWLv2 files


# -------------------------------------------------------------------------------------- pull
@pytest.mark.slow  # the module's CLI pull of the fixture hub costs about 5 s
def test_pull_takes_exactly_the_expected_files(pulled: tuple[Path, FixtureHub]) -> None:
    bundle, hub = pulled
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert files == [
        "controlnet/config.json",
        "controlnet/diffusion_pytorch_model.safetensors",
        "detector/added_tokens.json",
        "detector/config.json",
        "detector/merges.txt",
        "detector/model.safetensors",
        "detector/preprocessor_config.json",
        "detector/special_tokens_map.json",
        "detector/tokenizer_config.json",
        "detector/vocab.json",
        MANIFEST_FILE,
        MODULES_FILE,
        "sam/config.json",
        "sam/model.safetensors",
        "sam/preprocessor_config.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    # The fp16 variant of each base weight, stored under the plain name; nothing else was fetched.
    for folder, name in (
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ):
        got = placeholder_source(bundle / folder / f"{name}.safetensors")
        assert got == f"{SD}/{folder}/{name}.fp16.safetensors"
    weights = sorted(p for r, p in hub.served if p.endswith((".safetensors", ".bin", ".ckpt", ".h5")))
    assert weights == [
        "diffusion_pytorch_model.safetensors",
        "model.safetensors",
        "model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert not any(p.startswith(("safety_checker/", "feature_extractor/")) for _, p in hub.served)
    # Configs arrive byte-identical; the pins in the registry are what the hub was asked for.
    for rel, src in (
        ("unet/config.json", f"{SD}/unet/config.json"),
        ("scheduler/scheduler_config.json", f"{SD}/scheduler/scheduler_config.json"),
        ("sam/preprocessor_config.json", f"{SAM}/preprocessor_config.json"),
        ("detector/tokenizer_config.json", f"{OWL}/tokenizer_config.json"),
    ):
        assert (bundle / rel).read_bytes() == (FIXTURES / src).read_bytes(), rel
    b = load_bundle(bundle)
    assert not b.tiny and b.has_perception
    for key in ("base", "sam", "detector"):
        assert b.sources[key]["commit"] == component(key).revision and len(component(key).revision) == 40
    assert b.sources["controlnet"]["commit"] == "main"  # no public commit found for it
    assert {(r, rev) for r, rev, _, _ in hub.snapshot_calls} == {(c.repo_id, c.revision) for c in COMPONENTS}


def test_pull_without_variant_fetches_no_half_precision_copy(tmp_path: Path) -> None:
    """--variant none used to fetch model.fp16.safetensors beside model.safetensors (then drop it)."""
    hub = FixtureHub()
    base = component("base")
    names = list(hub.listings[SD]["files"])
    chosen = select_component_files(base, names, None)
    assert not [n for n in chosen if ".fp16." in n or n.endswith(".bin")]
    assert "unet/diffusion_pytorch_model.safetensors" in chosen and "text_encoder/model.safetensors" in chosen
    allow, ignore = download_patterns(base, None)
    snapshot = Path(
        hub.snapshot_download(
            SD, revision="main", allow_patterns=allow, ignore_patterns=ignore, cache_dir=str(tmp_path)
        )
    )
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.safetensors")) == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]


# ------------------------------------------------------------------------------------ shapes
@pytest.mark.slow
def test_real_configs_build_models_the_size_of_the_hub_weights(pulled: tuple[Path, FixtureHub]) -> None:
    """Meta-device models from the real configs have the parameter counts the listed weights hold."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        Owlv2Config,
        Owlv2ForObjectDetection,
        SamConfig,
        SamModel,
    )

    bundle, hub = pulled
    sizes = {(r, p): displayed_bytes(s) for r, lst in hub.listings.items() for p, s in lst["files"].items()}

    def params(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    def close(n_bytes: int, shown: int | None) -> bool:  # 3 significant digits on the hub's page
        return shown is not None and abs(n_bytes - shown) <= 0.005 * shown

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(bundle / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(bundle / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(bundle / "text_encoder"))
        controlnet = ControlNetModel.from_config(ControlNetModel.load_config(bundle / "controlnet"))
        sam = SamModel(SamConfig.from_pretrained(bundle / "sam"))
        owl = Owlv2ForObjectDetection(Owlv2Config.from_pretrained(bundle / "detector"))
        latents = torch.empty(1, 4, 64, 64)
        cond = controlnet.controlnet_cond_embedding(torch.empty(1, 3, 512, 512))
        decoded = vae.decode(latents).sample
        encoded = vae.encode(torch.empty(1, 3, 512, 512)).latent_dist.mean
        emb = sam.get_image_embeddings(torch.empty(1, 3, 1024, 1024))
    assert close(params(unet) * 2, sizes[SD, "unet/diffusion_pytorch_model.fp16.safetensors"])
    assert close(params(unet) * 4, sizes[SD, "unet/diffusion_pytorch_model.safetensors"])
    assert close(params(vae) * 2, sizes[SD, "vae/diffusion_pytorch_model.fp16.safetensors"])
    assert close(params(text) * 2, sizes[SD, "text_encoder/model.fp16.safetensors"])
    assert close(params(sam) * 4, sizes[SAM, "model.safetensors"])
    assert close(params(owl) * 4, sizes[OWL, "model.safetensors"])
    # The shape relations the sampler and MT-Color wiring rely on.
    assert tuple(cond.shape) == (1, 320, 64, 64)  # control image / 8 = latent size, UNet width
    assert tuple(decoded.shape) == (1, 3, 512, 512) and tuple(encoded.shape) == (1, 4, 64, 64)
    assert text.config.hidden_size == unet.config.cross_attention_dim == 768
    assert text.config.max_position_embeddings == 77
    assert vae.config.scaling_factor == 0.18215  # diffusers' default: SD 1.5's config does not set it
    assert tuple(emb.shape) == (1, 256, 64, 64)
    assert owl.config.vision_config.image_size == 960 and owl.config.vision_config.patch_size == 16
    assert owl.config.text_config.max_position_embeddings == 16


@pytest.mark.slow
def test_mtcolor_modules_fit_the_real_unet_and_controlnet(pulled: tuple[Path, FixtureHub]) -> None:
    """The pulled modules load, fit the real UNet/ControlNet, and a full denoiser call has the right shape."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from mtcolor_batch.model.denoiser import MTColorDenoiser, MTColorModules, RegionBatch

    bundle, _ = pulled
    modules = MTColorModules.load(bundle / MODULES_FILE)
    assert (bundle / MODULES_FILE).stat().st_size >= modules_size(bundle)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(bundle / "unet"))
        controlnet = ControlNetModel.from_config(ControlNetModel.load_config(bundle / "controlnet"))
    modules.check_compatible(unet, controlnet)
    assert modules.guidance.text_dim == 768 and len(modules.guidance.layer_dims) == 16
    assert modules.pmam.channels == [320] * 4 + [640] * 3 + [1280] * 6
    denoiser = MTColorDenoiser(unet, controlnet, modules.to("meta"), skip_zero_modules=False)
    masks = [np.zeros((512, 512), bool), np.zeros((512, 512), bool)]
    masks[0][:200], masks[1][300:] = True, True
    regions = RegionBatch.from_masks(masks, torch.zeros(2, 768), (64, 64))
    with torch.no_grad(), torch.device("meta"):
        noise = denoiser(
            torch.empty(1, 4, 64, 64),
            torch.tensor([951]),
            torch.empty(1, 77, 768),
            torch.empty(1, 3, 512, 512),
            regions,
        )
    assert tuple(noise.shape) == (1, 4, 64, 64)


@pytest.mark.slow  # the module's CLI pull of the fixture hub costs about 5 s
def test_sd15_scheduler_tokenizer_and_text_width(pulled: tuple[Path, FixtureHub]) -> None:
    from mtcolor_batch.model.engine import _load_component

    bundle, _ = pulled
    sd15_facts(bundle)
    tok = _load_component("tokenizer", bundle / "tokenizer", torch.float32)
    ids = tok(
        ["a red car"], padding="max_length", max_length=tok.model_max_length, truncation=True
    ).input_ids[0]
    assert tok.model_max_length == 77 and len(ids) == 77
    assert ids[0] == 49406 and ids[-1] == 49407 and tok.pad_token == "<|endoftext|>"


# ---------------------------------------------------------------------------------- perception
@pytest.mark.slow  # the module's CLI pull of the fixture hub costs about 5 s
def test_sam_processor_from_the_real_config(pulled: tuple[Path, FixtureHub]) -> None:
    from PIL import Image

    from mtcolor_batch.perception.models import sam_processor

    bundle, _ = pulled
    processor = sam_processor(bundle / "sam")
    image = Image.new("RGB", (900, 600))
    inputs = processor(images=image, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 1024, 1024)
    assert inputs["original_sizes"].tolist() == [[600, 900]]
    assert inputs["reshaped_input_sizes"].tolist() == [[683, 1024]]
    # SamModel's pred_masks are (batch, boxes, masks, 256, 256): the segmenter maps them back so.
    masks = processor.image_processor.post_process_masks(
        torch.zeros(1, 1, 1, 256, 256), inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0]
    assert tuple(masks.shape) == (1, 1, 600, 900)


@pytest.mark.slow  # the module's CLI pull of the fixture hub costs about 5 s
def test_owlv2_processor_and_tokenizer_files(pulled: tuple[Path, FixtureHub]) -> None:
    from PIL import Image

    from mtcolor_batch.perception.models import detector_processor

    bundle, _ = pulled
    processor = detector_processor(bundle / "detector")
    inputs = processor(
        text=[["a red car", "the dog"]],
        images=Image.new("RGB", (900, 600)),
        return_tensors="pt",
        truncation=True,
    )
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 960, 960)
    assert tuple(inputs["input_ids"].shape) == (2, 16)
    tok = processor.tokenizer
    assert tok.pad_token == "!" and tok.pad_token_id == 0 and tok.model_max_length == 16
    assert inputs["input_ids"][0, 0] == 49406 and inputs["input_ids"][0, -1] == 0  # padded with "!"


# --------------------------------------------------------------------------------- perturbed
def _config_copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    return dest


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2) + "\n")


@pytest.mark.slow  # the module's CLI pull of the fixture hub costs about 5 s
def test_checks_fail_on_perturbed_real_configs(pulled: tuple[Path, FixtureHub], tmp_path: Path) -> None:
    bundle, _ = pulled
    assert config_problems(bundle) == []

    widths = _config_copy(bundle, tmp_path / "widths")
    _edit(widths / "controlnet" / "config.json", block_out_channels=[320, 640, 1280, 640])
    assert any("controlnet block_out_channels" in p for p in config_problems(widths))

    cond = _config_copy(bundle, tmp_path / "cond")
    _edit(cond / "controlnet" / "config.json", conditioning_embedding_out_channels=[16, 32, 96])
    assert any("conditioning_embedding_out_channels" in p for p in config_problems(cond))

    text = _config_copy(bundle, tmp_path / "text")
    _edit(text / "text_encoder" / "config.json", hidden_size=1024)
    assert any("cross_attention_dim" in p for p in config_problems(text))

    sched = _config_copy(bundle, tmp_path / "sched")
    _edit(sched / "scheduler" / "scheduler_config.json", _class_name="DDIMScheduler")
    with pytest.raises(AssertionError):
        sd15_facts(sched)  # another shipped class: the real-config facts above no longer hold
    _edit(sched / "scheduler" / "scheduler_config.json", _class_name="PNDMSchedulr")
    assert any("not a diffusers scheduler" in p for p in config_problems(sched))

    sam = _config_copy(bundle, tmp_path / "sam")
    _edit(sam / "sam" / "preprocessor_config.json", pad_size={"height": 1024, "width": 768})
    assert any("sam image processor" in p for p in config_problems(sam))


def test_pull_refuses_a_controlnet_that_does_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = json.loads(derived_controlnet_config())
    config["block_out_channels"] = [320, 640, 1280, 640]
    hub = FixtureHub(overrides={(CONTROLNET, "config.json"): json.dumps(config).encode()})
    hub.install(monkeypatch)
    monkeypatch.setenv("MTCOLOR_HOME", str(tmp_path / "home"))
    dest = tmp_path / "out"
    result = CliRunner().invoke(app, ["models", "pull", "--dest", str(dest), "--no-perception"])
    assert result.exit_code == 1
    assert "do not fit together: controlnet block_out_channels" in result.output
    assert not dest.exists() and not list(tmp_path.glob(".out.pulling-*"))


# ----------------------------------------------------------------------------------- dry run
@pytest.mark.slow
def test_dry_run_lists_the_bundle_and_downloads_no_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FixtureHub()
    hub.install(monkeypatch)
    result = CliRunner().invoke(app, ["models", "pull", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"base: {SD} @ {component('base').revision}" in out
    assert f"controlnet: {CONTROLNET} @ main" in out
    assert f"sam: {SAM} @ {component('sam').revision}" in out and f"detector: {OWL} @ " in out
    assert re.search(r"unet/diffusion_pytorch_model\.fp16\.safetensors\s+1\.72 GB", out)
    assert re.search(r"model\.safetensors\s+620 MB", out) and "scheduler/scheduler_config.json" in out
    assert "diffusion_pytorch_model.bin" not in out and "non_ema" not in out and "safety_checker" not in out
    assert "total download: 3.13 GB in 24 files (+2 files whose size the hub did not report)" in out
    assert "2 files, size not reported" in out  # the ControlNet: no public listing (SOURCES.md)
    assert "written locally: MT-Color modules" in out and "configs: ok (14 fetched and checked)" in out
    assert hub.snapshot_calls == []
    assert hub.served and all(p.endswith(".json") for _, p in hub.served)
    assert {r for r, _ in hub.info_calls} == {c.repo_id for c in COMPONENTS}


@pytest.mark.slow  # the module's CLI pull of the fixture hub costs about 5 s
def test_dry_run_plans_exactly_what_the_pull_fetched(pulled: tuple[Path, FixtureHub]) -> None:
    """One set of patterns: the dry run's file list is the set of files the real pull downloaded."""
    _, pull_hub = pulled
    hub = FixtureHub()
    plan = plan_pull(api=SimpleNamespace(model_info=hub.model_info), download=hub.hf_hub_download)
    planned = {(c.repo_id, f.path) for c in plan.components for f in c.files}
    assert planned == set(pull_hub.served)


def test_dry_run_reports_config_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    config = json.loads(derived_controlnet_config())
    config["conditioning_embedding_out_channels"] = [16, 32, 96]
    hub = FixtureHub(overrides={(CONTROLNET, "config.json"): json.dumps(config).encode()})
    hub.install(monkeypatch)
    result = CliRunner().invoke(app, ["models", "pull", "--dry-run", "--no-perception"])
    assert result.exit_code == 1
    assert "error: controlnet conditioning_embedding_out_channels [16, 32, 96]" in result.output
    assert "sam:" not in result.output and hub.snapshot_calls == []


def test_dry_run_plan_without_variant_and_a_bad_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtcolor_batch.core.errors import ModelError

    hub = FixtureHub()
    api = SimpleNamespace(model_info=hub.model_info)
    plan = plan_pull(variant=None, perception=False, api=api, download=hub.hf_hub_download)
    base = next(c for c in plan.components if c.key == "base")
    names = [f.path for f in base.files]
    assert "unet/diffusion_pytorch_model.safetensors" in names and not [n for n in names if ".fp16." in n]
    weights = sum(f.size or 0 for f in base.files if f.path.endswith(".safetensors"))
    assert weights == sum(displayed_bytes(s) or 0 for s in ("3.44 GB", "335 MB", "492 MB"))
    with pytest.raises(ModelError, match="cannot query stable-diffusion-v1-5/stable-diffusion-v1-5@deadbeef"):
        plan_pull({"base": "deadbeef"}, api=api, download=hub.hf_hub_download)
