"""Accelerators: distilled LoRAs that let SD 1.5 sample in a few steps, kept inside a bundle.

An accelerator is one safetensors LoRA under ``accelerators/<name>.safetensors`` in the bundle,
hashed in the manifest like every other file and described in its ``accelerators`` section (source
repo, revision, sha256, and the scheduler, steps and guidance its authors recommend). ``run
--accelerator NAME`` fuses it into the UNet once per engine through diffusers' own LoRA loader
(``load_lora_weights`` then ``fuse_lora``), so every later step costs what a plain step costs.

MT-Color's modules were trained against the base UNet; whether they compose with a distilled UNet
is unverified with real weights (docs/few-step.md). Outputs made with an accelerator say so in
their record's ``paper_deviations``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mtcolor_batch.core.config import Profile, SamplingSettings, explicit_keys, load_profile
from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.core.fs import sha256_file, staged_file
from mtcolor_batch.model.bundle import Bundle, _commit_of, read_manifest, save_bundle
from mtcolor_batch.model.registry import hub_cache_dir

FOLDER = "accelerators"
SUFFIX = ".safetensors"
AUTO, NONE = "auto", "none"
MANIFEST_KEY = "accelerators"


@dataclass(frozen=True)
class Recipe:
    """What an accelerator's authors recommend: the scheduler (a ``sampling.scheduler`` value),
    the number of steps and the guidance scale (<= 1: no unconditional half is computed)."""

    scheduler: str
    steps: int
    guidance: float


@dataclass(frozen=True)
class Known:
    """An accelerator ``models pull --accelerator`` can fetch: a pinned file of a public repo."""

    name: str
    repo_id: str
    filename: str
    revision: str
    sha256: str | None  # the hub's LFS digest where a public page lists it, checked after download
    recipe: Recipe
    source: str  # where the pin and the recipe come from (tests/fixtures/hub/SOURCES.md has more)


KNOWN: dict[str, Known] = {
    k.name: k
    for k in (
        Known(
            "lcm",
            "latent-consistency/lcm-lora-sdv1-5",
            "pytorch_lora_weights.safetensors",
            "cf2fced511dbe7e26c8d1d397e728fbab875db4b",
            None,
            Recipe("lcm", 4, 1.0),
            "model card: LCMScheduler, 4 steps, guidance 1-2 (1 = no unconditional half)",
        ),
        Known(
            "hyper-sd-8",
            "ByteDance/Hyper-SD",
            "Hyper-SD15-8steps-lora.safetensors",
            "52d483a2ab8d38ce89e1d8b8f45771905f3af3f4",
            "91fc3186236e956d64dbb4357f2e120c69b968b78af7d2db9884a5ca74d3cd13",
            Recipe("ddim-trailing", 8, 1.0),
            "model card: DDIM with trailing timestep spacing, 8 steps, no CFG",
        ),
        Known(
            "pcm-4",
            "wangfuyun/PCM_Weights",
            "sd15/pcm_sd15_smallcfg_4step_converted.safetensors",
            "be60d4c3b22ff74dc88b8701d6745ef921896cc2",
            None,
            Recipe("ddim-trailing", 4, 1.0),
            "model card: small-CFG 4-step LoRA, DDIM trailing; pinned to the upload of the 135 MB files",
        ),
        Known(
            "tcd",
            "h1t/TCD-SD15-LoRA",
            "pytorch_lora_weights.safetensors",
            "449a99f6bbded2bdbbc66386b2a4fbf8db8d3807",
            None,
            Recipe("tcd", 4, 1.0),
            "model card: TCDScheduler, 4 steps, guidance 0, eta (gamma) 0.3",
        ),
    )
}
"""The four published SD 1.5 accelerators, by the name ``--accelerator`` takes."""


@dataclass(frozen=True)
class Accelerator:
    """One accelerator of a bundle, as its manifest records it."""

    name: str
    file: str  # relative to the bundle
    sha256: str
    recipe: Recipe
    repo_id: str | None = None
    revision: str | None = None

    def record(self) -> dict[str, Any]:
        """What provenance and the manifest say about it."""
        return {
            "name": self.name,
            "file": self.file,
            "sha256": self.sha256,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "recipe": asdict(self.recipe),
        }


def _entry(name: str, data: Any, where: Path) -> Accelerator:
    try:
        recipe = Recipe(
            str(data["recipe"]["scheduler"]), int(data["recipe"]["steps"]), float(data["recipe"]["guidance"])
        )
        return Accelerator(
            name=name,
            file=str(data["file"]),
            sha256=str(data["sha256"]),
            recipe=recipe,
            repo_id=data.get("repo_id"),
            revision=data.get("revision"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"accelerator '{name}' in the manifest is malformed ({exc})", path=where) from exc


def bundle_accelerators(bundle: Bundle) -> dict[str, Accelerator]:
    """The accelerators a bundle's manifest lists, by name (empty for a bundle without any)."""
    raw = bundle.sources.get(MANIFEST_KEY) or {}
    where = bundle.path / "mtcolor.json"
    if not isinstance(raw, dict):
        raise ModelError("the manifest's accelerators section is malformed", path=where)
    return {str(name): _entry(str(name), data, where) for name, data in sorted(raw.items())}


def preferred(accelerators: dict[str, Accelerator]) -> Accelerator | None:
    """What ``accelerator: auto`` picks: the known ones in :data:`KNOWN`'s order, then by name."""
    for name in KNOWN:
        if name in accelerators:
            return accelerators[name]
    return next(iter(accelerators.values()), None)


def find(bundle: Bundle, name: str) -> Accelerator:
    """The bundle's accelerator ``name``; a one-line ModelError naming the ones it has otherwise."""
    have = bundle_accelerators(bundle)
    if name not in have:
        listed = ", ".join(have) or "none"
        raise ModelError(
            f"accelerator '{name}' is not in the bundle (it has: {listed})",
            path=bundle.path,
            hint=f"add it with `mtcolor-batch models pull --accelerator {name}`"
            if name in KNOWN
            else f"add a local LoRA with `mtcolor-batch models accelerator add BUNDLE FILE --name {name}`, "
            f"or pull one of {', '.join(KNOWN)}",
        )
    return have[name]


# ------------------------------------------------------------------------------------ adding
def add_accelerator(
    bundle_dir: Path,
    file: Path,
    name: str,
    recipe: Recipe,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    check: Callable[[Path], None] | None = None,
) -> Accelerator:
    """Copy a LoRA file into the bundle as ``accelerators/<name>.safetensors`` and re-save the manifest.

    ``check`` (default :func:`check_fits`) refuses a file whose keys do not fit the bundle's UNet
    before anything is written; the manifest is re-written atomically after the copy.
    """
    bundle = read_manifest(bundle_dir)
    file = Path(file)
    if not file.is_file():
        raise ModelError("accelerator file not found", path=file)
    if file.suffix != SUFFIX:
        raise ModelError("an accelerator must be a .safetensors file (pickles are refused)", path=file)
    (check or (lambda f: check_fits(bundle.path, f)))(file)
    rel = f"{FOLDER}/{name}{SUFFIX}"
    target = bundle.path / rel
    with staged_file(target) as tmp:  # fsynced, then renamed into place
        shutil.copyfile(file, tmp)
    acc = Accelerator(name, rel, sha256_file(target), recipe, repo_id, revision)
    sources = dict(bundle.sources)
    listed = dict(sources.get(MANIFEST_KEY) or {})
    listed[name] = acc.record()
    sources[MANIFEST_KEY] = listed
    save_bundle(bundle.path, name=bundle.name, revision=bundle.revision, tiny=bundle.tiny, sources=sources)
    return acc


# ------------------------------------------------------------------------------------ loading
def _loader() -> Any:
    """diffusers' SD 1.5 LoRA loader mixin (lazy: diffusers is heavy)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    return StableDiffusionLoraLoaderMixin


def read_lora(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, float] | None]:
    """The LoRA as diffusers reads it (kohya/A1111 and diffusers/PEFT key formats alike)."""
    try:
        state, alphas = _loader().lora_state_dict(str(file))
    except Exception as exc:  # diffusers raises several unrelated types for a foreign file
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ModelError(f"not a LoRA diffusers can read: {type(exc).__name__}: {first}", path=file) from exc
    return state, alphas


LORA_SUFFIXES = (
    ".lora_linear_layer.down.weight",
    ".lora_linear_layer.up.weight",
    ".lora.down.weight",
    ".lora.up.weight",
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_down.weight",
    ".lora_up.weight",
    ".lora_A.bias",
    ".lora_B.bias",
    ".alpha",
)


def _target(key: str) -> str:
    for suffix in LORA_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def first_misfit(
    state: dict[str, torch.Tensor], unet_modules: set[str], text_modules: set[str]
) -> str | None:
    """The first LoRA key (in diffusers' PEFT naming, which is what gets injected) whose layer is
    not in the UNet or the text encoder."""
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    for key in sorted(convert_unet_state_dict_to_peft(dict(state))):
        prefix, _, rest = key.partition(".")
        target = _target(rest)
        if prefix == "unet" and target in unet_modules:
            continue
        if prefix == "text_encoder" and target in text_modules:
            continue
        return key
    return None


def check_fits(bundle_dir: Path, file: Path) -> None:
    """Refuse a LoRA whose keys do not name layers of the bundle's UNet (built on the meta device)."""
    from diffusers import UNet2DConditionModel

    state, _ = read_lora(file)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(Path(bundle_dir) / "unet"))
    text = _text_module_names(Path(bundle_dir) / "text_encoder")
    _refuse_misfit(state, {n for n, _ in unet.named_modules()}, text, file)


def _text_module_names(folder: Path) -> set[str]:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig.from_pretrained(folder))
    return {n for n, _ in model.named_modules()}


def _refuse_misfit(state: dict[str, torch.Tensor], unet: set[str], text: set[str], file: Path) -> None:
    bad = first_misfit(state, unet, text)
    if bad is not None:
        raise ModelError(
            f"LoRA key '{bad}' does not fit this SD 1.5 UNet/text encoder (no such layer)",
            path=file,
            hint="use a LoRA made for Stable Diffusion 1.5",
        )


def fuse_accelerator(unet: Any, text_encoder: Any, file: Path) -> None:
    """Load the LoRA with diffusers (``load_lora_weights``), fuse it (``fuse_lora``) and drop the
    adapter layers, leaving plain layers with the fused weights: the UNet is then an ordinary
    diffusers UNet, which MT-Color's processors wrap as usual."""
    state, _ = read_lora(file)
    _refuse_misfit(
        state, {n for n, _ in unet.named_modules()}, {n for n, _ in text_encoder.named_modules()}, file
    )
    holder = _holder(unet, text_encoder)
    components = ["unet"] + (["text_encoder"] if any(k.startswith("text_encoder.") for k in state) else [])
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "no text encoder keys" is expected for a UNet LoRA
    try:
        holder.load_lora_weights(str(file), adapter_name="accelerator")
        holder.fuse_lora(components=components, lora_scale=1.0)
        holder.unload_lora_weights()
    except (ValueError, RuntimeError, KeyError) as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ModelError(f"cannot fuse the accelerator: {type(exc).__name__}: {first}", path=file) from exc
    finally:
        diffusers_logging.set_verbosity(level)


def _holder(unet: Any, text_encoder: Any) -> Any:
    """The two components diffusers' SD 1.5 LoRA loader works on, without a whole pipeline."""

    class AcceleratorLoader(_loader()):  # type: ignore[misc]
        hf_device_map = None  # what the loader asks a pipeline before it moves offloaded parts

        def __init__(self) -> None:
            self.unet = unet
            self.text_encoder = text_encoder

        @property
        def components(self) -> dict[str, Any]:
            return {"unet": self.unet, "text_encoder": self.text_encoder}

    return AcceleratorLoader()


def pull_accelerator(
    bundle_dir: Path, name: str, *, download: Callable[..., str] | None = None, cache_dir: Path | None = None
) -> Accelerator:
    """Fetch a known accelerator at its pinned revision (network) and add it to the bundle.

    The file's sha256 is checked against the hub's LFS digest where one is pinned; ``download`` is
    ``hf_hub_download`` (tests pass a stand-in).
    """

    if name not in KNOWN:
        raise ModelError(f"unknown accelerator '{name}'", hint=f"use one of {', '.join(KNOWN)}")
    known = KNOWN[name]
    if download is None:
        from huggingface_hub import hf_hub_download

        download = hf_hub_download
    cache = str(cache_dir or hub_cache_dir())
    where = f"{known.repo_id}@{known.revision} {known.filename}"
    try:
        local = Path(download(known.repo_id, known.filename, revision=known.revision, cache_dir=cache))
    except Exception as exc:  # hub errors are many unrelated types
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ModelError(
            f"cannot download {where}: {type(exc).__name__}: {first}",
            hint="`models pull --accelerator` needs the network; "
            "or use `models accelerator add` with a local file",
        ) from exc
    digest = sha256_file(local)
    if known.sha256 and digest != known.sha256:
        raise ModelError(
            f"{known.repo_id}@{known.revision} {known.filename} has sha256 {digest[:16]}..., "
            f"the pinned file has {known.sha256[:16]}...",
            path=local,
            hint="the download is not the pinned file; delete it from the hub cache and pull again",
        )
    snapshot = local.parents[len(Path(known.filename).parts) - 1]
    commit = _commit_of(snapshot, known.revision)
    return add_accelerator(bundle_dir, local, name, known.recipe, repo_id=known.repo_id, revision=commit)


def recipe_of(name: str, scheduler: str | None, steps: int | None, guidance: float | None) -> Recipe:
    """The recipe ``accelerator add`` records: a known accelerator's, or the one given in full."""
    from mtcolor_batch.model.schedulers import SCHEDULERS  # deferred: loads diffusers

    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ModelError(f"unknown scheduler '{scheduler}'", hint=f"use one of {', '.join(SCHEDULERS)}")
    if name in KNOWN and scheduler is None and steps is None and guidance is None:
        return KNOWN[name].recipe
    if scheduler is None or steps is None or guidance is None:
        base = KNOWN.get(name)
        if base is None:
            raise ModelError(
                f"'{name}' is not a known accelerator ({', '.join(KNOWN)}): give its recommended "
                "--scheduler, --steps and --guidance"
            )
        return Recipe(
            scheduler or base.recipe.scheduler,
            steps or base.recipe.steps,
            base.recipe.guidance if guidance is None else guidance,
        )
    return Recipe(scheduler, steps, guidance)


# ------------------------------------------------------------------------------- the profile
def apply_accelerator(profile: Profile, bundle_dir: Path, explicit: set[str]) -> tuple[Profile, str | None]:
    """The profile a run uses with ``sampling.accelerator`` resolved against the bundle, and a note.

    ``auto`` takes the bundle's accelerator (:func:`preferred`) or, with none, runs without one and
    says so (the note). A named accelerator must be in the bundle (one-line ModelError otherwise).
    The accelerator's recommended scheduler, steps (``sampling.accelerator_steps`` if set) and
    guidance replace the profile's, except for the keys in ``explicit`` (what the user set).
    """
    settings = profile.sampling
    if settings.accelerator == NONE:
        return profile, None
    bundle = read_manifest(bundle_dir)
    if settings.accelerator == AUTO:
        acc = preferred(bundle_accelerators(bundle))
        if acc is None:
            note = (
                f"no accelerator in {bundle.path.name}: profile '{profile.name}' runs {settings.scheduler} "
                f"at {settings.steps} steps (add one with `mtcolor-batch models pull --accelerator lcm`)"
            )
            return profile.model_copy(
                update={"sampling": settings.model_copy(update={"accelerator": NONE})}
            ), note
    else:
        acc = find(bundle, settings.accelerator)
    update: dict[str, Any] = {"accelerator": acc.name}
    if "sampling.scheduler" not in explicit:
        update["scheduler"] = acc.recipe.scheduler
    if "sampling.steps" not in explicit:
        update["steps"] = settings.accelerator_steps or acc.recipe.steps
    if "sampling.guidance_scale" not in explicit:
        update["guidance_scale"] = acc.recipe.guidance
    sampling = SamplingSettings.model_validate({**settings.model_dump(), **update})
    return profile.model_copy(update={"sampling": sampling}), None


def load_run_profile(
    name_or_path: str | Path | None, overrides: dict[str, Any] | None, bundle_dir: Path
) -> tuple[Profile, str | None]:
    """The profile as ``run`` uses it with this bundle: loaded, and its accelerator resolved
    (:func:`apply_accelerator`). Every command that colorizes for a user (``run``, the editor's
    "Colorize this one") takes its profile from here, so a preview samples as the night run will."""
    profile = load_profile(name_or_path, overrides)
    if profile.sampling.accelerator == NONE:
        return profile, None
    return apply_accelerator(profile, bundle_dir, explicit_keys(name_or_path, overrides))
