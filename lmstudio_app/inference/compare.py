"""Two moments of one model compared on one prompt: what changed in its next-token prediction.

:func:`compare_moments` asks two predictors (e.g. the weights kept at step 0 and the live ones)
about the same text and returns a :class:`MomentComparison`: the union of both top-``k``
candidate lists with the probability each moment gives them (sorted by how much that changed),
the KL divergence KL(A ‖ B) between the two next-token distributions (nats), and the per-token
surprise of the text under each. Qt-free and pure, so the GUI and the CLI can share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ParamError
from .distributions import TokenSurprise
from .predictor import Predictor
from .truth import MIN_MODEL_PROB


@dataclass(frozen=True)
class CompareRow:
    """One candidate next token and the probability each moment gives it (temperature 1)."""

    token_id: int
    text: str
    p_a: float
    p_b: float

    @property
    def change(self) -> float:
        """p at B minus p at A."""
        return self.p_b - self.p_a


@dataclass(frozen=True)
class MomentComparison:
    """What :func:`compare_moments` found for one text."""

    text: str
    rows: tuple[CompareRow, ...]  # the union of both top-k lists, largest |change| first
    kl_ab: float  # KL(A || B) of the next-token distributions, nats (>= 0)
    surprise_a: tuple[TokenSurprise, ...]  # each token's probability under A given those before it
    surprise_b: tuple[TokenSurprise, ...]


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats over a shared vocabulary: ``sum p ln(p / q)`` where p > 0.

    q is floored at :data:`~lmstudio_app.inference.truth.MIN_MODEL_PROB` (as :func:`truth.kl`
    does), but never above p, so KL(p || p) is exactly 0 and the answer is always finite.
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    if p.shape != q.shape:
        raise ParamError(f"the two distributions have different vocabularies ({p.size} and {q.size} tokens)")
    mask = p > 0
    pm = p[mask]
    qm = np.maximum(q[mask], np.minimum(pm, MIN_MODEL_PROB))
    total = float(np.sum(pm * np.log(pm / qm)))
    return max(0.0, total) if math.isfinite(total) else total


def _top_ids(probs: np.ndarray, k: int) -> list[int]:
    order = sorted(range(probs.size), key=lambda i: (-probs[i], i))
    return order[:k]


def compare_moments(a: Predictor, b: Predictor, text: str, k: int = 8) -> MomentComparison:
    """Compare what ``a`` and ``b`` predict after ``text`` (see the module docstring).

    Both must share a vocabulary (two moments of one run do); raises :class:`ParamError` when
    they do not, and :class:`~lmstudio_app.inference.predictor.EmptyPromptError` on an empty text.
    """
    if k < 1:
        raise ParamError(f"k: must be at least 1, got {k!r}")
    probs_a = np.asarray(a.next_token(text, k=k).probs, dtype=np.float64)
    probs_b = np.asarray(b.next_token(text, k=k).probs, dtype=np.float64)
    if probs_a.shape != probs_b.shape:
        raise ParamError(f"the two moments have different vocabularies ({probs_a.size} and "
                         f"{probs_b.size} tokens): compare two moments of one run")
    ids = list(dict.fromkeys(_top_ids(probs_a, k) + _top_ids(probs_b, k)))
    rows = [CompareRow(i, a.tokenizer.token_string(i), float(probs_a[i]), float(probs_b[i])) for i in ids]
    rows.sort(key=lambda r: (-abs(r.change), r.token_id))
    return MomentComparison(
        text=text,
        rows=tuple(rows),
        kl_ab=kl_divergence(probs_a, probs_b),
        surprise_a=tuple(a.surprise(text)),
        surprise_b=tuple(b.surprise(text)),
    )
