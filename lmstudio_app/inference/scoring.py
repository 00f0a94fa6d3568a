"""One prompt, scored once: what every panel that shows the prompt needs, without asking the model again.

:meth:`~lmstudio_app.inference.predictor.Predictor.score` runs the model over the prompt and keeps
the per-token surprise and the logits after each position; a :class:`PromptScore` then answers
"what comes next after position p, at this temperature / top-k / top-p" in plain numpy. Moving a
sampling slider or picking another position costs no forward pass and never waits for training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..tokenizer import Token, Tokenizer
from .distributions import NextTokenPrediction, TokenSurprise, build_prediction

# Logits kept per scored prompt, over all its positions: 4M float64 = 32 MB at the most (a
# 64-token prompt over a 50k vocabulary keeps about 80 positions' worth; the demo keeps them all).
MAX_SCORED_LOGITS = 1 << 22


@dataclass(frozen=True)
class PromptScore:
    """The model's view of one prompt (see the module docstring)."""

    text: str
    tokens: list[Token]
    surprise: list[TokenSurprise]  # one per token; the first has no probability
    rows: dict[int, np.ndarray]  # position -> float64 logits (V,) for the token after it
    context_length: int
    tokenizer: Tokenizer
    unknown_chars: list[str] = field(default_factory=list)

    @property
    def last_position(self) -> int:
        return len(self.tokens) - 1

    def has_position(self, position: int) -> bool:
        """Whether :meth:`prediction` can answer for ``position`` without running the model."""
        return position in self.rows

    def prediction(
        self,
        position: int | None = None,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        k: int = 10,
    ) -> NextTokenPrediction:
        """What :meth:`Predictor.next_token` returns for this prompt, from the kept logits.

        Raises ``KeyError`` for a position whose logits were not kept (see :meth:`has_position`).
        """
        position = self.last_position if position is None else position
        logits = self.rows[position]
        start = max(0, position + 1 - self.context_length)
        return build_prediction(self.tokenizer, self.tokens, position, start, logits, temperature=temperature,
                                top_k=top_k, top_p=top_p, k=k, unknown_chars=self.unknown_chars)
