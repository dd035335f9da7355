"""The training set as tensors: a torch Dataset over a manifest written by ``dataset.py``.

Why deterministic preprocessing (resize the short side, centre crop, no random flips): the data
order and every sample are then a pure function of (seed, step), which is what lets a resumed run
repeat the uninterrupted loss curve exactly. Augmentation, if wanted, belongs in the builder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.train.dataset import MANIFEST, read_manifest
from mtcolor_batch.train.split import read_split

MIN_MASK_PIXELS = 4
"""Instances with fewer pixels left after the crop are dropped (they cannot steer anything)."""


@dataclass
class Batch:
    """One micro-batch; texts stay strings because the frozen text encoder runs in the trainer."""

    pixels: torch.Tensor  # (B, 3, R, R) colour target in [-1, 1] (VAE input range)
    control: torch.Tensor  # (B, 3, R, R) gray in [0, 1] (ControlNet input, as at run time)
    masks: torch.Tensor  # (B, N, R, R) float 0/1 instance masks
    valid: torch.Tensor  # (B, N) bool
    texts: list[str]  # B global texts
    inst_texts: list[list[str]]  # B x N instance texts ('' for empty slots)
    ids: list[str]


def _crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return left, top, left + side, top + side


def _load(
    path: Path, mode: str, box: tuple[int, int, int, int], size: int, resample: Image.Resampling
) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            return np.asarray(img.crop(box).resize((size, size), resample))
    except OSError as exc:
        raise UserError(f"cannot read dataset file: {exc}", path=path) from exc


class ManifestDataset(torch.utils.data.Dataset):
    """Samples of one split (``train`` by default) of a dataset folder at a square ``resolution``."""

    def __init__(self, folder: Path, resolution: int, max_instances: int, split: str = "train") -> None:
        self.folder = Path(folder)
        build = "build it with `mtcolor-batch dataset build COLOR_IMAGES OUT`"
        if not self.folder.is_dir():
            raise UserError("dataset folder not found", path=self.folder, hint=build)
        if not (self.folder / MANIFEST).is_file():
            raise UserError(f"not a dataset folder (no {MANIFEST})", path=self.folder, hint=build)
        if resolution % 8:
            raise UserError(f"training resolution {resolution} is not a multiple of 8")
        by_id: dict[str, dict[str, Any]] = {}
        for entry in read_manifest(self.folder):
            by_id[entry["id"]] = entry  # a photo rebuilt after it changed: its last line wins
        parts = read_split(self.folder)  # None: a dataset from before splits, all of it trains
        keep = set(parts[split]) if parts is not None else set(by_id)
        self.entries = [by_id[k] for k in sorted(by_id) if k in keep]
        if not self.entries:
            raise UserError(
                "dataset has no entries",
                path=self.folder / MANIFEST,
                hint=build,
            )
        self.resolution = resolution
        self.max_instances = max_instances

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        height, width = entry["size"]
        box = _crop_box(height, width)
        size = self.resolution
        rgb = _load(self.folder / entry["image"], "RGB", box, size, Image.Resampling.BICUBIC)
        gray = _load(self.folder / entry["gray"], "L", box, size, Image.Resampling.BICUBIC)
        masks = np.zeros((self.max_instances, size, size), dtype=np.float32)
        valid = np.zeros(self.max_instances, dtype=bool)
        texts = [""] * self.max_instances
        slot = 0
        for inst in entry.get("instances", []):
            if slot == self.max_instances:
                break
            mask = _load(self.folder / inst["mask"], "L", box, size, Image.Resampling.NEAREST) > 127
            if mask.sum() < MIN_MASK_PIXELS:
                continue
            masks[slot], valid[slot], texts[slot] = mask, True, inst["text"]
            slot += 1
        pixels = torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        control = torch.from_numpy(gray.astype(np.float32) / 255.0)[None].expand(3, -1, -1).contiguous()
        return {
            "id": entry["id"],
            "pixels": pixels,
            "control": control,
            "masks": torch.from_numpy(masks),
            "valid": torch.from_numpy(valid),
            "text": entry["text"],
            "inst_texts": texts,
        }


def collate(samples: Sequence[dict[str, Any]]) -> Batch:
    """Stack tensors, keep texts as lists."""
    return Batch(
        pixels=torch.stack([s["pixels"] for s in samples]),
        control=torch.stack([s["control"] for s in samples]),
        masks=torch.stack([s["masks"] for s in samples]),
        valid=torch.stack([s["valid"] for s in samples]),
        texts=[s["text"] for s in samples],
        inst_texts=[list(s["inst_texts"]) for s in samples],
        ids=[s["id"] for s in samples],
    )


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of one epoch: a pure function of (seed, epoch), so resume is exact."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


class OrderedBatches:
    """Micro-batch indices in a resumable order: position (epoch, cursor) is all its state.

    A partial epoch tail is carried into the next epoch's batch rather than dropped, so every
    sample is seen equally often and the position advances by exactly ``batch_size`` per batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, cursor: int = 0) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.cursor = epoch, cursor
        self._order = epoch_order(n, seed, epoch)

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = epoch_order(self.n, self.seed, self.epoch)
            take = min(self.batch_size - len(out), self.n - self.cursor)
            out.extend(self._order[self.cursor : self.cursor + take])
            self.cursor += take
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}
