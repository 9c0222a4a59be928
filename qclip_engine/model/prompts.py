"""The five quality-level prompts: learned context tokens in front of frozen words.

Trained prompts are ``"X X X a video of {level} quality"``; the embeddings of the
three "X" tokens are one learnable ``[3, width]`` parameter shared by the five
prompts (initialised from the embedding of "X", as the official code does) and every
other token embedding is a frozen buffer. Zero-shot prompts drop the X tokens.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..contract import QUALITY_LEVELS

CONTEXT_WORD = "X"


def prompt_texts(context_tokens: int) -> list[str]:
    prefix = " ".join([CONTEXT_WORD] * context_tokens)
    return [f"{prefix} a video of {level} quality".strip() for level in QUALITY_LEVELS]


class QualityPrompts(nn.Module):
    def __init__(
        self,
        tokenizer: Callable[[list[str]], torch.Tensor],
        token_embedding: nn.Embedding,
        context_tokens: int = 3,
    ):
        super().__init__()
        self.num_context = context_tokens
        self.texts = prompt_texts(context_tokens)
        self.zero_shot_texts = prompt_texts(0)
        with torch.device("cpu"):  # token ids are data, even when the model is built on `meta`
            tokens = tokenizer(self.texts)
            zero_shot_tokens = tokenizer(self.zero_shot_texts)
        n = context_tokens
        # The learned slots must be exactly the X positions of every prompt: SOT, X × n.
        if not (tokens[:, : 1 + n] == tokens[:1, : 1 + n]).all() or (
            n and not (tokens[0, 1 : 1 + n] == tokens[0, 1]).all()
        ):
            raise ValueError(f"the tokenizer does not give one token per {CONTEXT_WORD!r}: {tokens[:, : 1 + n]}")
        device = token_embedding.weight.device
        tokens, zero_shot_tokens = tokens.to(device), zero_shot_tokens.to(device)
        with torch.no_grad():
            embedded = token_embedding(tokens)
            zero_shot_embedded = token_embedding(zero_shot_tokens)
        self.context = nn.Parameter(embedded[0, 1 : 1 + n].clone())
        # Derivable from the backbone and tokenizer, so not part of the artifact (non-persistent).
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embedded[:, 1 + n :].clone(), persistent=False)
        self.register_buffer("zero_shot_tokens", zero_shot_tokens, persistent=False)
        self.register_buffer("zero_shot_embeddings", zero_shot_embedded.clone(), persistent=False)

    def embeddings(self) -> torch.Tensor:
        """Token embeddings of the five trained prompts, ``[5, context_length, width]``."""
        context = self.context.unsqueeze(0).expand(self.prefix.shape[0], -1, -1)
        return torch.cat([self.prefix, context, self.suffix], dim=1)

    def extra_repr(self) -> str:
        return f"context_tokens={self.num_context}, levels={QUALITY_LEVELS}"
