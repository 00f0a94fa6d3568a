"""Next-token distributions as the app shows them: logits → softmax → top-k/top-p → candidates.

Plain numpy on one row of logits; no model here. :class:`~lmstudio_app.inference.predictor.Predictor`
runs the model and :class:`~lmstudio_app.inference.scoring.PromptScore` keeps its logits, and both
turn a row into a :class:`NextTokenPrediction` with :func:`build_prediction`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ParamError
from ..tokenizer import Token, Tokenizer


@dataclass(frozen=True)
class Candidate:
    """One possible next token."""

    id: int
    text: str
    logit: float  # the model's raw score
    prob: float  # softmax(logits / temperature) over the full vocabulary
    sample_prob: float  # after top-k/top-p filtering, renormalised: what sampling uses (0 if cut)


@dataclass
class NextTokenPrediction:
    """The model's view of the token after ``tokens[position]``."""

    tokens: list[Token]  # the whole prompt
    position: int  # index of the token after which we predict
    candidates: list[Candidate]  # sorted by prob, descending
    probs: np.ndarray  # (V,) float64, sums to 1
    logits: np.ndarray  # (V,) raw logits
    temperature: float
    top_k: int | None
    top_p: float | None
    entropy: float  # nats, of probs
    context_start: int = 0  # first token the model saw (longer prompts are cropped)
    unknown_chars: list[str] = field(default_factory=list)  # text mapped to the unknown token

    def to_json(self) -> dict:
        return {
            "tokens": [{"id": t.id, "text": t.text, "start": t.start, "end": t.end} for t in self.tokens],
            "next": [{"id": c.id, "text": c.text, "logit": c.logit, "prob": c.prob} for c in self.candidates],
        }


@dataclass(frozen=True)
class TokenSurprise:
    """How likely the model found one token of a text, given the tokens before it."""

    token: Token
    prob: float | None  # None for the first token (nothing to predict it from)
    loss: float | None  # -ln(prob), nats


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Validate sampling settings; raise :class:`ParamError` naming the bad one."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ParamError(f"temperature: must be above 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ParamError(f"top_k: must be a whole number of at least 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ParamError(f"top_p: must be above 0 and at most 1, got {top_p!r}")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def filter_probs(probs: np.ndarray, top_k: int | None, top_p: float | None) -> np.ndarray:
    """Zero all but the top-k tokens and the smallest set reaching top-p; renormalise."""
    order = np.argsort(-probs, kind="stable")
    keep = len(probs) if top_k is None else min(top_k, len(probs))
    if top_p is not None:
        cumulative = np.cumsum(probs[order])
        # the first index where the running total reaches top_p, inclusive; at least one token
        keep = min(keep, int(np.searchsorted(cumulative, top_p - 1e-12)) + 1)
    out = np.zeros_like(probs)
    out[order[:keep]] = probs[order[:keep]]
    return out / out.sum()


def entropy_nats(probs: np.ndarray) -> float:
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum())


def build_prediction(
    tokenizer: Tokenizer,
    tokens: list[Token],
    position: int,
    context_start: int,
    logits: np.ndarray,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    k: int = 10,
    unknown_chars: list[str] | None = None,
) -> NextTokenPrediction:
    """The prediction after ``tokens[position]`` from that row's ``logits`` ``(V,)`` (float64)."""
    check_sampling(temperature, top_k, top_p)
    if k < 1:
        raise ParamError(f"k: must be at least 1, got {k!r}")
    probs = softmax(logits, temperature)
    sample_probs = filter_probs(probs, top_k, top_p)
    top = np.argsort(-probs, kind="stable")[: min(k, len(probs))]
    candidates = [
        Candidate(
            id=int(i),
            text=tokenizer.token_string(int(i)),
            logit=float(logits[i]),
            prob=float(probs[i]),
            sample_prob=float(sample_probs[i]),
        )
        for i in top
    ]
    return NextTokenPrediction(
        tokens=tokens,
        position=position,
        candidates=candidates,
        probs=probs,
        logits=logits,
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
        entropy=entropy_nats(probs),
        context_start=context_start,
        unknown_chars=list(unknown_chars or []),
    )
