"""Optional no-reference IQA scores (NIQE, MUSIQ, MANIQA, TOPIQ) through pyiqa, the extra ``[iqa]``.

pyiqa is heavy (it needs torchvision) and fetches its weights on first use, so it is never a hard
dependency: when it is missing or a metric's weights cannot be loaded, eval prints why and goes on
with the other metrics instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_IQA = ("niqe", "musiq", "maniqa", "topiq_nr")


class IqaScorer:
    """The pyiqa metrics that could be created, by name."""

    def __init__(self, metrics: dict[str, object], device: str) -> None:
        self.metrics = metrics
        self.device = device

    @classmethod
    def create(cls, names: Sequence[str], device: str, messages: list[str]) -> IqaScorer | None:
        """Create each metric; explain every one that cannot be loaded in ``messages``."""
        try:
            import pyiqa
        except Exception as exc:  # ImportError, or torchvision failing to load under it
            messages.append(
                f"IQA metrics skipped: pyiqa is not usable ({type(exc).__name__}: {exc}); "
                "install the extra with pip install 'mtcolor-batch[iqa]' (needs torchvision)"
            )
            return None
        loaded: dict[str, object] = {}
        for name in names:
            try:
                loaded[name] = pyiqa.create_metric(name, device=device)
            except Exception as exc:  # weights download blocked, unknown name, ...
                messages.append(
                    f"IQA metric {name} skipped: cannot create it ({type(exc).__name__}: {exc}); "
                    "its weights must be in pyiqa's cache (run once on a connected machine)"
                )
        return cls(loaded, device) if loaded else None

    def score(self, rgb: np.ndarray) -> dict[str, float]:
        """Every loaded metric on one HxWx3 [0, 1] image."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float().to(self.device)
        out = {}
        with torch.inference_mode():
            for name, metric in self.metrics.items():
                out[name] = float(metric(x).mean())  # type: ignore[operator]
        return out
