""""What you are looking at": each pipeline stage explained with the live numbers.

    text ─► tokens ─► IDs ─► embeddings / model ─► logits ─► softmax ─► probabilities ─► loss

:func:`gather_facts` collects the numbers from the core (the session's corpus, tokenizer and
config, the window's scored prompt, the latest training step) into :class:`Facts`;
:func:`explain` turns them into one short paragraph per stage (Qt-free, so tests read the same
text the dialog shows). Each dock gets a small "?" button in its title bar (:func:`install`)
that opens :class:`ExplainDialog` on the stages that panel shows; the dialog follows the prompt
and the training while it is open.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractButton,
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QMenuBar,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..inference.distributions import NextTokenPrediction, TokenSurprise
from ..tokenizer import Token
from ..training.control import StepMetrics
from .widgets.token_chips import visible_text

if TYPE_CHECKING:
    from ..session import Session
    from .events import AppEvents
    from .queries import PromptAnswer


class MainWindow(Protocol):
    """What the explanations, the guide and the help need of ``main_window.MainWindow`` (which
    imports them, so they cannot import it)."""

    session: Session
    events: AppEvents
    panels: dict[str, QWidget]
    docks: dict[str, QDockWidget]

    def menuBar(self) -> QMenuBar: ...
    def focusWidget(self) -> QWidget | None: ...

STAGES: tuple[tuple[str, str], ...] = (
    ("text", "Text"),
    ("tokens", "Tokens"),
    ("ids", "Token IDs"),
    ("model", "Embeddings and model"),
    ("logits", "Logits"),
    ("softmax", "Softmax"),
    ("probabilities", "Probabilities"),
    ("loss", "Loss"),
)
# Which stages each dock shows (DOCKS keys in main_window); the dialog starts at the first.
PANEL_STAGES: dict[str, tuple[str, ...]] = {
    "data": ("text",),
    "tokenizer": ("tokens", "ids"),
    "model": ("ids", "model"),
    "training": ("loss",),
    "predictions": ("logits", "softmax", "probabilities"),
    "pipeline": (),  # all of them: nothing singled out
    "timeline": ("probabilities", "loss"),
    "inside": ("model", "logits"),  # embeddings, attention and the layers' own guesses
    "runs": ("loss",),  # the runs' validation losses
    "compare": ("loss", "probabilities"),  # their curves, and their next-token guesses
}
_LISTED = 3  # tokens / candidates named in a sentence
_NEEDS_MODEL = "Train a model (Training › Start) or open a run to see these numbers for your prompt."


@dataclass
class Facts:
    """The live numbers the explanations quote (None: not known yet)."""

    corpus_chars: int = 0
    n_files: int = 0
    using_demo: bool = True
    val_fraction: float = 0.0
    tokenizer_plugin: str = ""
    vocab_size: int | None = None
    corpus_tokens: int | None = None
    chars_per_token: float | None = None
    prompt: str = ""
    tokens: list[Token] = field(default_factory=list)
    position: int | None = None
    model_plugin: str = ""
    n_embd: int | None = None
    context_length: int | None = None
    n_params: int | None = None
    prediction: NextTokenPrediction | None = None
    actual_next: TokenSurprise | None = None
    previous: TokenSurprise | None = None  # the token at ``position`` itself, as predicted before it
    problem: str | None = None  # why there are no model numbers (e.g. no model yet)
    step: StepMetrics | None = None
    last_val_loss: float | None = None  # at the latest evaluation (most steps have none)
    batch_size: int | None = None


def gather_facts(session: Session, answer: PromptAnswer | None, position: int | None = None,
                 temperature: float = 1.0, step: StepMetrics | None = None,
                 last_val_loss: float | None = None) -> Facts:
    """The numbers for :func:`explain`, from the session and the window's scored prompt.

    ``position`` is the prompt token after which the next one is predicted (default: the last).
    """
    config = session.config
    model_params: dict[str, Any] = dict(config.model.params)  # a plugin's own names: may lack both
    n_embd, context = model_params.get("n_embd"), model_params.get("context_length")
    facts = Facts(corpus_chars=len(session.text), n_files=len(session.file_infos), using_demo=session.using_demo,
                  val_fraction=float(config.data.val_fraction), tokenizer_plugin=config.tokenizer.plugin,
                  model_plugin=config.model.plugin, n_embd=n_embd if isinstance(n_embd, int) else None,
                  context_length=context if isinstance(context, int) else None, prompt=session.prompt, step=step,
                  last_val_loss=last_val_loss, batch_size=getattr(config.train, "batch_size", None))
    tokenizer, corpus, trainer = session.tokenizer, session.corpus, session.trainer
    if tokenizer is not None:
        facts.vocab_size = tokenizer.vocab_size
    if corpus is not None:
        facts.corpus_tokens, facts.chars_per_token = corpus.n_tokens, corpus.chars_per_token
    if trainer is not None:
        facts.n_params = trainer.model.num_parameters()
    if answer is None:
        facts.problem = _NEEDS_MODEL
        return facts
    facts.prompt, facts.tokens = answer.text, list(answer.tokens)
    score = answer.score
    if score is None or not facts.tokens:
        facts.problem = answer.problem or _NEEDS_MODEL
        return facts
    facts.vocab_size = score.tokenizer.vocab_size
    facts.context_length = score.context_length
    last = score.last_position
    position = last if position is None or not 0 <= position <= last else position
    if not score.has_position(position):
        position = last
    facts.position = position
    facts.prediction = score.prediction(position, temperature=temperature, k=max(_LISTED, 5))
    if position + 1 < len(score.surprise) and score.surprise[position + 1].prob is not None:
        facts.actual_next = score.surprise[position + 1]
    if 0 < position < len(score.surprise) and score.surprise[position].prob is not None:
        facts.previous = score.surprise[position]
    return facts


def _tok(text: str) -> str:
    return f"'{visible_text(text)}'"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def _listing(items: list[str]) -> str:
    """``'a', 'b', 'c' and 4 more``: the first few, and how many were left out."""
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED:,} more" if len(items) > _LISTED else "")


def explain(facts: Facts) -> dict[str, str]:
    """One plain-text paragraph per stage (``STAGES`` keys), filled with the numbers in ``facts``."""
    out: dict[str, str] = {}
    where = "the demo corpus" if facts.using_demo else _count(facts.n_files, "file")
    held = int(facts.corpus_chars * facts.val_fraction)
    out["text"] = (f"The model learns from {where}: {facts.corpus_chars:,} characters, of which the last "
                   f"{facts.val_fraction:.0%} ({held:,} characters) are held out to measure how well it "
                   f"generalises. Your prompt \u201c{facts.prompt[:40]}{'…' if len(facts.prompt) > 40 else ''}\u201d "
                   f"has {len(facts.prompt):,} characters.")
    tokens, vocab = facts.tokens, facts.vocab_size
    if tokens:
        listed = _listing([_tok(t.text) for t in tokens])
        out["tokens"] = (f"The {facts.tokenizer_plugin} tokenizer cuts the prompt into "
                         f"{_count(len(tokens), 'token')}: {listed} (· marks a space).")
        if facts.chars_per_token:
            out["tokens"] += (f" On the corpus one token covers {facts.chars_per_token:.2f} characters on average "
                              f"({facts.corpus_tokens:,} tokens in all).")
        pairs = _listing([f"{_tok(t.text)} → {t.id}" for t in tokens])
        out["ids"] = (f"Each token is replaced by its number in a vocabulary of {vocab:,} entries: {pairs}. "
                      "The model only ever sees these numbers." if vocab
                      else f"Each token is replaced by its number: {pairs}.")
    else:
        out["tokens"] = (f"The {facts.tokenizer_plugin} tokenizer cuts text into tokens (characters, bytes, words "
                         "or sub-words); type a prompt to see how it cuts yours.")
        out["ids"] = "Each token is replaced by its number in the vocabulary; the model only ever sees numbers."
    size = f" ({facts.n_params:,} parameters)" if facts.n_params else ""
    width = f"{facts.n_embd:,} numbers" if facts.n_embd else "a vector"
    rows = f"{vocab:,} rows × " if vocab else ""
    prediction = facts.prediction
    if prediction is not None:
        seen = prediction.position - prediction.context_start + 1
        context = f"the last {_count(seen, 'token')}" + (f" (at most {facts.context_length:,})"
                                                          if facts.context_length else "")
    else:
        context = "the tokens before each position" + (f" (at most {facts.context_length:,})"
                                                       if facts.context_length else "")
    out["model"] = (f"Each ID picks a row of the embedding table ({rows}{width}). The {facts.model_plugin} "
                    f"model{size} mixes the vectors of {context} and ends with one score per vocabulary "
                    "entry for the token that comes next.")
    if prediction is None:
        message = facts.problem or _NEEDS_MODEL
        for key in ("logits", "softmax", "probabilities", "loss"):
            out[key] = message
        out["loss"] = _training_note(facts, "The loss is −ln p(true next token): " + message)
        return out
    logits, probs, n = prediction.logits, prediction.probs, len(prediction.probs)
    top = prediction.candidates[0]
    after = tokens[prediction.position].text if tokens else ""
    temperature = prediction.temperature
    out["logits"] = (f"After {_tok(after)} (token {prediction.position}) the model gives {n:,} logits, raw scores "
                     f"from {float(logits.min()):+.2f} to {float(logits.max()):+.2f}; the highest is "
                     f"{_tok(top.text)} at {top.logit:+.2f}. Only their differences matter: adding the same "
                     "number to all of them changes nothing.")
    denominator = float(sum(math.exp((float(v) - float(logits.max())) / temperature) for v in logits))
    out["softmax"] = (f"Softmax turns logits into probabilities that add up to {float(probs.sum()):.0%}: "
                      f"p = exp(logit / T) / Σ exp(logit / T), here at temperature T = {temperature:g}. So the "
                      f"{n:,} logits become {top.prob:.1%} for {_tok(top.text)} after softmax: "
                      f"exp(({top.logit:+.2f} − {float(logits.max()):+.2f}) / {temperature:g}) / {denominator:.3f} "
                      "(the largest logit is taken off first so exp() cannot overflow). A lower T sharpens the "
                      "odds, a higher T flattens them.")
    listed = ", ".join(f"{_tok(c.text)} {c.prob:.1%}" for c in prediction.candidates[:_LISTED])
    perplexity = math.exp(prediction.entropy)
    out["probabilities"] = (f"The most likely next tokens: {listed}. The entropy is {prediction.entropy:.2f} nats: "
                            f"the model is as unsure as a choice among {perplexity:.1f} equally likely tokens "
                            f"(a model that knows nothing: {n:,}). Generating draws the next token from these.")
    actual, uniform = facts.actual_next, math.log(n)
    baseline = (f"A model guessing uniformly among {n:,} tokens would score ln {n:,} = {uniform:.2f}; "
                "training lowers the average of this over the corpus.")
    if actual is not None and actual.prob is not None and actual.loss is not None:
        loss = (f"The true next token here is {_tok(actual.token.text)} (id {actual.token.id}): "
                f"loss = −ln p(true next token) = −ln {actual.prob:.2f} = {actual.loss:.2f} nats. {baseline}")
    elif (previous := facts.previous) is not None and previous.prob is not None and previous.loss is not None:
        loss = (f"After the prompt's last token nothing is known yet to compare with. One token back, the true "
                f"next token was {_tok(previous.token.text)}: loss = −ln p(true next token) = "
                f"−ln {previous.prob:.2f} = {previous.loss:.2f} nats. {baseline}")
    else:
        loss = ("After the prompt's last token nothing is known yet to compare with: type a longer prompt or "
                f"pick an earlier token in the Pipeline panel to see loss = −ln p(true next token). {baseline}")
    out["loss"] = _training_note(facts, loss)
    return out


def _training_note(facts: Facts, text: str) -> str:
    step = facts.step
    if step is None:
        return text
    val_loss = step.val_loss if step.val_loss is not None else facts.last_val_loss
    val = f"; on the held-out text {val_loss:.2f}" if val_loss is not None else ""
    tokens = (f" over {facts.batch_size:,} × {facts.context_length:,} predicted tokens"
              if facts.batch_size and facts.context_length else "")
    return (f"{text} The training curve is this loss averaged{tokens}: {step.train_loss:.2f} at step "
            f"{step.step:,} of {step.max_steps:,}{val}.")


def explain_html(texts: dict[str, str], focus: tuple[str, ...]) -> str:
    """The dialog's page: every stage in order, the ``focus`` ones marked "this panel"."""
    arrow = " → ".join(f"<b>{html.escape(t)}</b>" if k in focus else html.escape(t) for k, t in STAGES)
    parts = [f"<p>{arrow}</p>"]
    for number, (key, title) in enumerate(STAGES, 1):
        mark = " <span style='color: #3d7fc4;'>◀ this panel</span>" if key in focus else ""
        parts.append(f"<a name='{key}'></a><h3>{number}. {html.escape(title)}{mark}</h3>"
                     f"<p>{html.escape(texts.get(key, ''))}</p>")
    return "".join(parts)


class ExplainDialog(QDialog):
    """Non-modal: the stages of one panel explained, following the prompt and the training."""

    def __init__(self, window: MainWindow, topic: str) -> None:
        super().__init__(window)  # type: ignore[call-overload]
        self.window_ = window
        self.topic = topic
        dock = window.docks.get(topic)
        title = dock.windowTitle() if dock is not None else topic.title()
        self.setWindowTitle(f"What you are looking at — {title}")
        self.setObjectName("explainDialog")
        self.browser = QTextBrowser()
        self.browser.setObjectName("explainText")
        self.browser.setOpenExternalLinks(False)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser, 1)
        layout.addWidget(buttons)
        font_height = self.fontMetrics().height()  # sizes in text lines, not pixels: clean at 2×
        self.resize(font_height * 46, font_height * 34)
        self._timer = QTimer(self, singleShot=True, interval=500)  # training steps come fast
        self._timer.timeout.connect(self.refresh)
        events = window.events
        events.prompt_scores.scored.connect(self._soon)
        events.training_step.connect(self._soon)
        pipeline = window.panels.get("pipeline")
        if pipeline is not None and hasattr(pipeline, "position_changed"):
            pipeline.position_changed.connect(self._soon)
        self.refresh()

    def _soon(self, *_args: object) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def texts(self) -> dict[str, str]:
        return explain(facts_for_window(self.window_, self.topic))

    def refresh(self) -> None:
        focus = PANEL_STAGES.get(self.topic, ())
        bar = self.browser.verticalScrollBar()
        keep = bar.value() if self.browser.toPlainText() else None
        self.browser.setHtml(explain_html(self.texts(), focus))
        if keep is None and focus:
            self.browser.scrollToAnchor(focus[0])
        elif keep is not None:
            bar.setValue(keep)

    def plain_text(self) -> str:
        return self.browser.toPlainText()


def facts_for_window(window: MainWindow, topic: str = "pipeline") -> Facts:
    """The live numbers of ``window``: its scored prompt, the temperature, and the position the
    pipeline follows (for the pipeline's own explanation; the others are about the next token)."""
    panels = window.panels
    pipeline, predictions = panels.get("pipeline"), panels.get("predictions")
    position = (pipeline.position() if topic == "pipeline" and pipeline is not None and hasattr(pipeline, "position")
                else None)
    temperature = predictions.temperature() if predictions is not None and hasattr(predictions, "temperature") else 1.0
    step, val = getattr(window, "_explain_step", None), getattr(window, "_explain_val", None)
    return gather_facts(window.session, window.events.prompt_scores.latest, position, temperature, step, val)


def show_explanation(window: MainWindow, topic: str) -> ExplainDialog:
    """Open (or raise) the explanation of ``topic`` (a DOCKS key)."""
    dialogs: dict[str, ExplainDialog] | None = getattr(window, "_explain_dialogs", None)
    if dialogs is None:
        dialogs = {}
        window._explain_dialogs = dialogs  # type: ignore[attr-defined]
    dialog = dialogs.get(topic)
    if dialog is None:
        dialog = dialogs[topic] = ExplainDialog(window, topic)
    else:
        dialog.refresh()
    dialog.show()
    dialog.raise_()
    dialog.activateWindow()
    return dialog


class _TitleButton(QObject):
    """Keeps a "?" button in a dock's title bar, left of Qt's own float and close buttons."""

    def __init__(self, dock: QDockWidget, button: QToolButton) -> None:
        super().__init__(dock)
        self.dock, self.button = dock, button
        dock.installEventFilter(self)
        dock.topLevelChanged.connect(lambda *_: self.place())
        dock.featuresChanged.connect(lambda *_: self.place())
        self.place()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() in (QEvent.Type.Resize, QEvent.Type.Show, QEvent.Type.LayoutRequest):
            QTimer.singleShot(0, self.place)
        return False

    def place(self) -> None:
        dock, button = self.dock, self.button
        if dock.isFloating() or dock.titleBarWidget() is not None:
            button.hide()  # a floating dock's title is the window frame's; its panel keeps the menu entry
            return
        own = [b for b in dock.findChildren(QAbstractButton) if b is not button and b.isVisible()
               and b.objectName().startswith("qt_dockwidget_")]
        side = own[0].height() if own else dock.fontMetrics().height() + 4
        button.setFixedSize(side, side)
        left = min((b.x() for b in own), default=dock.width() - 2)
        top = own[0].y() if own else 2
        button.move(left - side - 2, top)
        button.show()
        button.raise_()


def install(window: MainWindow) -> None:
    """A "?" button on every dock of ``window`` and the latest training step kept for the texts."""
    def remember(metrics: StepMetrics) -> None:
        window._explain_step = metrics  # type: ignore[attr-defined]
        if metrics.val_loss is not None:
            window._explain_val = metrics.val_loss  # type: ignore[attr-defined]

    window.events.training_step.connect(remember)
    for key, dock in window.docks.items():
        button = QToolButton(dock)
        button.setObjectName(f"{key}ExplainButton")
        button.setText("?")
        button.setAutoRaise(True)
        button.setToolTip("What you are looking at, with the live numbers")
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # never steals the keyboard from the panels
        button.clicked.connect(lambda *_, k=key: show_explanation(window, k))
        _TitleButton(dock, button)
