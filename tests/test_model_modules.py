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
from mtcolor_batch.model.denoiser import MTColorDenoiser, MTColorModules
from mtcolor_batch.model.instance_guidance import (
    GuidedLayer,
    InstanceAttnProcessor,
    InstanceCall,
    InstanceGuidance,
)
from mtcolor_batch.model.pmam import PMAMBlock
from mtcolor_batch.model.regions import RegionBatch, RegionMaps, labels_at, same_region_mask

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
    mask = RegionMaps(LABELS, torch.ones(1, 2, dtype=torch.bool), (8, 8)).same_region(size)
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


def guidance_setup(seed: int = 5) -> tuple[Attention, InstanceAttnProcessor, InstanceGuidance]:
    torch.manual_seed(seed)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    guidance = InstanceGuidance(TEXT_DIM, {"layer.attn1.processor": 32}, token_dim=16)
    layer: GuidedLayer = guidance.layers["layer_attn1"]
    with torch.no_grad():
        layer.gate.fill_(0.7)
        layer.proj.weight.normal_(0, 0.5)  # trained-like: tokens of a useful magnitude
    return attn, InstanceAttnProcessor(AttnProcessor2_0(), layer, "layer_attn1"), guidance


def instance_call(guidance: InstanceGuidance, inst_text: torch.Tensor, valid: list[bool]) -> InstanceCall:
    masks = torch.stack([LABELS[0] == 1, LABELS[0] == 2]).float()[None]  # (1, 2, 8, 8)
    masks = torch.nn.functional.interpolate(masks, scale_factor=8, mode="nearest")
    with torch.no_grad():
        tokens = guidance.encode(inst_text, masks)
    return InstanceCall(tokens, RegionMaps(LABELS, torch.tensor([valid]), (8, 8)))


@pytest.mark.parametrize("size", [(8, 8), (4, 4)])
def test_instance_attention_does_not_leak_across_instances(size: tuple[int, int]) -> None:
    attn, proc, guidance = guidance_setup()
    call = instance_call(guidance, torch.randn(1, 2, TEXT_DIM), [True, True])
    h, w = size
    x = torch.randn(1, h * w, 32)
    a, b, bg = region(size, 1), region(size, 2), region(size, 0)
    bumped = x.clone()
    bumped[:, a] += torch.randn(1, int(a.sum()), 32)
    bumped[:, bg] += torch.randn(1, int(bg.sum()), 32)  # background is never mixed into any instance
    with torch.no_grad():
        out = proc(attn, x, mtcolor=call) - AttnProcessor2_0()(attn, x)  # the branch, via the processor
        new = proc.delta(bumped, call)
        torch.testing.assert_close(proc.delta(x, call), out, atol=1e-6, rtol=0)
    torch.testing.assert_close(new[:, b], out[:, b], atol=1e-6, rtol=0)
    assert (new[:, a] - out[:, a]).abs().max() > 1e-3
    # Eq. 7: pixels outside every instance get exactly zero branch output.
    assert not new[:, bg].any() and not proc.delta(x, call)[:, bg].any()


def test_instance_branch_has_its_own_projections() -> None:
    """W_Qp/W_Kp/W_Vp/W_O are the branch's: the layer's frozen projections do not enter it."""
    attn, proc, guidance = guidance_setup()
    call = instance_call(guidance, torch.randn(1, 2, TEXT_DIM), [True, True])
    x = torch.randn(1, 64, 32)
    with torch.no_grad():
        before = proc.delta(x, call)
        for lin in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            lin.weight.mul_(3.0)
        assert torch.equal(proc.delta(x, call), before)
        proc.layer.to_v.weight.mul_(3.0)
        assert not torch.equal(proc.delta(x, call), before)
    names = {n.split(".")[0] for n, _ in proc.layer.named_parameters()}
    assert names == {"proj", "norm", "to_q", "to_k", "to_v", "to_out", "gate"}


def test_fresh_branch_projections_start_as_copies_of_the_layer(models) -> None:
    unet, cn = models
    modules = MTColorModules.from_unet(unet, cn, TEXT_DIM)
    for name in modules.guidance.layer_dims:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        layer = modules.guidance.layers[name.removesuffix(".processor").replace(".", "_")]
        assert layer.heads == attn.heads and float(layer.gate) == 0.0
        for mine, theirs in (
            (layer.to_q, attn.to_q),
            (layer.to_v, attn.to_v),
            (layer.to_out, attn.to_out[0]),
        ):
            assert (
                torch.equal(mine.weight, theirs.weight) and mine.weight.data_ptr() != theirs.weight.data_ptr()
            )


def test_instance_token_affects_only_its_own_pixels() -> None:
    attn, proc, guidance = guidance_setup()
    texts = torch.randn(1, 2, TEXT_DIM)
    x = torch.randn(1, 64, 32)
    a, b, bg = region((8, 8), 1), region((8, 8), 2), region((8, 8), 0)
    other = texts.clone()
    other[0, 0] = torch.randn(TEXT_DIM)  # new text for instance A only
    with torch.no_grad():
        call, call_new = (
            instance_call(guidance, texts, [True, True]),
            instance_call(guidance, other, [True, True]),
        )
        torch.testing.assert_close(call_new.tokens[:, 1], call.tokens[:, 1])  # B's token untouched
        out, new = proc.delta(x, call), proc.delta(x, call_new)
    assert torch.equal(new[:, b], out[:, b]) and torch.equal(new[:, bg], out[:, bg])  # bit-identical
    assert (new[:, a] - out[:, a]).abs().max() > 1e-4
    # An invalid slot is never attended: its token can change freely without any effect.
    with torch.no_grad():
        off = proc.delta(x, instance_call(guidance, texts, [False, True]))
        off_new = proc.delta(x, instance_call(guidance, other, [False, True]))
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
        masks = RegionMaps.of(regions)
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


def test_cfg_repeat_and_hooks_are_removed_after_every_call(models, inputs) -> None:
    unet, cn = models
    den = MTColorDenoiser(unet, cn, make_trained_like(MTColorModules.from_unet(unet, cn, TEXT_DIM)))
    regions = two_instances(inputs).repeat(2)  # CFG doubles the batch
    lat = inputs["latents"].repeat(2, 1, 1, 1)
    args = (lat, 25, inputs["text"].repeat(2, 1, 1), inputs["control"].repeat(2, 1, 1, 1))
    with torch.no_grad():
        out = den(*args, regions)
    assert out.shape == lat.shape and torch.isfinite(out).all()
    assert not unet.conv_in._forward_hooks and not unet.mid_block._forward_hooks
    assert not unet.down_blocks[0]._forward_pre_hooks
    # A failure inside the UNet must not leave the context or hooks behind either.
    boom = unet.up_blocks[0].register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        den(*args, regions)
    boom.remove()
    assert not unet.conv_in._forward_hooks
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
    assert rb.label_map.shape == (1, 16, 16) and rb.inst_masks.shape == (1, 3, 64, 64)
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


# --------------------------------------------------------------------------- paper Sec. 3.3 / CFG


def _relative_change(new: torch.Tensor, ref: torch.Tensor) -> float:
    return float((new - ref).detach().norm() / ref.detach().norm())


@pytest.mark.parametrize("mode", ["inference", "inference-compute-all", "training"])
def test_no_instances_equals_empty_slots_bit_for_bit(models, inputs, mode: str) -> None:
    """N = 0 and N empty (null) slots are the same network: what training sees is what runs."""
    unet, cn = models
    modules = make_trained_like(MTColorModules.from_unet(unet, cn, TEXT_DIM))
    den = MTColorDenoiser(unet, cn, modules, skip_zero_modules=mode == "inference")
    none = RegionBatch.from_masks([], torch.zeros(0, TEXT_DIM), LATENT)
    empty = RegionBatch.from_masks([], torch.zeros(0, TEXT_DIM), LATENT, slots=8)
    dropped = two_instances(inputs, slots=8).drop_tokens()  # regions kept, no tokens: not the same
    args = (inputs["latents"], 25, inputs["text"], inputs["control"])
    modules.requires_grad_(mode == "training")
    with torch.set_grad_enabled(mode == "training"):
        a, b = den(*args, none), den(*args, empty)
        c = den(*args, dropped)
    modules.requires_grad_(False)
    print(
        f"{mode}: N=0 vs 8 empty slots {_relative_change(b, a):.1e}; "
        f"masks kept, tokens dropped {_relative_change(c, a):.3f}"
    )
    assert torch.equal(a, b)
    assert _relative_change(c, a) > 1e-3  # the regions still act in the null condition (PMAM, M_self)


def test_instance_free_row_of_a_mixed_batch_gets_exactly_no_branch(models, inputs) -> None:
    """Batched with an image that has instances, an instance-free image still gets a zero branch."""
    unet, cn = models
    modules = make_trained_like(MTColorModules.from_unet(unet, cn, TEXT_DIM))
    den = MTColorDenoiser(unet, cn, modules, skip_zero_modules=False)
    g = torch.Generator().manual_seed(4)
    lat, text = torch.randn(2, 4, *LATENT, generator=g), torch.randn(2, 77, 32, generator=g)
    control = torch.rand(2, 3, 128, 128, generator=g)
    mixed = RegionBatch.cat(
        [two_instances(inputs), RegionBatch.from_masks([], torch.zeros(0, TEXT_DIM), LATENT)]
    )
    with torch.no_grad():
        out = den(lat, 25, text, control, mixed)
        for layer in modules.guidance.layers.values():
            layer.gate.zero_()
        ref = den(lat, 25, text, control, mixed)
    assert torch.equal(out[1], ref[1])
    assert _relative_change(out[0], ref[0]) > 1e-3


def test_cfg_unconditional_half_keeps_the_masks(models, inputs) -> None:
    """Perturbing instance A's pixels leaves instance B's guided (CFG) term unchanged.

    The sampler's own regions for [uncond; cond] go through trained-like PMAM and instance-branch
    layers; the guided combination ``u + s*(c - u)`` at guidance 7.5 is compared on B's pixels. The
    control (uncond with an all-background label map, the old null condition) shows the test bites.
    """
    import numpy as np

    from mtcolor_batch.core.types import Instance
    from mtcolor_batch.model.canvas import build_canvas, whole_canvas
    from mtcolor_batch.model.sampler import MTColorSampler

    size = 64
    masks = np.zeros((2, size, size), np.float32)
    masks[0, :32, :32] = 1
    masks[1, 32:, 24:] = 1
    canvas = build_canvas(
        np.full((size, size), 0.5, np.float32),
        [Instance.from_full_mask(k + 1, "x", "x", m) for k, m in enumerate(masks)],
        inputs["inst_text"],
        whole_canvas,
        torch.device("cpu"),
        torch.float32,
    )
    regions = RegionBatch.cat(
        [MTColorSampler._regions(canvas, 0, False), MTColorSampler._regions(canvas, 0, True)]
    )
    assert torch.equal(regions.label_map[0], regions.label_map[1])
    assert regions.inst_valid.tolist() == [[False, False], [True, True]]
    old_labels = torch.cat([torch.zeros_like(regions.label_map[:1]), regions.label_map[1:]])
    old_null = RegionBatch(old_labels, regions.inst_masks, regions.inst_text, regions.inst_valid)

    torch.manual_seed(2)
    pmam = PMAMBlock(32, head_dim=16)
    with torch.no_grad():
        pmam.out_proj.weight.normal_(0, 0.3)
    attn, proc, guidance = guidance_setup()
    labels = regions.label_map[1].flatten()
    a, b = labels == 1, labels == 2
    feat = torch.randn(1, 32, 8, 8).repeat(2, 1, 1, 1)
    feat[0] += 0.1 * torch.randn(32, 8, 8)  # the halves differ, as they do in a real step
    control = torch.randn(1, 32, 8, 8).repeat(2, 1, 1, 1)
    bumped = feat.clone().flatten(2)
    bumped[:, :, a] += torch.randn(32, int(a.sum()))
    bumped = bumped.view_as(feat)
    s = 7.5

    def guided(rb: RegionBatch, x: torch.Tensor) -> torch.Tensor:
        maps = RegionMaps.of(rb)
        with torch.no_grad():
            tokens = guidance.encode(rb.inst_text, rb.inst_masks)
            d = pmam(x, control, maps.same_region((8, 8))).flatten(2).transpose(1, 2)
            d = d + proc.delta(x.flatten(2).transpose(1, 2), InstanceCall(tokens, maps))
        return d[0] + s * (d[1] - d[0])  # (64, 32)

    ours, ours_bumped = guided(regions, feat), guided(regions, bumped)
    old, old_bumped = guided(old_null, feat), guided(old_null, bumped)
    print(
        f"guided term on B after perturbing A: {_relative_change(ours_bumped[b], ours[b]):.2e} relative "
        f"(masks kept in uncond), {_relative_change(old_bumped[b], old[b]):.2e} (old all-background uncond)"
    )
    torch.testing.assert_close(ours_bumped[b], ours[b], atol=1e-5, rtol=0)
    assert _relative_change(ours_bumped[a], ours[a]) > 1e-2
    assert _relative_change(old_bumped[b], old[b]) > 1e-2  # the old null condition leaked A into B


def test_processors_installed_once_and_diffusers_stays_quiet(models, inputs, caplog, monkeypatch) -> None:
    unet, cn = models
    den = MTColorDenoiser(unet, cn, make_trained_like(MTColorModules.from_unet(unet, cn, TEXT_DIM)))

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("processors re-installed during a forward call")

    monkeypatch.setattr(unet, "set_attn_processor", refuse)
    with torch.no_grad(), caplog.at_level("WARNING"):
        den(inputs["latents"], 25, inputs["text"], inputs["control"], two_instances(inputs))
    assert "cross_attention_kwargs" not in caplog.text


def test_stage_one_mode_calls_neither_controlnet_nor_pmam(models, inputs) -> None:
    unet, cn = models
    modules = make_trained_like(MTColorModules.from_unet(unet, cn, TEXT_DIM))
    den = MTColorDenoiser(unet, cn, modules, skip_zero_modules=False)
    calls = {"controlnet": 0, "pmam": 0}
    hooks = [cn.register_forward_hook(lambda *a: calls.__setitem__("controlnet", calls["controlnet"] + 1))]
    hooks += [
        blk.register_forward_hook(lambda *a: calls.__setitem__("pmam", calls["pmam"] + 1))
        for blk in modules.pmam.blocks
    ]
    with torch.no_grad():
        out = den(inputs["latents"], 25, inputs["text"], None, two_instances(inputs), use_controlnet=False)
        plain = unet(inputs["latents"], 25, encoder_hidden_states=inputs["text"], return_dict=False)[0]
    assert calls == {"controlnet": 0, "pmam": 0}
    assert _relative_change(out, plain) > 1e-3  # the instance branch acts
    with torch.no_grad():
        den(inputs["latents"], 25, inputs["text"], inputs["control"], two_instances(inputs))
    for hook in hooks:
        hook.remove()
    assert calls == {"controlnet": 1, "pmam": len(modules.pmam.blocks)}


def test_modules_of_the_old_format_are_refused_in_one_line(models, tmp_path) -> None:
    """Files without the branch's own projections (format 1) never load half."""
    import json

    from safetensors import safe_open

    unet, cn = models
    path = MTColorModules.from_unet(unet, cn, TEXT_DIM).save(tmp_path / "mtcolor_modules.safetensors")
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["mtcolor_modules"])
    config["format"] = 1
    old = {
        k: v
        for k, v in load_file(str(path)).items()
        if not any(f".{p}." in k for p in ("norm", "to_q", "to_k", "to_v", "to_out")) or k.startswith("pmam")
    }
    save_file(old, str(tmp_path / "old.safetensors"), metadata={"mtcolor_modules": json.dumps(config)})
    with pytest.raises(ModelError) as err:
        MTColorModules.load(tmp_path / "old.safetensors")
    line = err.value.one_line()
    assert "\n" not in line and "format 1" in line
    assert "mtcolor-batch train" in line and "mtcolor-batch models pull" in line
