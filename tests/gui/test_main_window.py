"""The main window: opens on the demo corpus, loads files (menu path and drag-and-drop), shows
errors without dying, persists its dock layout, and stops training cleanly when closed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import QApplication, QMessageBox

from lmstudio_app.gui.dialogs import ExceptionHook
from lmstudio_app.gui.main_window import DOCKS, MainWindow
from lmstudio_app.resources import demo_corpus_path
from lmstudio_app.session import Session
from lmstudio_app.settings import recent_files
from lmstudio_app.training.controller import RunState

WAIT_MS = 30_000


def drop_events(paths: list[Path]) -> tuple[QMimeData, QDragEnterEvent, QDropEvent]:
    """Events as a drag from a file manager would send them (keep the QMimeData alive: the events
    only point at it)."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    # QDragEnterEvent takes a QPoint (PySide6 6.11 accepts nothing else), QDropEvent a QPointF
    enter = QDragEnterEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                            Qt.KeyboardModifier.NoModifier)
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                      Qt.KeyboardModifier.NoModifier)
    return mime, enter, drop


def test_first_launch_opens_on_the_demo_corpus(qtbot, registry):
    window = MainWindow(Session(registry))
    qtbot.addWidget(window)
    window.show()
    assert window.windowTitle() == "lmstudio — demo corpus"
    assert {dock.objectName() for dock in window.docks.values()} == {f"{key}Dock" for key, *_ in DOCKS}
    assert window.data_panel.table.rowCount() == 1
    assert str(demo_corpus_path().name) in window.data_panel.table.item(0, 0).text()
    assert window.training_panel.start_button.isEnabled()
    assert window.device_label.text().startswith(("CPU", "CUDA", "Apple"))
    shortcuts = {a.text(): a.shortcut().toString() for a in window.findChildren(type(window.start_action))}
    assert shortcuts["&Start"] == "Ctrl+R" and shortcuts["S&top"] == "Ctrl+."
    # Space pauses as a key no focused widget used (MainWindow.keyPressEvent), not as a shortcut
    assert window.pause_action.shortcuts() == [QKeySequence("Ctrl+P")] and "(Space)" in window.pause_action.text()
    # the model panel's size preview reaches the status bar before any training
    qtbot.waitUntil(lambda: window.params_label.text().endswith(" parameters"), timeout=WAIT_MS)
    window.close()


def test_open_files_through_the_session_path(qtbot, main_window, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("hello world, this is a small text.\n" * 20, encoding="utf-8")
    main_window.data_panel.load_paths([other], replace=True)  # what File → Open files… calls
    qtbot.waitUntil(lambda: not main_window.data_panel.is_busy(), timeout=WAIT_MS)
    assert [Path(i.path) for i in main_window.session.file_infos] == [other]
    assert main_window.windowTitle() == "lmstudio — other.txt"
    assert recent_files()[0] == str(other.absolute())


def test_drag_and_drop_adds_files(qtbot, main_window, tmp_path, tiny_text_file):
    dropped = tmp_path / "dropped.txt"
    dropped.write_text("dropped text file with some words.\n" * 20, encoding="utf-8")
    _mime, enter, drop = drop_events([dropped])  # _mime keeps the data alive until the drop
    main_window.dragEnterEvent(enter)
    assert enter.isAccepted()
    main_window.dropEvent(drop)
    qtbot.waitUntil(lambda: not main_window.data_panel.is_busy(), timeout=WAIT_MS)
    assert [Path(i.path).name for i in main_window.session.file_infos] == ["tiny.txt", "dropped.txt"]
    assert "dropped text file" in main_window.session.text
    assert main_window.data_panel.table.rowCount() == 2


def test_bad_file_shows_an_error_and_the_app_keeps_working(qtbot, main_window, modals, tmp_path):
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    before = main_window.session.text
    main_window.data_panel.load_paths([binary], replace=True)
    qtbot.waitUntil(lambda: len(modals.shown) == 1, timeout=WAIT_MS)
    assert modals.shown[0].kind == "ErrorDialog"
    assert "image.png" in modals.shown[0].text and "\n" not in modals.shown[0].text
    assert main_window.session.text == before
    good = tmp_path / "good.txt"
    good.write_text("still working fine.\n" * 10, encoding="utf-8")
    main_window.data_panel.load_paths([good], replace=True)
    qtbot.waitUntil(lambda: "still working" in main_window.session.text, timeout=WAIT_MS)


def test_menu_errors_become_dialogs(qtbot, main_window, modals, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n", encoding="utf-8")
    main_window._guard(lambda: main_window.apply_preset(bad))
    assert [d.kind for d in modals.shown] == ["ErrorDialog"] and "bad.toml" in modals.shown[0].text


def test_uncaught_exceptions_go_to_a_dialog(qtbot, main_window, modals):
    hook = ExceptionHook(lambda: main_window).install()
    try:
        try:
            raise RuntimeError("boom in a slot")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        qtbot.waitUntil(lambda: len(modals.shown) == 1, timeout=WAIT_MS)
    finally:
        hook.uninstall()
    assert modals.shown[0].text == "Unexpected error: RuntimeError: boom in a slot"
    assert "Traceback" in modals.shown[0].details
    assert main_window.isVisible()


def test_dock_layout_persists_across_windows(qtbot, session):
    first = MainWindow(session)
    qtbot.addWidget(first)
    first.show()
    first.docks["pipeline"].hide()
    first.docks["model"].setFloating(True)
    first.close()
    second = MainWindow(session)
    qtbot.addWidget(second)
    second.show()
    assert second.docks["pipeline"].isHidden()
    assert second.docks["model"].isFloating()
    second.reset_layout()
    assert not second.docks["pipeline"].isHidden() and not second.docks["model"].isFloating()
    second.close()


def test_closing_during_training_stops_the_worker_and_keeps_a_checkpoint(qtbot, session):
    session.set_train({"max_steps": 100_000})
    window = MainWindow(session)
    qtbot.addWidget(window)
    window.show()
    window.start_action.trigger()  # Training → Start (Ctrl+R)
    panel = window.training_panel
    qtbot.waitUntil(lambda: panel.state == RunState.TRAINING and session.trainer.step > 3, timeout=WAIT_MS)
    thread = panel.run.thread
    window.close()
    assert not thread.is_alive()
    assert session.trainer.stop_reason == "stopped"
    checkpoints = session.trainer.run_dir.path / "checkpoints"
    assert any(p.name.startswith("step_") for p in checkpoints.iterdir())


def test_plugins_and_about_dialogs_open_from_the_menus(qtbot, main_window, modals):
    main_window.show_plugins()
    main_window.show_about()
    assert [d.kind for d in modals.shown] == ["PluginsDialog", "QMessageBox"]
    assert "lmstudio" in modals.shown[1].text


def test_app_main_opens_the_window_on_the_demo_corpus(qtbot, monkeypatch):
    from lmstudio_app.gui import app as app_module

    opened: list[MainWindow] = []
    hooks: list[object] = []

    def fake_exec() -> int:  # the shared test QApplication must not run (and quit) a real main loop
        hooks.append(sys.excepthook)
        opened.extend(w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible())
        for window in opened:
            window.close()
        return 0

    monkeypatch.setattr(QApplication, "exec", staticmethod(fake_exec))
    previous_hook = sys.excepthook
    assert app_module.main(["--plugins-dir", str(Path(__file__).parent.parent / "plugins")]) == 0
    assert len(opened) == 1 and opened[0].session.using_demo
    assert "good_plugin" in {p.name for p in opened[0].session.registry.plugins}
    assert hooks[0] is not previous_hook and sys.excepthook is previous_hook  # installed, then restored
    assert QApplication.applicationName() == "lmstudio"


@pytest.mark.parametrize("answer, expected", [(QMessageBox.StandardButton.Yes, True),
                                              (QMessageBox.StandardButton.No, False)])
def test_latin1_file_offers_another_encoding(qtbot, main_window, modals, tmp_path, answer, expected):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("na\xefve caf\xe9 text\n".encode("latin-1") * 30)
    modals.answers.append(answer)
    main_window.data_panel.load_paths([latin], replace=True)
    qtbot.waitUntil(lambda: bool(modals.shown) and not main_window.data_panel.is_busy(), timeout=WAIT_MS)
    qtbot.wait(50)
    assert modals.shown[0].kind == "QMessageBox" and "latin.txt" in modals.shown[0].text
    assert ("café" in main_window.session.text) is expected
    if not expected:
        assert modals.shown[-1].kind == "ErrorDialog"


def test_open_run_for_probing_and_recent_files_menu(qtbot, main_window, session, tmp_path):
    trainer = session.create_trainer(tmp_path / "finished-run")
    for _ in trainer.steps():
        pass
    other = MainWindow(Session(session.registry, session.config))
    qtbot.addWidget(other)
    with qtbot.waitSignal(other.events.run_loaded, timeout=WAIT_MS):
        other.load_run(tmp_path / "finished-run")  # File → Open run… after its folder dialog
    assert other.session.loaded_run == tmp_path / "finished-run"
    assert other.session.predictor().next_token("the").probs.sum() == pytest.approx(1.0)
    other.close()
    notes = tmp_path / "notes.txt"
    notes.write_text("some notes to read.\n" * 10, encoding="utf-8")
    main_window.data_panel.load_paths([notes], replace=False)
    qtbot.waitUntil(lambda: not main_window.data_panel.is_busy(), timeout=WAIT_MS)
    main_window.recent_menu.aboutToShow.emit()
    assert [a.text() for a in main_window.recent_menu.actions()] == [str(notes)]


def test_space_pauses_but_still_types_in_text_boxes(qtbot, main_window):
    from PySide6.QtWidgets import QPlainTextEdit

    toggled = []
    main_window.pause_action.setEnabled(True)  # as while training
    main_window.pause_action.triggered.connect(lambda: toggled.append(True))
    main_window.activateWindow()
    prompt = main_window.panels["predictions"].findChild(QPlainTextEdit)
    prompt.setFocus()
    qtbot.waitUntil(prompt.hasFocus)
    before = prompt.toPlainText()
    qtbot.keyClick(prompt, Qt.Key.Key_Space)
    assert len(prompt.toPlainText()) == len(before) + 1 and toggled == []
    qtbot.keyClick(main_window.training_panel.progress, Qt.Key.Key_Space)
    assert toggled == [True]


def test_garbage_cycles_are_collected_in_the_gui_thread_only(qtbot, main_window):
    """A collection in the training thread can free Qt objects there and deadlock the app."""
    import gc
    import threading

    from lmstudio_app.gui import gc_guard

    assert not gc.isenabled() and gc_guard.install() is gc_guard.install()  # one collector, running
    freed_in: list[str] = []

    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the cyclic collector frees it

        def __del__(self) -> None:
            freed_in.append(threading.current_thread().name)

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    def make_garbage() -> None:
        Node()
        # Garbage that reference counting cannot free, far past the threshold of automatic
        # collection (short-lived objects would not do: their frees cancel their allocations
        # in the collector's count).
        for _ in range(10 * gc.get_threshold()[0]):
            Cycle()

    worker = threading.Thread(target=make_garbage, name="worker")
    worker.start()
    worker.join()
    assert freed_in == []  # not collected in the worker...
    qtbot.waitUntil(lambda: bool(freed_in), timeout=WAIT_MS)
    assert freed_in == [threading.main_thread().name]  # ... but by the GUI thread's timer


def test_the_first_window_is_no_taller_than_its_docks_need(qtbot, main_window):
    """Docks added one below the other before they are tabbed must not leave the window grown."""
    assert main_window.height() <= max(900, main_window.minimumSizeHint().height())
