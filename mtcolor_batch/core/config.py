"""Profiles: one validated set of every knob that changes an output.

A profile is ``profiles/<name>.yaml`` (built in; see ``builtin_dir``) or any YAML file, overlaid on the
defaults, then overridden by CLI options given as dotted keys. Its hash goes into every file's
fingerprint, so changing a knob redoes exactly the files it affects.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.types import LATENT_FACTOR
from mtcolor_batch.core.yaml_guarded import read_yaml


class _Section(BaseModel):
    # inf and nan are never a setting: refused here, they are one line and exit 2 before anything is
    # journaled, instead of failing every file (or overflowing an int() deep in a stage).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ScanSettings(_Section):
    max_megapixels: float = Field(
        400.0,
        gt=0,
        le=1_000_000,
        description="Decompression-bomb limit; larger files fail with a clear error.",
    )
    gray_tolerance: float = Field(
        0.03, ge=0, le=1, description="Mean chroma (0-1) under which an RGB scan is treated as gray/sepia."
    )


class PerceptionSettings(_Section):
    auto_instances: bool = True
    tagger: Literal["auto", "ram", "detector"] = "auto"
    max_instances: int = Field(8, ge=0)
    min_area: float = Field(0.002, ge=0, le=1, description="Smallest instance, as a fraction of the image.")
    box_threshold: float = Field(0.25, ge=0, le=1)
    merge_iou: float = Field(0.7, ge=0, le=1)
    size: int = Field(1024, ge=64, description="Long side the perception models see.")


def tile_problem(tile_size: int, tile_overlap: int) -> str | None:
    """Why a tile size/overlap pair cannot be honoured by the latent grid (None: it can).

    The one tiling rule: the profile refuses such settings before a run starts, and the planner
    refuses them for any canvas, with the same words.
    """
    if tile_size % LATENT_FACTOR:
        return (
            f"sampling.tile_size must be a multiple of {LATENT_FACTOR} (got {tile_size}); the sampler tiles "
            "latents, 8 pixels per latent cell, and 512 is the model's native size"
        )
    if tile_overlap % LATENT_FACTOR or tile_overlap >= tile_size:
        return (
            f"sampling.tile_overlap must be a multiple of {LATENT_FACTOR} below tile_size "
            f"(got {tile_overlap} for tile_size {tile_size}); e.g. tile_size 512 with tile_overlap 128"
        )
    return None


class SamplingSettings(_Section):
    steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0, le=100, description="Classifier-free guidance (7.5 typical).")
    controlnet_scale: float = Field(1.0, ge=0, le=10, description="ControlNet strength (1 typical).")
    alpha: float = Field(0.2, ge=0, le=1, description="Fraction of steps sampled per instance.")
    beta: float = Field(0.2, ge=0, le=1, description="Weight of the global branch in the fusion.")
    fusion: Literal["paper", "paste", "blend"] = Field(
        "paste",
        description="Multi-instance fusion after alpha*T steps: paper (Eq. 10 as printed, background "
        "scaled by beta), paste (instances pasted onto the global latent), blend (beta-weighted mix).",
    )
    branch_crop: int = Field(
        64,
        ge=0,
        description="Instance branches run on their box + this many px of context, grown to a multiple "
        "of 64 px (0 = on the whole tile, as the paper; the paper profile sets 0).",
    )
    branch_uncond: Literal["own", "global"] = Field(
        "own",
        description="Classifier-free guidance of the instance branches in the first alpha*T steps: own "
        "(each branch runs its unconditional half, as the paper) or global (the global branch's "
        "unconditional prediction over the branch's window: half the branch latents, an approximation).",
    )
    branch_refresh: int = Field(
        2,
        ge=1,
        description="In the first alpha*T steps the instance branches run at every Nth step; in "
        "between, each takes the global branch's prediction plus its own deviation from it at its last "
        "run (1 = every step, as the paper; the paper profile sets 1).",
    )
    scheduler: Literal["ddim", "ddim-trailing", "lcm", "tcd", "dpmpp-2m", "unipc"] = Field(
        "ddim",
        description="Denoising scheduler, built from the bundle's scheduler config (docs/few-step.md); "
        "an accelerator sets its own unless this is given.",
    )
    tcd_gamma: float = Field(0.3, ge=0, le=1, description="TCD's gamma (stochasticity) with scheduler tcd.")
    accelerator: str = Field(
        "none",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="Distilled LoRA of the bundle to fuse into the UNet (`models pull --accelerator`): "
        "its name, none, or auto (the bundle's own if it has one).",
    )
    accelerator_steps: int | None = Field(
        None, ge=1, le=1000, description="Steps with an accelerator (default: the one its authors recommend)."
    )
    working_long_side: int = Field(1024, ge=8, description="Chroma working resolution (long side).")
    working_square: bool = Field(
        False,
        description="Run at working_long_side x working_long_side whatever the scan's shape or size "
        "(the paper's 512x512); compose maps the result back onto the whole scan.",
    )
    tile_size: int = Field(512, ge=64)
    tile_overlap: int = Field(128, ge=0)
    max_batch: int = Field(8, ge=1, description="Most latents per UNet call; more are chunked.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    vae_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="VAE precision; auto = dtype on CUDA (float32 redo on overflow), float32 on CPU."
    )
    channels_last: bool = Field(True, description="Channels-last memory format on CUDA (ignored on CPU).")
    compile: bool = Field(False, description="torch.compile ControlNet and the UNet's plain layers.")
    attention: Literal["auto", "sparse", "flex", "dense"] = Field(
        "auto", description="Region attention of PMAM/instance branch: per region (auto) or dense mask."
    )
    prompt: str = Field("a colour photograph", description="Global text when a sidecar gives none.")
    negative_prompt: str = "black and white, grayscale, desaturated, sepia, monochrome"

    @model_validator(mode="after")
    def _tiles_fit_the_latent_grid(self) -> SamplingSettings:
        """Bad tiles are a profile error (exit 2 before anything is journaled), not every file's failure."""
        problem = tile_problem(self.tile_size, self.tile_overlap)
        if problem is not None:
            raise ValueError(problem)
        return self


class HintSettings(_Section):
    strict: bool = Field(False, description="Shift hinted instances to their hint colour (archival).")
    feather_px: int = Field(6, ge=0)
    max_sidecar_bytes: int = Field(256 * 1024, ge=1)
    max_sidecar_instances: int = Field(
        256, ge=1, description="Most hints one sidecar may hold; more fail that file with a clear error."
    )


class JobSettings(_Section):
    """How the batch is run; never changes a file's output bytes, so it is not in the fingerprint."""

    crash_retries: int = Field(
        2, ge=1, description="A file that crashed the whole process this many times is failed, not retried."
    )


MAX_SUFFIX_CHARS = 32
"""An output name is stem + suffix + extension, and must fit 255 bytes with the longest stems."""


class OutputSettings(_Section):
    suffix: str = ".color"
    luminance_lock: bool = Field(
        True,
        description="Keep the scan's own full-resolution lightness under the model's colour; false "
        "writes the model's decoded RGB as is (the paper profile).",
    )
    jpeg_quality: int = Field(95, ge=1, le=100)
    write_json: bool = True
    c2pa: Literal["sign", "off"] = Field(
        "sign", description="sign: a C2PA Content Credentials manifest in every output (off: none)."
    )
    c2pa_cert: str | None = Field(
        None, description="The archive's certificate chain (PEM, leaf first) [default: a local one]."
    )
    c2pa_key: str | None = Field(None, description="The private key (PEM) of c2pa_cert's leaf certificate.")

    @field_validator("c2pa", mode="before")
    @classmethod
    def _yaml_off_is_off(cls, value: object) -> object:
        """YAML reads an unquoted ``c2pa: off`` as false (and ``on`` as true)."""
        return {False: "off", True: "sign"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("suffix")
    @classmethod
    def _suffix_is_part_of_a_name(cls, value: str) -> str:
        """A suffix with a path separator would put outputs in other folders, even outside ``--out``;
        ``..``, control characters or a long suffix make names that other tools (and 255-byte file
        systems) refuse, which would fail every file of the run instead of the run's setup."""
        if any(c in value for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError(
                f"output.suffix must be part of a file name, without /, \\ or control characters "
                f"(got {value!r})"
            )
        if ".." in value:
            raise ValueError(f"output.suffix must not contain '..' (got {value!r})")
        if len(value) > MAX_SUFFIX_CHARS:
            raise ValueError(f"output.suffix is {len(value)} characters; at most {MAX_SUFFIX_CHARS}")
        return value


class Profile(_Section):
    """Every effective parameter of a run (recorded in provenance)."""

    name: str = "default"
    device: str = "auto"
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="Fixed seed (0 to 2**63-1); else derived from each file's hash."
    )
    scan: ScanSettings = Field(default_factory=ScanSettings)
    perception: PerceptionSettings = Field(default_factory=PerceptionSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    hints: HintSettings = Field(default_factory=HintSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)

    def departures(self, builtin: str) -> dict[str, tuple[Any, Any]]:
        """{dotted key: (value here, the built-in's)} for each value the built-in profile sets otherwise.

        Provenance labels outputs made in the paper's setting (none) and lists what differs from it.
        """
        mine = dotted(self.model_dump(mode="json"))
        wanted = builtin_values(builtin)
        return {key: (mine.get(key), want) for key, want in wanted.items() if mine.get(key) != want}

    def follows(self, builtin: str) -> bool:
        """Whether every value the built-in profile ``builtin`` sets holds here (e.g. the paper setting)."""
        return not self.departures(builtin)

    def fingerprint(self) -> str:
        """Hash of every value that changes output bytes (device excluded: it is recorded apart).

        Limits that only decide whether a file is tried at all (``jobs``, the sidecar instance cap)
        are left out, so changing them never redoes finished files; so are the paths of the C2PA
        credentials (machine-local, and the signer is recorded apart).
        """
        exclude: dict[str, Any] = {
            "name": True,
            "device": True,
            "jobs": True,
            "hints": {"max_sidecar_instances"},
            "output": {"c2pa_cert", "c2pa_key"},
        }
        data = self.model_dump(mode="json", exclude=exclude)
        sampling = data["sampling"]
        for key, neutral in FEW_STEP_NEUTRAL.items():
            if sampling.get(key) == neutral:
                del sampling[key]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


FEW_STEP_NEUTRAL: dict[str, Any] = {
    "scheduler": "ddim",
    "tcd_gamma": 0.3,
    "accelerator": "none",
    "accelerator_steps": None,
}
"""Sampling keys of few-step sampling (docs/few-step.md) at the values that compute exactly what was
computed before they existed: left out of the fingerprint there, so files finished before them are
not redone. Any other value is hashed like every key."""


def dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"sampling": {"steps": 20}} -> {"sampling.steps": 20}: profile values by the keys users write."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def builtin_dir() -> Traversable:
    """The built-in profiles (run profiles, and the training and dataset defaults).

    Their one home in git is the checkout's top-level ``profiles/``, the folder users browse and copy
    from; a wheel ships that folder as ``mtcolor_batch/profiles/`` (pyproject's ``package-dir``), so an
    installed package finds them inside itself and a checkout (editable install or ``PYTHONPATH``)
    beside itself.
    """
    shipped = resources.files("mtcolor_batch") / "profiles"
    if shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parents[2] / "profiles"


def _builtin_data(name: str) -> dict[str, Any]:
    """A built-in profile's YAML as written (only the keys it sets)."""
    text = (builtin_dir() / f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    return data if isinstance(data, dict) else {}


def builtin_values(name: str) -> dict[str, Any]:
    """The values a built-in profile sets, by dotted key (its ``name`` left out)."""
    return {k: v for k, v in dotted(_builtin_data(name)).items() if k != "name"}


def builtin_profiles() -> list[str]:
    # train.yaml and dataset.yaml hold training and dataset defaults (train/config.py,
    # train/dataset_config.py), not run profiles.
    names = (p.name for p in builtin_dir().iterdir())
    return sorted(n[:-5] for n in names if n.endswith(".yaml") and n not in NOT_RUN_PROFILES)


NOT_RUN_PROFILES = frozenset({"train.yaml", "dataset.yaml"})


MAX_PROFILE_BYTES = 64 * 1024
"""A profile is a few dozen lines; the cap is checked before the file is read."""


def _read_profile_file(path: Path) -> dict[str, Any]:
    """A user's profile YAML through the guarded loader (size cap, no aliases, no tags, no deep
    nesting, regular files only): one line with file:line:col on any problem."""
    try:
        data = read_yaml(path, max_bytes=MAX_PROFILE_BYTES, what="profile") or {}
    except UserError as exc:
        raise UserError(exc.message, path=exc.path, line=exc.line, column=exc.column, hint=exc.hint) from None
    if not isinstance(data, dict):
        raise UserError("a profile must be a YAML mapping", path=path)
    return data


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def explicit_keys(name_or_path: str | Path | None, overrides: dict[str, Any] | None = None) -> set[str]:
    """The dotted keys the user set: a YAML file's (not a built-in profile's) and the non-None overrides.

    An accelerator's recommended scheduler, steps and guidance give way to these only: a built-in
    profile's values for them are its choice for runs without an accelerator.
    """
    spec = str(name_or_path or "default")
    keys = {k for k, v in (overrides or {}).items() if v is not None}
    path = Path(spec)
    if spec not in builtin_profiles() and path.is_file():
        keys |= set(dotted(_read_profile_file(path)))
    return keys


def load_profile(name_or_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Profile:
    """Build the effective profile.

    ``name_or_path`` is a built-in profile name (``default``, ``fast``, ``quality``, ``archival``)
    or a YAML file; ``overrides`` maps dotted keys (``sampling.steps``) to values; ``None`` values
    are ignored so CLI options left unset keep the profile's value.
    """
    spec = str(name_or_path or "default")
    path = Path(spec)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise UserError(
                "profile file not found", path=path, hint=f"built-ins: {', '.join(builtin_profiles())}"
            )
        data = _read_profile_file(path)
        data.setdefault("name", path.stem)
    else:
        if spec not in builtin_profiles():
            raise UserError(
                f"unknown profile '{spec}'", hint=f"use one of {', '.join(builtin_profiles())} or a YAML file"
            )
        data = _builtin_data(spec)
        data.setdefault("name", spec)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node: dict[str, Any] = {}
        cursor = node
        parts = dotted.split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        data = _deep_update(data, node)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "value_error":  # our own checks name their keys
            message = f"invalid profile value: {str(first['msg']).removeprefix('Value error, ')}"
        else:
            message = f"invalid profile value {loc}: {first['msg']}"
        raise UserError(message, path=str(name_or_path or "default")) from exc
