"""The Data dock: which files make the corpus, a preview of the text, the split and its statistics.

Files are read and tokenized on the thread pool, both with a progress bar and a Cancel button
(a folder of thousands of files takes a while to read). When a file is not UTF-8 the core's
DataError says which encoding it looks like; the panel offers to read it that way (or as
latin-1, which decodes any bytes) instead of leaving the person stuck. Whatever fails or is
cancelled, the corpus stays as it was.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.data.files import FileInfo
from lmstudio_app.errors import Cancelled, DataError, LMStudioError
from lmstudio_app.session import Session
from lmstudio_app.settings import add_recent_file

from .. import dialogs
from ..events import AppEvents
from ..worker import BackgroundTask, CancelledFn, ReportFn, run_in_thread

PREVIEW_CHARS = 20_000
FALLBACK_ENCODING = "latin-1"  # decodes every byte sequence, so the retry always reads something
_DETECTED = re.compile(r"looks like ([A-Za-z0-9_.\-]+)(?: text)? — choose that encoding")


def human_size(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def suggested_encoding(message: str) -> str | None:
    """The encoding to offer for a DataError about a file's encoding, or None for other errors."""
    match = _DETECTED.search(message)
    if match:
        return match.group(1).rstrip(".")
    if "not valid UTF-8" in message:
        return FALLBACK_ENCODING
    return None


class DataPanel(QWidget):
    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self.task: BackgroundTask | None = None
        self._build_file_table()
        self._build_controls()
        self._build_layout()
        events.corpus_changed.connect(self.refresh)
        events.data_config_changed.connect(self.refresh)
        events.corpus_tokenized.connect(self.refresh_stats)
        events.tokenizer_changed.connect(self.refresh_stats)
        self.refresh()

    def _build_file_table(self) -> None:
        self.table = QTableWidget(0, 4)
        self.table.setObjectName("fileTable")
        self.table.setHorizontalHeaderLabels(["File", "Size", "Characters", "Read as"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in (1, 2, 3):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._update_buttons)

    def _build_controls(self) -> None:
        self.add_files_button = self._button("Add files…", "addFilesButton", self.choose_files)
        self.add_folder_button = self._button("Add folder…", "addFolderButton", self.choose_folder)
        self.remove_button = self._button("Remove", "removeFileButton", self.remove_selected)
        self.demo_button = self._button("Use demo corpus", "demoButton", self.use_demo)
        self.tokenize_button = self._button("Tokenize", "tokenizeButton", self.tokenize)
        self.cancel_button = self._button("Cancel", "cancelButton", self.cancel)

        self.val_spin = QDoubleSpinBox()
        self.val_spin.setObjectName("valFraction")
        self.val_spin.setRange(0.0, 0.5)
        self.val_spin.setSingleStep(0.01)
        self.val_spin.setDecimals(2)
        self.val_spin.setToolTip("Share of the text held out to measure how well the model generalises")
        self.val_spin.setValue(self.session.config.data.val_fraction)
        self.val_spin.valueChanged.connect(self._on_val_fraction)

        self.status = QLabel()
        self.status.setObjectName("dataStatus")
        self.status.setWordWrap(True)
        self.stats = QLabel()
        self.stats.setObjectName("corpusStats")
        self.stats.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.hide()
        self.preview = QPlainTextEdit()
        self.preview.setObjectName("textPreview")
        self.preview.setReadOnly(True)
        self.preview.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))

    def _build_layout(self) -> None:
        """Buttons, the file table, the split and Tokenize on top; the text preview below."""
        file_buttons = QHBoxLayout()
        for button in (self.add_files_button, self.add_folder_button, self.remove_button, self.demo_button):
            file_buttons.addWidget(button)
        file_buttons.addStretch(1)
        split = QFormLayout()
        split.addRow("Validation share", self.val_spin)
        tokenize_row = QHBoxLayout()
        tokenize_row.addWidget(self.tokenize_button)
        tokenize_row.addWidget(self.cancel_button)
        tokenize_row.addWidget(self.progress, 1)

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addLayout(file_buttons)
        top_layout.addWidget(self.table, 1)
        top_layout.addWidget(self.status)
        top_layout.addLayout(split)
        top_layout.addLayout(tokenize_row)
        top_layout.addWidget(self.stats)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(self.preview)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

    # ---- loading files ----------------------------------------------------------------------

    def choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add text files", "", "Text files (*.txt *.md);;All files (*)")
        if paths:
            self.load_paths(paths, replace=False)

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of text files")
        if folder:
            self.load_paths([folder], replace=False)

    def load_paths(self, paths: Sequence[str | Path], replace: bool = False, encoding: str | None = None) -> None:
        """Read files or folders in the background: replace the corpus, or add to it."""
        paths = [Path(p) for p in paths]
        action = self.session.set_files if replace else self.session.add_files
        chosen = encoding or (self.session.encoding if not replace else "utf-8")
        self._change_corpus(
            f"Reading {len(paths)} item(s)…", lambda report, cancelled: action(paths, chosen, report, cancelled),
            recent=paths, on_error=lambda exc, details: self._on_load_failed(exc, details, paths, replace, chosen),
        )

    def remove_selected(self) -> None:
        rows = sorted({index.row() for index in self.table.selectedIndexes()})
        if rows and not self.session.using_demo:
            doomed = [self.session.file_infos[row].path for row in rows]
            self._change_corpus("Removing…", lambda report, cancelled: self.session.remove_files(doomed))

    def use_demo(self) -> None:
        self._change_corpus("Reading the demo corpus…", lambda report, cancelled: self.session.use_demo_corpus())

    def _change_corpus(self, message: str, action: Callable[[ReportFn, CancelledFn], object],
                       recent: Sequence[Path] = (),
                       on_error: Callable[[BaseException, str], None] | None = None) -> None:
        """Run a change of files in the background (with progress and cancel); the session tells the panels."""
        if self.is_busy():
            self.status.setText("Busy — wait for the current operation to finish")
            return
        self._begin(message)
        self.progress.setRange(0, 0)
        self.progress.show()
        self.task = run_in_thread(action, on_done=lambda _: self._on_corpus_changed(recent),
                                  on_error=on_error or self._on_change_failed, progress=self._on_progress)

    def _on_corpus_changed(self, recent: Sequence[Path]) -> None:
        self._end()
        for path in recent:
            add_recent_file(str(path))
        self.events.status_message.emit(f"Corpus: {len(self.session.file_infos)} file(s)")

    def _on_change_failed(self, exc: BaseException, details: str) -> None:
        self._end()
        self._report_failure(exc, details)

    def _on_load_failed(self, exc: BaseException, details: str, paths: Sequence[Path], replace: bool,
                        encoding: str) -> None:
        self._end()
        if isinstance(exc, Cancelled):
            self.status.setText(f"{exc}: the corpus is as it was")
            return
        retry = suggested_encoding(str(exc)) if isinstance(exc, DataError) else None
        if retry and retry != encoding and (retry := dialogs.ask_encoding(self, str(exc), retry)):
            self.load_paths(paths, replace, encoding=retry)  # the encoding chosen in the question's combo
            return
        self._report_failure(exc, details)

    def _report_failure(self, exc: BaseException, details: str) -> None:
        self.status.setText("Nothing changed: the corpus is as it was")
        dialogs.show_exception(self, exc, None if isinstance(exc, LMStudioError) else details)

    # ---- tokenizing -------------------------------------------------------------------------

    def tokenize(self) -> None:
        """Build the tokenizer if needed and tokenize the corpus, with progress and cancel."""
        if self.is_busy():
            return
        self._begin("Tokenizing…")
        self.progress.setRange(0, 0)
        self.progress.show()
        self.task = run_in_thread(
            lambda report, cancelled: self.session.tokenize(report, cancelled),
            on_done=lambda _: self._end(),
            on_error=self._on_tokenize_failed,
            progress=self._on_progress,
        )

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _on_progress(self, done: int, total: int) -> None:
        if total > 0:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * done / total))

    def _on_tokenize_failed(self, exc: BaseException, details: str) -> None:
        self._end()
        if isinstance(exc, Cancelled):
            self.status.setText(str(exc))
            return
        dialogs.show_exception(self, exc, None if isinstance(exc, LMStudioError) else details)

    def _on_val_fraction(self, value: float) -> None:
        try:
            self.session.set_data({"val_fraction": round(value, 4)})  # the session announces the new split
        except LMStudioError as exc:
            dialogs.show_exception(self, exc)

    # ---- views ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the file list, the preview and the statistics from the session."""
        infos = self.session.file_infos
        # Empty the table first: replacing items in place makes the ResizeToContents columns
        # re-measure every row per item (quadratic: ~50 s for 1,500 files), filling fresh rows does not.
        self.table.setRowCount(0)
        self.table.setRowCount(len(infos))
        for row, info in enumerate(infos):
            name = f"{Path(info.path).name} (demo corpus)" if self.session.using_demo else Path(info.path).name
            cells = [name, human_size(info.size_bytes), f"{info.n_chars:,}", self._read_as(info)]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(str(info.path))
                if column:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, column, item)
        total = len(self.session.text)
        shown = self.session.text[:PREVIEW_CHARS]
        self.preview.setPlainText(shown)
        more = f" (showing the first {PREVIEW_CHARS:,})" if total > PREVIEW_CHARS else ""
        self.status.setText(f"{len(infos)} file(s), {total:,} characters{more}")
        self.val_spin.blockSignals(True)
        self.val_spin.setValue(self.session.config.data.val_fraction)
        self.val_spin.blockSignals(False)
        self.refresh_stats()
        self._update_buttons()

    def _read_as(self, info: FileInfo) -> str:
        """The codec, or the description of the reader plugin that read the file."""
        try:
            codecs.lookup(info.encoding)
            return info.encoding
        except LookupError:
            reader = self.session.registry.reader_for(info.path)
            return reader.description if reader is not None else info.encoding

    def refresh_stats(self) -> None:
        corpus = self.session.corpus
        if corpus is None:
            self.stats.setText("Not tokenized yet: press Tokenize (or Start training) to see token counts.")
            return
        self.stats.setText(
            f"Tokens: {corpus.n_tokens:,} (train {len(corpus.train):,} · validation {len(corpus.val):,})"
            f" · Vocabulary: {corpus.vocab_size:,} · Compression: {corpus.chars_per_token:.2f} characters/token"
        )

    def is_busy(self) -> bool:
        return self.task is not None and not self.task.finished

    def _begin(self, message: str) -> None:
        self.status.setText(message)
        self._update_buttons(busy=True)

    def _end(self) -> None:
        self.progress.hide()
        self.task = None
        self._update_buttons()  # what changed, the session's events have shown

    def _update_buttons(self, busy: bool | None = None) -> None:
        busy = self.is_busy() if busy is None else busy
        for button in (self.add_files_button, self.add_folder_button, self.demo_button, self.tokenize_button):
            button.setEnabled(not busy)
        self.remove_button.setEnabled(not busy and not self.session.using_demo and bool(self.table.selectedItems()))
        self.cancel_button.setEnabled(busy)

    def _button(self, text: str, name: str, slot) -> QPushButton:
        button = QPushButton(text)
        button.setObjectName(name)
        button.clicked.connect(slot)
        return button
