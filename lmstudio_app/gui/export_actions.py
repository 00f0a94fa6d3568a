"""File ▸ Export: the loss curves as CSV or PNG, and the setup as a config plus its torchrun command.

What goes beyond the app: a CSV table for a spreadsheet or a paper's plot, a picture of the
curves as they are on screen, and the current setup (data files, tokenizer, model, training
settings) as a config TOML that ``lmstudio train`` runs headless, with the exact ``torchrun``
command that trains it on several processes or machines (see docs/distributed.md). The work
is the core's: :func:`~lmstudio_app.runs.metrics_sinks.write_metrics_csv`,
:func:`~lmstudio_app.config.save_config`, :func:`~lmstudio_app.training.distributed.torchrun_command`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase, QGuiApplication, QImage, QPainter, QResizeEvent
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..config import save_config
from ..errors import ExportError
from ..runs.folder import RunDir
from ..runs.metrics_sinks import write_metrics_csv
from ..session import Session
from ..training.distributed import torchrun_command
from .widgets.loss_plot import LossPlot

DEFAULT_SETUP_NAME = "lmstudio-run.toml"
EXPORT_WIDTH, EXPORT_HEIGHT = 1600, 900  # the exported picture, pixels (readable in a paper or a slide)


def plot_records(plot: LossPlot) -> list[dict[str, float]]:
    """The plot's buffered points as metrics records (one per step, in step order)."""
    by_step: dict[float, dict[str, float]] = {}
    for key, buffer in (("train_loss", plot.train), ("lr", plot.lr), ("val_loss", plot.val)):
        for step, value in zip(buffer.x.tolist(), buffer.y.tolist()):
            by_step.setdefault(step, {"step": int(step) if step.is_integer() else step})[key] = value
    return [by_step[step] for step in sorted(by_step)]


def run_records(session: Session, plot: LossPlot) -> list[dict[str, Any]]:
    """The metrics to export: the live or last run's metrics.jsonl (every logged column), the
    run opened for probing, else the points in the plot; ExportError when there are none."""
    folder = session.trainer.run_dir if session.trainer is not None else None
    if folder is None and session.loaded_run is not None:
        folder = RunDir.open(session.loaded_run)
    records = folder.read_metrics() if folder is not None else []
    if not records:
        records = plot_records(plot)
    if not records:
        raise ExportError("no loss curve yet: train a run (or open one) before exporting it")
    return records


class SetupDialog(QDialog):
    """Where the config went and the torchrun command that trains it, with a Copy button."""

    def __init__(self, config_path: Path, nproc: int = 1, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Setup exported")
        self.setObjectName("setupDialog")
        self.config_path = config_path
        self.details = str(config_path)
        self.message = ""
        self.nproc_spin = QSpinBox(minimum=1, maximum=1024, value=max(nproc, 1))
        self.nproc_spin.setObjectName("nprocSpin")
        self.nproc_spin.setToolTip("Processes per machine: one per GPU (or a few on a CPU-only machine)")
        self.nnodes_spin = QSpinBox(minimum=1, maximum=4096, value=1)
        self.nnodes_spin.setObjectName("nnodesSpin")
        self.nnodes_spin.setToolTip("Machines; each runs the same command with its own --node_rank")
        self.command_edit = QLineEdit(readOnly=True)
        self.command_edit.setObjectName("torchrunCommand")
        self.command_edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.command_edit.setMinimumWidth(560)
        self.copy_button = QPushButton("Copy command", objectName="copyCommandButton")
        self.copy_button.clicked.connect(self.copy_command)
        self.note = QLabel(wordWrap=True)

        form = QFormLayout()
        form.addRow("Processes per machine", self.nproc_spin)
        form.addRow("Machines", self.nnodes_spin)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"Config written to {config_path}", wordWrap=True))
        layout.addLayout(form)
        layout.addWidget(self.command_edit)
        layout.addWidget(self.copy_button)
        layout.addWidget(self.note)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.nproc_spin.valueChanged.connect(self._update_command)
        self.nnodes_spin.valueChanged.connect(self._update_command)
        self._update_command()

    def command(self) -> str:
        return self.command_edit.text()

    def copy_command(self) -> None:
        QGuiApplication.clipboard().setText(self.command())
        self.copy_button.setText("Copied")

    def _update_command(self) -> None:
        nnodes = self.nnodes_spin.value()
        self.message = torchrun_command(str(self.config_path), self.nproc_spin.value(), nnodes)
        self.command_edit.setText(self.message)
        self.copy_button.setText("Copy command")
        self.note.setText(
            "Run it in a shell where lmstudio is installed. Every process trains on its share of "
            "each batch; rank 0 writes the run folder."
            if nnodes == 1 else
            "Run it on every machine with that machine's --node_rank (0 to "
            f"{nnodes - 1}) and MASTER_HOST replaced by node 0's address.")


class ExportActions:
    """The three exports behind File ▸ Export (each asks for a file name first)."""

    def __init__(self, parent: QWidget, session: Session, plot: LossPlot) -> None:
        self.parent = parent
        self.session = session
        self.plot = plot

    def export_csv(self) -> Path | None:
        path = self._ask("Export loss curves as CSV", "loss-curves.csv", "CSV (*.csv)")
        if path is None:
            return None
        return write_metrics_csv(run_records(self.session, self.plot), path)

    def has_curves(self) -> bool:
        """Whether there is a loss curve to export (what the Export entries are enabled by)."""
        if self.plot.train.size or self.plot.val.size:
            return True
        folder = self.session.run_folder()
        return folder is not None and (folder.path / "metrics.jsonl").is_file()

    def export_png(self) -> Path | None:
        if self.plot.train.size == 0 and self.plot.val.size == 0:
            raise ExportError("no loss curve yet: train a run before exporting its picture")
        path = self._ask("Export loss curves as PNG", "loss-curves.png", "PNG image (*.png)")
        if path is None:
            return None
        self.plot.redraw()  # the points that arrived since the last timer tick
        if not render_plot(self.plot).save(str(path), "PNG"):
            raise ExportError(f"{path}: cannot write the PNG file")
        return path

    def export_setup(self) -> Path | None:
        """Write the setup as a config TOML and show the torchrun command that trains it."""
        path = self._ask("Export setup as a config file", DEFAULT_SETUP_NAME, "TOML (*.toml)")
        if path is None:
            return None
        try:
            save_config(self.session.config, path)
        except OSError as exc:
            raise ExportError(f"{path}: cannot write the config ({exc.strerror or exc})") from None
        SetupDialog(path.resolve(), _default_nproc(), self.parent).exec()
        return path

    def _ask(self, title: str, name: str, filters: str) -> Path | None:
        chosen, _ = QFileDialog.getSaveFileName(self.parent, title, name, filters)
        if not chosen:
            return None
        path = Path(chosen)
        suffix = Path(name).suffix
        return path if path.suffix else path.with_suffix(suffix)


def render_plot(plot: LossPlot, width: int = EXPORT_WIDTH, height: int = EXPORT_HEIGHT) -> QImage:
    """The plot rendered at export time at ``width`` × ``height`` pixels, whatever its size on
    screen (a docked plot can be a few hundred pixels wide): the view is laid out again at that
    size (ticks, labels and legend placed for it, not scaled up), rendered, and put back."""
    widget = plot.plot_widget
    size = widget.size()
    image = QImage(width, height, QImage.Format.Format_ARGB32)
    image.fill(widget.backgroundBrush().color())
    widget.resize(width, height)
    try:
        _lay_out(widget)
        plot.redraw()
        painter = QPainter(image)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            widget.render(painter)
        finally:
            painter.end()
    finally:
        widget.resize(size)
        _lay_out(widget)
    return image


def _lay_out(widget: QWidget) -> None:
    """Apply a new size now: a hidden widget's resize event and the plot's layout wait for the
    event loop otherwise."""
    if widget.testAttribute(Qt.WidgetAttribute.WA_PendingResizeEvent) or not widget.isVisible():
        QApplication.sendEvent(widget, QResizeEvent(widget.size(), widget.size()))
    widget.getPlotItem().layout.activate()
    widget.getPlotItem().vb.updateViewRange()


def _default_nproc() -> int:
    """One process per CUDA device, else 2 (a CPU-only machine trains with gloo)."""
    return torch.cuda.device_count() or 2
