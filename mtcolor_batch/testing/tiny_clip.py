"""Tiny CLIP pieces built offline: the byte-level BPE tokenizer every tiny model uses, and a tiny CLIP.

One tokenizer builder serves the tiny SD 1.5 text encoder, the tiny OWLv2 detector and the tiny
CLIP scorer, so all three tokenise the same way: the byte alphabet of CLIP's BPE (every text is
tokenisable), optional merges, and ``<|endoftext|>`` with the highest id (CLIP-style text towers
pool at ``argmax(ids)``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtcolor_batch.evaluate.clip_score import image_processor_class


def _bytes_to_unicode() -> dict[int, str]:
    try:  # transformers 5 keeps it here; 4.x in the GPT-2 tokenizer
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    table: dict[int, str] = bytes_to_unicode()
    return table


def tiny_clip_vocab(merges: Sequence[tuple[str, str]] = ()) -> dict[str, int]:
    """Byte alphabet, the same with ``</w>``, each merge's result, then the two special tokens."""
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in [*chars, *(c + "</w>" for c in chars)]:
        vocab[token] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def write_tiny_clip_tokenizer(
    folder: Path,
    *,
    merges: Sequence[tuple[str, str]] = (),
    model_max_length: int = 77,
    pad_token: str | None = None,
) -> Any:
    """Write ``vocab.json`` + ``merges.txt`` into ``folder`` and return the CLIPTokenizer reading them.

    Callers that ship the tokenizer call ``save_pretrained`` on the result themselves.
    """
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_clip_vocab(merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    extra = {"pad_token": pad_token} if pad_token is not None else {}
    # positional paths: the keyword names differ between transformers 4 (vocab_file) and 5 (vocab)
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length, **extra
    )


def write_tiny_clip(path: Path) -> Path:
    """Write a tiny random CLIP (text + vision) for tests and the offline demo; returns ``path``.

    Random weights give meaningless scores; it exists so the scoring path runs end to end without
    the network. A bundle gets it as ``<bundle>/clip``.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    path.mkdir(parents=True, exist_ok=True)
    tok = write_tiny_clip_tokenizer(path)
    tok.save_pretrained(path)
    vocab = tok.get_vocab()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path, safe_serialization=True)
    image_processor_class()(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return path
