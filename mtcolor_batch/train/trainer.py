"""The paper's two training stages (Sec. 4.1-4.2), with exact resume, ending in a bundle ``run`` can load.

Stage 1 trains only the instance guidance module (mask encoder + MLP + per-layer branches), and
"independently" as in the paper: its forward pass is the UNet with the instance branch alone, no
ControlNet call and no PMAM. Stage 2 freezes it and trains the ControlNet and PMAM; the ControlNet
starts from the bundle's (``controlnet_init: bundle``, default: a gray-to-colour ControlNet already
knows the task) or from the UNet (``unet``: ``ControlNetModel.from_unet``, the paper's and
ControlNet's own recipe). The UNet, VAE and text encoder are always frozen. Default lengths are the
paper's: 25,000 steps for stage 1, 20,000 for stage 2. Loss: L2 between the predicted and the true
noise (or velocity, per the bundle's scheduler config) at random DDPM timesteps of the VAE latents
of the colour target, conditioned on the gray image (stage 2), the global text and the instances.
Each sample's texts are replaced by null with probability ``null_prob`` (its regions stay, as in
classifier-free guidance at inference) so guidance has an unconditional model to subtract. Two
departures from the paper in stage 1 (docs/training-evidence.md gives the measurements): a kept
sample's global caption becomes a colour-free prompt with probability ``caption_dropout``
(:func:`drop_captions`), and untrained branches are re-copied from the UNet loaded now
(:func:`start_branches_from_unet`); AdamW's eps is far below torch's default (``adam_eps``).

Why plain PyTorch rather than accelerate: exact resume needs every RNG, the data position and the
optimizer/scheduler state under our control and written without pickle (see ``checkpoint.py``);
single-device autocast + GradScaler is a few lines. Every random draw of a step (null dropout,
VAE posterior sample, timesteps, noise) comes from one CPU ``torch.Generator`` in a fixed order,
so a step is a pure function of (weights, optimizer state, generator state, data position).

Instance-free samples (a photo without instances, or whose masks vanish at the training size) are
legitimate null samples: the branch's output there is exactly zero, so their loss does not depend on
what stage 1 trains and their gradient is exactly zero. A micro-batch made only of them therefore
gets no backward pass (that *is* its zero contribution), and an optimizer step whose micro-batches
all are so is skipped, not taken with zero gradients: AdamW would still decay the weights, push them
along the old momentum and age its moment estimates on a batch that carried no signal. Skipped steps
do not count towards ``steps``; they are counted in the log, the checkpoint and the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mtcolor_batch.core.device import resolve_device
from mtcolor_batch.core.errors import ModelError, UserError
from mtcolor_batch.core.fs import atomic_write_text, staged_dir
from mtcolor_batch.model.bundle import load_bundle, save_bundle
from mtcolor_batch.model.denoiser import MTColorDenoiser, MTColorModules
from mtcolor_batch.model.regions import RegionBatch
from mtcolor_batch.model.registry import MANIFEST_FILE, MODULES_FILE
from mtcolor_batch.model.text import encode_texts
from mtcolor_batch.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from mtcolor_batch.train.config import TrainConfig
from mtcolor_batch.train.data import Batch, ManifestDataset, OrderedBatches, collate

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

LOSS_LOG = "loss.jsonl"
CHECKPOINTS = "checkpoints"
BUNDLE = "bundle"


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mixed_precision`` on ``device`` (None = full fp32)."""
    if mode == "no" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "fp16" and device.type != "cuda":
        raise UserError("mixed_precision fp16 needs a CUDA GPU", hint="use bf16 or no on CPU")
    return torch.bfloat16 if mode == "bf16" else torch.float16


@dataclass
class Components:
    """Every part of a bundle the trainer touches, on the training device."""

    tokenizer: Any
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    controlnet: ControlNetModel
    modules: MTColorModules
    noise_scheduler: Any
    denoiser: MTColorDenoiser


STAGE_STEPS = {0: 20000, 1: 25000, 2: 20000}
"""Default optimizer steps per stage when the config leaves ``steps`` unset (the paper's)."""


def load_components(bundle_dir: Path, device: torch.device, controlnet_init: str = "bundle") -> Components:
    """Load a verified bundle's parts in fp32 (trainable parts must be fp32 for AdamW).

    ``controlnet_init="unet"`` replaces the bundle's ControlNet by one copied from the UNet
    (conditioning embedding sized like the bundle's, zero convs at zero).
    """
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    load_bundle(bundle_dir)  # hashes verified: training on a corrupted bundle wastes a GPU-day
    try:
        tokenizer = CLIPTokenizer.from_pretrained(bundle_dir / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(bundle_dir / "text_encoder", use_safetensors=True)
        vae = AutoencoderKL.from_pretrained(bundle_dir / "vae", use_safetensors=True)
        unet = UNet2DConditionModel.from_pretrained(bundle_dir / "unet", use_safetensors=True)
        controlnet = ControlNetModel.from_pretrained(bundle_dir / "controlnet", use_safetensors=True)
        config = json.loads((bundle_dir / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load bundle component: {exc}", path=bundle_dir) from exc
    # The noise the model learns to remove follows the bundle's schedule (betas, prediction type);
    # DDPM is the training-time view of it whatever sampler the bundle names for inference.
    noise_scheduler = DDPMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    modules = MTColorModules.load(bundle_dir / MODULES_FILE)
    if controlnet_init == "unet":
        controlnet = ControlNetModel.from_unet(
            unet,
            conditioning_embedding_out_channels=tuple(controlnet.config.conditioning_embedding_out_channels),
            conditioning_channels=int(controlnet.config.conditioning_channels),
        )
    elif controlnet_init != "bundle":
        raise UserError(f"unknown controlnet_init {controlnet_init!r}", hint="use bundle or unet")
    parts = [text_encoder, vae, unet, controlnet, modules]
    for part in parts:
        part.to(device).requires_grad_(False).eval()
    # Compute every module, even provably-zero ones: a zero gate / zero out_proj must still get a gradient.
    denoiser = MTColorDenoiser(unet, controlnet, modules, skip_zero_modules=False)
    return Components(tokenizer, text_encoder, vae, unet, controlnet, modules, noise_scheduler, denoiser)


def start_branches_from_unet(parts: Components) -> bool:
    """Before stage 1 on untrained guidance (every gate zero), copy W_Qp/W_Kp/W_Vp/W_O from the UNet
    loaded now, the one stage 1 trains beside; return whether it did.

    Why: a bundle's modules hold copies taken when they were written (``models pull``, a converter,
    a test's bundle builder), from whatever UNet was there then; a UNet fine-tuned or replaced since
    would leave the branches starting from attention this UNet no longer computes. With every gate
    zero the branches add exactly nothing, so re-copying changes no output of the bundle. Trained
    guidance (a gate non-zero) is kept: its projections are part of what was learned.
    """
    guidance = parts.modules.guidance
    if any(bool(guidance.layer(key).gate.any()) for key in guidance.layers):
        return False
    guidance.init_from(parts.unet.get_parameter)
    return True


def trainable_parameters(parts: Components, stage: int) -> dict[str, nn.Parameter]:
    """Name -> parameter of what a stage trains (stage 1: guidance; stage 2: ControlNet + PMAM)."""
    if stage == 0:  # backbone pretraining of toy bundles (testing/synthetic.py); not a paper stage
        groups = {"unet": parts.unet, "controlnet": parts.controlnet}
    elif stage == 1:
        groups = {"guidance": parts.modules.guidance}
    elif stage == 2:
        groups = {"controlnet": parts.controlnet, "pmam": parts.modules.pmam}
    else:
        raise UserError(f"unknown training stage {stage}", hint="use --stage 1 or --stage 2")
    named = {}
    for prefix, module in groups.items():
        module.train()
        for name, param in module.named_parameters():
            param.requires_grad_(True)
            named[f"{prefix}.{name}"] = param
    return named


def param_groups(
    parts: Components, params: dict[str, nn.Parameter], stage: int, cfg: TrainConfig
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: in stage 1 the branch projections copied from the UNet apart.

    Why: stage 1 mixes parts that start from scratch (token encoder, token map, LayerNorm, zero
    gates) with W_Qp/W_Kp/W_Vp/W_O that start as copies of a working self-attention. At the rate the
    new parts need, the copies were scrambled within a few hundred steps and the text binding the
    branch had learned came and went (synthetic learning task); ``projection_lr_scale`` slows them.
    """
    if stage != 1 or cfg.projection_lr_scale == 1.0:
        return [{"params": list(params.values())}]
    copied = {f"guidance.{n}" for n in parts.modules.guidance.copied_parameter_names()}
    rest = [p for n, p in params.items() if n not in copied]
    slow = [p for n, p in params.items() if n in copied]
    return [{"params": rest}, {"params": slow, "lr": cfg.lr * cfg.projection_lr_scale}]


class FrozenCache:
    """Outputs of the frozen text encoder (and optionally the VAE encoder), computed once per key.

    Each entry is computed alone (batch of one), so its value never depends on which other samples
    happened to share a batch: a resumed run, whose cache starts empty, gets bit-identical inputs.
    Texts repeat a lot in a dataset (the null text, colour words), so the saving is large.
    """

    def __init__(self, parts: Components, device: torch.device, max_texts: int = 8192) -> None:
        self.parts, self.device, self.max_texts = parts, device, max_texts
        self.texts: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], []
        for text in texts:
            if text in self.texts:
                self.texts.move_to_end(text)
            else:
                h, p = encode_texts(self.parts.tokenizer, self.parts.text_encoder, [text], self.device)
                self.texts[text] = (h[0], p[0])
                if len(self.texts) > self.max_texts:
                    self.texts.popitem(last=False)
            hidden.append(self.texts[text][0])
            pooled.append(self.texts[text][1])
        return torch.stack(hidden), torch.stack(pooled)

    def posterior(self, batch: Batch, cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the VAE posterior of the colour targets."""
        if not cache:
            dist = self.parts.vae.encode(batch.pixels.to(self.device)).latent_dist
            return dist.mean, dist.std
        for i, ident in enumerate(batch.ids):
            if ident not in self.latents:
                dist = self.parts.vae.encode(batch.pixels[i : i + 1].to(self.device)).latent_dist
                self.latents[ident] = (dist.mean[0], dist.std[0])
        return (
            torch.stack([self.latents[k][0] for k in batch.ids]),
            torch.stack([self.latents[k][1] for k in batch.ids]),
        )


def make_regions(batch: Batch, pooled: torch.Tensor, keep: torch.Tensor, latent_size: tuple[int, int]) -> Any:
    """RegionBatch of a micro-batch, built by the builder inference uses (``RegionBatch.from_masks``).

    ``keep[b] == False`` is the null condition: the regions stay, only the instance texts (tokens)
    are dropped, exactly as classifier-free guidance's unconditional half at inference.
    """

    slots = batch.valid.shape[1]
    per_image = []
    for b in range(batch.valid.shape[0]):
        n = int(batch.valid[b].sum())
        masks = [batch.masks[b, k] for k in range(n)]
        per_image.append(
            RegionBatch.from_masks(masks, pooled[b, :n].detach().cpu(), latent_size, slots=slots)
        )
    return RegionBatch.cat(per_image).drop_tokens(~keep)


def drop_captions(
    texts: list[str], keep: torch.Tensor, generator: torch.Generator, cfg: TrainConfig
) -> list[str]:
    """Stage 1's global texts: each kept one becomes ``caption_dropout_prompt`` with chance
    ``caption_dropout`` (one draw per sample from ``generator``, always made, so the draw order does
    not depend on the rate); null texts stay null.

    Why: a built global text repeats its instances' texts ("..., with a red car"), so without this the
    instance tokens only ever learn beside a caption that already names their colours, and may learn
    to lean on it; at inference the default prompt names no colour. The paper has no such dropout.
    """
    drop = torch.rand(len(texts), generator=generator) < cfg.caption_dropout
    return [
        cfg.caption_dropout_prompt if bool(k) and bool(d) else t
        for t, k, d in zip(texts, keep, drop, strict=True)
    ]


def compute_loss(
    parts: Components,
    cache: FrozenCache,
    batch: Batch,
    generator: torch.Generator,
    cfg: TrainConfig,
    device: torch.device,
    amp: torch.dtype | None,
    stage: int = 2,
) -> torch.Tensor:
    """L2 noise-prediction loss of one micro-batch; draws (in this order) null, posterior, t, noise.

    Stage 1 runs without ControlNet and PMAM (the instance module trained on its own). Stage 0 (toy
    backbones only) leaves the ControlNet out of every other micro-batch at random, so its UNet also
    works alone, as SD's does: stage 1 trains on the UNet alone.
    """
    bsz = batch.pixels.shape[0]
    use_controlnet = stage == 2 or (stage == 0 and bool(torch.rand(1, generator=generator) < 0.5))
    keep = torch.rand(bsz, generator=generator) >= cfg.null_prob
    texts = [t if bool(k) else "" for t, k in zip(batch.texts, keep, strict=True)]
    if stage == 1:
        texts = drop_captions(texts, keep, generator, cfg)
    slots = batch.valid.shape[1]
    flat = [t for row in batch.inst_texts for t in row]
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    with torch.no_grad(), autocast:
        text_embeds, _ = cache.text(texts)
        _, pooled = cache.text(flat)
        mean, std = cache.posterior(batch, cfg.cache_latents)
        eps = torch.randn(mean.shape, generator=generator).to(device, mean.dtype)
        latents = (mean + std * eps).float() * parts.vae.config.scaling_factor
    sched = parts.noise_scheduler
    timesteps = torch.randint(0, sched.config.num_train_timesteps, (bsz,), generator=generator).to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    noisy = sched.add_noise(latents, noise, timesteps)
    if sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(latents, noise, timesteps)
    elif sched.config.prediction_type == "epsilon":
        target = noise
    else:
        raise ModelError(f"unsupported prediction_type {sched.config.prediction_type!r} for training")
    latent_size = (latents.shape[2], latents.shape[3])
    regions = make_regions(batch, pooled.float().view(bsz, slots, -1), keep, latent_size)
    with autocast:
        if use_controlnet:
            pred = parts.denoiser(noisy, timesteps, text_embeds, batch.control.to(device), regions)
        else:
            pred = parts.denoiser(noisy, timesteps, text_embeds, None, regions, use_controlnet=False)
    return F.mse_loss(pred.float(), target.float())


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    bundle: Path
    losses: list[float] = field(default_factory=list)
    skipped: int = 0  # optimizer steps skipped because no sample of theirs reached the instance branch


def check_stage_data(dataset: ManifestDataset, stage: int) -> None:
    """Stage 1 learns only from instances: a dataset without any is a setup error, not a long no-op."""
    if stage == 1 and not any(entry.get("instances") for entry in dataset.entries):
        raise UserError(
            "dataset has no instances, so stage 1 (the instance branch) would learn nothing: build it "
            "with `mtcolor-batch dataset build PHOTOS OUT --model BUNDLE` or --annotations FILE",
            path=dataset.folder,
        )


def _fingerprint_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "none"


def _read_losses(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # torn last line of a crash
        if row["step"] <= upto:
            rows.append(row)
    return rows


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link unchanged bundle files (a SD bundle is gigabytes); copy where links are impossible.

    Safe because nothing writes bundle files in place: modules and ControlNet are replaced by new files.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_trained_bundle(
    source: Path,
    dest: Path,
    parts: Components,
    stage: int,
    step: int,
    cfg: TrainConfig,
    notes: dict[str, Any] | None = None,
) -> Path:
    """Copy ``source`` to ``dest`` with the trained weights, a new revision and recomputed hashes.

    The training record (``sources.training``) gets the stage, steps, config and ``notes``.
    """
    original = load_bundle(source, verify=False)
    with staged_dir(dest) as staging:
        staging.rmdir()  # copytree creates it
        shutil.copytree(
            source, staging, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(MANIFEST_FILE, ".*")
        )
        (staging / MODULES_FILE).unlink()
        parts.modules.to("cpu", torch.float32).save(staging / MODULES_FILE)
        replaced = {0: ("unet", "controlnet"), 1: (), 2: ("controlnet",)}[stage]
        for name in replaced:
            shutil.rmtree(staging / name)
            getattr(parts, name).to("cpu", torch.float32).save_pretrained(
                staging / name, safe_serialization=True
            )
        training = list(original.sources.get("training", []))
        training.append(
            {
                "stage": stage,
                "steps": step,
                "from_revision": original.revision,
                "from_weights_sha256": original.weights_sha256,
                "config": cfg.model_dump(mode="json"),
                **(notes or {}),
            }
        )
        save_bundle(
            staging,
            name=original.name,
            revision=f"{original.revision}+s{stage}-{step}",
            tiny=original.tiny,
            sources={**original.sources, "training": training},
        )
    return dest


class _Endless(torch.utils.data.Sampler):
    """Batch sampler over an :class:`OrderedBatches`; workers may read ahead of the training loop,
    so the checkpointed data position is counted from batches consumed (``_position``), not from it."""

    def __init__(self, order: OrderedBatches) -> None:
        self.order = order

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.order.next()


def _position(samples: int, n: int) -> dict[str, int]:
    """Data position after ``samples`` samples in total (every batch advances exactly batch_size)."""
    epoch, cursor = divmod(samples, n)
    return {"epoch": epoch, "cursor": cursor}


@contextmanager
def _timed() -> Iterator[Callable[[], float]]:
    start = time.perf_counter()
    yield lambda: time.perf_counter() - start


def train(
    *,
    stage: int,
    data: Path,
    bundle: Path,
    out: Path,
    config: TrainConfig,
    resume: bool = False,
    device: str | torch.device = "auto",
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run one stage; writes ``out/checkpoints``, ``out/loss.jsonl`` and ``out/bundle`` (the new bundle).

    ``stop_after`` ends the run after that many total steps without writing the bundle, as a crash
    would (after the checkpoint of that step, if one is due): used to test resume.
    """
    cfg = config
    total_steps = cfg.steps if cfg.steps is not None else STAGE_STEPS.get(stage, STAGE_STEPS[2])
    if cfg.steps is None:
        cfg = cfg.model_copy(update={"steps": total_steps})
    data, bundle, out = Path(data), Path(bundle), Path(out)
    dev = resolve_device(device)
    amp = autocast_dtype(cfg.mixed_precision, dev)
    if cfg.resolution % 8:
        raise UserError(f"resolution {cfg.resolution} is not a multiple of 8")
    ckpt_dir = out / CHECKPOINTS
    existing = list_checkpoints(ckpt_dir)
    if existing and not resume:
        raise UserError(
            "output folder already has checkpoints",
            path=out,
            hint="pass --resume to continue, or choose a new --out",
        )
    out.mkdir(parents=True, exist_ok=True)
    dataset = ManifestDataset(data, cfg.resolution, cfg.max_instances)
    check_stage_data(dataset, stage)
    torch.manual_seed(cfg.seed)
    parts = load_components(bundle, dev, cfg.controlnet_init if stage == 2 else "bundle")
    recopied = start_branches_from_unet(parts) if stage == 1 else False
    params = trainable_parameters(parts, stage)
    optimizer = torch.optim.AdamW(
        param_groups(parts, params, stage, cfg),
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )
    warmup = cfg.warmup_steps
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
    )
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    generator = torch.Generator().manual_seed(cfg.seed)
    identity = {
        "stage": stage,
        "config": cfg.loss_fingerprint(),
        "bundle": load_bundle(bundle, verify=False).weights_sha256,
        "data": _fingerprint_file(data / "manifest.jsonl"),
    }
    step, position, skipped = 0, {"epoch": 0, "cursor": 0}, 0
    if existing and resume:
        trainable, record = load_checkpoint(
            existing[-1][1],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scaler=scaler,
            generator=generator,
        )
        changed = [k for k, v in identity.items() if record.get("identity", {}).get(k) != v]
        if changed:
            raise UserError(
                f"cannot resume: {', '.join(changed)} differ from the checkpoint's",
                path=existing[-1][1],
                hint="resume with the same stage, bundle, dataset and loss-changing config",
            )
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(trainable[name].to(param.device, param.dtype))
        step, position = int(record["step"]), record["position"]
        skipped = int(record.get("skipped_steps", 0))
    cache = FrozenCache(parts, dev)
    order = OrderedBatches(len(dataset), cfg.batch_size, cfg.seed, **position)
    consumed_from = position["epoch"] * len(dataset) + position["cursor"]
    loader = iter(
        torch.utils.data.DataLoader(
            dataset, batch_sampler=_Endless(order), num_workers=cfg.num_workers, collate_fn=collate
        )
    )
    loss_path = out / LOSS_LOG
    rows = _read_losses(loss_path, step)
    _write_lines(loss_path, rows)
    losses = [r["loss"] for r in rows]
    say = log or (lambda _line: None)
    say(
        f"stage {stage}: {len(dataset)} samples, {sum(p.numel() for p in params.values()):,} trainable "
        f"parameters, device {dev}, precision {amp or torch.float32}, from step {step}"
    )
    if recopied:
        say("stage 1: branch projections W_Qp/W_Kp/W_Vp/W_O copied from this bundle's UNet")
    last = stop_after if stop_after is not None else total_steps
    batches = 0
    # Samples are deterministic, so consecutive skipped steps covering 2n samples (which always hold
    # one whole epoch) mean no sample reaches the branch at this resolution and looping on would
    # never end (all of a dataset's masks can vanish in the crop and resize).
    null_limit = -(-2 * len(dataset) // (cfg.batch_size * cfg.grad_accum)) + 1
    null_run = 0
    with _timed() as elapsed:
        start_step = step
        while step < min(last, total_steps):
            total, connected = 0.0, False
            for _ in range(cfg.grad_accum):
                batch = next(loader)
                batches += 1
                loss = compute_loss(parts, cache, batch, generator, cfg, dev, amp, stage)
                total += float(loss.detach())
                if not loss.requires_grad:  # only null samples: their gradient is exactly zero
                    continue
                connected = True
                scaled = loss / cfg.grad_accum
                (scaler.scale(scaled) if scaler else scaled).backward()
            if not connected:
                skipped += 1
                null_run += 1
                if null_run >= null_limit:
                    raise UserError(
                        f"no instance reaches the instance branch in a whole epoch at resolution "
                        f"{cfg.resolution}: every mask vanishes in the crop and resize",
                        path=data,
                        hint="raise resolution, or rebuild the dataset with larger instances",
                    )
                continue
            null_run = 0
            if scaler:
                scaler.unscale_(optimizer)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            mean = total / cfg.grad_accum
            if mean != mean:  # NaN: stop before it reaches a checkpoint or a bundle
                raise UserError(
                    f"loss became NaN at step {step}", hint="lower lr or use mixed_precision bf16/no"
                )
            losses.append(mean)
            with open(loss_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "loss": mean, "lr": lr}, sort_keys=True) + "\n")
            if step % cfg.log_every == 0 or step == cfg.steps:
                rate = elapsed() / max(1, step - start_step)
                note = f", {skipped} instance-free steps skipped" if skipped else ""
                say(f"step {step}/{cfg.steps} loss {mean:.5f} lr {lr:.2e} ({rate:.3f} s/step{note})")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint(
                    ckpt_dir,
                    step,
                    trainable={k: p for k, p in params.items()},
                    optimizer=optimizer,
                    lr_scheduler=lr_scheduler,
                    scaler=scaler,
                    generator=generator,
                    state={
                        "identity": identity,
                        "position": _position(consumed_from + batches * cfg.batch_size, len(dataset)),
                        "config_values": cfg.model_dump(mode="json"),
                        "skipped_steps": skipped,
                    },
                    keep=cfg.keep_checkpoints,
                )
    bundle_out = out / BUNDLE
    if step >= total_steps:
        write_trained_bundle(
            bundle, bundle_out, parts, stage, step, cfg, {"branches_copied_from_unet": recopied}
        )
        say(f"wrote bundle {bundle_out}")
    return TrainResult(
        steps=step,
        final_loss=losses[-1] if losses else float("nan"),
        bundle=bundle_out,
        losses=losses,
        skipped=skipped,
    )
