"""Issue 13's numbered findings, each as a new user meets it: real clicks and keys, real tiny runs.

One test (at least) per item, named after it. Every run here is the ``tiny_config`` model (a few
seconds of CPU at most); runs opened for probing are trained headless first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QFontMetrics, QImage
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox

from lmstudio_app.gui.main_window import MainWindow
from lmstudio_app.gui.widgets.loss_plot import LossPlot
from lmstudio_app.gui.widgets.probability_chart import CandidateTable, ProbabilityChart
from lmstudio_app.inference.distributions import Candidate
from lmstudio_app.session import Session
from lmstudio_app.training.controller import RunState

WAIT_MS = 30_000


def trained_run(session: Session, folder: Path, steps: int = 20) -> Path:
    """A finished tiny run on disk (its metrics.jsonl, checkpoint and tokenizer)."""
    session.set_train({"max_steps": steps})
    trainer = session.create_trainer(folder)
    for _ in trainer.steps():
        pass
    return folder


def click(qtbot, widget) -> None:
    assert widget.isEnabled(), f"{widget.objectName() or widget} is disabled"
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def start_long_run(qtbot, window: MainWindow) -> None:
    window.session.set_train({"max_steps": 100_000})
    click(qtbot, window.training_panel.start_button)
    qtbot.waitUntil(lambda: window.training_panel.state == RunState.TRAINING and window.session.trainer.step > 2,
                    timeout=WAIT_MS)


def open_run(qtbot, window: MainWindow, folder: Path) -> None:
    with qtbot.waitSignal(window.events.run_loaded, timeout=WAIT_MS):
        window.load_run(folder)


# ---- 1. Start refuses invalid settings; the forms lock while training ----------------------------

def test_item01_start_refuses_an_invalid_model_form_and_the_forms_lock_while_training(qtbot, main_window,
                                                                                      session, modals):
    model = main_window.panels["model"]
    model.form.widget_for("n_head").setValue(3)  # n_embd 32 is not a multiple of 3
    assert model.form.error() and "n_head" in model.form.error()
    assert session.config.model.params["n_head"] == 2  # the session keeps the last valid value
    click(qtbot, main_window.training_panel.start_button)
    assert session.trainer is None and not main_window.training_panel.state.active
    assert [d.kind for d in modals.shown] == ["ErrorDialog"] and model.form.error() in modals.shown[0].text
    assert "Not started" in main_window.training_panel.rate_label.text()

    model.form.widget_for("n_head").setValue(2)
    start_long_run(qtbot, main_window)
    tokenizer = main_window.panels["tokenizer"]
    for panel in (model, tokenizer):
        assert not panel.form.isEnabled() and not panel.plugin_combo.isEnabled()
        assert panel.chooser.lock_label.isVisibleTo(panel) and "next run" in panel.chooser.lock_label.text()
    assert not tokenizer.train_button.isEnabled()
    main_window.training_panel.stop_training()
    qtbot.waitUntil(lambda: not main_window.training_panel.state.active, timeout=WAIT_MS)
    assert model.form.isEnabled() and tokenizer.form.isEnabled() and not model.chooser.lock_label.isVisibleTo(model)


# ---- 2. File › Open run shows that run everywhere -------------------------------------------------

def test_item02_open_run_shows_its_curve_progress_and_title_and_exports_them(qtbot, main_window, session,
                                                                            tmp_path, monkeypatch):
    folder = trained_run(Session(session.registry, session.config), tmp_path / "run-opened", steps=20)
    records = [r for r in (folder / "metrics.jsonl").read_text().splitlines() if r.strip()]
    open_run(qtbot, main_window, folder)
    plot = main_window.training_panel.loss_plot
    assert plot.train.size == len(records) == 20
    assert main_window.training_panel.progress.value() == 20
    assert "run-opened" in main_window.windowTitle()
    assert "step 20" in main_window.step_label.text() and "run-opened" in main_window.training_panel.rate_label.text()
    assert main_window.export_png_action.isEnabled()
    target = tmp_path / "opened.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), "")))
    main_window.export_png_action.trigger()
    assert QImage(str(target)).width() >= 1200


# ---- 3. Space never pauses from a widget that uses it; a clicked candidate returns focus ---------

def test_item03_space_in_the_table_does_not_pause_and_a_clicked_candidate_returns_to_the_prompt(
        qtbot, main_window, session, tmp_path):
    open_run(qtbot, main_window, trained_run(Session(session.registry, session.config), tmp_path / "run"))
    predictions = main_window.panels["predictions"]
    qtbot.waitUntil(lambda: predictions.table.rowCount() > 0, timeout=WAIT_MS)
    before = predictions.prompt()
    table = predictions.table
    table.setFocus()
    qtbot.waitUntil(table.hasFocus)
    first = predictions.prediction().candidates[0].text
    rect = table.visualItemRect(table.item(0, 1))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert predictions.prompt() == before + first
    assert predictions.prompt_edit.hasFocus()  # typing goes on the prompt again
    qtbot.keyClick(predictions.prompt_edit, Qt.Key.Key_X)
    assert predictions.prompt() == before + first + "x"

    toggled: list[bool] = []
    main_window.pause_action.setEnabled(True)  # as while training
    main_window.pause_action.triggered.connect(lambda: toggled.append(True))
    qtbot.waitUntil(lambda: table.rowCount() > 0, timeout=WAIT_MS)
    table.setFocus()
    qtbot.keyClick(table, Qt.Key.Key_Space)
    qtbot.keyClick(main_window.training_panel.loss_plot.log_checkbox, Qt.Key.Key_Space)
    assert toggled == []  # the table and the check box used the key
    qtbot.keyClick(main_window.training_panel.progress, Qt.Key.Key_Space)
    assert toggled == [True]  # a widget with no use for Space: the window pauses


# ---- 4. A visible "Paused" state at the model's own step -----------------------------------------

def test_item04_paused_says_paused_at_the_models_step(qtbot, main_window, session):
    start_long_run(qtbot, main_window)
    panel = main_window.training_panel
    qtbot.waitUntil(lambda: "tokens/s" in panel.rate_label.text(), timeout=WAIT_MS)
    click(qtbot, panel.pause_button)
    trainer = session.trainer

    def says_paused_at_model_step() -> bool:
        step = f"{trainer.step:,}"
        return (f"Paused at step {step}" in panel.rate_label.text() and f"step {step} " in main_window.step_label.text()
                and panel.progress.value() == trainer.step)

    qtbot.waitUntil(says_paused_at_model_step, timeout=WAIT_MS)
    assert "ETA" not in panel.rate_label.text().split("·")[0]
    assert main_window.speed_label.text() == "paused" and "paused" in main_window.step_label.text()
    click(qtbot, panel.resume_button)
    qtbot.waitUntil(lambda: "ETA" in panel.rate_label.text() and main_window.speed_label.text().endswith("tokens/s"),
                    timeout=WAIT_MS)
    panel.stop_training()
    qtbot.waitUntil(lambda: not panel.state.active, timeout=WAIT_MS)


# ---- 5. Log scale on the learning-rate axis ---------------------------------------------------------

def test_item05_log_scale_gives_the_learning_rate_axis_real_ticks(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(700, 350)
    plot.show()
    for step in range(1, 301):
        plot.add_point(step, 4.0 / step**0.5, lr=1e-3 * 10 ** (-2 * step / 300))  # 1e-3 down to 1e-5
    plot.redraw()
    plot.log_checkbox.click()
    plot.redraw()
    axis = plot.plot_item.getAxis("right")
    # the lr view holds log10(lr) now: 1e-5 … 1e-3 (its auto-range follows in the event loop)
    qtbot.waitUntil(lambda: plot.lr_view.viewRange()[1][0] < -4.5 and plot.lr_view.viewRange()[1][1] > -3.5,
                    timeout=WAIT_MS)
    low, high = plot.lr_view.viewRange()[1]
    majors = [v for spacing, values in axis.tickValues(low, high, 300) for v in values if spacing == 1.0]
    labels = axis.tickStrings(majors, 1.0, 1.0)
    assert len(majors) >= 2 and len(set(labels)) == len(labels) and "1" not in labels


# ---- 6. The pipeline fits the default window --------------------------------------------------------

def test_item06_the_pipeline_fits_the_default_window_with_softmax_and_loss_in_view(qtbot, main_window):
    main_window.resize(1400, 900)
    main_window.reset_layout()
    main_window.docks["pipeline"].raise_()
    view = main_window.panels["pipeline"]
    qtbot.waitUntil(view.isVisible)
    QApplication.processEvents()
    scroll = view.scroll
    assert not scroll.horizontalScrollBar().isVisible()
    assert view.strip.width() <= scroll.viewport().width()
    viewport = scroll.viewport().rect()
    for name in ("softmax", "loss"):
        box = view.boxes[name]
        top_left = box.mapTo(scroll.viewport(), QPoint(0, 0))
        assert viewport.contains(top_left) and top_left.x() + box.width() <= viewport.width(), name


# ---- 7. Tokenizer labels ---------------------------------------------------------------------------

def test_item07_tokenizer_counts_special_tokens_and_shows_unknown_words(qtbot, main_window, session, tmp_path):
    panel = main_window.panels["tokenizer"]
    panel.plugin_combo.setCurrentIndex(panel.plugin_combo.findData("byte"))
    click(qtbot, panel.train_button)
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=WAIT_MS)
    assert panel.vocab_label.text() == "257 (256 + 1 special: <|endoftext|>)"
    assert "257" in panel.chooser.description_label.text()

    panel.plugin_combo.setCurrentIndex(panel.plugin_combo.findData("word"))
    session.build_tokenizer()  # built, the corpus not tokenized yet
    qtbot.waitUntil(lambda: session.tokenizer is not None and panel.vocab_label.text() != "—", timeout=WAIT_MS)
    assert panel.status_label.text() != "Not trained yet"
    panel.sample_edit.setText("the cat sat on the zebra")
    chips = panel.chips
    unk = session.tokenizer.unk_id
    index = next(i for i, tok in enumerate(chips.tokens()) if tok.id == unk)
    assert chips.chip_text(index) == "<unk>" and "zebra" in chips.chip_tooltip(index)
    assert "words" in panel.sample_count_label.text() and "characters it has" not in panel.sample_count_label.text()

    # The predictions panel's warning, for a run with this word tokenizer
    run = trained_run(Session(session.registry, session.config), tmp_path / "word-run", steps=5)
    open_run(qtbot, main_window, run)
    predictions = main_window.panels["predictions"]
    predictions.set_prompt("the zebra sat on the")
    qtbot.waitUntil(lambda: "does not know" in predictions.message(), timeout=WAIT_MS)
    assert predictions.message().startswith("words the tokenizer does not know") and "zebra" in predictions.message()
    assert "<unk>" in [predictions.chips.chip_text(i) for i in range(len(predictions.chips.tokens()))]
    pipeline = main_window.panels["pipeline"]
    qtbot.waitUntil(lambda: "<unk>" in [pipeline.chips.chip_text(i) for i in range(len(pipeline.chips.tokens()))],
                    timeout=WAIT_MS)


# ---- 8. Presets say which is active and set everything ----------------------------------------------

def test_item08_presets_show_the_active_one_and_apply_every_setting(qtbot, registry, tiny_text_file):
    from lmstudio_app.gui.events import AppEvents
    from lmstudio_app.gui.panels.training import TrainingPanel
    from lmstudio_app.gui.preset_state import CUSTOM_LABEL, fingerprint
    from lmstudio_app.session import default_config

    session = Session(registry)  # the startup configuration
    session.set_files([tiny_text_file])
    events = AppEvents(session)
    panel = TrainingPanel(session, events)
    qtbot.addWidget(panel)
    combo = panel.preset_combo
    assert combo.currentText() == "default" and "default" in panel.preset_note.text()
    assert "Sets everything" in combo.itemData(combo.findData("default"), Qt.ItemDataRole.ToolTipRole)

    panel.form.widget_for("optimizer").setCurrentIndex(panel.form.widget_for("optimizer").findData("adamw"))
    panel.form.widget_for("grad_clip").setValue(0.5)
    assert session.config.train.optimizer == "adamw"
    assert combo.currentText() == CUSTOM_LABEL
    assert "train.optimizer" in panel.preset_note.text() and "train.grad_clip" in panel.preset_note.text()

    combo.activated.emit(combo.findData("fast-cpu"))
    assert combo.currentText() == "fast-cpu" and session.config.tokenizer.plugin == "char"
    combo.activated.emit(combo.findData("default"))
    assert combo.currentText() == "default"
    startup = default_config()
    startup.train.device = session.config.train.device
    assert fingerprint(session.config, registry) == fingerprint(startup, registry)  # every setting, optimiser too
    assert session.config.train.grad_clip == startup.train.grad_clip
    events.detach()


# ---- 9. Training settings grouped, basic first, nothing clipped ------------------------------------

def test_item09_training_settings_are_grouped_with_basic_first_and_nothing_clipped(qtbot, main_window):
    form = main_window.training_panel.form
    tabs = form.tabs
    assert [tabs.tabText(i) for i in range(tabs.count())] == ["Basic", "Schedule", "Optimiser", "Advanced"]
    assert tabs.currentIndex() == 0
    for name in ("max_steps", "batch_size", "learning_rate", "optimizer"):
        assert form.group_of(name) == "Basic"
    assert form.group_of("warmup_steps") == "Schedule" and form.group_of("muon_lr") == "Optimiser"
    assert form.group_of("seed") == "Advanced"
    for index in range(tabs.count()):
        tabs.setCurrentIndex(index)
        QApplication.processEvents()
        page = tabs.widget(index)
        for name in form.values():
            editor = form.widget_for(name)
            if not page.isAncestorOf(editor) or not editor.isVisibleTo(page):
                continue
            corner = editor.mapTo(page, QPoint(editor.width(), editor.height()))
            assert corner.y() <= page.height() and corner.x() <= page.width(), f"{name} is clipped"
    tabs.setCurrentIndex(0)


# ---- 10. Charts: legends, bar labels, stale highlights, exported size -----------------------------

def test_item10_legend_beside_the_curves_and_bar_labels_that_never_collide(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(560, 260)
    plot.show()
    for step in range(1, 100):
        plot.add_point(step, 4.0 / step**0.5, lr=1e-3)
    plot.redraw()
    QApplication.processEvents()
    legend, view = plot.plot_item.legend, plot.plot_item.vb
    assert not legend.sceneBoundingRect().intersects(view.sceneBoundingRect())

    chart = ProbabilityChart()
    qtbot.addWidget(chart)
    chart.resize(300, 200)
    chart.show()
    candidates = [Candidate(i, f" longword{i}", 0.0, 0.1, 0.1) for i in range(10)]
    chart.set_candidates(candidates)
    QApplication.processEvents()
    metrics = QFontMetrics(chart.plot.getAxis("bottom").style.get("tickFont") or chart.font())
    ticks = chart.tick_labels()
    slot = chart.label_slot_width()
    gaps = [(b - a) * slot for (a, _), (b, _) in zip(ticks, ticks[1:])]
    widths = [metrics.horizontalAdvance(text) for _, text in ticks]
    assert ticks and all(width < gap for width, gap in zip(widths, gaps))


def test_item10_a_highlighted_row_is_cleared_when_the_candidates_change(qtbot):
    table = CandidateTable()
    qtbot.addWidget(table)
    table.set_candidates([Candidate(i, f"t{i}", 1.0, 0.5 - i / 10, 0.5 - i / 10) for i in range(3)])
    table.selectRow(1)
    assert table.selectedItems()
    table.set_candidates([Candidate(i, f"u{i}", 1.0, 0.3, 0.3) for i in range(3)])  # the prompt changed
    assert table.selectedItems() == [] and table.currentRow() == -1


# ---- 11. Exports disabled with nothing to export --------------------------------------------------

def test_item11_exports_are_disabled_until_there_is_a_curve(qtbot, main_window, session):
    for action in (main_window.export_csv_action, main_window.export_png_action):
        assert not action.isEnabled() and "Nothing to export yet" in action.toolTip()
    session.set_train({"max_steps": 12})
    click(qtbot, main_window.training_panel.start_button)
    qtbot.waitUntil(lambda: session.trainer is not None and not main_window.training_panel.state.active,
                    timeout=WAIT_MS)
    assert main_window.export_csv_action.isEnabled() and main_window.export_png_action.isEnabled()
    assert "Nothing to export" not in main_window.export_png_action.toolTip()


# ---- 13. Quitting while training asks ----------------------------------------------------------------

def test_item13_quitting_while_training_asks_and_cancel_keeps_it_running(qtbot, session, modals):
    window = MainWindow(session)
    qtbot.addWidget(window)
    window.show()
    start_long_run(qtbot, window)
    modals.answers.append(QMessageBox.StandardButton.Cancel)
    window.close()
    assert window.isVisible() and window.training_panel.state.active  # Cancel: nothing happened
    asked = modals.of_kind("QMessageBox")[-1]
    assert "checkpoint" in asked.text and str(session.trainer.run_dir.path) in asked.text
    modals.answers.append(QMessageBox.StandardButton.Save)  # "Stop and save"
    window.close()
    assert not window.isVisible() and session.trainer.stop_reason == "stopped"
    assert any(p.name.startswith("step_") for p in (session.trainer.run_dir.path / "checkpoints").iterdir())


# ---- 14. The total time of a run, estimated before Start -------------------------------------------

def test_item14_the_total_time_is_estimated_before_start(qtbot, main_window, session):
    model = main_window.panels["model"]
    qtbot.waitUntil(lambda: model.preview() is not None and model.preview().seconds_per_step is not None,
                    timeout=WAIT_MS)
    per_step = model.preview().seconds_per_step
    assert model.total_seconds() == pytest.approx(session.config.train.max_steps * per_step)
    assert f"{session.config.train.max_steps:,} steps" in model.total_time_label.text()
    assert model.total_time_label.text() in main_window.training_panel.rate_label.text()  # next to Start too
    main_window.training_panel.form.widget_for("max_steps").setValue(5000)
    qtbot.waitUntil(lambda: "5,000 steps" in model.total_time_label.text(), timeout=WAIT_MS)
    assert model.total_seconds() == pytest.approx(5000 * model.preview().seconds_per_step)


# ---- the layout fits a 1366 × 768 laptop screen -----------------------------------------------------

def test_the_window_fits_a_1366x768_laptop_screen(qtbot, main_window):
    """Its minimum size (the docks' minimums added up) fits the screen less a title bar and a
    panel; a short screen scrolls a panel down instead of cutting it off."""
    minimum = main_window.minimumSizeHint()
    assert minimum.width() <= 1366 and minimum.height() <= 768 - 32 - 40
    main_window.resize(1366, 700)
    QApplication.processEvents()
    assert main_window.height() <= 700
    for key, dock in main_window.docks.items():
        scroll = dock.widget()
        assert scroll.widget() is main_window.panels[key]
        assert not scroll.horizontalScrollBar().isVisible(), key
