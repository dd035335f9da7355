"""FID through torchmetrics against a direct scipy computation, and how missing weights are reported."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
from scipy import linalg

from mtcolor_batch.evaluate.fid import INCEPTION_FILE, FidScorer, FidUnavailable, load_weights_safely


class ChannelStats(torch.nn.Module):
    """A small feature network with features we can compute by hand: per-channel mean and std."""

    num_features = 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double() / 255.0
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def _features(images: list[np.ndarray]) -> np.ndarray:
    rows = []
    for img in images:
        x = np.rint(np.clip(img, 0, 1) * 255.0) / 255.0
        rows.append(np.concatenate([x.mean(axis=(0, 1)), x.std(axis=(0, 1), ddof=1)]))
    return np.array(rows)


def _frechet_scipy(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def _images(seed: int, n: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((12, 10, 3)) ** rng.uniform(0.5, 2.0, 3)).astype(np.float32) for _ in range(n)]


def _fid(real: list[np.ndarray], fake: list[np.ndarray]) -> float:
    scorer = FidScorer.with_extractor(ChannelStats())
    for img in real:
        scorer.add(img, real=True)
    for img in fake:
        scorer.add(img, real=False)
    return scorer.compute()


@pytest.mark.slow
def test_fid_matches_scipy_on_known_features() -> None:
    real, fake = _images(0), _images(1)
    expected = _frechet_scipy(_features(real), _features(fake))
    assert expected > 1e-3
    assert _fid(real, fake) == pytest.approx(expected, rel=1e-5)


def test_identical_sets_score_zero_and_shifted_sets_more() -> None:
    real = _images(2)
    assert _fid(real, real) == pytest.approx(0.0, abs=1e-8)
    small = _fid(real, [np.clip(x + 0.05, 0, 1) for x in real])
    large = _fid(real, [np.clip(x + 0.25, 0, 1) for x in real])
    assert 0 < small < large
    shifted = [np.clip(x + 0.25, 0, 1) for x in real]
    assert large == pytest.approx(_frechet_scipy(_features(real), _features(shifted)), rel=1e-5)


def test_fid_needs_two_images_each_side() -> None:
    scorer = FidScorer.with_extractor(ChannelStats())
    scorer.add(_images(3, 1)[0], real=True)
    scorer.add(_images(4, 1)[0], real=False)
    with pytest.raises(FidUnavailable, match="at least 2"):
        scorer.compute()


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(FidUnavailable) as info:
        FidScorer.inception(None)
    line = str(info.value)
    assert "\n" not in line and INCEPTION_FILE in line and "--fid-weights" in line
    with pytest.raises(FidUnavailable, match="not found"):
        FidScorer.inception(tmp_path / "nope.pth")


class _NotATensor:
    pass


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_are_read_safely(tmp_path, monkeypatch) -> None:
    from safetensors.torch import save_file

    good = {"w": torch.ones(2, 2)}
    save_file(good, str(tmp_path / "w.safetensors"))
    torch.save(good, tmp_path / "w.pth")
    assert torch.equal(load_weights_safely(tmp_path / "w.safetensors")["w"], good["w"])
    assert torch.equal(load_weights_safely(tmp_path / "w.pth")["w"], good["w"])
    # a pickle carrying an arbitrary object is refused by weights_only=True, never executed
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": _NotATensor()}))
    with pytest.raises(FidUnavailable, match="cannot read Inception weights"):
        load_weights_safely(tmp_path / "evil.pth")
    # weights present but torch-fidelity missing: one line naming the extra
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(FidUnavailable, match=r"mtcolor-batch\[fid\]"):
        FidScorer.inception(tmp_path / "w.pth")
