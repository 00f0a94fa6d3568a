"""Probing a model while it trains, without waiting for its training steps.

A query on the live model would have to wait for the step that holds the trainer's lock (about
a tenth of a second on the default CPU run, each time). :class:`LiveProbe` instead keeps a copy of
the weights, taken between two steps when the model has moved (:meth:`LiveProbe.mark_stale`, on
each evaluation, pause and end of the run), and every query runs on that copy under its own lock:
a keystroke in the prompt never waits for training, and probing never disturbs the training model.
Memory: one more copy of the weights (no gradients, no optimiser state), made on first use.
"""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING

from ..inference.predictor import Predictor

if TYPE_CHECKING:
    from ..model_api import LanguageModel
    from .trainer import Trainer


class LiveProbe:
    """A copy of a trainer's weights to probe (see the module docstring)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.step: int | None = None  # the training step the copy holds
        self._model: LanguageModel | None = None
        self._predictor: Predictor | None = None
        self._lock = threading.RLock()  # held by queries on the copy and while it is refreshed
        self._stale = True

    def mark_stale(self) -> None:
        """The live weights moved: the next :meth:`predictor` call takes a new copy first."""
        self._stale = True

    @property
    def stale(self) -> bool:
        return self._stale

    def predictor(self, refresh: bool = True) -> Predictor:
        """A predictor over the copy; with ``refresh``, a stale copy is first brought up to date
        (under the trainer's lock: between two steps, or at once while paused)."""
        if self._model is None or (refresh and self._stale):
            self.refresh()
        assert self._predictor is not None
        return self._predictor

    def refresh(self) -> None:
        trainer = self.trainer
        self._stale = False  # before copying: a step that ends meanwhile marks it stale again
        with trainer.lock, self._lock:
            if self._model is None:
                self._model = copy.deepcopy(trainer.model).eval().requires_grad_(False)
                owner = trainer.predictor().owner  # the plugin named when the model's code fails
                self._predictor = Predictor(self._model, trainer.tokenizer, lock=self._lock, owner=owner)
            else:
                self._model.load_state_dict(trainer.model.state_dict())
            self.step = trainer.step
