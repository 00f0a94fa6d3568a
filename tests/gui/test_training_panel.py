"""The Training dock: real clicks start, pause, resume and stop a tiny run; the plot fills up."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt, QTimer

from lmstudio_app.devices import available_devices
from lmstudio_app.errors import Cancelled, TrainingError
from lmstudio_app.gui.panels.training import TrainingPanel
from lmstudio_app.gui.widgets.training_progress import format_duration
from lmstudio_app.gui.worker import run_in_thread
from lmstudio_app.training.control import StepMetrics, TrainingControl
from lmstudio_app.training.controller import RunState

WAIT_MS = 30_000  # generous: the CPU is shared with other test runs


@pytest.fixture
def panel(qtbot, session, events):
    widget = TrainingPanel(session, events)
    qtbot.addWidget(widget)
    widget.show()
    yield widget
    widget.stop_and_wait()


def click(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.objectName()} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def buttons(panel) -> dict[str, bool]:
    return {b.objectName(): b.isEnabled() for b in
            (panel.start_button, panel.pause_button, panel.resume_button, panel.stop_button)}


def test_start_pause_resume_stop_with_real_clicks(qtbot, panel, session, events, tmp_path):
    panel.form.widget_for("max_steps").setValue(100_000)  # long enough to still run while we click
    assert session.config.train.max_steps == 100_000  # the form commits to the session
    started = []
    events.training_started.connect(lambda: started.append(True))
    assert buttons(panel) == {"startButton": True, "pauseButton": False, "resumeButton": False, "stopButton": False}

    click(qtbot, panel.start_button)
    qtbot.waitUntil(lambda: panel.state == RunState.TRAINING, timeout=WAIT_MS)
    assert started and not panel.form.isEnabled()
    # loss points arrive in the plot: read the curve's own data after a timer redraw
    qtbot.waitUntil(lambda: (panel.loss_plot.train_raw_curve.getData()[0] is not None
                             and len(panel.loss_plot.train_raw_curve.getData()[0]) >= 3), timeout=WAIT_MS)
    x, y = panel.loss_plot.train_raw_curve.getData()
    assert np.all(np.diff(x) > 0) and np.all(np.isfinite(y)) and y[0] > 0
    assert len(panel.loss_plot.train_curve.getData()[0]) == len(x)  # the smoothed curve follows

    click(qtbot, panel.pause_button)
    assert panel.state == RunState.PAUSED and session.trainer.control.paused
    assert buttons(panel) == {"startButton": False, "pauseButton": False, "resumeButton": True, "stopButton": True}
    qtbot.wait(300)
    step_paused = session.trainer.step
    qtbot.wait(300)
    assert session.trainer.step == step_paused  # really paused at a step boundary
    assert session.predictor().next_token("the").probs.sum() == pytest.approx(1.0)  # probe while paused

    click(qtbot, panel.resume_button)
    assert panel.state == RunState.TRAINING and not session.trainer.control.paused
    qtbot.waitUntil(lambda: session.trainer.step > step_paused, timeout=WAIT_MS)

    finished = []
    events.training_finished.connect(finished.append)
    click(qtbot, panel.stop_button)
    qtbot.waitUntil(lambda: not panel.state.active, timeout=WAIT_MS)
    assert finished == ["stopped"]
    assert buttons(panel)["startButton"] and panel.save_button.isEnabled()
    checkpoints = list((session.trainer.run_dir.path / "checkpoints").iterdir())
    assert checkpoints, "stopping saves a final checkpoint"


def test_a_short_run_to_the_end_shows_validation_points_samples_and_progress(qtbot, panel, session):
    panel.form.widget_for("max_steps").setValue(30)
    click(qtbot, panel.start_button)
    qtbot.waitUntil(lambda: not panel.state.active and session.trainer is not None, timeout=WAIT_MS)
    panel.loss_plot.redraw()
    val_x, _ = panel.loss_plot.val_curve.getData()
    assert list(val_x) == [10, 20, 30]  # eval_interval 10 in the tiny config
    assert panel.progress.value() == 30 and panel.progress.maximum() == 30
    assert "step 30" in panel.samples.toPlainText()
    assert panel.rate_label.text() == "Training finished"
    lr_x, lr_y = panel.loss_plot.lr_curve.getData()
    assert len(lr_x) == 30 and lr_y.max() <= session.config.train.learning_rate + 1e-12


def test_invalid_setting_blocks_start_with_a_dialog(qtbot, panel, session, modals):
    panel.form.widget_for("batch_size").setValue(0)
    assert panel.form.error() and "batch_size" in panel.form.error()
    click(qtbot, panel.start_button)
    assert not panel.state.active and session.trainer is None
    assert [d.kind for d in modals.shown] == ["ErrorDialog"] and "batch_size" in modals.shown[0].text


def test_device_combo_and_presets(qtbot, panel, session, events):
    devices = [panel.device_combo.itemData(i) for i in range(panel.device_combo.count())]
    assert devices == available_devices()
    panel.device_combo.setCurrentIndex(devices.index("cpu"))
    assert session.config.train.device == "cpu"
    changed = []
    events.model_config_changed.connect(lambda: changed.append(True))
    index = panel.preset_combo.findData("default")
    panel.preset_combo.activated.emit(index)
    assert changed and session.config.model.params["n_layer"] == 2
    # "default" is the startup configuration (on a CPU: the default preset with the fast recipe)
    from lmstudio_app.session import default_config

    startup = default_config().train
    assert panel.form.values()["max_steps"] == session.config.train.max_steps == startup.max_steps
    assert session.config.train.optimizer == startup.optimizer and session.config.train.device == "cpu"
    assert panel.preset_combo.currentText() == "default"


def test_ui_stays_responsive_while_training(qtbot, panel, session):
    """Worst gap between 5 ms timer ticks during a short run: printed, with a sanity bound."""
    panel.form.widget_for("max_steps").setValue(60)
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    click(qtbot, panel.start_button)
    qtbot.waitUntil(lambda: panel.state == RunState.TRAINING, timeout=WAIT_MS)
    last[0] = time.perf_counter()
    timer.start()
    qtbot.waitUntil(lambda: not panel.state.active, timeout=WAIT_MS)
    timer.stop()
    worst = max(gaps) * 1000
    print(f"\nworst UI event-loop stall during training: {worst:.1f} ms over {len(gaps)} ticks")
    assert worst < 1000


def test_format_duration():
    assert format_duration(5) == "5s"
    assert format_duration(65) == "1m 05s"
    assert format_duration(3 * 3600 + 120) == "3h 02m"


def test_save_checkpoint_button(qtbot, panel, session):
    panel.form.widget_for("max_steps").setValue(5)
    click(qtbot, panel.start_button)
    qtbot.waitUntil(lambda: not panel.state.active and session.trainer is not None, timeout=WAIT_MS)
    folder: Path = session.trainer.run_dir.path / "checkpoints"
    for entry in folder.iterdir():  # start from an empty folder: the click must write one
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    with qtbot.waitSignal(panel.events.status_message, timeout=WAIT_MS) as saved:
        click(qtbot, panel.save_button)
    message = saved.args[0]
    assert message.startswith("Checkpoint saved: ")
    written = Path(message.split(": ", 1)[1])
    assert written.exists() and written.parent == folder


def test_resume_run_continues_a_saved_run_with_its_history(qtbot, panel, session):
    panel.form.widget_for("max_steps").setValue(6)
    click(qtbot, panel.start_button)
    qtbot.waitUntil(lambda: not panel.state.active and session.trainer is not None, timeout=WAIT_MS)
    first = session.trainer
    panel.form.widget_for("max_steps").setValue(12)  # Resume run… continues up to the larger count
    panel.resume_run(first.run_dir.path)  # what the button does after its folder dialog
    qtbot.waitUntil(lambda: not panel.state.active and session.trainer is not first, timeout=WAIT_MS)
    resumed = session.trainer
    assert resumed.run_dir.path == first.run_dir.path and resumed.step == 12
    panel.loss_plot.redraw()
    steps = list(panel.loss_plot.train_raw_curve.getData()[0])
    assert steps == list(range(1, 13))  # the earlier curve (read back from metrics.jsonl) plus the new steps


def test_run_in_thread_works_off_the_gui_thread_and_reports_back_on_it(qtbot):
    seen: list[tuple[str, object, bool]] = []

    def in_gui_thread() -> bool:
        return threading.current_thread() is threading.main_thread()

    def job(report, cancelled):
        report(1, 2)
        return in_gui_thread()

    task = run_in_thread(job, on_done=lambda result: seen.append(("done", result, in_gui_thread())),
                         progress=lambda done, total: seen.append(("progress", (done, total), in_gui_thread())))
    qtbot.waitUntil(lambda: task.finished, timeout=WAIT_MS)
    assert seen == [("progress", (1, 2), True), ("done", False, True)]

    def cancellable(report, cancelled):
        while not cancelled():
            time.sleep(0.01)
        raise Cancelled("stopped on request")

    errors: list[BaseException] = []
    task = run_in_thread(cancellable, on_error=lambda exc, details: errors.append(exc))
    task.cancel()
    qtbot.waitUntil(lambda: task.finished, timeout=WAIT_MS)
    assert isinstance(errors[0], Cancelled) and str(errors[0]) == "stopped on request"


class FailingTrainer:
    """Trains one step, then fails the way a NaN loss does."""

    def __init__(self, config) -> None:
        self.config = config
        self.control = TrainingControl()
        self.stop_reason: str | None = None
        self.run_dir = None

    def steps(self):
        yield StepMetrics(step=1, max_steps=40, elapsed_s=0.1, train_loss=3.0, lr=1e-3,
                          tokens_per_s=100.0, tokens_seen=64)
        self.stop_reason = "error"
        raise TrainingError("train.learning_rate: the loss became nan at step 2; lower it")


def test_a_failing_run_shows_its_error_and_the_panel_recovers(qtbot, panel, session, events, modals,
                                                              monkeypatch):
    monkeypatch.setattr(session, "create_trainer", lambda: FailingTrainer(session.config))
    finished = []
    events.training_finished.connect(finished.append)
    click(qtbot, panel.start_button)
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    assert finished == ["train.learning_rate: the loss became nan at step 2; lower it"]
    assert [d.kind for d in modals.shown] == ["ErrorDialog"] and "nan" in modals.shown[0].text
    assert "TrainingError" in modals.shown[0].details  # the traceback is behind "Show details"
    assert not panel.state.active and panel.start_button.isEnabled()
    assert panel.rate_label.text() == "Training failed"


def test_stopping_while_preparing_never_launches_the_run(qtbot, panel, session, monkeypatch):
    created = []

    def slow_create_trainer():
        time.sleep(0.3)
        created.append(FailingTrainer(session.config))
        return created[-1]

    monkeypatch.setattr(session, "create_trainer", slow_create_trainer)
    click(qtbot, panel.start_button)
    assert panel.is_training()
    assert panel.stop_and_wait()  # what closing the window does
    assert not panel.state.active
    qtbot.waitUntil(lambda: bool(created), timeout=WAIT_MS)
    qtbot.wait(100)  # let the abandoned result arrive
    assert not panel.state.active and panel.run.trainer is None  # prepared, never trained
