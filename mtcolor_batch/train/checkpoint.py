"""Training checkpoints that resume exactly, written without pickle.

A checkpoint is a folder ``checkpoints/step-0000100/`` holding:

* ``trainable.safetensors``  the trainable weights (by parameter name)
* ``optimizer.safetensors``  every optimizer state tensor, keyed ``<param index>/<name>``
* ``rng.safetensors``        torch CPU / CUDA / trainer-generator RNG states (uint8 tensors)
* ``state.json``             step, data position, optimizer param groups and non-tensor state,
                             LR-scheduler and grad-scaler state, numpy and Python RNG states

Why this split: tensors go to safetensors (no code runs on load, unlike pickle/torch.load) and every
scalar goes to JSON, which a person can read. The folder is written under a temporary name and
renamed into place, so a crash leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.fs import atomic_write_text, staged_dir

_NAME = re.compile(r"^step-(\d{7,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``folder`` (those with a state.json), oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def capture_rng(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG a training step may draw from: torch (CPU + CUDA), the trainer's generator, numpy, Python."""
    tensors = {"torch_cpu": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state: Any = np.random.get_state()
    py_state = random.getstate()
    scalars = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, scalars


def restore_rng(
    generator: torch.Generator, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]
) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    generator.set_state(tensors["generator"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = scalars["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = scalars["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    folder: Path,
    step: int,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    generator: torch.Generator,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically under ``folder`` and keep only the newest ``keep``."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    with staged_dir(final) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in trainable.items()}
        save_file(weights, str(tmp / "trainable.safetensors"))
        opt_tensors, opt_meta = _optimizer_to_files(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors, rng_scalars = capture_rng(generator)
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        record = {
            **state,
            "step": step,
            "optimizer": opt_meta,
            "lr_scheduler": lr_scheduler.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_scalars,
        }
        atomic_write_text(tmp / "state.json", json.dumps(record, sort_keys=True))
    for _, old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path,
    *,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore optimizer, LR scheduler, scaler and RNGs in place; return (trainable weights, state.json)."""
    try:
        record = json.loads((path / "state.json").read_text(encoding="utf-8"))
        trainable = load_file(str(path / "trainable.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng_tensors = load_file(str(path / "rng.safetensors"))
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise UserError(f"cannot read checkpoint: {exc}", path=path) from exc
    device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    optimizer.load_state_dict(
        _optimizer_from_files({k: v.to(device) for k, v in opt_tensors.items()}, record["optimizer"])
    )
    lr_scheduler.load_state_dict(record["lr_scheduler"])
    if scaler is not None and record.get("grad_scaler"):
        scaler.load_state_dict(record["grad_scaler"])
    restore_rng(generator, rng_tensors, record["rng"])
    return trainable, record
