"""The Data dock: the file list, buttons, the encoding fallback, the split and the statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from lmstudio_app.gui.panels.data import PREVIEW_CHARS, DataPanel, human_size, suggested_encoding

WAIT_MS = 30_000


@pytest.fixture
def panel(qtbot, session, events):
    widget = DataPanel(session, events)
    qtbot.addWidget(widget)
    widget.show()
    return widget


def wait_idle(qtbot, panel) -> None:
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=WAIT_MS)


def test_lists_the_files_with_size_and_characters(panel, session, tiny_text_file):
    assert panel.table.rowCount() == 1
    info = session.file_infos[0]
    row = [panel.table.item(0, c).text() for c in range(4)]
    assert row == ["tiny.txt", human_size(info.size_bytes), f"{info.n_chars:,}", "Plain text (UTF-8)"]
    assert panel.preview.toPlainText() == session.text[:PREVIEW_CHARS]
    assert "Not tokenized yet" in panel.stats.text()
    assert not panel.remove_button.isEnabled()  # nothing selected


def test_tokenize_button_shows_corpus_statistics(qtbot, panel, session, events):
    with qtbot.waitSignal(events.corpus_tokenized, timeout=WAIT_MS):
        qtbot.mouseClick(panel.tokenize_button, Qt.MouseButton.LeftButton)
    corpus = session.corpus
    assert corpus is not None
    text = panel.stats.text()
    assert f"Tokens: {corpus.n_tokens:,}" in text and f"Vocabulary: {corpus.vocab_size:,}" in text
    assert f"{corpus.chars_per_token:.2f} characters/token" in text
    panel.val_spin.setValue(0.2)  # a new split: the token arrays must be recomputed
    assert session.config.data.val_fraction == pytest.approx(0.2) and session.corpus is None
    assert "Not tokenized yet" in panel.stats.text()


def test_add_remove_and_demo_buttons(qtbot, panel, session, events, tmp_path):
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha text\n" * 10, encoding="utf-8")
    (folder / "b.md").write_text("beta text\n" * 10, encoding="utf-8")
    changed = []
    events.corpus_changed.connect(lambda: changed.append(True))
    panel.load_paths([folder])  # what "Add folder…" does after its dialog
    wait_idle(qtbot, panel)
    assert [panel.table.item(r, 0).text() for r in range(3)] == ["tiny.txt", "a.txt", "b.md"]
    assert changed
    panel.table.selectRow(1)
    assert panel.remove_button.isEnabled()
    qtbot.mouseClick(panel.remove_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, panel)
    assert [Path(i.path).name for i in session.file_infos] == ["tiny.txt", "b.md"]
    assert panel.table.rowCount() == 2
    panel.table.selectAll()
    qtbot.mouseClick(panel.remove_button, Qt.MouseButton.LeftButton)  # removing them all: the demo
    wait_idle(qtbot, panel)
    assert session.using_demo and "(demo corpus)" in panel.table.item(0, 0).text()
    assert not panel.remove_button.isEnabled()  # the demo corpus cannot be removed
    panel.load_paths([folder], replace=True)
    wait_idle(qtbot, panel)
    qtbot.mouseClick(panel.demo_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, panel)
    assert session.using_demo and session.config.data.files == []


def test_not_utf8_retries_with_the_suggested_encoding(qtbot, panel, session, modals, tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("d\xe9j\xe0 vu, cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 30)
    modals.answers.append(QMessageBox.StandardButton.Yes)
    panel.load_paths([latin], replace=True)
    qtbot.waitUntil(lambda: bool(modals.shown) and not panel.is_busy(), timeout=WAIT_MS)
    assert "Read the file(s) as latin-1?" in modals.shown[0].text
    assert "crème brûlée" in session.text and session.encoding == "latin-1"
    assert panel.table.item(0, 3).text() == "latin-1"


def test_other_errors_keep_the_corpus(qtbot, panel, session, modals, tmp_path):
    before = session.text
    panel.load_paths([tmp_path / "nowhere.txt"], replace=True)
    qtbot.waitUntil(lambda: bool(modals.shown), timeout=WAIT_MS)
    assert [d.kind for d in modals.shown] == ["ErrorDialog"] and "nowhere.txt" in modals.shown[0].text
    assert session.text == before and "Nothing changed" in panel.status.text()


def test_suggested_encoding_reads_the_core_messages():
    assert suggested_encoding("x.txt: not valid UTF-8 at byte 2; it looks like cp1252 — choose that "
                              "encoding to read it") == "cp1252"
    assert suggested_encoding("x.txt: looks like utf-16-le text — choose that encoding to read it") == "utf-16-le"
    assert suggested_encoding("x.txt: not valid UTF-8 at byte 9; choose the file's encoding") == "latin-1"
    assert suggested_encoding("x.txt: file not found") is None
