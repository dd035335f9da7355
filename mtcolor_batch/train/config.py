"""Training configuration: one validated set of every knob that changes a training run.

Kept apart from the run ``Profile`` because training knobs (learning rate, warm-up, accumulation)
never change how a finished bundle colorizes, and a run profile must not accept them by mistake.
The shipped defaults live in ``profiles/train.yaml``; a user file overlays them and
CLI options override single keys. The config is stored beside every checkpoint, and ``--resume``
refuses a config whose loss-changing values differ, because that resume would no longer be exact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mtcolor_batch.core.config import SamplingSettings, builtin_dir
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.train.naming import has_colour_word

TRAIN_PROFILE = "train.yaml"


class TrainConfig(BaseModel):
    """Every value of a training run (recorded in the checkpoint and the output bundle)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    steps: int | None = Field(
        None,
        ge=1,
        description="Optimizer steps (each one = grad_accum micro-batches); unset: the paper's "
        "per-stage default, 25,000 for stage 1 and 20,000 for stage 2.",
    )
    batch_size: int = Field(4, ge=1, description="Samples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches summed into one optimizer step.")
    lr: float = Field(5e-5, gt=0)
    projection_lr_scale: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Stage 1: the instance branch's W_Qp/W_Kp/W_Vp/W_O, which start as copies of the "
        "UNet's self-attention, train at lr times this; the parts that start from scratch (token "
        "encoder, token map, LayerNorm, gates) at lr.",
    )
    warmup_steps: int = Field(500, ge=0, description="Linear warm-up from 0 to lr over these steps.")
    weight_decay: float = Field(1e-2, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(
        1e-18,
        gt=0,
        description="AdamW's eps. Far below torch's 1e-8 on purpose: behind the zero-initialised gates "
        "the text path's first gradients are ~1e-15 (they scale with tanh(gate)), and at eps 1e-8 "
        "Adam takes a |g| / eps sliver of each step there, for thousands of steps at the paper's "
        "lr and warm-up (bench/train_first_steps.py).",
    )
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping; 0 turns it off.")
    resolution: int = Field(512, ge=8, description="Square training size in pixels (multiple of 8).")
    null_prob: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Chance that a sample's texts are replaced by null, masks kept (for CFG).",
    )
    caption_dropout: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Stage 1: chance that a sample whose texts are kept sees caption_dropout_prompt "
        "(no colour named) as its global text instead of its caption, instance texts kept. Why: "
        "built captions repeat the instance colours, and inference's default prompt names none. "
        "Not in the paper.",
    )
    caption_dropout_prompt: str = Field(
        SamplingSettings.model_fields["prompt"].default,
        description="The colour-free global text of caption_dropout (default: the run profile's "
        "default prompt).",
    )
    max_instances: int = Field(8, ge=1, description="Instance slots per sample; extra instances are dropped.")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, else fp16 on GPU, fp32 on CPU."
    )
    checkpoint_every: int = Field(1000, ge=1, description="Optimizer steps between checkpoints.")
    keep_checkpoints: int = Field(3, ge=1, description="Most recent checkpoints kept on disk.")
    log_every: int = Field(10, ge=1)
    seed: int = 0
    cache_latents: bool = Field(
        False, description="Keep each sample's VAE posterior in memory (small datasets; saves the encode)."
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    controlnet_init: Literal["bundle", "unet"] = Field(
        "bundle",
        description="Stage 2's starting ControlNet: the bundle's (default; already a gray-to-colour "
        "ControlNet) or a copy of the UNet's encoder (ControlNetModel.from_unet, the paper's recipe).",
    )

    @field_validator("caption_dropout_prompt")
    @classmethod
    def _names_no_colour(cls, prompt: str) -> str:
        if has_colour_word(prompt):
            raise ValueError(f"{prompt!r} names a colour; the dropped caption must name none")
        return prompt

    def loss_fingerprint(self) -> str:
        """Hash of the values a resumed run must share with the original for the loss curve to match.

        ``steps``, ``checkpoint_every``, ``keep_checkpoints``, ``log_every`` and ``num_workers`` may
        change between a run and its resume (e.g. to train longer) without changing any loss.
        """
        free = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "num_workers"}
        data = self.model_dump(mode="json", exclude=free)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _read_yaml(text: str, where: str, what: str = "training config") -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise UserError(f"cannot parse {what}: {exc}", path=where, line=line) from exc
    if not isinstance(data, dict):
        raise UserError(f"a {what} must be a YAML mapping", path=where)
    return data


def load_train_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Shipped defaults (``profiles/train.yaml``) overlaid by ``path`` then by ``overrides``.

    ``None`` override values are ignored so CLI options left unset keep the file's value.
    """
    data, mine, where = read_config_layers(TRAIN_PROFILE, path, "training config")
    data.update(mine)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(given)
    return validate_config(TrainConfig, data, where, "training", given)


def read_config_layers(
    shipped_name: str, path: str | Path | None, what: str
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(the shipped profile's mapping, the user file's mapping or {}, the name errors point at).

    The caller overlays them its own way (flat or nested); a file that cannot be read or parsed is a
    one-line UserError naming it (and the line, for YAML).
    """
    shipped = (builtin_dir() / shipped_name).read_text(encoding="utf-8")
    data = _read_yaml(shipped, shipped_name, what)
    if path is None:
        return data, {}, shipped_name
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {what}: {exc.strerror}", path=path) from exc
    return data, _read_yaml(text, str(path), what), str(path)


_Config = TypeVar("_Config", bound=BaseModel)


def validate_config(
    model: type[_Config], data: dict[str, Any], where: str, label: str, overridden: Collection[str] = ()
) -> _Config:
    """``model`` from ``data``, its first validation error as one line: "invalid <label> value <key>".

    A bad value that came from ``overridden`` (the command line) names its option, not ``where``:
    blaming a file the user never wrote (the shipped profile) sends them looking in the wrong place.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["loc"] and first["loc"][0] in overridden:
            option = "--" + str(first["loc"][0]).replace("_", "-")
            raise UserError(f"invalid value for {option}: {first['msg']}") from exc
        raise UserError(f"invalid {label} value {loc}: {first['msg']}", path=where) from exc
