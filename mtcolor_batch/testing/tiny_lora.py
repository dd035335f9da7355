"""Random LoRAs in the published accelerators' on-disk key format, for tests and the benchmark.

LCM-LoRA and Hyper-SD 1.5 ship kohya-style keys (what diffusers' ``lora_state_dict`` converts with
``_convert_non_diffusers_lora_to_diffusers``): per adapted layer ``lora_unet_<module path with _>``
+ ``.lora_down.weight`` (rank, in[, kh, kw]), ``.lora_up.weight`` (out, rank[, 1, 1]) and ``.alpha``
(a scalar). Key names follow the public kohya <-> diffusers key maps (e.g. diffusers' LoRA
conversion tests; docs/few-step.md names the sources). The layers adapted here are the ones a
full SD 1.5 LoRA of LCM-LoRA's kind covers: attention projections, transformer in/out
projections, feed-forwards, and the ResNet convolutions and time embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
RESNET_TARGETS = ("conv1", "conv2", "time_emb_proj", "conv_shortcut")
SAMPLER_TARGETS = ("downsamplers.0.conv", "upsamplers.0.conv")
LCM_LORA_RANK = 64
"""LCM-LoRA SD 1.5's rank (its paper and model card)."""


def lora_targets(unet: nn.Module) -> list[str]:
    """The UNet's layers a full accelerator LoRA adapts (Linear and Conv2d only)."""
    names = []
    for name, mod in unet.named_modules():
        if not isinstance(mod, nn.Linear | nn.Conv2d):
            continue
        if name.endswith(ATTENTION_TARGETS + RESNET_TARGETS + SAMPLER_TARGETS) and (
            ".attentions." in name or ".resnets." in name or "samplers." in name
        ):
            names.append(name)
    return names


def kohya_key(module: str) -> str:
    return "lora_unet_" + module.replace(".", "_")


def random_kohya_lora(
    unet: nn.Module,
    *,
    rank: int = 4,
    alpha: float | None = None,
    std: float = 0.02,
    seed: int = 0,
    targets: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """A random LoRA for ``unet`` in kohya key format (both factors non-zero, so it changes the UNet)."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(unet.named_modules())
    out: dict[str, torch.Tensor] = {}
    for name in targets if targets is not None else lora_targets(unet):
        mod: Any = modules[name]
        r = rank
        if isinstance(mod, nn.Conv2d):
            down_shape: tuple[int, ...] = (r, mod.in_channels, *mod.kernel_size)
            up_shape: tuple[int, ...] = (mod.out_channels, r, 1, 1)
        else:
            down_shape, up_shape = (r, mod.in_features), (mod.out_features, r)
        key = kohya_key(name)
        out[f"{key}.lora_down.weight"] = (torch.randn(down_shape, generator=g) * std).to(dtype)
        out[f"{key}.lora_up.weight"] = (torch.randn(up_shape, generator=g) * std).to(dtype)
        out[f"{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else r)).to(dtype)
    return out


def write_kohya_lora(path: Path, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
