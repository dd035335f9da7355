"""A synthetic colour task for smoke-testing training end to end: red/blue squares and circles on gray.

Why this task: it can only be solved by reading the instance texts. The red and the royal blue
chosen here have the same luminance (to 1e-4), so the gray input shows two identical-gray shapes;
each shape's colour is drawn independently, so neither its shape nor its position nor its gray
value says its colour. A model that colours the shape told "red" redder than the shape told
"royal blue", and swaps when the texts swap, has learned the text-to-region binding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mtcolor_batch.core.types import Instance
from mtcolor_batch.model.bundle import load_bundle, save_bundle
from mtcolor_batch.model.denoiser import MTColorModules
from mtcolor_batch.model.registry import MANIFEST_FILE, MODULES_FILE
from mtcolor_batch.testing.tiny_sd15 import tiny_controlnet, tiny_text_encoder, tiny_unet

RED = (220, 0, 0)
BLUE = (34, 92, 255)  # same CIE luminance as RED (gray 0.4264); CSS-nearest name "royal blue"
BACKGROUND = (200, 200, 200)


@dataclass
class ShapesImage:
    """One synthetic photo: RGB uint8 and its two ground-truth instances."""

    rgb: np.ndarray
    square: np.ndarray  # bool mask
    circle: np.ndarray  # bool mask
    square_red: bool
    circle_red: bool


SIDE_FRAC = 0.42
RADIUS_FRAC = 0.22
"""Shape sizes as fractions of the image side. Large on purpose: the tiny UNet attends only at 1/16 of
the image resolution (its coarse level), and a shape must still own latent cells there for the
instance tokens to be attended at all."""


def shapes_image(
    rng: np.random.Generator, size: int = 64, square_red: bool | None = None, circle_red: bool | None = None
) -> ShapesImage:
    """A square and a circle at random non-overlapping places, each red or blue at random."""
    side = int(size * SIDE_FRAC)
    radius = int(size * RADIUS_FRAC)
    yy, xx = np.mgrid[0:size, 0:size]
    margin = max(1, size // 20)
    for _ in range(10000):
        sx, sy = rng.integers(1, size - side - 1, size=2)
        cx, cy = rng.integers(radius + 1, size - radius - 1, size=2)
        square = (xx >= sx) & (xx < sx + side) & (yy >= sy) & (yy < sy + side)
        circle = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        grown = (np.abs(xx - cx) <= radius + margin) & (np.abs(yy - cy) <= radius + margin)
        if not (square & grown).any():
            break
    else:
        raise ValueError(f"cannot place a square and a circle apart in a {size} px image")
    sq_red = bool(rng.integers(2)) if square_red is None else square_red
    ci_red = bool(rng.integers(2)) if circle_red is None else circle_red
    rgb = np.empty((size, size, 3), dtype=np.uint8)
    rgb[:] = BACKGROUND
    rgb[square] = RED if sq_red else BLUE
    rgb[circle] = RED if ci_red else BLUE
    return ShapesImage(rgb, square, circle, sq_red, ci_red)


def single_shape(image: ShapesImage, keep_square: bool) -> ShapesImage:
    """The same photo with only one of its two shapes (the other painted over with background)."""
    rgb = image.rgb.copy()
    gone = image.circle if keep_square else image.square
    rgb[gone] = BACKGROUND
    empty = np.zeros_like(gone)
    if keep_square:
        return ShapesImage(rgb, image.square, empty, image.square_red, image.circle_red)
    return ShapesImage(rgb, empty, image.circle, image.square_red, image.circle_red)


def recoloured(image: ShapesImage) -> ShapesImage:
    """The same photo with red and blue exchanged: an identical gray image with the opposite colours."""
    rgb = image.rgb.copy()
    for mask, red in ((image.square, image.square_red), (image.circle, image.circle_red)):
        rgb[mask] = BLUE if red else RED
    return ShapesImage(rgb, image.square, image.circle, not image.square_red, not image.circle_red)


def write_shapes_folder(
    folder: Path, count: int, *, size: int = 64, seed: int = 0, single: bool = False, paired: bool = False
) -> dict[str, ShapesImage]:
    """Write ``count`` shapes photos as PNG; return relpath -> image (its ground truth).

    ``single`` keeps one shape per photo (square or circle at random): each photo then has one
    colour word. The learning test keeps both, as its held-out images have; that is not what makes
    the texts learnable (one shape per photo learned as well: effect 52 +- 10, 3 of 3 seeds passing,
    at the trainer's ``projection_lr_scale`` 0.1, which is what did).
    ``paired`` writes every layout twice, the second time with red and blue exchanged (``count``
    must be even). Why: with a few dozen photos a backbone memorises each layout's colours from its
    gray image, which leaves the texts nothing to add on the training set, so nothing to learn;
    with both colourings of every gray image present, only the instance texts can tell them apart.
    """
    if paired and count % 2:
        raise ValueError(f"paired shapes photos need an even count, got {count}")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out: dict[str, ShapesImage] = {}
    while len(out) < count:
        image = shapes_image(rng, size)
        if single:
            image = single_shape(image, bool(rng.integers(2)))
        for version in (image, recoloured(image)) if paired else (image,):
            name = f"shapes_{len(out):04d}.png"
            Image.fromarray(version.rgb, mode="RGB").save(folder / name)
            out[name] = version
    return out


class TruthFinder:
    """Instance finder that returns the ground-truth square and circle of a synthetic photo.

    Used in place of perception for this task only: tiny random perception models find nothing
    meaningful, and the point here is to test training, not detection. Texts are made by the
    dataset builder from the real pixels under each mask, unless ``colour_words`` (red word, blue
    word) gives the ground-truth texts, as an annotation file with texts would.
    """

    def __init__(self, truth: dict[str, ShapesImage], colour_words: tuple[str, str] | None = None) -> None:
        self.truth = truth
        self.colour_words = colour_words

    def __call__(self, scan: object) -> list[Instance]:
        image = self.truth[scan.relpath]  # type: ignore[attr-defined]
        found = []
        shapes = (("square", image.square, image.square_red), ("circle", image.circle, image.circle_red))
        for k, (label, mask, red) in enumerate(shapes, start=1):
            if not mask.any():
                continue
            text = f"a {self.colour_words[0 if red else 1]} {label}" if self.colour_words else ""
            found.append(Instance.from_full_mask(k, label, text, mask))
        return found


def fit_tiny_vae(
    bundle_dir: Path, images: list[np.ndarray], *, steps: int = 300, lr: float = 2e-3, seed: int = 0
) -> float:
    """Teach a tiny bundle's random VAE to reconstruct ``images`` (uint8 HxWx3), in place; return final MSE.

    Why: a tiny bundle's VAE is random, so decoded colours mean nothing and no colour test could
    pass however well the diffusion parts learn. The real SD VAE reconstructs well already; this
    gives the tiny one the same property on the synthetic images. The latent scaling factor is set
    from the fitted latents' spread (as SD's 0.18215 was), and the bundle is re-saved with its
    hashes recomputed and ``+vae-fit`` added to its revision.
    """
    import torch
    from diffusers import AutoencoderKL

    bundle = load_bundle(bundle_dir)
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(bundle_dir / "vae", use_safetensors=True)
    vae.train()
    data = torch.from_numpy(np.stack(images).astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(0, len(data), (min(16, len(data)),), generator=generator)
        x = data[idx]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mean).sample
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-4 * posterior.mean.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    vae.eval()
    with torch.no_grad():
        std = float(vae.encode(data).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
    vae.save_pretrained(bundle_dir / "vae", safe_serialization=True)
    save_bundle(
        bundle_dir,
        name=bundle.name,
        revision=f"{bundle.revision}+vae-fit",
        tiny=bundle.tiny,
        sources={
            **bundle.sources,
            "vae_fit": {"images": len(images), "steps": steps, "mse": float(loss.detach())},
        },
    )
    return float(loss.detach())


def write_learning_bundle(source: Path, dest: Path, *, seed: int = 0, text_dim: int = 128) -> Path:
    """Copy the tiny bundle ``source`` to ``dest`` with a UNet that attends at the latent resolution.

    Why: the shipped tiny UNet attends only at its coarse level (1/16 of the image), where a shape of
    a 64 px image owns a cell or two, so instance tokens are barely attended and the synthetic task
    cannot be learned in a CPU budget. At a 64 px image the latent is 8x8 (64 tokens), so attention at
    that level is cheap here. Same tokenizer, text encoder, VAE and scheduler; the ControlNet is
    derived from the new UNet and the MT-Color modules are fresh (zero, exact no-ops), written with
    the same save code as every bundle. Perception components are left out (not needed here). The
    modules' branch projections are copies of this random UNet; stage 1 does not start from them:
    the trainer re-copies them from the UNet it trains beside (``start_branches_from_unet``), here
    the one stage 0 trained.

    The text encoder is rebuilt ``text_dim`` wide (the shipped tiny one is 32): the instance token's
    MLP sees [pooled text ; mask features (1024)], and at 32 text dims (3 % of its input, against
    768 of 1792 for SD 1.5) the text is drowned by the mask path and never learned in a CPU budget.
    """
    import shutil

    import torch
    from transformers import CLIPTokenizer

    original = load_bundle(source)
    shutil.copytree(
        source,
        dest,
        ignore=shutil.ignore_patterns(
            "sam", "detector", "unet", "controlnet", "text_encoder", MANIFEST_FILE, MODULES_FILE
        ),
    )
    vocab_size = len(CLIPTokenizer.from_pretrained(dest / "tokenizer"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = tiny_text_encoder(vocab_size, text_dim, layers=2, intermediate=2 * text_dim)
        unet = tiny_unet(text_dim, channels=(16, 32), attend_at_latent=True, head_dim=4)
        controlnet = tiny_controlnet(unet, live_zero_convs=False)
        modules = MTColorModules.from_unet(unet, controlnet, text_dim=text_dim)
    text_encoder.save_pretrained(dest / "text_encoder", safe_serialization=True)
    unet.save_pretrained(dest / "unet", safe_serialization=True)
    controlnet.save_pretrained(dest / "controlnet", safe_serialization=True)
    modules.save(dest / MODULES_FILE)
    save_bundle(
        dest,
        name=original.name,
        revision=f"{original.revision}+latent-attention",
        tiny=True,
        sources={"generator": "mtcolor_batch.testing.synthetic.write_learning_bundle", "seed": seed},
    )
    return dest
