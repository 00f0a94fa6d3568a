"""File ▸ Export: loss curves as CSV and PNG, the setup as a config TOML plus its torchrun command.

The file dialogs are replaced by a function returning the chosen name; dialogs shown after an
export are recorded by the ``modals`` fixture.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QFileDialog

from lmstudio_app.config import load_config
from lmstudio_app.gui.export_actions import SetupDialog, plot_records

WAIT_MS = 30_000


@dataclass
class SaveAnswers:
    """Paths the next save dialogs return (none left = cancelled), and the titles they were asked."""

    paths: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    def append(self, path: str) -> None:
        self.paths.append(path)


@pytest.fixture
def save_as(monkeypatch) -> SaveAnswers:
    answers = SaveAnswers()

    def get_save_file_name(parent, title, name="", filters="", *args, **kwargs):
        answers.asked.append(title)
        return (answers.paths.pop(0) if answers.paths else "", filters)

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(get_save_file_name))
    return answers


def train_briefly(qtbot, window, steps: int = 12) -> None:
    window.session.set_train({"max_steps": steps})
    window.training_panel.refresh_from_session()
    window.start_action.trigger()
    qtbot.waitUntil(lambda: window.session.trainer is not None and not window.training_panel.state.active
                    and window.session.trainer.step == steps, timeout=WAIT_MS)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_file_menu_has_the_export_entries(main_window):
    file_menu = main_window.menuBar().actions()[0].menu()
    export = next(a.menu() for a in file_menu.actions() if a.text() == "&Export")
    assert [a.text() for a in export.actions()] == [
        "Loss curves as &CSV…", "Loss curves as &PNG…", "&Setup as config + torchrun command…"]


def test_loss_curves_as_csv_hold_the_runs_metrics(qtbot, main_window, save_as, modals, tmp_path):
    train_briefly(qtbot, main_window)
    save_as.append(str(tmp_path / "curves"))  # no suffix typed: .csv is added
    main_window.export_csv_action.trigger()
    written = tmp_path / "curves.csv"
    records = main_window.session.trainer.run_dir.read_metrics()
    rows = read_csv(written)
    assert modals.shown == []
    assert [int(r["step"]) for r in rows] == [r["step"] for r in records] == list(range(1, 13))
    assert [float(r["train_loss"]) for r in rows] == [r["train_loss"] for r in records]  # full precision
    assert [r["step"] for r in rows if r["val_loss"]] == ["10", "12"]  # eval_interval 10, and the last step
    assert "sample" not in rows[0]  # text columns are left out


def test_csv_without_a_run_uses_the_plotted_points_or_says_there_are_none(qtbot, main_window, save_as,
                                                                          modals, tmp_path):
    save_as.append(str(tmp_path / "empty.csv"))
    assert not main_window.export_csv_action.isEnabled()  # nothing to export: disabled, saying why
    assert "Nothing to export yet" in main_window.export_csv_action.toolTip()
    main_window._guard(main_window.exports.export_csv)  # called anyway, it still refuses in words
    assert [d.kind for d in modals.shown] == ["ErrorDialog"] and "no loss curve yet" in modals.shown[0].text
    assert not (tmp_path / "empty.csv").exists()
    plot = main_window.training_panel.loss_plot
    for step in range(1, 6):
        plot.add_point(step, 3.0 / step, lr=1e-3, val_loss=2.0 if step == 5 else None)
    assert plot_records(plot)[-1] == {"step": 5, "train_loss": 0.6, "lr": 1e-3, "val_loss": 2.0}
    save_as.append(str(tmp_path / "points.csv"))
    main_window.export_csv_action.trigger()
    rows = read_csv(tmp_path / "points.csv")
    assert [(r["step"], float(r["train_loss"])) for r in rows] == [(str(s), 3.0 / s) for s in range(1, 6)]


def test_loss_curves_as_png(qtbot, main_window, save_as, modals, tmp_path):
    assert not main_window.export_png_action.isEnabled()  # nothing plotted yet
    main_window._guard(main_window.exports.export_png)
    assert "no loss curve yet" in modals.shown[0].text and save_as.asked == []
    plot = main_window.training_panel.loss_plot
    for step in range(1, 200):
        plot.add_point(step, 4.0 / step**0.5, lr=1e-3)
    save_as.append(str(tmp_path / "curves.png"))
    main_window.export_png_action.trigger()
    image = QImage(str(tmp_path / "curves.png"))
    assert not image.isNull() and image.width() >= 1200 and image.height() >= 600  # rendered for export
    colours = {image.pixel(x, y) for x in range(0, image.width(), 4) for y in range(0, image.height(), 4)}
    assert len(colours) > 3  # background, axes, grid and curves: a picture, not a blank


def test_setup_as_config_and_torchrun_command(qtbot, main_window, save_as, modals, tmp_path, tiny_text_file):
    save_as.append(str(tmp_path / "setup.toml"))
    main_window.exports.export_setup()
    written = tmp_path / "setup.toml"
    assert load_config(written) == main_window.session.config  # the same run, read back
    assert load_config(written).data.files == [str(tiny_text_file)]
    shown = modals.of_kind("SetupDialog")
    assert len(shown) == 1 and shown[0].details == str(written.resolve())
    assert "--nproc_per_node=" in shown[0].text and str(written.resolve()) in shown[0].text
    assert shown[0].text.startswith("torchrun --standalone") and "-m lmstudio_app train" in shown[0].text


def test_cancelled_or_failing_setup_export(qtbot, main_window, save_as, modals, tmp_path):
    main_window.exports.export_setup()  # the save dialog was cancelled
    assert modals.shown == [] and not (tmp_path / "lmstudio-run.toml").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    save_as.append(str(blocker / "setup.toml"))  # cannot be written: its "folder" is a file
    main_window._guard(main_window.exports.export_setup)  # what the menu action does
    assert [d.kind for d in modals.shown] == ["ErrorDialog"] and "setup.toml" in modals.shown[0].text


def test_setup_dialog_follows_the_process_counts_and_copies(qtbot, tmp_path):
    config = tmp_path / "my run.toml"
    dialog = SetupDialog(config, nproc=2)
    qtbot.addWidget(dialog)
    assert dialog.command() == f"torchrun --standalone --nproc_per_node=2 -m lmstudio_app train '{config}'"
    dialog.nproc_spin.setValue(8)
    dialog.nnodes_spin.setValue(3)
    command = dialog.command()
    assert "--nnodes=3" in command and "--node_rank=0" in command and "--nproc_per_node=8" in command
    assert dialog.message == command and "node_rank" in dialog.note.text()
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == command
