"""What the four "Inside" views share: when to ask the model, and how to say it cannot answer.

Each view (attention, logit lens, embeddings, loss over text) is an :class:`InsideView`: it asks
the :class:`~lmstudio_app.inference.inspection.Inspector` of the model the app is probing
(``session.predictor()``: the live probe, the paused model, a loaded run, or the weights kept at
the timeline's step) through a :class:`~lmstudio_app.gui.queries.LatestQuery`, so the GUI never
blocks and requests never pile up. It asks again when the prompt (if it shows the prompt), the
model, the tokenizer or the viewed step change, and when the weights move: at once when paused
or ended, at most once a :data:`TRAINING_REFRESH_MS` while training. A view that is not visible
(another tab, a closed dock) asks nothing; it only remembers to ask when it is shown.

An answer the model cannot give (no model yet, an empty prompt, "this model does not expose
attention") comes back as a :class:`Problem` and is shown in place of the view; an unexpected
exception goes to the window's error dialog once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QWidget

from lmstudio_app.errors import LMStudioError
from lmstudio_app.inference.inspection import Inspector, NotExposedError
from lmstudio_app.inference.predictor import Predictor
from lmstudio_app.session import Session
from lmstudio_app.training.controller import RunState

from ..dialogs import describe_exception
from ..events import AppEvents
from ..queries import NO_MODEL_HINT, TRAINING_REFRESH_MS, LatestQuery


@dataclass(frozen=True)
class Problem:
    """Why a view shows a sentence instead of its picture."""

    text: str
    not_exposed: bool = False  # the model lacks this part of the inspection contract


@dataclass(frozen=True)
class Answer:
    """A view's result with what it was computed for."""

    result: Any
    step: int | None  # the training step of the weights asked (when known)
    view_step: int | None  # set when those are weights kept at an earlier step
    extra: Any = None


class InsideView(QWidget):
    """Base of the Inside views: subclasses define :meth:`compute` (worker thread) and :meth:`show_answer`."""

    title = ""
    uses_prompt = True  # asks again when the prompt changes
    debounce_ms = 0
    answered = Signal(object)  # the Answer or Problem just shown (tests and benchmarks wait on it)

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self.problem: Problem | None = None
        self.answer: Answer | None = None
        self.requests = 0  # queries started: what a hidden view must not do
        self._dirty = True
        self._last_refresh = -math.inf
        self._inspector: Inspector | None = None  # kept per predictor: it caches the token strings
        self._query = LatestQuery(self, debounce_ms=self.debounce_ms)
        self._query.answered.connect(self._on_answer)
        self._query.failed.connect(lambda exc, details: events.error.emit(describe_exception(exc), details))
        self._throttle = QTimer(self, singleShot=True)
        self._throttle.timeout.connect(self.schedule)
        if self.uses_prompt:
            events.prompt_changed.connect(lambda _text: self.schedule(fresh=False))
        events.model_changed.connect(self._on_model_changed)
        for signal in (events.tokenizer_changed, events.view_step_changed, events.run_loaded):
            signal.connect(self.schedule)
        events.model_updated.connect(self._on_model_updated)
        # The run paused or ended: the weights hold still, show them as they are now (the last
        # update may have been folded into a throttled refresh that ran a step before the end).
        events.training_finished.connect(lambda _reason: self.schedule())

    # ----- when to ask -------------------------------------------------------------------------

    def is_shown(self) -> bool:
        """On screen: not hidden, and not in a dock tabbed behind another one (Qt moves those
        off-screen rather than hiding them, so ``isVisible()`` alone says True)."""
        return self.isVisible() and not self.visibleRegion().isEmpty()

    def wake(self) -> None:
        """Just brought to the front: catch up with what changed meanwhile."""
        if self._dirty and self.is_shown():
            self.refresh()

    def schedule(self, *_args: Any, fresh: bool = True) -> None:
        """Ask again now if shown, else when shown."""
        if not self.is_shown():
            self._dirty = True
            return
        self.refresh(fresh=fresh)

    def is_busy(self) -> bool:
        return self._query.is_busy() or self._throttle.isActive()

    def shutdown(self) -> None:
        self._throttle.stop()
        self._query.cancel()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._dirty:  # once laid out: a dock tabbed behind another is "shown" off-screen
            QTimer.singleShot(0, self, self.wake)

    def _on_model_changed(self) -> None:
        self.model_changed()
        self.schedule()

    def _on_model_updated(self) -> None:
        if self.session.run.state != RunState.TRAINING:  # paused or ended: the weights hold still
            self.schedule()
        elif not self.is_shown():
            self._dirty = True
        elif not self._throttle.isActive():
            wait = TRAINING_REFRESH_MS - (time.monotonic() - self._last_refresh) * 1000
            self._throttle.start(max(0, int(wait)))

    def refresh(self, fresh: bool = True) -> None:
        """Ask the model now (in the background); the answer is shown when it comes."""
        self._throttle.stop()
        self._dirty = False
        self._last_refresh = time.monotonic()
        self.requests += 1
        session = self.session
        view = session.view_step
        args = self.request_args()

        def job() -> Answer | Problem:
            try:
                predictor = session.predictor(fresh=fresh)
            except LMStudioError as exc:  # the weights of a kept step cannot be read
                return Problem(str(exc))
            if predictor is None:
                return Problem(NO_MODEL_HINT)
            step = view if view is not None else session.probe_step
            try:
                result, extra = self.compute(self._inspector_for(predictor), args)
            except NotExposedError as exc:
                return Problem(str(exc), not_exposed=True)
            except LMStudioError as exc:  # an empty prompt, a plugin's failure: said in the view
                return Problem(str(exc))
            return Answer(result, step, view, extra)

        self._query.request(job)

    def _inspector_for(self, predictor: Predictor) -> Inspector:
        """In the worker thread (one job of this view at a time): the predictor's Inspector, made once."""
        inspector = self._inspector
        if inspector is None or inspector.predictor is not predictor:
            inspector = self._inspector = Inspector(predictor)
        return inspector

    def _on_answer(self, answer: Answer | Problem) -> None:
        if isinstance(answer, Problem):
            self.problem, self.answer = answer, None
            self.show_problem(answer)
        else:
            self.problem, self.answer = None, answer
            self.show_answer(answer)
        self.answered.emit(answer)

    @staticmethod
    def step_text(answer: Answer) -> str:
        if answer.view_step is not None:
            return f"weights kept at step {answer.view_step:,}"
        return f"step {answer.step:,}" if answer.step is not None else "loaded run"

    # ----- for subclasses ----------------------------------------------------------------------

    def request_args(self) -> Any:
        """What the job needs from the GUI thread (the prompt, a slider's value); read here, not in the job."""
        return self.session.prompt

    def compute(self, inspector: Inspector, args: Any) -> tuple[Any, Any]:
        """In a worker thread: (result, extra) for :meth:`show_answer`. Touch no widget here."""
        raise NotImplementedError

    def model_changed(self) -> None:
        """Another model: forget what belongs to the old one (the embedding map's axes)."""

    def show_answer(self, answer: Answer) -> None:
        raise NotImplementedError

    def show_problem(self, problem: Problem) -> None:
        raise NotImplementedError

    def message(self) -> str:
        """The sentence shown instead of the picture ("" while the picture is shown)."""
        return self.problem.text if self.problem is not None else ""
