"""Asking the model from the GUI: one helper for every panel, and one scoring of the prompt for all.

:class:`LatestQuery` is the loop every panel that asks the model something needs, written once
(after Orange3's ``ConcurrentWidgetMixin``): the job runs on the thread pool, at most one is in
flight, a request made meanwhile waits and only the newest waiting one runs next, an answer that a
newer request has overtaken is dropped, and errors come back as a signal to the asking panel.

:class:`PromptScorer` scores the session's prompt (:meth:`Predictor.score`: one forward pass) once
per change of the prompt or of the model, and hands the same :class:`PromptAnswer` to the
predictions panel and the pipeline view; moving a sampling slider re-reads that answer without
asking the model again. Keystrokes are scored at once on the probe's copy of the weights (they
never wait for a training step); while training, a refresh for new weights comes at most once a
:data:`TRAINING_REFRESH_MS`, since each one takes the trainer's lock between two steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal
from shiboken6 import isValid

from ..errors import LMStudioError
from ..inference.scoring import PromptScore
from ..session import Session
from ..tokenizer import Token
from ..training.controller import RunState
from .worker import run_in_thread

NO_MODEL_HINT = "Start training or open a run to see predictions."
TRAINING_REFRESH_MS = 1000  # ≤ 1 Hz while the weights change under us: each refresh takes the lock


class LatestQuery(QObject):
    """Background queries for one asker; the latest request wins (see the module docstring).

    ``debounce_ms`` > 0 lets requests made within that time coalesce before the first one starts.
    """

    answered = Signal(object)  # the job's result, for the newest request only
    failed = Signal(object, str)  # (exception, traceback) of the newest request's job

    def __init__(self, parent: QObject | None = None, debounce_ms: int = 0) -> None:
        super().__init__(parent)
        self._waiting: tuple[int, Callable[[], Any]] | None = None
        self._in_flight = False
        self._serial = 0  # bumped per request: an answer to an older one is stale
        self._debounce = QTimer(self, singleShot=True, interval=debounce_ms)
        self._debounce.timeout.connect(self._start)

    def request(self, job: Callable[[], Any]) -> None:
        """Run ``job()`` off the GUI thread as soon as nothing else is in flight."""
        self._serial += 1
        self._waiting = (self._serial, job)
        if self._debounce.interval() > 0:
            self._debounce.start()
        else:
            self._start()

    def cancel(self) -> None:
        """Forget the waiting request and drop the answer of the one in flight."""
        self._serial += 1
        self._waiting = None
        self._debounce.stop()

    def is_busy(self) -> bool:
        return self._in_flight or self._waiting is not None or self._debounce.isActive()

    def _start(self) -> None:
        if self._in_flight or self._waiting is None or self._debounce.isActive():
            return
        serial, job = self._waiting
        self._waiting = None
        self._in_flight = True
        run_in_thread(lambda _report, _cancelled: job(), on_done=lambda result: self._done(serial, result),
                      on_error=lambda exc, details: self._done(serial, None, (exc, details)))

    def _done(self, serial: int, result: Any, error: tuple[BaseException, str] | None = None) -> None:
        if not isValid(self):  # the asking panel was closed while its job ran
            return
        self._in_flight = False
        if serial == self._serial:  # nothing newer was asked meanwhile
            if error is None:
                self.answered.emit(result)
            else:
                self.failed.emit(*error)
        self._start()


@dataclass(frozen=True)
class PromptAnswer:
    """What the model (or, without one, the tokenizer) says about one prompt."""

    text: str
    tokens: list[Token] = field(default_factory=list)  # by the model's own tokenizer when there is one
    score: PromptScore | None = None  # None without a model, or on a problem
    problem: str | None = None  # shown inline: NO_MODEL_HINT, an empty prompt, a plugin's failure
    model_step: int | None = None  # the training step of the probed weights (when known)
    view_step: int | None = None  # set when the weights are those kept at an earlier step, not the latest


class PromptScorer(QObject):
    """The session's prompt, scored once per change and shared (see the module docstring)."""

    scored = Signal(object)  # PromptAnswer for the current prompt
    failed = Signal(object, str)  # an unexpected exception (a bug): the asking panels show a dialog

    def __init__(self, session: Session, events: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.latest: PromptAnswer | None = None
        self._query = LatestQuery(self)
        self._query.answered.connect(self._on_answer)
        self._query.failed.connect(self.failed)
        self._last_refresh = 0.0
        self._throttle = QTimer(self, singleShot=True)
        self._throttle.timeout.connect(self.refresh)
        events.prompt_changed.connect(lambda _text: self.refresh(fresh=False))
        for signal in (events.model_changed, events.tokenizer_changed, events.view_step_changed):
            signal.connect(self.refresh)
        events.model_updated.connect(self._on_model_updated)  # also on pause and at the end of a run
        self.refresh()

    def is_busy(self) -> bool:
        return self._query.is_busy() or self._throttle.isActive()

    def refresh(self, *_args: Any, fresh: bool = True) -> None:
        """Score the prompt again; ``fresh``: on up-to-date weights (may wait for a training step)."""
        self._throttle.stop()
        self._last_refresh = time.monotonic()
        session, text, view = self.session, self.session.prompt, self.session.view_step

        def job() -> PromptAnswer:
            try:
                predictor = session.predictor(fresh=fresh)
            except LMStudioError as exc:  # the weights of a kept step cannot be read
                return PromptAnswer(text, problem=str(exc), view_step=view)
            if predictor is None:  # still show how the prompt tokenizes, if a tokenizer exists
                tokenizer = session.tokenizer
                tokens = tokenizer.encode_with_offsets(text) if tokenizer is not None else []
                return PromptAnswer(text, tokens, problem=NO_MODEL_HINT)
            step = view if view is not None else session.probe_step
            try:
                score = predictor.score(text)
            except LMStudioError as exc:  # an empty prompt, a plugin's failure: said inline
                return PromptAnswer(text, predictor.tokens(text), problem=str(exc), model_step=step, view_step=view)
            return PromptAnswer(text, score.tokens, score, model_step=step, view_step=view)

        self._query.request(job)

    def _on_model_updated(self) -> None:
        if self.session.run.state != RunState.TRAINING:  # paused or ended: the weights hold still
            self.refresh()
        elif not self._throttle.isActive():
            wait = TRAINING_REFRESH_MS - (time.monotonic() - self._last_refresh) * 1000
            self._throttle.start(max(0, int(wait)))

    def _on_answer(self, answer: PromptAnswer) -> None:
        if answer.text == self.session.prompt and answer.view_step == self.session.view_step:  # else a newer one is on its way
            self.latest = answer
            self.scored.emit(answer)
