"""Dataset build configuration: the caption chain, the text filters and the train/test split.

Kept apart from ``TrainConfig`` because none of it changes a training run once the dataset exists,
and a training config must not accept it by mistake. The shipped defaults live in
``profiles/dataset.yaml``; a user file overlays them section by section and CLI options
override single keys. The build records the config in ``dataset.json`` so a dataset says how its
texts were made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mtcolor_batch.train.config import read_config_layers, validate_config

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
    data, mine, where = read_config_layers(DATASET_PROFILE, path, WHAT)
    data = _overlay(data, mine)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            data = _overlay(data, {key: {k: v for k, v in value.items() if v is not None}})
        elif value is not None:
            data[key] = value
    return validate_config(DatasetConfig, data, where, WHAT)
