"""The MT-Color sampling loop: multi-instance branches, fusion, classifier-free guidance, tiling.

One call colours one working-resolution image. What happens, in order:

1. Texts are encoded once: the global prompt, the negative prompt and every instance's text (its
   77-token embedding is that branch's cross-attention prompt; its pooled embedding feeds the
   instance-guidance tokens).
2. Initial noise comes from a CPU ``torch.Generator`` seeded with the plan's seed, so the same seed
   gives the same noise on every device.
3. For the first ``K = round(alpha*T)`` steps the global branch and one branch per instance are
   denoised from that same noise, each with its own text; all branches, both halves of classifier-
   free guidance and all tiles go through the UNet together, chunked to ``plan.max_batch`` latents
   per call (at the first of these steps every branch still holds the noise, so their identical
   unconditional halves are computed once; ``sampling.branch_uncond: global``, an opt-in
   approximation, borrows the global branch's unconditional half at every one of these steps).
   After step K the branches are fused (paper Eq. 10; ``sampling.fusion``, see
   :func:`fuse_latents`) and the remaining steps run on ``z`` alone.
   ``alpha = 0`` never creates a branch, so it is the plain loop, bit for bit.
4. Tiling (working image larger than one tile): a low-resolution pass of the whole picture runs
   first; its colours, put on the full-resolution luminance and encoded by the VAE, are re-noised to
   an intermediate step, and the tiles take it from there. Every step denoises every tile, the
   noise predictions are blended with the smooth windows of ``render.tiling`` and ONE scheduler steps
   the whole canvas. Blending noise predictions and then stepping equals stepping each tile and
   blending the latents (the DDIM update is affine per pixel and the weights sum to 1), so this is
   MultiDiffusion with a single scheduler state.

The scheduler is ``plan.scheduler`` (``model/schedulers.py``: DDIM by default, built from the bundle's
config like the others). Each updates every batch row from that row alone, so batching branches
into one tensor keeps one state per branch; at the fusion the multistep solvers' history is fused
with the latents (``schedulers.fuse_history``), and LCM/TCD draw their step noise from the run's
seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mtcolor_batch.core.color import rgb_to_ab
from mtcolor_batch.core.types import LATENT_FACTOR, Box, Instance, Plan
from mtcolor_batch.model import schedulers
from mtcolor_batch.model.canvas import (
    Canvas,
    area_resized,
    build_canvas,
    ceil8,
    grid_span,
    plan_latent_tiles,
    resize_plane,
    whole_canvas,
)
from mtcolor_batch.model.fusion import fuse_latents, fusion_steps, steps_fraction
from mtcolor_batch.model.hint_embedding import HintEmbeddings
from mtcolor_batch.model.regions import RegionBatch
from mtcolor_batch.model.schedulers import Scheduler
from mtcolor_batch.render.chroma import lab_to_srgb_locked
from mtcolor_batch.render.tiling import crop_masks

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

TILE_SEED_STRENGTH = 0.6
"""Fraction of the steps re-run on the tiles after the low-resolution pass seeds them: enough to
add tile-level detail, little enough that the global colours survive (SDEdit-style strength)."""


@dataclass
class TextBank:
    """Encoded texts: 77-token sequences for cross-attention and pooled vectors for guidance."""

    prompt: torch.Tensor  # (1, 77, D)
    negative: torch.Tensor  # (1, 77, D)
    inst_seq: torch.Tensor  # (N, 77, D)
    inst_pooled: torch.Tensor  # (N, D_pooled)


DenoiseFn = Callable[..., torch.Tensor]
"""``denoiser(latents, timestep, text_embeds, control_image, regions, controlnet_scale=...)``."""
StepCallback = Callable[[int], None]
"""``on_step(i)`` before denoising step ``i``: a stop check (it may raise to abandon the image)."""


def set_timesteps(scheduler: object, steps: int, device: torch.device) -> None:
    """``scheduler.set_timesteps`` kept inside the trained timesteps at every step count.

    SD 1.5's DDIM config ("leading" spacing, ``steps_offset`` 1) puts its first timestep at 1000 for
    1000 steps, one past the last trained one (an IndexError in ``step``). Only there, the spacing
    becomes "trailing" (999 down to 0: every trained timestep once); other step counts are unchanged.
    """
    config: Any = getattr(scheduler, "config", {})
    offset = int(config.get("steps_offset", 0) or 0)
    trained = int(config.get("num_train_timesteps", 1000))
    last = (steps - 1) * (trained // max(1, steps)) + offset  # the first timestep, leading spacing
    if config.get("timestep_spacing") == "leading" and last > trained - 1:
        scheduler.register_to_config(timestep_spacing="trailing")  # type: ignore[attr-defined]
    scheduler.set_timesteps(steps, device=device)  # type: ignore[attr-defined]


@dataclass
class _Entry:
    """One latent in a UNet batch: which tile, which branch, which CFG half."""

    tile: int
    branch: int  # 0 = global, k = instance k
    cond: bool
    box: Box = (0, 0, 0, 0)  # latent box the entry runs on: its tile, or the branch's crop inside it


class MTColorSampler:
    """Runs the loop; counts UNet calls (one call = one batched denoiser forward)."""

    def __init__(
        self,
        denoiser: DenoiseFn,
        scheduler_factory: Callable[..., Scheduler],
        vae: AutoencoderKL,
        encode_text: Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]],
        device: torch.device,
        dtype: torch.dtype,
        hints: HintEmbeddings | None = None,
    ) -> None:
        self.denoiser = denoiser
        self.hints = hints  # the denoiser's ControlNet hint embeddings, reused within one denoise()
        self.scheduler_factory = scheduler_factory
        self.vae = vae
        self.encode_text = encode_text
        self.device = device
        self.dtype = dtype
        self.unet_calls = 0

    # ----------------------------------------------------------------------------------- texts
    def texts(self, plan: Plan, instances: Sequence[Instance]) -> TextBank:
        inst_texts = [(inst.text or inst.label or "").strip() for inst in instances]
        unique = list(dict.fromkeys([plan.prompt, plan.negative_prompt, *inst_texts]))
        seq, pooled = self.encode_text(unique)
        index = {t: i for i, t in enumerate(unique)}
        ids = torch.tensor([index[t] for t in inst_texts], dtype=torch.long, device=seq.device)
        return TextBank(
            prompt=seq[index[plan.prompt]][None],
            negative=seq[index[plan.negative_prompt]][None],
            inst_seq=seq[ids],
            inst_pooled=pooled[ids],
        )

    def canvas(
        self, luma: np.ndarray, instances: Sequence[Instance], texts: TextBank, plan: Plan, tiled: bool = True
    ) -> Canvas:
        """The canvas this sampler runs ``plan`` on: the plan's latent tiles (or one box) and branch crop."""

        def tiles(height: int, width: int) -> list[Box]:
            return plan_latent_tiles(plan, height, width) if tiled else whole_canvas(height, width)

        pooled = texts.inst_pooled
        return build_canvas(luma, instances, pooled, tiles, self.device, self.dtype, plan.branch_crop)

    # ------------------------------------------------------------------------------ one step
    @staticmethod
    def _entry_box(canvas: Canvas, tile: int, branch: int) -> Box:
        """The tile's box, or for an instance branch with a crop its crop inside the tile, on the
        tile's own 64 px grid (tiles start anywhere on the 8 px grid)."""
        box = canvas.boxes[tile]
        if branch == 0 or not canvas.crops:
            return box
        cx0, cy0, cx1, cy1 = canvas.crops[branch - 1]
        x0, y0, x1, y1 = box
        if len(canvas.boxes) == 1:
            return (max(x0, cx0), max(y0, cy0), min(x1, cx1), min(y1, cy1))
        ex0, ex1 = grid_span(max(x0, cx0), min(x1, cx1), x0, x1)
        ey0, ey1 = grid_span(max(y0, cy0), min(y1, cy1), y0, y1)
        return (ex0, ey0, ex1, ey1)

    @staticmethod
    def _box_regions(canvas: Canvas, box: Box, cond: bool) -> RegionBatch:
        """Regions of a cropped entry: the instances inside the crop, tokens dropped if unconditional."""
        if box not in canvas.box_present:
            canvas.box_present[box] = crop_masks(canvas.fusion_masks[None], box)[1]
        return canvas.regions(box, canvas.box_present[box], cond)

    @staticmethod
    def _regions(canvas: Canvas, tile: int, cond: bool) -> RegionBatch:
        """Regions of one (tile, CFG half) entry, the same for every branch.

        The unconditional half keeps the regions and drops only the instance tokens, exactly what
        training's null dropout feeds (``train.trainer.make_regions``): the masks hold in both halves,
        so ``uncond + s*(cond - uncond)`` never carries a term that crossed an instance border.
        """
        return canvas.regions(canvas.boxes[tile], canvas.present[tile], cond)

    def predict(
        self,
        z: torch.Tensor,
        branches: list[int],
        t: torch.Tensor,
        canvas: Canvas,
        texts: TextBank,
        plan: Plan,
        scheduler: Scheduler,
        *,
        shared: bool = False,
    ) -> torch.Tensor:
        """Guided noise prediction for every active branch over the whole canvas: (len(branches),4,h,w).

        ``z`` holds one latent per active branch (branch ids in ``branches``). Every (tile, branch,
        CFG half) is one batch entry; entries of the same tile shape share UNet calls of at most
        ``plan.max_batch``.

        ``shared``: every branch's latent is still the global one (the first multi-instance step,
        all branches start from the same noise). The unconditional half then has identical inputs in
        every branch (same latent, negative text, regions without tokens), so it is computed once,
        by the global branch, and used by all: the same values for a fraction of the work. Not for
        a branch on a crop (``branch_crop``): its two halves must see the same crop, or the crop's
        error would no longer cancel in ``cond - uncond`` and guidance would amplify it.

        ``plan.branch_uncond == "global"`` (an approximation, opt-in): at every multi-instance step
        an instance branch runs its conditional half only and is guided by the global branch's
        unconditional prediction over its window (its crop, with ``branch_crop``). That half has no
        instance text and no tokens, so it differs from the global one only through the branch
        latent, which stays near the global latent in the first alpha*T steps; the cost is that the
        branch's own deviation (and its crop's error) no longer cancels in ``cond - uncond``.
        """
        cfg = plan.guidance_scale > 1.0
        halves = (False, True) if cfg else (True,)
        global_uncond = plan.branch_uncond == "global"
        entries: list[_Entry] = []
        for ti in range(len(canvas.boxes)):
            for b in branches:
                if b == 0 or (b - 1) in canvas.present[ti]:
                    box = self._entry_box(canvas, ti, b)
                    own_uncond = b == 0 or not (global_uncond or (shared and box == canvas.boxes[ti]))
                    entries.extend(_Entry(ti, b, c, box) for c in halves if c or own_uncond)
        model_in = scheduler.scale_model_input(z, t)
        slot = {b: i for i, b in enumerate(branches)}
        outputs: dict[tuple[int, int, bool], torch.Tensor] = {}
        by_shape: dict[tuple[int, int], list[_Entry]] = {}
        boxes: dict[tuple[int, int], Box] = {}
        for e in entries:
            x0, y0, x1, y1 = e.box
            by_shape.setdefault((y1 - y0, x1 - x0), []).append(e)
        s = LATENT_FACTOR
        for group in by_shape.values():
            for start in range(0, len(group), max(1, plan.max_batch)):
                chunk = group[start : start + max(1, plan.max_batch)]
                lat, txt, ctl, regs = [], [], [], []
                for e in chunk:
                    x0, y0, x1, y1 = e.box
                    lat.append(model_in[slot[e.branch], :, y0:y1, x0:x1])
                    if not e.cond:
                        txt.append(texts.negative[0])
                    elif e.branch == 0:
                        txt.append(texts.prompt[0])
                    else:
                        txt.append(texts.inst_seq[e.branch - 1])
                    ctl.append(canvas.control[0, :, y0 * s : y1 * s, x0 * s : x1 * s])
                    regs.append(
                        self._regions(canvas, e.tile, e.cond)
                        if e.box == canvas.boxes[e.tile]
                        else self._box_regions(canvas, e.box, e.cond)
                    )
                regions = RegionBatch.cat(regs)
                pred = self.denoiser(
                    torch.stack(lat).to(self.dtype),
                    t,
                    torch.stack(txt).to(self.dtype),
                    torch.stack(ctl),
                    regions,
                    controlnet_scale=plan.controlnet_scale,
                    control_keys=[e.box for e in chunk],  # the window each hint shows
                )
                self.unet_calls += 1
                for e, p in zip(chunk, pred.float(), strict=True):
                    outputs[(e.tile, e.branch, e.cond)] = p
                    boxes[(e.tile, e.branch)] = e.box
        out = []
        for b in branches:
            tiles, preds = [], []
            for ti in range(len(canvas.boxes)):
                if (ti, b, True) not in outputs:
                    continue
                cond = outputs[(ti, b, True)]
                if cfg:
                    uncond = outputs.get((ti, b, False))
                    if uncond is None:  # shared or global: the global branch's, inside this entry's box
                        (x0, y0, x1, y1), (tx0, ty0) = boxes[(ti, b)], boxes[(ti, 0)][:2]
                        uncond = outputs[(ti, 0, False)][:, y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0]
                    eps = uncond + plan.guidance_scale * (cond - uncond)
                else:
                    eps = cond
                tiles.append(ti)
                preds.append(eps[None])
            if b == 0:
                out.append(canvas.blender.blend(preds)[0])
            elif canvas.crops:
                out.append(self._crop_blend(canvas, [boxes[(ti, b)] for ti in tiles], tiles, preds, out[0]))
            else:
                out.append(self._partial_blend(canvas, tiles, preds, out[0]))
        return torch.stack(out)

    @staticmethod
    def _partial_blend(
        canvas: Canvas, tiles: list[int], preds: list[torch.Tensor], fallback: torch.Tensor
    ) -> torch.Tensor:
        """Blend an instance branch over the tiles it appears in; elsewhere follow the global branch.

        Every pixel of the instance lies in a tile where the instance is present, so its fused value
        only ever uses real predictions of its own branch; the fallback fills pixels whose value the
        fusion discards anyway.
        """
        if len(canvas.boxes) == 1:
            return preds[0][0] if preds else fallback
        acc = torch.zeros_like(fallback)
        wsum = torch.zeros(fallback.shape[-2:], device=fallback.device, dtype=fallback.dtype)
        for ti, p in zip(tiles, preds, strict=True):
            x0, y0, x1, y1 = canvas.boxes[ti]
            win = torch.from_numpy(canvas.blender.weights(ti)).to(fallback.device, fallback.dtype)
            acc[:, y0:y1, x0:x1] += p[0] * win
            wsum[y0:y1, x0:x1] += win
        return torch.where(wsum > 0, acc / wsum.clamp_min(1e-12), fallback)

    @staticmethod
    def _crop_blend(
        canvas: Canvas, boxes: list[Box], tiles: list[int], preds: list[torch.Tensor], fallback: torch.Tensor
    ) -> torch.Tensor:
        """An instance branch run on crops: its predictions inside them, the global branch's elsewhere.

        Outside its crop a branch's latent then takes exactly the global branch's steps (same noise,
        same updates), so it equals the global latent there; inside, overlapping tiles blend with
        their windows as in :meth:`_partial_blend`.
        """
        out = fallback.clone()
        if len(canvas.boxes) == 1:
            for (x0, y0, x1, y1), p in zip(boxes, preds, strict=True):
                out[:, y0:y1, x0:x1] = p[0]
            return out
        acc = torch.zeros_like(fallback)
        wsum = torch.zeros(fallback.shape[-2:], device=fallback.device, dtype=fallback.dtype)
        for ti, (x0, y0, x1, y1), p in zip(tiles, boxes, preds, strict=True):
            tx0, ty0 = canvas.boxes[ti][:2]
            win = torch.from_numpy(canvas.blender.weights(ti)).to(fallback.device, fallback.dtype)
            win = win[y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0]
            acc[:, y0:y1, x0:x1] += p[0] * win
            wsum[y0:y1, x0:x1] += win
        return torch.where(wsum > 0, acc / wsum.clamp_min(1e-12), out)

    # ------------------------------------------------------------------------------- the loop
    def denoise(
        self,
        canvas: Canvas,
        texts: TextBank,
        plan: Plan,
        z0: torch.Tensor,
        start: int = 0,
        generator: torch.Generator | None = None,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """Run steps ``start..T-1`` from latent ``z0`` (1, 4, h, w) (float32); return the final latent.

        ``generator``: the run's seeded generator, which LCM and TCD draw their step noise from.
        ``on_step(i)`` is called before each step (as diffusers' ``callback_on_step_end``): a batch
        runner's stop check, which may raise to abandon the image within one step.

        ``plan.branch_refresh`` N > 1 (an approximation): in the first K steps the instance branches
        run at every Nth step only; in between, each takes the global branch's prediction (run, as
        always) plus the branch's deviation from it at its last run. That deviation is what the
        instance's text and tokens do; it changes slowly over the first, noisiest steps, so carrying
        it for a step costs a few percent of the branches' effect on the latent for half of their
        work (docs/speed.md). Outside its crop a branch's deviation is zero, so it
        still follows the global branch exactly there. N = 1 is the paper's sampling, unchanged.
        """
        scheduler = self.scheduler_factory(plan.scheduler)
        set_timesteps(scheduler, plan.steps, self.device)
        timesteps = scheduler.timesteps[start:]
        if start == 0:  # as diffusers' pipelines do (1.0 for every scheduler offered here)
            z0 = z0 * scheduler.init_noise_sigma
        k = fusion_steps(plan.alpha, plan.steps)
        n = canvas.n_instances
        multi = n > 0 and k > start
        branches = [0, *range(1, n + 1)] if multi else [0]
        z = z0.repeat(len(branches), 1, 1, 1) if multi else z0
        delta: torch.Tensor | None = None  # each branch's guided deviation from the global branch
        # The hints' ControlNet embeddings are the same at every step: computed once per window.
        with self.hints.reuse() if self.hints is not None else nullcontext():
            for i, t in enumerate(timesteps, start=start):
                if on_step is not None:
                    on_step(i)
                if multi and delta is not None and (i - start) % plan.branch_refresh:
                    eps_g = self.predict(z[:1], [0], t, canvas, texts, plan, scheduler)
                    eps = torch.cat([eps_g, eps_g + delta])
                else:
                    shared = multi and i == start
                    eps = self.predict(z, branches, t, canvas, texts, plan, scheduler, shared=shared)
                    if multi and plan.branch_refresh > 1:
                        delta = eps[1:] - eps[:1]
                z = schedulers.step(scheduler, eps, t, z, generator, plan.tcd_gamma)
                if multi and i + 1 == k:
                    z = fuse_latents(z[:1], z[1:], canvas.fusion_masks, plan.beta, plan.fusion)
                    schedulers.fuse_history(scheduler, self._history_fusion(canvas, plan), len(branches))
                    branches = [0]
                    multi = False
        return z

    @staticmethod
    def _history_fusion(canvas: Canvas, plan: Plan) -> Callable[[torch.Tensor], torch.Tensor]:
        """How a solver's per-branch history is fused: each pixel keeps the past of the branch that
        supplied it (the instance's inside its region, the global one elsewhere, never scaled)."""
        return lambda h: fuse_latents(h[:1], h[1:], canvas.fusion_masks, plan.beta, "paste")

    def initial_noise(self, generator: torch.Generator, latent_size: tuple[int, int]) -> torch.Tensor:
        """Seeded on the CPU, then moved: identical noise on every device for one seed."""
        noise = torch.randn((1, 4, *latent_size), generator=generator, dtype=torch.float32)
        return noise.to(self.device)

    # ----------------------------------------------------------------------------- VAE / Lab
    @torch.no_grad()
    def decode_rgb(self, z: torch.Tensor, canvas: Canvas) -> np.ndarray:
        """Latent -> sRGB float64 (H, W, 3) in [0, 1], padding cropped."""
        vae_dtype = next(self.vae.parameters()).dtype
        scale = self.vae.config.scaling_factor
        img = self.vae.decode((z / scale).to(vae_dtype)).sample
        rgb = ((img.float() + 1.0) / 2.0).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
        return rgb[: canvas.height, : canvas.width].astype(np.float64)

    @torch.no_grad()
    def encode_rgb(self, rgb: np.ndarray, canvas: Canvas) -> torch.Tensor:
        """sRGB (H, W, 3) -> latent (1, 4, h, w) float32 (distribution mean: deterministic)."""
        hp, wp = canvas.control.shape[-2:]
        h, w = rgb.shape[:2]
        padded = np.pad(rgb.astype(np.float32), ((0, hp - h), (0, wp - w), (0, 0)), mode="edge")
        x = torch.from_numpy(padded).permute(2, 0, 1)[None].to(self.device) * 2.0 - 1.0
        vae_dtype = next(self.vae.parameters()).dtype
        latent = self.vae.encode(x.to(vae_dtype)).latent_dist.mean
        return latent.float() * self.vae.config.scaling_factor

    # --------------------------------------------------------------------------------- sample
    @torch.no_grad()
    def sample(
        self, luma: np.ndarray, instances: Sequence[Instance], plan: Plan, on_step: StepCallback | None = None
    ) -> np.ndarray:
        """Colour one working-resolution luma (H, W) -> sRGB (H, W, 3) float64 in [0, 1].

        ``on_step``: see :meth:`denoise` (called at every step of every pass)."""
        luma = np.asarray(luma, dtype=np.float32)
        if luma.ndim != 2 or luma.size == 0:
            raise ValueError(f"luma must be a non-empty 2-D array, got shape {luma.shape}")
        texts = self.texts(plan, instances)
        generator = torch.Generator("cpu").manual_seed(int(plan.seed))
        full = self.canvas(luma, instances, texts, plan)  # a box outside the luma raises ValueError
        if len(full.boxes) == 1:
            z0 = self.initial_noise(generator, full.latent_size)
            z = self.denoise(full, texts, plan, z0, generator=generator, on_step=on_step)
            return self.decode_rgb(z, full)

        # Tiled: a low-resolution pass of the whole picture fixes the colours ...
        h, w = luma.shape
        scale = plan.tile_size / max(ceil8(h), ceil8(w))
        lh, lw = max(1, round(h * scale)), max(1, round(w * scale))
        low_instances = [area_resized(inst, (h, w), (lh, lw)) for inst in instances]
        low = self.canvas(resize_plane(luma, (lh, lw)), low_instances, texts, plan, tiled=False)
        z0 = self.initial_noise(generator, low.latent_size)
        z_low = self.denoise(low, texts, plan, z0, generator=generator, on_step=on_step)
        rgb_low = self.decode_rgb(z_low, low)
        ab_low = rgb_to_ab(rgb_low)
        ab = resize_plane(ab_low, (h, w))
        seed_rgb = lab_to_srgb_locked(luma, ab[0], ab[1])
        # ... and the tiles re-run the last TILE_SEED_STRENGTH of the steps from it, re-noised.
        x0 = self.encode_rgb(seed_rgb, full)
        start = min(plan.steps - 1, plan.steps - steps_fraction(TILE_SEED_STRENGTH, plan.steps))
        start = max(0, start)
        # The run's scheduler re-noises (its own add_noise at the tiles' first timestep).
        scheduler = self.scheduler_factory(plan.scheduler)
        set_timesteps(scheduler, plan.steps, self.device)
        noise = self.initial_noise(generator, full.latent_size)
        t_start = scheduler.timesteps[start : start + 1]
        z_start = scheduler.add_noise(x0, noise, t_start)
        z = self.denoise(full, texts, plan, z_start, start=start, generator=generator, on_step=on_step)
        return self.decode_rgb(z, full)
