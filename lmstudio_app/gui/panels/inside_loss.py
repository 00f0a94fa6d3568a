"""Loss over real text: a stretch of the validation text, each token coloured by the model's loss.

The person picks where in the validation part of the corpus (the slider, or "Random window") and how
long a stretch; the view scores it (texts longer than the context in overlapping windows) and
paints each token green where the model expected it and red where it did not; hovering one shows
its probability, rank and loss. Above it, the mean loss in nats per token and in bits per byte
(the loss over the text's UTF-8 bytes: comparable between tokenizers, unlike the loss per token).
"""

from __future__ import annotations

import math
import random
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.data.corpus import split_ranges
from lmstudio_app.errors import LMStudioError
from lmstudio_app.inference.inspection import Inspector, TextLoss
from lmstudio_app.session import Session

from ..events import AppEvents
from ..widgets.text_loss import ScoredPiece, TextLossView
from .inside_base import Answer, InsideView, Problem

DEFAULT_WINDOW_CHARS = 600
NO_TEXT = "No text to score: load a corpus."


def pieces_of(text: str, loss: TextLoss) -> list[ScoredPiece]:
    """The text cut at the tokens' ends: the first piece unscored, each next one with its token's loss.

    Characters between two tokens (spaces a word tokenizer drops) go with the token after them,
    as their bytes do in bits per byte; a token adding no characters (one byte of a character split
    over several) is a piece of its own with no text.
    """
    if not loss.losses:
        return [ScoredPiece(text)]
    first = text.find(loss.tokens[0]) if loss.tokens else -1
    reached = first + len(loss.tokens[0]) if first >= 0 else loss.losses[0].start
    pieces = [ScoredPiece(text[:reached])]
    for item in loss.losses:
        end = max(reached, min(item.end, len(text)))
        pieces.append(ScoredPiece(text[reached:end], item.p, item.rank, item.loss))
        reached = end
    if reached < len(text):  # what follows the last token (trailing spaces) joins it
        last = pieces[-1]
        pieces[-1] = ScoredPiece(last.text + text[reached:], last.p, last.rank, last.loss)
    return pieces


class LossView(InsideView):
    title = "Loss over text"
    uses_prompt = False
    debounce_ms = 120  # dragging the slider: score where it stops

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(session, events, parent)
        self.loss: TextLoss | None = None
        self.scored_text = ""
        self.source_label = QLabel()
        self.source_label.setObjectName("lossSource")
        self.summary_label = QLabel()
        self.summary_label.setObjectName("lossSummary")
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Where in the validation text the stretch starts")
        self.slider.setRange(0, 0)
        self.slider.valueChanged.connect(lambda _v: self.schedule(fresh=False))
        self.length_spin = QSpinBox()
        self.length_spin.setRange(50, 20_000)
        self.length_spin.setSingleStep(100)
        self.length_spin.setValue(DEFAULT_WINDOW_CHARS)
        self.length_spin.setSuffix(" characters")
        self.length_spin.setToolTip("How long a stretch of text to score")
        self.length_spin.valueChanged.connect(lambda _v: self._update_range())
        self.random_button = QPushButton("Random window")
        self.random_button.setToolTip("Score a stretch from a random place in the validation text")
        self.random_button.clicked.connect(self.random_window)
        self.text_view = TextLossView()
        scroll = QScrollArea()
        scroll.setWidget(self.text_view)
        scroll.setWidgetResizable(True)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Where"))
        controls.addWidget(self.slider, 1)
        controls.addWidget(self.length_spin)
        controls.addWidget(self.random_button)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.source_label)
        layout.addWidget(self.summary_label)
        layout.addWidget(scroll, 1)
        for signal in (events.corpus_changed, events.data_config_changed):
            signal.connect(self._update_range)
        self._update_range()

    # ----- which text -----------------------------------------------------------------------------

    def source_range(self) -> tuple[range, str]:
        """The characters of the session's text to pick from: the validation part, else all of it."""
        text, data = self.session.text, self.session.config.data
        try:
            _train, val = split_ranges(len(text), data.val_fraction, data.val_split)
        except LMStudioError:
            val = range(0)
        if len(val) > 0:
            return val, "validation text"
        return range(len(text)), "training text (there is no validation split)"

    def _update_range(self, *_args: Any) -> None:
        where, _name = self.source_range()
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, len(where) - self.length_spin.value()))
        self.slider.blockSignals(False)
        self.schedule(fresh=False)

    def set_offset(self, offset: int) -> None:
        self.slider.setValue(offset)

    def random_window(self) -> None:
        self.slider.setValue(random.randint(self.slider.minimum(), self.slider.maximum()))

    def window(self) -> tuple[str, int, int, str]:
        """(text, first char, last char + 1 (in the whole corpus), where it comes from) of the stretch to score.

        It starts after the first line break or space at or past the offset (within a few dozen
        characters), so the first token is a whole word, not the tail of one.
        """
        where, name = self.source_range()
        text = self.session.text
        start = where.start + self.slider.value()
        stop = min(where.stop, start + self.length_spin.value())
        head = text[start : min(stop, start + 80)]
        cut = next((i + 1 for i, ch in enumerate(head) if ch in "\n "), 0) if start > where.start else 0
        return text[start + cut : stop], start + cut, stop, name

    def request_args(self) -> Any:
        return self.window()

    def compute(self, inspector: Inspector, args: Any) -> tuple[Any, Any]:
        text, start, stop, name = args
        if not text.strip():
            raise _NoText()
        return inspector.text_loss(text), (text, start, stop, name)

    # ----- showing --------------------------------------------------------------------------------

    def show_problem(self, problem: Problem) -> None:
        self.loss = None
        self.summary_label.setText("")
        self.source_label.setText("")
        self.text_view.set_placeholder(problem.text)

    def show_answer(self, answer: Answer) -> None:
        loss: TextLoss = answer.result
        text, start, stop, name = answer.extra
        self.loss, self.scored_text = loss, text
        total = len(self.session.text)
        self.source_label.setText(f"{name}: characters {start:,}–{stop:,} of {total:,} · {self.step_text(answer)}")
        self.summary_label.setText(summary(loss))
        self.text_view.set_pieces(pieces_of(text, loss))


class _NoText(LMStudioError):
    def __init__(self) -> None:
        super().__init__(NO_TEXT)


def summary(loss: TextLoss) -> str:
    """The one line above the text: the mean in nats per token and in bits per byte."""
    n = len(loss.losses)
    if n == 0 or math.isnan(loss.mean_nats):
        return "Too short to score: one token has nothing before it to be predicted from."
    return (f"mean loss {loss.mean_nats:.3f} nats/token · {loss.bits_per_byte:.3f} bits/byte · "
            f"{n:,} tokens predicted · {loss.n_bytes:,} bytes · perplexity {math.exp(loss.mean_nats):.2f}")
