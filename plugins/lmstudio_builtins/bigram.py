"""The bigram baseline: the next token depends only on the current one.

The whole model is one V x V table; row ``i`` holds the logits of the token that follows
token ``i``. It is the floor any real model must beat, and after training its softmax rows
are simply the corpus's bigram frequencies, which makes it easy to check by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmstudio_app.model_api import LanguageModel
from lmstudio_app.params import param
from lmstudio_app.specs import ModelSpec


@dataclass
class BigramParams:
    context_length: int = param(
        64, min=1, max=8192, help="Longest input accepted; the model itself only looks one token back"
    )


class BigramModel(LanguageModel):
    def __init__(self, p: BigramParams, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {vocab_size}")
        self.vocab_size = vocab_size
        self.context_length = p.context_length
        self.token_logits = nn.Embedding(vocab_size, vocab_size)
        # Zeros = uniform predictions, so training starts exactly at loss ln(V).
        nn.init.zeros_(self.token_logits.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.ndim != 2:
            raise ValueError(f"bigram expects token IDs of shape (batch, time), got shape {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.context_length:
            raise ValueError(
                f"input has {T} tokens but the model's context_length is {self.context_length}; "
                f"crop it to the last {self.context_length} tokens"
            )
        return self.token_logits(idx).float()  # (B, T, V)

    def token_embeddings(self) -> torch.Tensor:
        """The table itself: row ``i`` (its next-token logits) is token ``i``'s only representation.

        On the embedding map, tokens that are followed by the same words land together. The
        model has no attention and no hidden layers, so that is all it exposes for inspection.
        """
        return self.token_logits.weight

    def flops_per_token(self) -> float:
        # The lookup is free; count the table row like a V-wide output layer fed a one-hot
        # input (forward 2V, backward 4V), which also covers the softmax/loss work on V logits.
        return 6.0 * self.vocab_size


def build_bigram(params: BigramParams, vocab_size: int) -> BigramModel:
    return BigramModel(params, vocab_size)


BIGRAM_SPEC = ModelSpec(
    name="bigram",
    description="Bigram baseline: a table of next-token logits per token (no context)",
    params=BigramParams,
    build=build_bigram,
)
