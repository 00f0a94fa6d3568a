"""Next-token distributions as the app shows them: logits → softmax → top-k/top-p → candidates.

Plain numpy on one row of logits; no model here. :class:`~lmstudio_app.inference.predictor.Predictor`
runs the model and :class:`~lmstudio_app.inference.scoring.PromptScore` keeps its logits, and both
turn a row into a :class:`NextTokenPrediction` with :func:`build_prediction`.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, field

import numpy as np

from ..errors import ParamError, shown
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
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
            and 0 < temperature < math.inf):  # no float(): an int of 400 digits would overflow
        raise ParamError(f"temperature: must be above 0, got {shown(temperature)}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ParamError(f"top_k: must be a whole number of at least 1, got {shown(top_k)}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ParamError(f"top_p: must be above 0 and at most 1, got {shown(top_p)}")


def check_seed(seed: int | None) -> None:
    """A sampling seed is None (fresh randomness) or a whole number of at least 0."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ParamError(f"seed: must be a whole number of at least 0, got {shown(seed)}")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax in float64, for any temperature above 0.

    The maximum is subtracted *before* dividing: a tiny temperature (1e-320) then sends every
    other logit to -inf (probability 0) instead of every logit to inf (inf - inf = nan), which is
    the limit it tends to: all the mass on the most likely token(s).
    """
    z = np.asarray(logits, dtype=np.float64)
    t = float(min(temperature, sys.float_info.max))  # an int of 400 digits: as good as the largest float
    with np.errstate(over="ignore", under="ignore"):
        z = np.exp((z - z.max()) / t)
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
        raise ParamError(f"k: must be at least 1, got {shown(k)}")
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
