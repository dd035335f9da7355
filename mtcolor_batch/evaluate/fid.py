"""FID between the colorized set and the colour references, through torchmetrics.

torchmetrics' ``FrechetInceptionDistance`` does the statistics (running sums in float64, the
matrix square root through eigenvalues); its default feature network is torch-fidelity's
``FeatureExtractorInceptionV3``, the TF-Inception port every FID in the literature uses. Neither is
written here.

Weights: torch-fidelity would download ``weights-inception-2015-12-05-6726825d.pth`` on first use,
which an offline cluster cannot. We look for that file in torch's hub cache or take
``--fid-weights PATH``, read it safely (``.safetensors`` through safetensors, ``.pth`` through
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers) and hand
torch-fidelity a copy re-saved from those tensors alone, because torch-fidelity itself unpickles a
given path without that restriction. When the weights or torch-fidelity are missing, the caller gets
one line saying how to get them and only the FID column is left empty.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
MIN_SAMPLES = 2
"""torchmetrics needs two images per side for a covariance; real FID wants thousands."""


class FidUnavailable(Exception):
    """FID cannot be computed here; the message is the one line shown to the user."""


def hub_weights_path() -> Path:
    """Where torch (and torch-fidelity) cache the Inception weights: ``<torch hub>/checkpoints/``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def find_inception_weights(explicit: Path | None) -> Path:
    """``--fid-weights`` if given, else torch's hub cache; FidUnavailable with how-to when absent."""
    if explicit is not None:
        if not explicit.is_file():
            raise FidUnavailable(f"FID skipped: --fid-weights {explicit} not found; {_how_to()}")
        return explicit
    cached = hub_weights_path()
    if cached.is_file():
        return cached
    raise FidUnavailable(f"FID skipped: no Inception weights in {cached.parent}; {_how_to()}")


def _how_to() -> str:
    return (
        f"on a connected machine download {INCEPTION_URL} into {hub_weights_path().parent}, "
        "or pass --fid-weights PATH (.pth or .safetensors)"
    )


def load_weights_safely(path: Path) -> dict[str, Any]:
    """A state dict from ``.safetensors`` or a ``.pth`` read with ``weights_only=True``."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, not a tensor file
        line = f"FID skipped: cannot read Inception weights {path}: {exc}".splitlines()[0]
        raise FidUnavailable(line) from exc
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise FidUnavailable(f"FID skipped: {path} is not a state dict of tensors")
    return data


class FidScorer:
    """Accumulates reference and prediction images one at a time (any size) and computes FID."""

    def __init__(self, metric: Any, device: str = "cpu") -> None:
        self.metric = metric.to(device)
        self.device = device
        self.counts = {True: 0, False: 0}

    @classmethod
    def with_extractor(cls, extractor: Any, device: str = "cpu") -> FidScorer:
        """FID over a caller's feature network (an ``nn.Module`` mapping uint8 Nx3xHxW to NxD)."""
        from torchmetrics.image.fid import FrechetInceptionDistance

        return cls(FrechetInceptionDistance(feature=extractor, reset_real_features=True), device)

    @classmethod
    def inception(cls, weights: Path | None, device: str = "cpu") -> FidScorer:
        """The standard 2048-d pool features of torch-fidelity's Inception; FidUnavailable otherwise."""
        path = find_inception_weights(weights)
        state = load_weights_safely(path)
        try:
            import torch_fidelity  # type: ignore[import-not-found]  # noqa: F401
        except Exception as exc:  # ImportError, or torchvision failing under it
            raise FidUnavailable(
                f"FID skipped: torch-fidelity is not usable ({type(exc).__name__}: {exc}); "
                "pip install 'mtcolor-batch[fid]' (needs torchvision)"
            ) from exc
        import torch
        from torchmetrics.image.fid import FrechetInceptionDistance

        with tempfile.TemporaryDirectory(prefix="mtcolor-fid-") as tmp:
            trusted = Path(tmp) / INCEPTION_FILE
            torch.save(state, trusted)  # only tensors we read safely: torch-fidelity may unpickle it
            metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(trusted))
        return cls(metric, device)

    def add(self, rgb: np.ndarray, *, real: bool) -> None:
        """One HxWx3 float [0, 1] image, as uint8 (the Inception's expected input)."""
        import torch

        x = np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(self.device)
        with torch.inference_mode():
            self.metric.update(t, real=real)
        self.counts[real] += 1

    def compute(self) -> float:
        """The Fréchet distance; FidUnavailable when a side has fewer than two images."""
        if min(self.counts.values()) < MIN_SAMPLES:
            raise FidUnavailable(
                f"FID skipped: needs at least {MIN_SAMPLES} scored images and references "
                f"(have {self.counts[False]} and {self.counts[True]})"
            )
        return float(self.metric.compute())
