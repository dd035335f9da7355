"""Tiny random SAM and OWLv2 in the bundle layout, built offline in about a second.

Tests and the offline demo need the real code path (processors, prompt encoding, post-processing,
save/load through safetensors) without a 375 MB download, so the architectures are the real ones
shrunk to a few thousand parameters. Their masks and boxes are noise; only shapes and contracts
mean anything. Weights come from a fixed seed, so two bundles written alike are identical.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from mtcolor_batch.perception.models import DETECTOR_DIR, SAM_DIR
from mtcolor_batch.testing.tiny_clip import write_tiny_clip_tokenizer

SAM_IMAGE_SIZE = 64
DETECTOR_IMAGE_SIZE = 32
TEXT_MAX_LENGTH = 16  # OWLv2's own text length


def write_tiny_sam(folder: Path) -> Path:
    """Random SAM (ViT with 2 layers, 64 px input) + PIL-backend processor -> ``folder``."""
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    size, patch, hidden = SAM_IMAGE_SIZE, 8, 32
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            output_channels=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=size,
            patch_size=patch,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=hidden // 2,
            mlp_dim=64,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=hidden, image_size=size, patch_size=patch, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=hidden, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )
    model = SamModel(config).eval()
    low_res = size // 4  # SAM's decoder upsamples the embedding grid 4x
    processor = SamProcessor(
        image_processor=SamImageProcessorPil(
            size={"longest_edge": size},
            pad_size={"height": size, "width": size},
            mask_size={"longest_edge": low_res},
            mask_pad_size={"height": low_res, "width": low_res},
        )
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def write_tiny_detector(folder: Path) -> Path:
    """Random OWLv2 (2+2 layers, 32 px input) + PIL-backend processor + tiny tokenizer -> ``folder``."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_tiny_clip_tokenizer(Path(tmp), model_max_length=TEXT_MAX_LENGTH, pad_token="!")
        vocab_size = len(tokenizer.get_vocab())
        config = Owlv2Config(
            text_config={
                "vocab_size": vocab_size,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "max_position_embeddings": TEXT_MAX_LENGTH,
                "pad_token_id": tokenizer.convert_tokens_to_ids("!"),
                "bos_token_id": vocab_size - 2,
                "eos_token_id": vocab_size - 1,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": DETECTOR_IMAGE_SIZE,
                "patch_size": 8,
            },
            projection_dim=32,
        )
        model = Owlv2ForObjectDetection(config).eval()
        processor = Owlv2Processor(
            image_processor=Owlv2ImageProcessorPil(
                size={"height": DETECTOR_IMAGE_SIZE, "width": DETECTOR_IMAGE_SIZE}
            ),
            tokenizer=tokenizer,
        )
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
    return folder


def write_tiny_perception(bundle_dir: Path, *, seed: int = 0) -> list[Path]:
    """Write ``sam/`` and ``detector/`` into ``bundle_dir``; returns the two component folders.

    The global torch RNG is left as it was, so building a bundle inside a test does not shift
    the random stream of whatever runs next.
    """
    bundle_dir = Path(bundle_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = write_tiny_sam(bundle_dir / SAM_DIR)
        torch.manual_seed(seed + 1)
        detector = write_tiny_detector(bundle_dir / DETECTOR_DIR)
    return [sam, detector]
