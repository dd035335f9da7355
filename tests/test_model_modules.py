"""PMAM, instance guidance and the MT-Color denoiser on tiny diffusers models built here (CPU, offline).

The claims of the model are shown, not assumed: no colour evidence leaks across instance borders
(module level, with trained-like non-zero weights), fresh modules are bit-exact no-ops against plain
SD+ControlNet, the hook wiring equals feeding ``residual + delta`` to an unmodified UNet, batching is
exact, and weights round-trip through safetensors with strict checks.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from safetensors.torch import load_file, save_file

from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.model.denoiser import MTColorDenoiser, MTColorModules, RegionBatch
from mtcolor_batch.model.instance_guidance import (
    GuidanceContext,
    GuidanceState,
    GuidedLayer,
    InstanceAttnProcessor,
    InstanceGuidance,
)
from mtcolor_batch.model.pmam import PMAMBlock, RegionMasks, labels_at, same_region_mask

TEXT_DIM = 32
LATENT = (16, 16)


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=8,
    ).eval()


def tiny_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """ControlNet with its zero convs randomised, so its residuals are not trivially zero."""
    torch.manual_seed(1)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64, 64)).eval()
    with torch.no_grad():
        for conv in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
            conv.weight.normal_(0, 0.2)
            conv.bias.normal_(0, 0.1)
    return cn


def make_trained_like(modules: MTColorModules, seed: int = 3) -> MTColorModules:
    """Re-initialise the zero-initialised parts (PMAM out_proj, gates, token maps) as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in modules.pmam.blocks:
            blk.out_proj.weight.copy_(torch.randn(blk.out_proj.weight.shape, generator=g) * 0.3)
            blk.out_proj.bias.copy_(torch.randn(blk.out_proj.bias.shape, generator=g) * 0.1)
        for layer in modules.guidance.layers.values():
            layer.gate.fill_(0.7)
            layer.proj.weight.copy_(torch.randn(layer.proj.weight.shape, generator=g) * 0.5)
    return modules


def square(size: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="module")
def models() -> tuple[UNet2DConditionModel, ControlNetModel]:
    unet = tiny_unet()
    return unet, tiny_controlnet(unet)


@pytest.fixture(scope="module")
def inputs() -> dict:
    g = torch.Generator().manual_seed(7)
    h, w = LATENT
    return {
        "latents": torch.randn(1, 4, h, w, generator=g),
        "text": torch.randn(1, 77, 32, generator=g),
        "control": torch.rand(1, 3, 8 * h, 8 * w, generator=g),
        "inst_text": torch.randn(2, TEXT_DIM, generator=g),
    }


def two_instances(inputs: dict, slots: int | None = None) -> RegionBatch:
    size = 8 * LATENT[0]
    masks = [square(size, 0, 64, 0, 64), square(size, 64, 128, 32, 128)]
    return RegionBatch.from_masks(masks, inputs["inst_text"], LATENT, slots)


def plain_sd_controlnet(unet, cn, latents, t, text, control, scale: float) -> torch.Tensor:
    """Reference: plain diffusers SD+ControlNet, exactly as StableDiffusionControlNetPipeline calls it."""
    down, mid = cn(
        latents,
        t,
        encoder_hidden_states=text,
        controlnet_cond=control,
        conditioning_scale=scale,
        return_dict=False,
    )
    return unet(
        latents,
        t,
        encoder_hidden_states=text,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]


# --------------------------------------------------------------------------- leakage, module level

LABELS = torch.zeros(1, 8, 8, dtype=torch.long)
LABELS[0, :4, :4] = 1  # instance A
LABELS[0, 4:, 3:] = 2  # instance B; the rest is background


def region(size: tuple[int, int], k: int) -> torch.Tensor:
    """(h*w,) bool: pixels of region k at ``size`` (labels resampled like the modules do)."""
    return labels_at(LABELS, size)[0] == k


@pytest.mark.parametrize("size", [(8, 8), (4, 4)])
@pytest.mark.parametrize("perturb", ["latent", "control"])
def test_pmam_block_does_not_leak_across_instances(size: tuple[int, int], perturb: str) -> None:
    torch.manual_seed(11)
    blk = PMAMBlock(32, head_dim=16)
    with torch.no_grad():
        blk.out_proj.weight.normal_(0, 0.3)
        blk.out_proj.bias.normal_(0, 0.1)
    h, w = size
    latent, control = torch.randn(1, 32, h, w), torch.randn(1, 32, h, w)
    mask = RegionMasks(LABELS).same_region(size)
    a, b, bg = region(size, 1), region(size, 2), region(size, 0)
    assert a.any() and b.any() and bg.any()

    bumped = (latent if perturb == "latent" else control).clone().flatten(2)
    bumped[:, :, a] += torch.randn(1, 32, int(a.sum()))
    bumped = bumped.view(1, 32, h, w)
    with torch.no_grad():
        out = blk(latent, control, mask).flatten(2)
        new = (blk(bumped, control, mask) if perturb == "latent" else blk(latent, bumped, mask)).flatten(2)
    torch.testing.assert_close(new[:, :, b], out[:, :, b], atol=1e-6, rtol=0)
    torch.testing.assert_close(new[:, :, bg], out[:, :, bg], atol=1e-6, rtol=0)
    assert (new[:, :, a] - out[:, :, a]).abs().max() > 1e-3


def guidance_setup(seed: int = 5) -> tuple[Attention, InstanceAttnProcessor, InstanceGuidance, GuidanceState]:
    torch.manual_seed(seed)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    guidance = InstanceGuidance(TEXT_DIM, {"layer.attn1.processor": 32}, token_dim=16)
    layer: GuidedLayer = guidance.layers["layer_attn1"]
    with torch.no_grad():
        layer.gate.fill_(0.7)
        layer.proj.weight.normal_(0, 0.5)  # trained-like: tokens of a useful magnitude
    state = GuidanceState()
    return attn, InstanceAttnProcessor(AttnProcessor2_0(), layer, "layer_attn1", state), guidance, state


def guidance_context(
    guidance: InstanceGuidance, inst_text: torch.Tensor, valid: list[bool]
) -> GuidanceContext:
    masks = torch.stack([LABELS[0] == 1, LABELS[0] == 2]).float()[None]  # (1, 2, 8, 8)
    masks = torch.nn.functional.interpolate(masks, scale_factor=8, mode="nearest")
    with torch.no_grad():
        tokens = guidance.encode(inst_text, masks)
    return GuidanceContext(tokens, torch.tensor([valid]), RegionMasks(LABELS), (8, 8))


@pytest.mark.parametrize("size", [(8, 8), (4, 4)])
def test_instance_attention_does_not_leak_across_instances(size: tuple[int, int]) -> None:
    attn, proc, guidance, state = guidance_setup()
    ctx = guidance_context(guidance, torch.randn(1, 2, TEXT_DIM), [True, True])
    h, w = size
    x = torch.randn(1, h * w, 32)
    a, b, bg = region(size, 1), region(size, 2), region(size, 0)
    bumped = x.clone()
    bumped[:, a] += torch.randn(1, int(a.sum()), 32)
    with torch.no_grad(), state.use(ctx):
        out = proc(attn, x) - AttnProcessor2_0()(attn, x)  # the instance term, through the processor
        new = proc.delta(attn, bumped, ctx)
        torch.testing.assert_close(proc.delta(attn, x, ctx), out, atol=1e-6, rtol=0)
    torch.testing.assert_close(new[:, b], out[:, b], atol=1e-6, rtol=0)
    torch.testing.assert_close(new[:, bg], out[:, bg], atol=1e-6, rtol=0)
    assert (new[:, a] - out[:, a]).abs().max() > 1e-3


def test_instance_token_affects_only_its_own_pixels() -> None:
    attn, proc, guidance, _ = guidance_setup()
    texts = torch.randn(1, 2, TEXT_DIM)
    x = torch.randn(1, 64, 32)
    a, b, bg = region((8, 8), 1), region((8, 8), 2), region((8, 8), 0)
    other = texts.clone()
    other[0, 0] = torch.randn(TEXT_DIM)  # new text for instance A only
    with torch.no_grad():
        ctx, ctx_new = (
            guidance_context(guidance, texts, [True, True]),
            guidance_context(guidance, other, [True, True]),
        )
        torch.testing.assert_close(ctx_new.tokens[:, 1], ctx.tokens[:, 1])  # B's token untouched
        out, new = proc.delta(attn, x, ctx), proc.delta(attn, x, ctx_new)
    assert torch.equal(new[:, b], out[:, b]) and torch.equal(new[:, bg], out[:, bg])  # bit-identical
    assert (new[:, a] - out[:, a]).abs().max() > 1e-4
    # An invalid slot is never attended: its token can change freely without any effect.
    with torch.no_grad():
        off = proc.delta(attn, x, guidance_context(guidance, texts, [False, True]))
        off_new = proc.delta(attn, x, guidance_context(guidance, other, [False, True]))
    torch.testing.assert_close(off, off_new, atol=0, rtol=0)


def test_masks_are_exclusive_and_nearest_downsampled() -> None:
    labels = labels_at(LABELS, (4, 4))
    assert labels.view(4, 4).tolist() == LABELS[0, ::2, ::2].tolist()
    mask = same_region_mask(labels)
    assert mask.shape == (1, 1, 16, 16) and mask.dtype == torch.bool
    assert mask[0, 0].diagonal().all()  # every pixel sees itself: no fully masked row, no NaN


# --------------------------------------------------------------------------- denoiser vs. plain diffusers


@pytest.mark.parametrize("skip_zero", [True, False])
def test_fresh_modules_equal_plain_sd_controlnet(models, inputs, skip_zero: bool) -> None:
    unet, cn = models
    modules = MTColorModules.from_unet(unet, cn, TEXT_DIM)
    den = MTColorDenoiser(unet, cn, modules, skip_zero_modules=skip_zero)
    args = (inputs["latents"], 25, inputs["text"], inputs["control"])
    with torch.no_grad():
        ours = den(*args, two_instances(inputs), controlnet_scale=0.7)
        den.uninstall()  # reference on the untouched diffusers processors
        ref = plain_sd_controlnet(unet, cn, *args, scale=0.7)
    assert torch.equal(ours, ref)


def test_pmam_hooks_equal_residual_plus_delta(models, inputs) -> None:
    """The hook route is exactly ``unet(down_residuals = s*cn + delta)`` on an unmodified UNet."""
    unet, cn = models
    modules = MTColorModules.from_unet(unet, cn, TEXT_DIM)
    make_trained_like(modules)
    with torch.no_grad():
        for layer in modules.guidance.layers.values():
            layer.gate.zero_()  # isolate PMAM
    den = MTColorDenoiser(unet, cn, modules)
    regions = two_instances(inputs)
    lat, text, control, s = inputs["latents"], inputs["text"], inputs["control"], 0.8
    with torch.no_grad():
        ours = den(lat, 25, text, control, regions, controlnet_scale=s)
        den.uninstall()
        feats: list[torch.Tensor] = []
        hooks = [
            unet.conv_in.register_forward_hook(lambda m, a, o: feats.append(o)),
            *[blk.register_forward_hook(lambda m, a, o: feats.extend(o[1])) for blk in unet.down_blocks],
            unet.mid_block.register_forward_hook(lambda m, a, o: feats.append(o)),
        ]
        plain = plain_sd_controlnet(unet, cn, lat, 25, text, control, scale=s)
        for hook in hooks:
            hook.remove()
        down, mid = cn(lat, 25, encoder_hidden_states=text, controlnet_cond=control, return_dict=False)
        masks = RegionMasks(regions.label_map)
        raw = [*down, mid]
        deltas = [
            s * blk(f, r, masks.same_region(f.shape[-2:]))
            for blk, f, r in zip(modules.pmam.blocks, feats, raw, strict=True)
        ]
        fused = [s * r + d for r, d in zip(raw, deltas, strict=True)]
        ref = unet(
            lat,
            25,
            encoder_hidden_states=text,
            down_block_additional_residuals=fused[:-1],
            mid_block_additional_residual=fused[-1],
            return_dict=False,
        )[0]
    assert len(feats) == len(modules.pmam.blocks) == 5
    assert (ref - plain).abs().max() > 1e-3  # PMAM really acts
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_batch_of_two_equals_two_batches_of_one(models, inputs) -> None:
    unet, cn = models
    modules = make_trained_like(MTColorModules.from_unet(unet, cn, TEXT_DIM))
    den = MTColorDenoiser(unet, cn, modules)
    g = torch.Generator().manual_seed(9)
    lat = torch.randn(2, 4, *LATENT, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    control = torch.rand(2, 3, 128, 128, generator=g)
    first = two_instances(inputs)
    second = RegionBatch.from_masks([square(128, 20, 100, 40, 90)], inputs["inst_text"][:1] * 2, LATENT)
    both = RegionBatch.cat([first, second])
    assert both.num_slots == 2 and both.inst_valid.tolist() == [[True, True], [True, False]]
    with torch.no_grad():
        batched = den(lat, 25, text, control, both)
        single = [
            den(lat[i : i + 1], 25, text[i : i + 1], control[i : i + 1], rb)
            for i, rb in enumerate([first, second])
        ]
        plain = plain_sd_controlnet(unet, cn, lat, 25, text, control, 1.0)
    torch.testing.assert_close(batched, torch.cat(single), atol=1e-5, rtol=1e-5)
    assert (batched - plain).abs().max() > 1e-3  # trained-like modules change the prediction


def test_cfg_repeat_and_state_is_cleared_after_every_call(models, inputs) -> None:
    unet, cn = models
    den = MTColorDenoiser(unet, cn, make_trained_like(MTColorModules.from_unet(unet, cn, TEXT_DIM)))
    regions = two_instances(inputs).repeat(2)  # CFG doubles the batch
    lat = inputs["latents"].repeat(2, 1, 1, 1)
    args = (lat, 25, inputs["text"].repeat(2, 1, 1), inputs["control"].repeat(2, 1, 1, 1))
    with torch.no_grad():
        out = den(*args, regions)
    assert out.shape == lat.shape and torch.isfinite(out).all()
    assert den.state.current is None
    assert not unet.conv_in._forward_hooks and not unet.mid_block._forward_hooks
    assert not unet.down_blocks[0]._forward_pre_hooks
    # A failure inside the UNet must not leave the context or hooks behind either.
    boom = unet.up_blocks[0].register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        den(*args, regions)
    boom.remove()
    assert den.state.current is None and not unet.conv_in._forward_hooks
    with pytest.raises(ValueError, match="batch"):
        den(*args, two_instances(inputs))  # regions not repeated for CFG


def test_processors_cover_every_self_attention_layer_only(models) -> None:
    unet, cn = models
    keys = set(unet.state_dict())
    MTColorDenoiser(unet, cn, MTColorModules.from_unet(unet, cn, TEXT_DIM))
    procs = unet.attn_processors
    for name, proc in procs.items():
        assert isinstance(proc, InstanceAttnProcessor) == name.endswith("attn1.processor")
    assert sum(isinstance(p, InstanceAttnProcessor) for p in procs.values()) == 4
    assert set(unet.state_dict()) == keys  # no MT-Color weights leak into the UNet's own state dict


def test_low_precision_runs_and_keeps_dtype(inputs) -> None:
    unet = tiny_unet()
    cn = tiny_controlnet(unet)
    modules = make_trained_like(MTColorModules.from_unet(unet, cn, TEXT_DIM))  # stays fp32
    unet, cn = unet.to(torch.bfloat16), cn.to(torch.bfloat16)
    den = MTColorDenoiser(unet, cn, modules)
    with torch.no_grad():
        out = den(
            inputs["latents"].bfloat16(),
            25,
            inputs["text"].bfloat16(),
            inputs["control"],
            two_instances(inputs),
        )
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# --------------------------------------------------------------------------- weights


def test_save_load_round_trip_and_strict_errors(models, inputs, tmp_path) -> None:
    unet, cn = models
    modules = make_trained_like(MTColorModules.from_unet(unet, cn, TEXT_DIM), seed=21)
    path = modules.save(tmp_path / "mtcolor_modules.safetensors")
    loaded = MTColorModules.load(path)
    assert loaded.config == modules.config
    for key, value in modules.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    args = (inputs["latents"], 25, inputs["text"], inputs["control"], two_instances(inputs))
    with torch.no_grad():
        assert torch.equal(
            MTColorDenoiser(unet, cn, modules)(*args), MTColorDenoiser(unet, cn, loaded)(*args)
        )

    tensors = load_file(str(path))
    tensors.pop(next(iter(tensors)))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(tmp_path / "missing.safetensors"), metadata=metadata)
    with pytest.raises(ModelError, match="missing"):
        MTColorModules.load(tmp_path / "missing.safetensors")
    save_file(tensors, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(ModelError, match="config"):
        MTColorModules.load(tmp_path / "nometa.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot read"):
        MTColorModules.load(tmp_path / "junk.safetensors")
    with pytest.raises(ModelError, match="not found"):
        MTColorModules.load(tmp_path / "absent.safetensors")

    other = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    with pytest.raises(ModelError, match="do not match"):
        MTColorDenoiser(other, ControlNetModel.from_unet(other), loaded)


def test_region_batch_from_masks_labels_and_padding(inputs) -> None:
    rb = two_instances(inputs, slots=3)
    assert rb.label_map.shape == (1, 16, 16) and rb.inst_masks.shape == (1, 3, 128, 128)
    assert rb.inst_valid.tolist() == [[True, True, False]]
    assert rb.label_map[0, :8, :8].eq(1).all() and rb.label_map[0, 8:, 4:].eq(2).all()
    assert rb.label_map[0, 8:, :4].eq(0).all() and rb.label_map[0, :8, 8:].eq(0).all()
    # masks at another resolution are resized; a latent cell goes to its majority owner
    small = RegionBatch.from_masks([square(64, 0, 33, 0, 32)], inputs["inst_text"][:1], LATENT)
    assert small.label_map[0].eq(1).sum() == 64
    assert rb.repeat(2).batch_size == 2 and not rb.drop_tokens().inst_valid.any()


def test_image_without_instances_is_one_background_region(models) -> None:
    unet, cn = models
    den = MTColorDenoiser(unet, cn, make_trained_like(MTColorModules.from_unet(unet, cn, TEXT_DIM)))
    empty = RegionBatch.from_masks([], torch.zeros(0, TEXT_DIM), LATENT)
    assert empty.num_slots == 0 and not empty.label_map.any()
    mixed = RegionBatch.cat(
        [empty, RegionBatch.from_masks([torch.ones(128, 128)], torch.ones(1, TEXT_DIM), LATENT)]
    )
    with torch.no_grad():
        out = den(torch.randn(2, 4, *LATENT), 25, torch.randn(2, 77, 32), torch.rand(2, 3, 128, 128), mixed)
    assert torch.isfinite(out).all()


def test_fresh_modules_receive_a_first_gradient(models, inputs) -> None:
    """Zero-skipping must not apply while training, or zero-initialised parts would never move."""
    unet, cn = models
    modules = MTColorModules.from_unet(unet, cn, TEXT_DIM)
    den = MTColorDenoiser(unet, cn, modules)
    unet.requires_grad_(False)
    cn.requires_grad_(False)
    out = den(inputs["latents"], 25, inputs["text"], inputs["control"], two_instances(inputs))
    out.pow(2).mean().backward()
    assert all(blk.out_proj.weight.grad.abs().sum() > 0 for blk in modules.pmam.blocks)
    assert all(layer.gate.grad.abs().sum() > 0 for layer in modules.guidance.layers.values())
