"""Dataset build configuration: the caption chain, the text filters and the train/test split.

Kept apart from ``TrainConfig`` because none of it changes a training run once the dataset exists,
and a training config must not accept it by mistake. The shipped defaults live in
``mtcolor_batch/profiles/dataset.yaml``; a user file overlays them section by section and CLI options
override single keys. The build records the config in ``dataset.json`` so a dataset says how its
texts were made.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.train.config import _read_yaml

DATASET_PROFILE = "dataset.yaml"
WHAT = "dataset config"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CaptionerConfig(_Section):
    vlm: str | None = Field(None, description="Primary VLM: local folder or hub id (image-text-to-text).")
    blip2: str | None = Field(None, description="BLIP-2 fallback: local folder or hub id.")
    max_new_tokens: int = Field(30, ge=1, le=512)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    vlm_instance_prompt: str = Field(..., min_length=1)
    vlm_image_prompt: str = Field(..., min_length=1)
    blip2_instance_prompt: str = Field(..., min_length=1)
    blip2_image_prompt: str = ""

    @field_validator("vlm_instance_prompt", "blip2_instance_prompt", "vlm_image_prompt", "blip2_image_prompt")
    @classmethod
    def _one_placeholder(cls, prompt: str) -> str:
        """Only ``{label}`` may appear in braces; checked here so a typo fails before any model loads."""
        try:
            prompt.format(label="car")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt may only use {{label}}, not {exc}") from exc
        return prompt


class FilterConfig(_Section):
    max_words: int = Field(12, ge=2)
    caption_max_words: int = Field(40, ge=2)
    duplicate_iou: float = Field(0.9, gt=0, le=1)


class SplitConfig(_Section):
    test_fraction: float = Field(0.2, ge=0, lt=1)
    seed: int = 0


class DatasetConfig(_Section):
    captioner: CaptionerConfig
    filters: FilterConfig  # every section is in the shipped profile, so none needs a default here
    split: SplitConfig
    max_side: int = Field(1024, ge=64)
    gray_tolerance: float = Field(0.03, ge=0)


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Sections merge key by key, so a user file may set only ``captioner: {vlm: ...}``."""
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            _overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def load_dataset_config(
    path: str | Path | None = None, overrides: dict[str, dict[str, Any] | Any] | None = None
) -> DatasetConfig:
    """Shipped defaults overlaid by ``path`` then by ``overrides`` (``None`` values are ignored)."""
    shipped = (resources.files("mtcolor_batch") / "profiles" / DATASET_PROFILE).read_text(encoding="utf-8")
    data = _read_yaml(shipped, DATASET_PROFILE, WHAT)
    where = DATASET_PROFILE
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read {WHAT}: {exc.strerror}", path=path) from exc
        data = _overlay(data, _read_yaml(text, where, WHAT))
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            data = _overlay(data, {key: {k: v for k, v in value.items() if v is not None}})
        elif value is not None:
            data[key] = value
    try:
        return DatasetConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UserError(f"invalid {WHAT} value {loc}: {first['msg']}", path=where) from exc
