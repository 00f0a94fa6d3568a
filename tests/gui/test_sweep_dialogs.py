"""The learning-rate finder and sweep dialogs (gui/lr_finder_dialog.py, gui/sweep_dialog.py) on tiny real runs."""

from __future__ import annotations

import json
import math

from PySide6.QtCore import Qt

from lmstudio_app.gui.lr_finder_dialog import LrFinderDialog
from lmstudio_app.gui.sweep_dialog import SweepDialog


def click(qtbot, button) -> None:
    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_lr_finder_apply_sets_the_suggested_rate_in_the_session(qtbot, session):
    dialog = LrFinderDialog(session)
    qtbot.addWidget(dialog)
    dialog.start_lr.setValue(1e-4)
    dialog.end_lr.setValue(1.0)
    dialog.steps.setValue(24)
    before = session.config.train.learning_rate
    click(qtbot, dialog.start_button)
    assert dialog.running  # the test runs off the GUI thread: the call returned at once
    qtbot.waitUntil(lambda: not dialog.running, timeout=15_000)
    result = dialog.result
    assert result is not None, dialog.message.text()
    assert result.suggestion is not None, dialog.message.text()
    # The curve came back step by step and the marker sits at the suggestion (log10 x).
    assert len(result.lrs) == len(result.losses) >= 8
    assert dialog.marker.isVisible()
    assert math.isclose(dialog.marker.value(), math.log10(result.suggestion))
    assert session.config.train.learning_rate == before  # nothing changes until Apply
    click(qtbot, dialog.apply_button)
    assert session.config.train.learning_rate == result.suggestion != before


def test_lr_finder_refuses_a_falling_range_inline(qtbot, session):
    dialog = LrFinderDialog(session)
    qtbot.addWidget(dialog)
    dialog.start_lr.setValue(0.5)
    dialog.end_lr.setValue(0.1)
    click(qtbot, dialog.start_button)
    assert not dialog.running
    assert "range must rise" in dialog.message.text()
    assert "\n" not in dialog.message.text()


def _metrics_val(run_dir):
    """The last validation record in a run's metrics.jsonl (what the table must show)."""
    last = None
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("val_loss") is not None:
            last = record
    assert last is not None
    return last


def test_a_two_point_sweep_fills_the_table_with_each_runs_metrics(qtbot, session, tmp_path):
    session.set_train({"max_steps": 6, "eval_interval": 3, "sample_tokens": 0})
    dialog = SweepDialog(session, folder=tmp_path / "sweep")
    qtbot.addWidget(dialog)
    dialog.set_grid([("train.learning_rate", "1e-3, 1e-2")])
    click(qtbot, dialog.start_button)
    assert dialog.running
    qtbot.waitUntil(lambda: not dialog.running, timeout=20_000)
    assert dialog.results.rowCount() == 2, dialog.message.text()
    headers = [dialog.results.horizontalHeaderItem(c).text() for c in range(dialog.results.columnCount())]
    assert headers[:2] == ["train.learning_rate", "final val loss"]
    loss_col, bpb_col, steps_col = (headers.index(h) for h in ("final val loss", "val bits/byte", "steps"))
    for row, (point, value) in enumerate(zip(dialog.sweep.data["points"], ["1e-3", "1e-2"], strict=True)):
        record = _metrics_val(dialog.sweep.folder / point["run"])
        assert dialog.results.item(row, 0).text() == value
        assert float(dialog.results.item(row, loss_col).text()) == round(record["val_loss"], 4)
        assert float(dialog.results.item(row, bpb_col).text()) == round(record["val_bpb"], 4)
        assert int(dialog.results.item(row, steps_col).text()) == 6
    xs, ys = dialog.points.getData()
    assert len(xs) == 2 and list(ys) == [r.summary.final_val_loss for r in dialog.point_results()]


def test_a_bad_grid_shows_the_cores_message_and_starts_nothing(qtbot, session, tmp_path):
    dialog = SweepDialog(session, folder=tmp_path / "sweep")
    qtbot.addWidget(dialog)
    dialog.set_grid([("train.learning_rate", "1e-3, , 1e-2")])
    click(qtbot, dialog.start_button)
    assert not dialog.running and dialog.sweep is None
    assert dialog.message.text().startswith("--grid") and "empty value" in dialog.message.text()
    dialog.set_grid([("train.no_such_key", "1, 2")])
    click(qtbot, dialog.start_button)
    assert not dialog.running and dialog.sweep is None
    assert "no_such_key" in dialog.message.text() and "\n" not in dialog.message.text()
    assert not (tmp_path / "sweep").exists()


def test_the_training_menu_opens_both_dialogs(qtbot, main_window):
    menu = next(a.menu() for a in main_window.menuBar().actions() if a.text() == "&Training")
    actions = {a.text(): a for a in menu.actions()}
    for text, cls in (("&Learning-rate finder…", LrFinderDialog), ("S&weep…", SweepDialog)):
        actions[text].trigger()
        opened = [d for d in main_window.findChildren(cls) if d.isVisible()]
        assert len(opened) == 1 and opened[0].session is main_window.session
        opened[0].close()


def test_cancel_stops_the_lr_finder_and_stop_stops_the_sweep(qtbot, session, tmp_path):
    finder = LrFinderDialog(session)
    qtbot.addWidget(finder)
    finder.steps.setValue(5000)  # far more than the test waits for
    click(qtbot, finder.start_button)
    qtbot.waitUntil(lambda: len(finder._lrs) >= 3, timeout=15_000)
    click(qtbot, finder.cancel_button)
    qtbot.waitUntil(lambda: not finder.running, timeout=15_000)
    assert finder.result is not None and finder.result.stop_reason == "stopped"
    assert len(finder.result.lrs) < 5000

    session.set_train({"max_steps": 100_000, "sample_tokens": 0})
    sweep = SweepDialog(session, folder=tmp_path / "sweep")
    qtbot.addWidget(sweep)
    sweep.set_grid([("train.learning_rate", "1e-3, 1e-2")])
    click(qtbot, sweep.start_button)
    qtbot.waitUntil(lambda: sweep.sweep.data["points"][0]["status"] == "running", timeout=15_000)
    click(qtbot, sweep.stop_button)
    qtbot.waitUntil(lambda: not sweep.running, timeout=15_000)
    statuses = [p["status"] for p in sweep.sweep.data["points"]]
    assert statuses == ["stopped", "pending"], statuses
    assert "stopped" in sweep.message.text()
