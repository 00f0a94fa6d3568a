"""Asking a trained (or training) model what comes next.

:class:`Predictor` turns text into tokens, runs the model and returns the logits, the softmax
probabilities and the top candidates for the next token, the probability the model gave each
token of a text ("surprise"), and sampled continuations. It works on the live model that a
paused training loop shares (pass the trainer's lock) as well as on a model loaded from a run
folder with :func:`~lmstudio_app.runs.loading.load_run`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import LMStudioError, ParamError, PluginCallError
from ..model_api import LanguageModel
from ..runs.loading import load_run
from ..tokenizer import Token, Tokenizer

if TYPE_CHECKING:
    from ..registry import PluginRegistry


class EmptyPromptError(ParamError):
    """The prompt has no tokens; the GUI shows a hint instead of an error dialog."""

    def __init__(self) -> None:
        super().__init__("the prompt is empty — type some text")


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


class Predictor:
    """Next-token predictions, per-token surprise and sampling for one model + tokenizer.

    The model is only touched under ``lock`` (the training loop's lock when the model is live),
    in eval mode and without gradients; its previous train/eval mode is restored afterwards.
    ``device`` defaults to where the model's weights already are; passing one moves the model.
    ``owner`` names the plugin that provides the model: an exception from its code then becomes
    a :class:`PluginCallError` naming it (the GUI shows it instead of a traceback).
    """

    def __init__(
        self,
        model: LanguageModel,
        tokenizer: Tokenizer,
        device: torch.device | str | None = None,
        lock: threading.RLock | None = None,
        owner: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.lock = lock
        self.owner = owner
        if device is None:
            first = next(model.parameters(), None)
            self.device = first.device if first is not None else torch.device("cpu")
        else:
            self.device = torch.device(device)
            with self._lock_held():
                model.to(self.device)

    # --- the model, safely -------------------------------------------------------------
    @contextlib.contextmanager
    def _lock_held(self) -> Iterator[None]:
        if self.lock is None:
            yield
        else:
            with self.lock:
                yield

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        with self._lock_held():
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    yield
            finally:
                self.model.train(was_training)

    def _forward(self, idx: torch.Tensor) -> torch.Tensor:
        try:
            return self.model(idx)
        except LMStudioError:
            raise
        except Exception as exc:
            if self.owner is None:
                raise
            raise PluginCallError(self.owner, "running the model on a prompt", exc) from exc

    def _last_logits(self, ids: list[int]) -> np.ndarray:
        """Float64 logits ``(V,)`` after the last of ``ids`` (already cropped to the context)."""
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        with self._eval_mode():
            last = self._forward(idx)[0, -1]  # (V,): only this row leaves the device
            return last.float().cpu().numpy().astype(np.float64)

    def _token_log_probs(self, ids: list[int], targets: list[int]) -> list[float]:
        """ln P(targets[j] | ids[: j + 1]) for each j < len(targets), computed on the device."""
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        with self._eval_mode():
            logits = self._forward(idx)[0, : len(targets)].float()  # (n, V)
            if logits.device.type != "mps":  # MPS has no float64
                logits = logits.double()
            wanted = torch.tensor(targets, dtype=torch.long, device=logits.device).unsqueeze(1)
            picked = torch.log_softmax(logits, dim=-1).gather(1, wanted).squeeze(1)  # (n,)
            return picked.cpu().tolist()

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    # --- tokens ------------------------------------------------------------------------
    def tokens(self, text: str) -> list[Token]:
        return self.tokenizer.encode_with_offsets(text)

    def unknown_chars(self, text: str, tokens: list[Token] | None = None) -> list[str]:
        """Text the tokenizer has no token for: what maps to its unknown token (a character, or
        a whole word for a word-level tokenizer) and non-space characters it silently drops."""
        tokens = self.tokens(text) if tokens is None else tokens
        unk = self.tokenizer.unk_id
        found: list[str] = []
        covered = [False] * len(text)
        for t in tokens:
            for i in range(t.start, min(t.end, len(text))):
                covered[i] = True
            if unk is not None and t.id == unk:
                found.append(t.text.strip() or t.text)  # " xyz" → "xyz"; a lone unknown space stays
        found.extend(ch for ch, c in zip(text, covered) if not c and not ch.isspace())
        return list(dict.fromkeys(found))  # unique, in order of appearance

    # --- next token ----------------------------------------------------------------------
    def next_token(
        self,
        text: str,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        k: int = 10,
        position: int | None = None,
    ) -> NextTokenPrediction:
        """Logits and probabilities for the token after ``position`` (default: the last)."""
        check_sampling(temperature, top_k, top_p)
        if k < 1:
            raise ParamError(f"k: must be at least 1, got {k!r}")
        tokens = self.tokens(text)
        if not tokens:
            raise EmptyPromptError()
        if position is None:
            position = len(tokens) - 1
        elif position < 0:
            position += len(tokens)
        if not 0 <= position < len(tokens):
            raise ParamError(f"position: {position} is outside the prompt's {len(tokens)} tokens")
        start = max(0, position + 1 - self.context_length)
        logits = self._last_logits([t.id for t in tokens[start : position + 1]])
        probs = softmax(logits, temperature)
        sample_probs = filter_probs(probs, top_k, top_p)
        top = np.argsort(-probs, kind="stable")[: min(k, len(probs))]
        candidates = [
            Candidate(
                id=int(i),
                text=self.tokenizer.token_string(int(i)),
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
            context_start=start,
            unknown_chars=self.unknown_chars(text, tokens),
        )

    # --- surprise --------------------------------------------------------------------------
    def surprise(self, text: str) -> list[TokenSurprise]:
        """The probability (temperature 1) the model gave each token given those before it.

        Texts longer than the context are scored in windows that overlap by half a context,
        so every token is predicted from at least half a context of history.
        """
        tokens = self.tokens(text)
        if not tokens:
            raise EmptyPromptError()
        ids = [t.id for t in tokens]
        losses: list[float | None] = [None] * len(ids)
        ctx = self.context_length
        stride = max(1, ctx // 2)
        scored_up_to = 1  # tokens before this index are done
        start = 0
        while scored_up_to < len(ids):
            window = ids[start : start + ctx]
            end = min(start + len(window) + 1, len(ids))  # row j of the window predicts start + j + 1
            log_probs = self._token_log_probs(window, ids[start + 1 : end])
            for i in range(max(scored_up_to, start + 1), end):
                losses[i] = -log_probs[i - start - 1]
            scored_up_to = end
            start += stride
        return [
            TokenSurprise(t, None if loss is None else math.exp(-loss), loss)
            for t, loss in zip(tokens, losses)
        ]

    # --- generation --------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        if ids:
            return ids
        newline = self.tokenizer.encode("\n")
        if newline and self.tokenizer.unk_id not in newline:
            return newline  # an empty prompt starts a fresh line
        raise EmptyPromptError()

    def generate_iter(
        self,
        prompt: str,
        *,
        max_tokens: int = 100,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield the continuation piece by piece (text, as soon as it decodes cleanly).

        The lock is taken per token, so a training loop sharing the model is held up for at
        most one forward pass at a time.
        """
        check_sampling(temperature, top_k, top_p)
        if max_tokens < 0:
            raise ParamError(f"max_tokens: must be 0 or more, got {max_tokens!r}")
        ids = self._prompt_ids(prompt)
        rng = np.random.default_rng(seed)  # sampling on the CPU: same seed, same text anywhere
        generated: list[int] = []
        emitted = ""
        for _ in range(max_tokens):
            logits = self._last_logits(ids[-self.context_length :])
            probs = filter_probs(softmax(logits, temperature), top_k, top_p)
            next_id = int(rng.choice(len(probs), p=probs))
            ids.append(next_id)
            generated.append(next_id)
            text = self.tokenizer.decode(generated)
            # Hold back half-decoded characters (a byte tokenizer emits UTF-8 byte by byte).
            if text.endswith("\ufffd") or not text.startswith(emitted):
                continue
            if len(text) > len(emitted):
                yield text[len(emitted) :]
                emitted = text
        final = self.tokenizer.decode(generated)
        if final != emitted:
            yield final.removeprefix(emitted)

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 100,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> str:
        """The sampled continuation of ``prompt`` (without the prompt). Seeded runs repeat."""
        pieces = self.generate_iter(
            prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
        )
        return "".join(pieces)


def load_predictor(
    run_dir: str | Path, registry: PluginRegistry, device: str = "auto", checkpoint: str | Path | None = None
) -> Predictor:
    """A :class:`Predictor` for a saved run."""
    config, model, tokenizer = load_run(run_dir, registry, device, checkpoint)
    return Predictor(model, tokenizer, owner=registry.owner("model", config.model.plugin))
