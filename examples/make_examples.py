"""Make the small example scans (and their sidecars) the README's main job runs on.

Why generated instead of downloaded: the project ships no third-party photos, and the examples must
exercise the awkward inputs real archives hold: an RGB JPEG that is really a sepia print, an 8-bit
gray PNG, a 16-bit gray TIFF with a mask hint, each with a sidecar. The
scenes are drawn procedurally (sky, buildings, a tram, a figure, a boat, film grain) with a fixed
seed, so the files are byte-identical on every run of this script.

Usage: python examples/make_examples.py [OUT_DIR]   (default: examples/scans next to this file)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

SEPIA = np.array([1.0, 0.86, 0.66])  # toning tint (multiplied into highlights)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return y / h, x / w


def street(h: int = 384, w: int = 512, seed: int = 1) -> np.ndarray:
    """A street: gradient sky, two buildings with windows, a tram, cobbles; gray float in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = _grid(h, w)
    img = 0.85 - 0.25 * y  # sky
    img[y > 0.62] = 0.45 + 0.1 * np.sin(x[y > 0.62] * 90) * np.sin(y[y > 0.62] * 70)  # cobbles
    img[(x > 0.05) & (x < 0.38) & (y > 0.15) & (y < 0.62)] = 0.35  # building 1
    img[(x > 0.62) & (x < 0.97) & (y > 0.22) & (y < 0.62)] = 0.55  # building 2
    win = (np.sin(x * 120) > 0.6) & (np.sin(y * 80) > 0.5) & (y > 0.2) & (y < 0.58)
    img[win & (((x > 0.07) & (x < 0.36)) | ((x > 0.64) & (x < 0.95)))] = 0.15
    tram = (x > 0.40) & (x < 0.75) & (y > 0.45) & (y < 0.72)
    img[tram] = 0.28
    img[tram & (y > 0.5) & (y < 0.58) & (np.sin(x * 150) > 0)] = 0.7  # tram windows
    img += rng.normal(0, 0.025, img.shape)  # grain
    return np.clip(img, 0, 1)


def portrait(h: int = 512, w: int = 384, seed: int = 2) -> np.ndarray:
    """A studio portrait: vignetted backdrop, a head and a dark coat."""
    rng = np.random.default_rng(seed)
    y, x = _grid(h, w)
    img = 0.7 - 0.35 * np.hypot(x - 0.5, y - 0.45)
    head = ((x - 0.5) / 0.14) ** 2 + ((y - 0.3) / 0.13) ** 2 < 1
    img[head] = 0.72
    coat = (y > 0.45) & (np.abs(x - 0.5) < 0.08 + 0.5 * (y - 0.45))
    img[coat] = 0.2
    img += rng.normal(0, 0.02, img.shape)
    return np.clip(img, 0, 1)


def harbour(h: int = 400, w: int = 640, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A harbour: sky, sea with ripples, a boat hull (its mask is returned for the sidecar)."""
    rng = np.random.default_rng(seed)
    y, x = _grid(h, w)
    img = 0.9 - 0.3 * y
    sea = y > 0.55
    img[sea] = 0.4 + 0.05 * np.sin(x[sea] * 200 + y[sea] * 40)
    hull = (y > 0.48) & (y < 0.62) & (x > 0.3 + 0.5 * (y - 0.48)) & (x < 0.7 - 0.5 * (y - 0.48))
    img[hull] = 0.18
    mast = (np.abs(x - 0.5) < 0.004) & (y > 0.2) & (y < 0.48)
    img[mast] = 0.1
    img += rng.normal(0, 0.015, img.shape)
    return np.clip(img, 0, 1), hull


def write_examples(out: Path) -> list[Path]:
    """Write every example scan + sidecar into ``out``; return the scan paths."""
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []

    gray = street()
    sepia = np.clip(gray[..., None] * SEPIA * (0.9 + 0.1 * gray[..., None]), 0, 1)
    p = out / "street_1910.jpg"
    Image.fromarray(np.rint(sepia * 255).astype(np.uint8), "RGB").save(p, quality=92)
    (out / "street_1910.jpg.yaml").write_text(
        "version: 1\n"
        'prompt: "a city street in 1910, overcast, brick buildings"\n'
        "instances:\n"
        "  - box: [205, 173, 384, 276]   # the tram\n"
        '    color: "dark green"\n'
        '    text: "a dark green tram"\n'
        "exclude: [sky]\n",
        encoding="utf-8",
    )
    made.append(p)

    p = out / "portrait.png"
    Image.fromarray(np.rint(portrait() * 255).astype(np.uint8), "L").save(p)
    (out / "portrait.yaml").write_text(
        "version: 1\n"
        'prompt: "a studio portrait photograph"\n'
        "seed: 1234\n"
        "instances:\n"
        "  - polygon: [[192, 230], [290, 512], [94, 512]]   # the coat\n"
        "    color: navy\n"
        '    text: "a navy wool coat"\n',
        encoding="utf-8",
    )
    made.append(p)

    sub = out / "harbour"
    (sub / "masks").mkdir(parents=True, exist_ok=True)
    img, hull = harbour()
    p = sub / "harbour_16bit.tif"
    tifffile.imwrite(
        p, np.rint(img * 65535).astype(np.uint16), photometric="minisblack", compression="zlib", metadata=None
    )
    Image.fromarray((hull * 255).astype(np.uint8), "L").save(sub / "masks" / "boat.png")
    (sub / "harbour_16bit.tif.yaml").write_text(
        "version: 1\n"
        'prompt: "a fishing harbour, calm sea"\n'
        "instances:\n"
        "  - mask: masks/boat.png\n"
        '    color: "#8b0000"\n'
        '    text: "a dark red wooden boat"\n',
        encoding="utf-8",
    )
    made.append(p)
    return made


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "scans"
    for path in write_examples(out):
        print(path)


if __name__ == "__main__":
    main()
