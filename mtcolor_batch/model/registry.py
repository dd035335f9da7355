"""Where the default bundle's public parts come from, in one table.

No MT-Color weights are published, so the default bundle is assembled from public components.
Keeping every repo id and revision in this one table means a user swaps a part by editing one
line (or passing ``--revision``), and provenance can name exactly what ran. ``revision`` is what
``models pull`` asks the hub for: a commit hash wherever a public source gives one (cited beside
it), so a pull is reproducible; the commit it resolves to is written into the bundle's
``mtcolor.json`` either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mtcolor_batch.core.errors import ModelError


@dataclass(frozen=True)
class Component:
    """One public part of the default bundle.

    ``subfolders`` maps a folder of the hub repo ("" = repo root) to the bundle folder it fills, so a
    multi-part repo (SD 1.5) and single-model repos (ControlNet, SAM, detector) share one code path.
    """

    key: str
    repo_id: str
    revision: str
    subfolders: dict[str, str]
    role: str


DEFAULT_BUNDLE_NAME = "mtcolor-sd15"
"""Folder name of the default bundle inside the cache."""

COMPONENTS: tuple[Component, ...] = (
    Component(
        key="base",
        repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
        # The commit public hub-cache paths name for this repo: "models--stable-diffusion-v1-5--
        # stable-diffusion-v1-5/snapshots/451f4fe1..." in KiritoFD/dreambooth_
        # stable-diffusion-v1-5/unet/config.json@410b402c (diffusers 0.33 re-save) and in the
        # _name_or_path of Ksgk-fy/kanji_inception_finetune_curriculum_v4 safety_checker/config.json.
        revision="451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
        subfolders={
            "unet": "unet",
            "vae": "vae",
            "text_encoder": "text_encoder",
            "tokenizer": "tokenizer",
            "scheduler": "scheduler",
        },
        role="Stable Diffusion 1.5 backbone (UNet, VAE, CLIP text encoder, tokenizer, scheduler)",
    ),
    Component(
        key="controlnet",
        repo_id="latentcat/control_v1p_sd15_brightness",
        # No public source found that names a commit of this repo (tests/fixtures/hub/SOURCES.md),
        # so it stays on main; the commit main resolves to is recorded in the bundle's manifest.
        revision="main",
        subfolders={"": "controlnet"},
        role="gray-to-colour ControlNet for SD 1.5 (brightness conditioning)",
    ),
    Component(
        key="sam",
        repo_id="facebook/sam-vit-base",
        # huggingface.co/facebook/sam-vit-base/tree/70c1a07f...: head of main ("Update README.md",
        # 11 commits) with model.safetensors 375 MB, config.json, preprocessor_config.json.
        revision="70c1a07f894ebb5b307fd9eaaee97b9dfc16068f",
        subfolders={"": "sam"},
        role="Segment Anything (transformers SamModel + SamProcessor) for hint boxes/points",
    ),
    Component(
        key="detector",
        repo_id="google/owlv2-base-patch16-ensemble",
        # huggingface.co/google/owlv2-base-patch16-ensemble/tree/7c77fc13...: main after merging
        # "Adding `safetensors` variant of this model (#4)", with model.safetensors 620 MB.
        revision="7c77fc1316a353da3109f81d80ae118dd58fd55b",
        subfolders={"": "detector"},
        role="open-vocabulary detector (transformers Owlv2ForObjectDetection) for auto instances",
    ),
)

REQUIRED_FOLDERS: tuple[str, ...] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "controlnet")
"""Bundle folders the colorizer cannot run without (perception folders are optional)."""

MODULES_FILE = "mtcolor_modules.safetensors"
MANIFEST_FILE = "mtcolor.json"


def component(key: str) -> Component:
    """Look a component up by key, so callers fail loudly on a typo instead of pulling nothing."""
    for comp in COMPONENTS:
        if comp.key == key:
            return comp
    raise KeyError(f"unknown component '{key}'; known: {', '.join(c.key for c in COMPONENTS)}")


def cache_dir() -> Path:
    """Root of everything this tool downloads: ``$MTCOLOR_HOME`` or ``~/.cache/mtcolor-batch``.

    A single env var lets a cluster point every node at one shared, pre-filled cache.
    """
    env = os.environ.get("MTCOLOR_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mtcolor-batch"


def bundles_dir() -> Path:
    """Where assembled bundles live (one folder per bundle)."""
    return cache_dir() / "bundles"


def hub_cache_dir() -> Path:
    """Raw hub snapshots; kept apart from bundles so a re-pull does not re-download."""
    return cache_dir() / "hub"


def default_bundle_dir() -> Path:
    """The bundle ``run`` uses when no ``--model`` is given."""
    return bundles_dir() / DEFAULT_BUNDLE_NAME


def not_a_bundle(root: Path) -> ModelError:
    """The one wording for a folder that exists but holds no manifest (``run``, ``models verify``)."""
    return ModelError(
        f"not a model bundle: {MANIFEST_FILE} is missing",
        path=root,
        hint="run `mtcolor-batch models pull` or `mtcolor-batch models tiny DIR`",
    )


NO_MODEL_HINT = (
    "get one with `mtcolor-batch models pull` on a connected machine, point at a bundle with "
    "`--model DIR`, or write a tiny random bundle for a pipeline check with `mtcolor-batch models tiny DIR` "
    "(its outputs are not real colorizations)"
)


def find_bundle(spec: str | None) -> Path:
    """``--model DIR|ID`` (or the cached default) -> a bundle folder with a manifest, else ModelError.

    Called before anything in the output folder is created, so a missing model never leaves a
    half-started run behind.
    """
    if spec:
        candidate = Path(spec).expanduser()
        if not candidate.exists() and "/" not in spec and (bundles_dir() / spec).exists():
            candidate = bundles_dir() / spec
    else:
        candidate = default_bundle_dir()
    if spec and candidate.is_dir() and not (candidate / MANIFEST_FILE).is_file():
        raise not_a_bundle(candidate)  # a folder, but not a bundle: what `models verify` says
    if not (candidate / MANIFEST_FILE).is_file():
        what = (
            f"model '{spec}' not found"
            if spec
            else f"no model configured and no cached '{DEFAULT_BUNDLE_NAME}'"
        )
        raise ModelError(f"{what} ({candidate})", hint=NO_MODEL_HINT)
    return candidate.resolve()
