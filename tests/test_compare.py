"""compare_moments on two hand-made bigram models whose probabilities are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lmstudio_app.errors import ParamError
from lmstudio_app.inference.compare import compare_moments, kl_divergence
from lmstudio_app.inference.predictor import EmptyPromptError, Predictor
from lmstudio_app.inference.truth import kl
from lmstudio_app.model_api import LanguageModel
from lmstudio_app.tokenizer import Tokenizer
from tests.test_inference import make_char_tokenizer

VOCAB = ["<unk>", "a", "b", "c"]  # ids 0..3


def char_tokenizer() -> Tokenizer:
    return make_char_tokenizer(VOCAB)


class LogTable(LanguageModel):
    """logits[t] = ln(table[idx[t]]): the next-token probabilities are the table's row, exactly."""

    def __init__(self, probs: list[list[float]]) -> None:
        super().__init__()
        table = torch.tensor(probs, dtype=torch.float64).log()
        self.vocab_size = table.shape[0]
        self.context_length = 8
        self.table = nn.Embedding(self.vocab_size, self.vocab_size, dtype=torch.float64)
        with torch.no_grad():
            self.table.weight.copy_(table)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)


# Row i: P(next | current token i). Moment A is uniform-ish, moment B has learnt "a" -> "b".
TABLE_A = [[0.25, 0.25, 0.25, 0.25], [0.1, 0.4, 0.3, 0.2], [0.25, 0.25, 0.25, 0.25], [0.4, 0.2, 0.2, 0.2]]
TABLE_B = [[0.25, 0.25, 0.25, 0.25], [0.1, 0.1, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4], [0.4, 0.2, 0.2, 0.2]]


@pytest.fixture
def moments() -> tuple[Predictor, Predictor]:
    tokenizer = char_tokenizer()
    return Predictor(LogTable(TABLE_A), tokenizer), Predictor(LogTable(TABLE_B), tokenizer)


def test_rows_are_both_top_lists_with_their_probabilities_by_change(moments):
    a, b = moments
    result = compare_moments(a, b, "ca", k=2)  # the last token is "a" (id 1)
    pa, pb = TABLE_A[1], TABLE_B[1]
    # top-2 at A: b (0.4), c (0.3); at B: b (0.7), then a/c/<unk> tie at 0.1 -> lowest id 0
    expected_ids = {1, 2, 0}
    assert {r.token_id for r in result.rows} == expected_ids and len(result.rows) == 3
    for row in result.rows:
        assert row.p_a == pytest.approx(pa[row.token_id], abs=1e-7)
        assert row.p_b == pytest.approx(pb[row.token_id], abs=1e-7)
        assert row.change == pytest.approx(pb[row.token_id] - pa[row.token_id], abs=1e-7)
        assert row.text == VOCAB[row.token_id] or row.token_id == 0
    changes = [abs(r.change) for r in result.rows]
    assert changes == sorted(changes, reverse=True)
    assert [r.token_id for r in result.rows][:2] == [2, 1]  # c: +0.4, a: -0.3 (ties broken by id)


def test_kl_is_the_hand_computed_one(moments):
    a, b = moments
    result = compare_moments(a, b, "ca")
    pa, pb = TABLE_A[1], TABLE_B[1]
    expected = sum(p * math.log(p / q) for p, q in zip(pa, pb))
    assert result.kl_ab == pytest.approx(expected, rel=1e-6)
    assert result.kl_ab == pytest.approx(kl(dict(enumerate(pa)), np.array(pb)), rel=1e-6)
    back = compare_moments(b, a, "ca")
    assert back.kl_ab == pytest.approx(sum(q * math.log(q / p) for p, q in zip(pa, pb)), rel=1e-6)
    assert back.kl_ab != pytest.approx(result.kl_ab)  # not symmetric


def test_kl_of_a_moment_with_itself_is_zero(moments):
    a, b = moments
    for predictor in (a, b):
        same = compare_moments(predictor, predictor, "abca")
        assert same.kl_ab == 0.0
        assert all(r.change == 0.0 for r in same.rows)
    assert kl_divergence(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0
    assert kl_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == pytest.approx(
        0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-12), rel=1e-9)  # finite: q floored


def test_surprise_per_token_under_each_moment(moments):
    a, b = moments
    text = "abca"
    result = compare_moments(a, b, text)
    ids = [VOCAB.index(ch) for ch in text]
    for surprise, table in ((result.surprise_a, TABLE_A), (result.surprise_b, TABLE_B)):
        assert [s.token.id for s in surprise] == ids
        assert surprise[0].prob is None and surprise[0].loss is None
        for prev, s in zip(ids, surprise[1:]):
            p = table[prev][s.token.id]
            assert s.prob == pytest.approx(p, rel=1e-6)
            assert s.loss == pytest.approx(-math.log(p), rel=1e-6)


def test_refuses_an_empty_text_and_a_bad_k_and_other_vocabularies(moments):
    a, _b = moments
    with pytest.raises(EmptyPromptError):
        compare_moments(a, a, "")
    with pytest.raises(ParamError):
        compare_moments(a, a, "a", k=0)
    # A consistent predictor (model and tokenizer agree) over another, smaller vocabulary.
    small = Predictor(LogTable([[0.5, 0.5], [0.5, 0.5]]), make_char_tokenizer(["<unk>", "a"]))
    with pytest.raises(ParamError, match="vocabularies"):
        compare_moments(a, small, "a")
