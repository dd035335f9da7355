"""CLIP text encoding: the one rule sampling and training share.

Why one home: a text conditions the model through exactly these tensors; if training tokenised or
padded differently from sampling, a trained bundle would be sampled with texts it never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["encode_texts"]


def encode_texts(
    tokenizer: Any, text_encoder: Any, texts: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 77, D) token embeddings for cross-attention and (K, D) pooled embeddings of ``texts``.

    Padded to the tokenizer's full length (77 for CLIP) and truncated there, as SD 1.5 was trained.
    """
    tok = tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    out = text_encoder(tok.input_ids.to(device), return_dict=True)
    return out.last_hidden_state, out.pooler_output
