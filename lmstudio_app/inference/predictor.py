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
import numbers
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import LMStudioError, ParamError, PluginCallError, shown
from ..model_api import LanguageModel
from ..registry import checked_forward
from ..runs.loading import load_run
from ..tokenizer import Token, Tokenizer
from .distributions import (
    NextTokenPrediction,
    TokenSurprise,
    build_prediction,
    check_sampling,
    check_seed,
    filter_probs,
    softmax,
)
from .scoring import MAX_SCORED_LOGITS, PromptScore

if TYPE_CHECKING:
    from ..registry import PluginRegistry


def _losses(logits: torch.Tensor, targets: list[int]) -> list[float]:
    """-ln p(targets[j]) under row j of ``logits`` ``(n, V)``, on the device (only n numbers leave it)."""
    if not targets:
        return []
    rows = logits[: len(targets)]
    if rows.device.type != "mps":  # MPS has no float64
        rows = rows.double()
    wanted = torch.tensor(targets, dtype=torch.long, device=rows.device).unsqueeze(1)
    return (-torch.log_softmax(rows, dim=-1).gather(1, wanted).squeeze(1)).cpu().tolist()


def _surprises(tokens: list[Token], losses: list[float | None]) -> list[TokenSurprise]:
    return [TokenSurprise(t, None if loss is None else math.exp(-loss), loss) for t, loss in zip(tokens, losses)]


class IncrementalDecoder:
    """The text of a growing list of token IDs, a new piece per token, in time independent of length.

    Re-decoding everything after each token costs O(length) per token (4.2 ms a token at 35 k
    tokens). Here only a short window is decoded: the tokens of the last piece given out (the
    *prefix*, decoded again so that a decoder whose output depends on the token before, such as
    a leading space a Metaspace decoder strips, sees the same context) and those since. The new
    piece is the window's text past the prefix's text. A window whose text ends in U+FFFD is
    waiting for the rest of a UTF-8 character (a byte tokenizer spells one over several tokens)
    and gives nothing yet. A decoder whose window text does not extend its prefix's (none of the
    built-in ones) falls back to decoding everything, as before. :meth:`finish` flushes what is
    held back, so the pieces join to exactly ``tokenizer.decode(ids)``.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # window start: the first token of the last piece given out
        self._read = 0  # tokens before this index have been given out as text
        self._pieces: list[str] = []  # everything given out (joined once, by finish)
        self._full = False  # the fallback: decode everything at each token

    @property
    def text(self) -> str:
        """All the text given out so far."""
        return "".join(self._pieces)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ('' while a character is incomplete)."""
        self.ids.append(token_id)
        if self._full:
            emitted = self.text
            text = self.tokenizer.decode(self.ids)
            if text.endswith("\ufffd") or len(text) <= len(emitted) or not text.startswith(emitted):
                return ""
            return self._give(text[len(emitted) :])
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self._prefix : self._read]) if self._read > self._prefix else ""
        text = decode(self.ids[self._prefix :])
        if text.endswith("\ufffd") or len(text) <= len(prefix_text):
            return ""
        if not text.startswith(prefix_text):  # not a local decoder: decode everything from now on
            self._full = True
            return self.push(self.ids.pop())
        self._prefix, self._read = self._read, len(self.ids)
        return self._give(text[len(prefix_text) :])

    def _give(self, piece: str) -> str:
        self._pieces.append(piece)
        return piece

    def finish(self) -> str:
        """What is still held back (an incomplete last character), so that all pieces together
        are exactly ``tokenizer.decode(ids)``; one full decode, once."""
        final = self.tokenizer.decode(self.ids)
        emitted = self.text
        if final == emitted or not final.startswith(emitted):
            return ""
        return self._give(final[len(emitted) :])


class EmptyPromptError(ParamError):
    """The prompt has no tokens; the GUI shows a hint instead of an error dialog."""

    def __init__(self) -> None:
        super().__init__("the prompt is empty — type some text")


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
        try:  # checked: shape (B, T, V), dtype, causality once; sys.exit() in it is the plugin's error
            return checked_forward(self.model, idx, self.owner, self.tokenizer.vocab_size)
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
        return build_prediction(self.tokenizer, tokens, position, start, logits, temperature=temperature,
                                top_k=top_k, top_p=top_p, k=k, unknown_chars=self.unknown_chars(text, tokens))

    # --- surprise --------------------------------------------------------------------------
    def surprise(self, text: str) -> list[TokenSurprise]:
        """The probability (temperature 1) the model gave each token given those before it.

        Texts longer than the context are scored in windows that overlap by half a context,
        so every token is predicted from at least half a context of history.
        """
        return self.score(text, max_rows=0).surprise

    def score(self, text: str, max_rows: int = MAX_SCORED_LOGITS) -> PromptScore:
        """Everything the app shows about one prompt, from as few forward passes as possible.

        The per-token surprise (as :meth:`surprise`) and the logits after each position whose
        context :meth:`next_token` would also use: the last position always, and the positions of
        the first context window (all of a prompt that fits the context), newest first while they
        hold at most ``max_rows`` logits in all, so a long prompt over a large vocabulary stays small.
        """
        tokens = self.tokens(text)
        if not tokens:
            raise EmptyPromptError()
        ids = [t.id for t in tokens]
        losses: list[float | None] = [None] * len(ids)
        rows: dict[int, np.ndarray] = {}
        ctx = self.context_length
        start = 0
        while True:  # windows of a context, overlapping by half; row j of one predicts start + j + 1
            window = ids[start : start + ctx]
            with self._eval_mode():
                logits = self._forward(torch.tensor([window], dtype=torch.long, device=self.device))[0].float()
                targets = ids[start + 1 : start + len(window) + 1]
                for i, loss in enumerate(_losses(logits, targets), start + 1):
                    if losses[i] is None:
                        losses[i] = loss
                if start == 0:  # row j saw exactly tokens[: j + 1], as next_token(position=j) would
                    keep = min(len(window), max_rows // max(int(logits.shape[-1]), 1))
                    kept = logits[len(window) - keep :].cpu().numpy().astype(np.float64)
                    rows.update({len(window) - keep + j: row for j, row in enumerate(kept)})
            if start + len(window) >= len(ids):
                break
            start += max(1, ctx // 2)
        last = len(ids) - 1
        if max_rows > 0 and last not in rows:  # longer than the context: cropped as next_token does
            rows[last] = self._last_logits(ids[-ctx:])
        return PromptScore(text=text, tokens=tokens, surprise=_surprises(tokens, losses), rows=rows,
                           context_length=ctx, tokenizer=self.tokenizer,
                           unknown_chars=self.unknown_chars(text, tokens))

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
        check_seed(seed)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, numbers.Integral) or max_tokens < 0:
            raise ParamError(f"max_tokens: must be 0 or more, got {shown(max_tokens)}")
        ids = self._prompt_ids(prompt)
        rng = np.random.default_rng(seed)  # sampling on the CPU: same seed, same text anywhere
        # Only the text of the generated tokens is decoded, a few tokens at a time: a long
        # generation costs the same per token at its end as at its start.
        decoder = IncrementalDecoder(self.tokenizer)
        for _ in range(max_tokens):
            logits = self._last_logits(ids[-self.context_length :])
            probs = filter_probs(softmax(logits, temperature), top_k, top_p)
            next_id = int(rng.choice(len(probs), p=probs))
            ids.append(next_id)
            piece = decoder.push(next_id)
            if piece:
                yield piece
        rest = decoder.finish()
        if rest:
            yield rest

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
    run_dir: str | Path, registry: PluginRegistry, device: str = "auto", checkpoint: str | Path | None = None,
    step: int | None = None,
) -> Predictor:
    """A :class:`Predictor` for a saved run (its latest checkpoint, or the weights kept at ``step``)."""
    config, model, tokenizer = load_run(run_dir, registry, device, checkpoint, step)
    return Predictor(model, tokenizer, owner=registry.owner("models", config.model.plugin))
