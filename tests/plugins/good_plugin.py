"""A well-behaved test plugin: one tokenizer ("test-char") and one tiny model ("test-tiny")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from torch import nn

from lmstudio_app import ModelSpec, TokenizerSpec, hookimpl, param
from lmstudio_app.model_api import LanguageModel
from lmstudio_app.tokenizer import Tokenizer

__version__ = "1.2.3"


@dataclass
class CharParams:
    unk_token: str = param("<unk>", help="Token for characters not seen in the corpus.")


def build_char_tokenizer(params: CharParams, texts, progress=None) -> Tokenizer:
    chars = sorted({ch for chunk in texts() for ch in chunk})
    vocab = {params.unk_token: 0, **{ch: i + 1 for i, ch in enumerate(chars)}}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=params.unk_token))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one char each
    hf.decoder = decoders.Fuse()  # join the pieces back without spaces
    return Tokenizer(hf, kind="test-char")


@dataclass
class TinyParams:
    width: int = param(8, min=1, max=64, help="Embedding width.")
    context_length: int = param(16, min=1, max=256, help="Longest input.")


class TinyModel(LanguageModel):
    """Embedding straight into a linear head: enough to test shapes, not to learn much."""

    def __init__(self, params: TinyParams, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.context_length = params.context_length
        self.embed = nn.Embedding(vocab_size, params.width)
        self.lm_head = nn.Linear(params.width, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.embed(idx))  # (B, T) -> (B, T, V)


@hookimpl
def lmstudio_tokenizers() -> list[TokenizerSpec]:
    return [TokenizerSpec("test-char", "Characters, for tests.", CharParams, build_char_tokenizer)]


@hookimpl
def lmstudio_models() -> list[ModelSpec]:
    return [ModelSpec("test-tiny", "Embedding + linear head, for tests.", TinyParams, TinyModel)]
