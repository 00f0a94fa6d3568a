"""The watched prompts of the next run are edited in the app."""

from __future__ import annotations

from PySide6.QtCore import Qt

from lmstudio_app.gui.panels.training import TrainingPanel
from lmstudio_app.gui.watch_dialog import WatchDialog


def test_the_dialog_sets_the_next_runs_watched_prompts(qtbot, session, events, modals, tmp_path):
    panel = TrainingPanel(session, events)
    qtbot.addWidget(panel)
    qtbot.mouseClick(panel.watch_button, Qt.MouseButton.LeftButton)
    assert [d.title for d in modals.shown] == ["Watched prompts"]  # the real button opens it
    changed: list[int] = []
    events.watch_config_changed.connect(lambda: changed.append(1))
    dialog = WatchDialog(session)
    qtbot.addWidget(dialog)
    dialog.editor.setPlainText("the cat sat on the\n\nthe dog ")
    dialog.apply()
    assert session.config.watch.prompts == ["the cat sat on the", "the dog "] and changed == [1]
    trainer = session.create_trainer(tmp_path / "run")
    for _ in trainer.steps():
        pass
    assert trainer.run_dir.load_config().watch.prompts == ["the cat sat on the", "the dog "]
    assert len(trainer.run_dir.timeline.read()[-1]["prompts"]) == 2
    dialog = WatchDialog(session)
    qtbot.addWidget(dialog)
    assert dialog.editor.toPlainText() == "the cat sat on the\nthe dog "
    dialog.editor.setPlainText("")  # empty: the run chooses
    dialog.apply()
    assert session.config.watch.prompts == [] and session.config.watch.targets == []
