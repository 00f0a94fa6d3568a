"""Model panel: the generated form drives the session; the summary matches the core's numbers."""

from __future__ import annotations

import pytest

from lmstudio_app.gui.panels.model import (
    PREVIEW_DEBOUNCE_MS,
    ModelPanel,
    format_count,
    format_flops,
    format_seconds,
)
from lmstudio_app.params import build_params
from lmstudio_app.training.controller import RunState


@pytest.fixture
def panel(qtbot, session, events):
    session.build_tokenizer()
    widget = ModelPanel(session, events)
    qtbot.addWidget(widget)
    widget.show()
    qtbot.waitUntil(lambda: widget.preview() is not None and not widget.is_busy(), timeout=10000)
    return widget


def core_parameters(session) -> int:
    spec = session.registry.model(session.config.model.plugin)
    model = spec.build(build_params(spec.params, session.config.model.params, "model"), session.tokenizer.vocab_size)
    return model.num_parameters()


def test_n_layer_changes_parameter_count(qtbot, panel, session, events):
    first = panel.preview().parameters
    assert first == core_parameters(session)
    assert panel.parameters_label.text() == format_count(first)
    with qtbot.waitSignal(events.model_config_changed, timeout=1000):
        panel.form.widget_for("n_layer").setValue(3)
    assert session.config.model.params["n_layer"] == 3
    qtbot.waitUntil(lambda: not panel.is_busy() and panel.preview().parameters != first, timeout=10000)
    preview = panel.preview()
    assert preview.parameters == core_parameters(session) == session.model_preview(measure_speed=False).parameters
    assert panel.parameters_label.text() == format_count(preview.parameters)
    assert panel.non_embedding_label.text() == format_count(preview.non_embedding_parameters)
    assert panel.context_label.text() == f"{preview.context_length:,} tokens"
    assert panel.memory_label.text() == f"{preview.memory_bytes / 1e6:,.1f} MB"
    assert preview.device in panel.step_time_label.text()


def test_cross_field_error_inline_and_session_untouched(qtbot, panel, session):
    before = dict(session.config.model.params)
    panel.form.widget_for("n_head").setValue(3)  # n_embd 32 is not divisible by 3
    assert "n_head" in panel.form.error() or "divisible" in panel.form.error()
    assert session.config.model.params == before
    assert panel.form.error() in [label.text() for label in panel.findChildren(type(panel.error_label))]


def test_switch_plugin(qtbot, panel, session):
    panel.plugin_combo.setCurrentIndex(panel.plugin_combo.findData("bigram"))
    assert session.config.model.plugin == "bigram"
    qtbot.waitUntil(lambda: not panel.is_busy() and panel.preview() is not None
                    and panel.preview().parameters == core_parameters(session), timeout=10000)


def test_external_change_resyncs(qtbot, panel, session, events):
    params = dict(session.config.model.params, n_layer=2)
    session.set_model("gpt", params)
    events.model_config_changed.emit()
    assert panel.form.values()["n_layer"] == 2


def test_formatting():
    assert format_count(1_234_567) == "1,234,567 (1.23 M)"
    assert format_count(999) == "999"
    assert format_flops(7.4e6) == "7.4 MFLOP"
    assert format_seconds(0.0351) == "35.1 ms" and format_seconds(None) == "—" and format_seconds(2.5) == "2.5 s"


def test_the_step_time_is_measured_and_not_retimed_while_training(qtbot, panel, session, events, monkeypatch):
    """A timed step while a run trains would slow the run and be slowed by it: the panel waits."""
    assert panel.preview().step_time_measured
    assert "(measured)" in panel.step_time_label.text()
    previews = []
    real_preview = session.model_preview
    monkeypatch.setattr(session, "model_preview", lambda: previews.append(1) or real_preview())
    monkeypatch.setattr(session.run, "state", RunState.TRAINING)  # as while a run trains
    events.run_state_changed.emit(RunState.TRAINING)
    events.train_config_changed.emit()
    events.tokenizer_changed.emit()
    qtbot.wait(PREVIEW_DEBOUNCE_MS + 300)  # long enough for a refresh to have started
    assert previews == [] and not panel.is_busy()
    monkeypatch.setattr(session.run, "state", RunState.FINISHED)
    events.run_state_changed.emit(RunState.FINISHED)  # then it catches up once
    qtbot.waitUntil(lambda: previews == [1] and not panel.is_busy(), timeout=10000)