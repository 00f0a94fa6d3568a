"""Predictor.score: one pass over a prompt answers what next_token and surprise would, for every panel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lmstudio_app.inference.predictor import EmptyPromptError, Predictor
from lmstudio_app.model_api import LanguageModel
from tests.test_inference import VOCAB, make_char_tokenizer


class PrefixMean(LanguageModel):
    """logits[t] = W · mean(emb[idx[: t + 1]]): every row depends on the whole window before it,
    so a prediction computed from a differently cropped context gives different numbers."""

    def __init__(self, context_length: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.vocab_size, self.context_length = len(VOCAB), context_length
        self.emb = nn.Parameter(torch.randn(len(VOCAB), 6, generator=gen))
        self.out = nn.Parameter(torch.randn(6, len(VOCAB), generator=gen) * 3)
        self.calls = 0

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        assert idx.shape[1] <= self.context_length
        self.calls += 1
        x = self.emb[idx]  # (B, T, C)
        counts = torch.arange(1, idx.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return (x.cumsum(1) / counts) @ self.out  # (B, T, V)


@pytest.mark.parametrize(("context", "text"), [(16, "abc de"), (4, "abcdeabcdeab")])
def test_score_equals_next_token_and_surprise(context: int, text: str) -> None:
    predictor = Predictor(PrefixMean(context), make_char_tokenizer())
    score = predictor.score(text)
    n = len(score.tokens)
    # Every kept position (all of a prompt that fits the context; else the first window and the
    # last token) gives exactly what next_token computes from its own cropped context.
    kept = sorted(score.rows)
    assert kept == (list(range(n)) if n <= context else [*range(context), n - 1])
    for position in kept:
        for temperature, top_k, top_p in ((1.0, None, None), (0.5, 3, None), (2.0, None, 0.8)):
            want = predictor.next_token(text, position=position, temperature=temperature, top_k=top_k,
                                        top_p=top_p, k=5)
            got = score.prediction(position, temperature=temperature, top_k=top_k, top_p=top_p, k=5)
            assert [c.id for c in got.candidates] == [c.id for c in want.candidates]
            np.testing.assert_allclose(got.probs, want.probs, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose([c.sample_prob for c in got.candidates],
                                       [c.sample_prob for c in want.candidates], rtol=1e-6, atol=1e-9)
            assert got.context_start == want.context_start and got.entropy == pytest.approx(want.entropy)
    surprise = predictor.surprise(text)
    assert [s.token for s in score.surprise] == [s.token for s in surprise]
    assert score.surprise[0].prob is None
    np.testing.assert_allclose([s.loss for s in score.surprise[1:]], [s.loss for s in surprise[1:]], rtol=1e-9)


def test_surprise_by_hand_for_a_prompt_within_the_context() -> None:
    model = PrefixMean(16)
    predictor = Predictor(model, make_char_tokenizer())
    text = "abca"
    ids = [VOCAB.index(ch) for ch in text]
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].double()
    expected = [float(-torch.log_softmax(logits[i], -1)[ids[i + 1]]) for i in range(len(ids) - 1)]
    model.calls = 0
    score = predictor.score(text)
    assert model.calls == 1  # one forward pass answers the whole prompt
    np.testing.assert_allclose([s.loss for s in score.surprise[1:]], expected, rtol=1e-9)


def test_a_long_prompt_over_a_big_vocabulary_keeps_few_rows() -> None:
    predictor = Predictor(PrefixMean(16), make_char_tokenizer())
    score = predictor.score("abcdeabcde", max_rows=3 * len(VOCAB))
    assert sorted(score.rows) == [7, 8, 9]  # the newest positions of the first window
    assert not score.has_position(0) and score.has_position(9)
    with pytest.raises(KeyError):
        score.prediction(0)


def test_an_empty_prompt_is_refused() -> None:
    with pytest.raises(EmptyPromptError):
        Predictor(PrefixMean(8), make_char_tokenizer()).score("")
