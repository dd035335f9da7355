"""Tiny random BLIP-2 and LLaVA-style VLM folders, written offline in the real on-disk layout.

Each folder is what ``save_pretrained`` writes for a real checkpoint (config.json, model.safetensors,
generation_config.json, processor/tokenizer files, chat template for the VLM) and loads through the
same ``from_pretrained`` calls as a real one. The tokenizer is word-level over a small vocabulary, so
a random model produces words, not byte junk. To make an answer deterministic without any fake, a
folder may carry a ``sequence_bias`` in its generation_config.json (a standard transformers
generation setting): the biased word sequence then wins greedy decoding, e.g. a VLM that always
says "i'm unable to describe this" or a BLIP-2 that says "a red square".
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = [
    "<pad>", "<s>", "</s>", "<unk>", "<image>",
    "a", "an", "red", "blue", "green", "square", "circle", "photo", "i'm", "unable", "to", "describe",
    "this", "the", "of", "what", "colour", "color", "is", "question:", "answer:", "user:", "assistant:",
    "and", "object", "shape", "on", "gray", "background", "with", "very", "big", "small", "thing",
]  # fmt: skip
VOCAB = {w: i for i, w in enumerate(WORDS)}
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image> {% else %}{{ item['text'] }} {% endif %}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def _tokenizer(image_token_attr: bool) -> object:
    """Word-level fast tokenizer; LLaVA reads ``image_token`` from it, Blip2Processor adds its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        **({"extra_special_tokens": {"image_token": "<image>"}} if image_token_attr else {}),
    )


def forced_answer(text: str) -> list[list[object]]:
    """A ``sequence_bias`` under which greedy decoding answers ``text`` then stops (words of WORDS)."""
    ids = [VOCAB[w] for w in text.split()] + [VOCAB["</s>"]]
    bias: list[list[object]] = [[[ids[0]], 100.0]]
    for step, (prev, nxt) in enumerate(zip(ids, ids[1:], strict=False), start=2):
        bias.append([[prev, nxt], 100.0 * step])
    return bias


def write_tiny_blip2(
    folder: Path, answer: str | None = None, seed: int = 0, max_positions: int = 128
) -> Path:
    """Random BLIP-2 (ViT + Q-Former + OPT, one layer each, 32 px) with Blip2Processor -> ``folder``.

    A small ``max_positions`` gives a checkpoint that really fails on longer prompts (OPT's learned
    position table runs out), as a model with too short a context does.
    """
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessorPil,
    )

    config = Blip2Config(
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        qformer_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "encoder_hidden_size": 16,
            "vocab_size": len(WORDS),
        },
        text_config={
            "model_type": "opt",
            "vocab_size": len(WORDS),
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "ffn_dim": 32,
            "num_attention_heads": 2,
            "word_embed_proj_dim": 16,
            "max_position_embeddings": max_positions,
            "pad_token_id": VOCAB["<pad>"],
            "bos_token_id": VOCAB["<s>"],
            "eos_token_id": VOCAB["</s>"],
        },
        num_query_tokens=4,
        image_token_index=VOCAB["<image>"],
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    if answer is not None:
        model.generation_config.sequence_bias = forced_answer(answer)
    model.save_pretrained(folder)
    image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
    Blip2Processor(
        image_processor=image_processor, tokenizer=_tokenizer(False), num_query_tokens=4
    ).save_pretrained(folder)
    return folder


def write_tiny_vlm(folder: Path, answer: str | None = None, seed: int = 0) -> Path:
    """Random LLaVA (CLIP vision + Llama, 32 px) with a chat-template processor -> ``folder``."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 16,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(WORDS),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            "pad_token_id": VOCAB["<pad>"],
            "bos_token_id": VOCAB["<s>"],
            "eos_token_id": VOCAB["</s>"],
        },
        image_token_index=VOCAB["<image>"],
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    if answer is not None:
        model.generation_config.sequence_bias = forced_answer(answer)
    model.save_pretrained(folder)
    LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=_tokenizer(True),
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(folder)
    return folder
