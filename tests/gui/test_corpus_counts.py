"""What the training text itself says follows the prompt: the predictions panel's "in text" column
and counts note, checked against a brute-force count over ``session.corpus.train``; the index is
built in the background once per token array, and nothing of it shows before a corpus exists."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from lmstudio_app.gui.panels.predictions import NO_MODEL_HINT, PredictionsPanel
from lmstudio_app.gui.widgets.probability_chart import COL_TEXT, COL_TRUE
from lmstudio_app.inference.predictor import Predictor
from lmstudio_app.params import build_params

WAIT_MS = 30_000


def untrained_predictor(session) -> Predictor:
    """A 1-layer GPT on the session's tokenizer (its numbers do not matter here, its candidates do)."""
    torch.manual_seed(0)
    tokenizer = session.build_tokenizer()
    spec = session.registry.model(session.config.model.plugin)
    model = spec.build(build_params(spec.params, session.config.model.params, "model"), tokenizer.vocab_size)
    model.eval()
    return Predictor(model, tokenizer)


@pytest.fixture
def builds(session, monkeypatch) -> list[int]:
    """Counts the calls of ``session.build_continuations`` (one entry per call)."""
    calls: list[int] = []
    original = session.build_continuations

    def counting(progress=None, cancel=None):
        calls.append(1)
        return original(progress, cancel)

    monkeypatch.setattr(session, "build_continuations", counting)
    return calls


@pytest.fixture
def panel(qtbot, session, events, monkeypatch, builds):
    predictor = untrained_predictor(session)
    monkeypatch.setattr(session, "predictor", lambda fresh=True: predictor)
    monkeypatch.setattr(session, "has_model", lambda: True)
    events.prompt_scores.refresh()
    widget = PredictionsPanel(session, events)
    qtbot.addWidget(widget)
    widget.resize(900, 700)
    widget.show()
    widget.sampling.rows_spin.setValue(200)  # every token of the char vocabulary is listed
    qtbot.waitUntil(lambda: widget.prediction() is not None and not widget.is_busy(), timeout=WAIT_MS)
    return widget


def wait_counts(qtbot, panel: PredictionsPanel, prompt: str) -> None:
    qtbot.waitUntil(lambda: (not panel.is_busy() and panel.prediction() is not None
                             and panel.scores.latest.text == prompt and panel.counts() is not None
                             and not panel.table.isColumnHidden(COL_TEXT)), timeout=WAIT_MS)


def brute_force(train: np.ndarray, context: list[int]) -> Counter:
    """What followed ``context`` in ``train``, by looking at every position."""
    n, tokens = len(context), train.tolist()
    return Counter(tokens[i + n] for i in range(len(tokens) - n) if tokens[i:i + n] == context)


def check_against_brute_force(session, panel: PredictionsPanel, prompt: str) -> int:
    """The column and the note equal a brute-force count after the prompt's last n tokens; returns n."""
    encoded = session.tokenizer.encode(prompt)
    counts = session.continuations(prompt)
    n = counts.n
    assert panel.counts() == counts
    train = session.corpus.train
    followed = brute_force(train, encoded[len(encoded) - n:] if n else [])
    total = sum(followed.values())
    assert total == counts.occurrences > 0
    if n < min(8, len(encoded)):  # n is the longest suffix that was followed by something
        assert not brute_force(train, encoded[len(encoded) - n - 1:])
    candidates = panel.prediction().candidates
    assert len(candidates) == panel.table.rowCount() == session.tokenizer.vocab_size  # all listed
    for row, cand in enumerate(candidates):
        expected = followed.get(cand.id, 0) / total
        assert panel.table.value(row, COL_TEXT) == pytest.approx(expected, rel=1e-12, abs=0)
        text = panel.table.item(row, COL_TEXT).text()
        assert (text == "") == (expected == 0), (cand.text, text)  # blank for none
    assert sum(panel.table.value(r, COL_TEXT) for r in range(panel.table.rowCount())) == pytest.approx(1.0)
    note = panel.counts_text()
    if n:
        assert f"last {n} token" in note and f"seen {total:,} time" in note
    else:
        assert "no context matched" in note and f"all {total:,} tokens" in note
    assert "counts, not the truth" in note and "in the training text" in note
    top_share = max(followed.values()) / total
    assert f"{top_share:.1%}" in note
    return n


def test_in_text_column_equals_brute_force_counts(qtbot, session, events, panel, builds):
    # before a corpus exists: no column, no note, no index asked for
    assert session.corpus is None
    assert panel.table.isColumnHidden(COL_TEXT) and panel.counts_text() == ""
    assert panel.table.horizontalHeaderItem(COL_TEXT).text() == "in text"
    assert builds == []

    session.tokenize()  # the Data panel's Tokenize: the panel indexes the text in the background
    prompt = session.prompt
    wait_counts(qtbot, panel, prompt)
    assert check_against_brute_force(session, panel, prompt) == 8  # the demo sentences repeat

    # a prompt whose end is rare: a shorter context matched, still the brute-force count
    rare = "the zebra sat on"  # "a sat on" never occurs, " sat on" does
    panel.set_prompt(rare)
    wait_counts(qtbot, panel, rare)
    assert 0 < check_against_brute_force(session, panel, rare) < 8
    unknown = "qqqzz"  # nothing of it: the whole text's unigram counts
    panel.set_prompt(unknown)
    wait_counts(qtbot, panel, unknown)
    assert check_against_brute_force(session, panel, unknown) == 0

    # distinct from the grammar's truth: this plain-text session has none
    assert panel.table.isColumnHidden(COL_TRUE)


def test_index_built_once_per_corpus(qtbot, session, events, panel, builds):
    session.tokenize()
    wait_counts(qtbot, panel, session.prompt)
    assert builds == [1]
    first = session.build_continuations()  # cached: the same index (this call is counted too)
    assert session.build_continuations() is first
    builds.clear()
    for signal in (events.corpus_tokenized, events.training_started, events.model_changed):
        signal.emit()  # a run starting on the same token array: nothing to build
    qtbot.wait(300)
    assert builds == [] and panel._index_task is None

    session.tokenize()  # a new token array: indexed again, once
    qtbot.waitUntil(lambda: builds == [1] and panel._index_task is None, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: panel.counts() is not None, timeout=WAIT_MS)
    assert session.build_continuations() is not first
    check_against_brute_force(session, panel, session.prompt)


def test_counts_hidden_when_the_corpus_goes(qtbot, session, events, panel):
    session.tokenize()
    wait_counts(qtbot, panel, session.prompt)
    session.set_tokenizer("word", {})  # another tokenizer: the token arrays are dropped
    qtbot.waitUntil(lambda: panel.counts() is None and panel.table.isColumnHidden(COL_TEXT)
                    and panel.counts_text() == "", timeout=WAIT_MS)


def test_note_without_a_model(qtbot, session, events):
    session.tokenize()
    widget = PredictionsPanel(session, events)
    qtbot.addWidget(widget)
    widget.show()
    qtbot.waitUntil(lambda: widget.counts() is not None and widget.counts_text() != "", timeout=WAIT_MS)
    assert widget.message() == NO_MODEL_HINT
    assert f"seen {widget.counts().occurrences:,} time" in widget.counts_text()
