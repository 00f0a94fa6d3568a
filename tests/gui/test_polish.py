"""The first hour, polished: missing Qt libraries named with the command that installs them, the
plugin folder's path when no file manager opens it, an encoding to choose, the explained pipeline
with the live numbers, the first-run guide, Help, and View › Theme reaching the plots."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QDesktopServices, QPalette
from PySide6.QtWidgets import QApplication, QComboBox, QMessageBox, QPushButton, QToolButton

from lmstudio_app import launcher
from lmstudio_app.gui import dialogs, explain, guide, help_menu, theme
from lmstudio_app.gui.main_window import DOCKS
from lmstudio_app.gui.panels.data import DataPanel
from lmstudio_app.gui.plugins_dialog import open_plugin_folder
from lmstudio_app.inference.predictor import Predictor
from lmstudio_app.params import build_params
from lmstudio_app.settings import load_settings, user_plugin_dir

WAIT_MS = 30_000

# ---- Qt's system libraries, checked before Qt starts ------------------------------------------------


def test_missing_qt_libraries_print_the_one_install_command(monkeypatch, capsys):
    missing = {"libxcb-icccm.so.4", "libxcb-keysyms.so.1"}
    monkeypatch.setattr(launcher, "library_loads", lambda soname: soname not in missing)
    monkeypatch.setattr(launcher, "ldd_missing", lambda plugin=None: sorted(missing))  # ldd agrees
    monkeypatch.setattr(launcher, "uses_xcb", lambda env=None: True)
    monkeypatch.delenv(launcher.SKIP_CHECK_ENV, raising=False)
    monkeypatch.setattr(launcher.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)

    def qt_started(*_args, **_kwargs):
        raise AssertionError("Qt must not start when its libraries are missing")

    monkeypatch.setattr("lmstudio_app.gui.app.main", qt_started)
    assert launcher.main([]) == 1
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("lmstudio: error: ") and "libxcb-icccm.so.4, libxcb-keysyms.so.1" in first
    assert first.endswith("apt-get install -y libxcb-icccm4 libxcb-keysyms1")  # only the missing ones
    assert "libxcb-cursor0" not in err  # the one Qt itself would have named
    assert "dnf install -y xcb-util-wm xcb-util-keysyms" in err and "pacman -S --needed" in err


def test_an_unreachable_display_is_named_not_a_library(monkeypatch, capsys, tmp_path):
    if not launcher.library_loads("libxcb.so.1"):
        pytest.skip("libxcb is not installed here (the missing-library message covers that)")
    free = next(n for n in range(4711, 4811) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    monkeypatch.setenv("DISPLAY", f":{free}")
    monkeypatch.setenv("XAUTHORITY", str(tmp_path / "none"))
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)  # restored after the test: later tests stay offscreen
    monkeypatch.delenv(launcher.SKIP_CHECK_ENV, raising=False)
    monkeypatch.setattr(launcher, "qt_libraries_problem", lambda: [])

    def qt_started(*_args, **_kwargs):
        raise AssertionError("Qt must not start without a display")

    monkeypatch.setattr("lmstudio_app.gui.app.main", qt_started)
    assert launcher.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lmstudio: error: cannot connect to the X display DISPLAY=:{free}")
    assert len(err.splitlines()) == 1 and "xcb-cursor" not in err
    assert launcher.x_display_problem({"QT_QPA_PLATFORM": "xcb"}).startswith("no X display")


def test_the_check_stays_out_of_the_way(monkeypatch):
    monkeypatch.delenv(launcher.SKIP_CHECK_ENV, raising=False)
    none_missing = launcher.qt_libraries_problem(loads=lambda _s: True, environ={"DISPLAY": ":0"},
                                                 unlisted=lambda: [])
    assert none_missing == []
    broken = {"QT_QPA_PLATFORM": "xcb"}
    assert launcher.qt_libraries_problem(loads=lambda _s: False, environ=broken)  # all missing: said
    assert launcher.qt_libraries_problem(loads=lambda _s: False, environ={"DISPLAY": ":0"})
    for environ in ({"QT_QPA_PLATFORM": "offscreen"}, {"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0"}, {},
                    {"QT_QPA_PLATFORM": "xcb", launcher.SKIP_CHECK_ENV: "1"}):
        assert launcher.qt_libraries_problem(loads=lambda _s: False, environ=environ) == []
    # a library the table does not know (a newer Qt): named, with the packages that are known
    lines = launcher.qt_libraries_problem(loads=lambda s: s != "libxcb-cursor.so.0", which=lambda _m: None,
                                          environ={"DISPLAY": ":0"}, unlisted=lambda: ["libxcb-foo.so.7"])
    assert "(libxcb-cursor.so.0, libxcb-foo.so.7)" in lines[0] and "install -y libxcb-cursor0 (and the" in lines[0]
    only_unknown = launcher.qt_libraries_problem(loads=lambda _s: True, environ={"DISPLAY": ":0"},
                                                 unlisted=lambda: ["libxcb-foo.so.7"])
    assert "libxcb-foo.so.7" in only_unknown[0] and "install the packages" in only_unknown[0]
    # the real loader and ldd: present and absent libraries
    assert launcher.xcb_plugin_path() is None or isinstance(launcher.ldd_missing(), list)
    assert launcher.library_loads("libc.so.6") and not launcher.library_loads("libnot-a-library-lmstudio.so.9")


# ---- the plugin folder and the encoding question ---------------------------------------------------


def test_plugin_folder_without_a_file_manager_shows_the_path(qtbot, monkeypatch, modals):
    monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(lambda url: False))  # no launcher at all
    folder = open_plugin_folder()
    assert folder == user_plugin_dir() and folder.is_dir()
    [shown] = modals.of_kind("PathDialog")
    assert "No file manager" in shown.text and shown.details == str(folder)
    dialog = dialogs.PathDialog(None, "x", str(folder))
    qtbot.addWidget(dialog)
    qtbot.mouseClick(dialog.findChild(QPushButton, "copyPathButton"), Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text() == str(folder) and dialog.path_edit.isReadOnly()


def test_the_encoding_question_lets_the_person_choose(qtbot, session, events, modals, monkeypatch, tmp_path):
    panel = DataPanel(session, events)
    qtbot.addWidget(panel)
    shown: list[tuple[QMessageBox, QComboBox]] = []

    def choose_cp1252(box: QMessageBox) -> int:
        combo = box.findChild(QComboBox, "encodingCombo")
        shown.append((box, combo))
        combo.setCurrentText("cp1252")  # not the suggestion: the person picks another one
        return int(QMessageBox.StandardButton.Yes.value)

    monkeypatch.setattr(QMessageBox, "exec", choose_cp1252)
    path = tmp_path / "quotes.txt"
    path.write_bytes("\u201cquoted\u201d text costs 5 \u20ac\n".encode("cp1252") * 40)
    panel.load_paths([path], replace=True)
    qtbot.waitUntil(lambda: bool(shown) and not panel.is_busy(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: session.encoding == "cp1252", timeout=WAIT_MS)
    assert "\u201cquoted\u201d" in session.text and "\u20ac" in session.text
    box, combo = shown[0]
    assert combo.isEditable() and combo.count() >= 5 and combo.isVisibleTo(box)
    assert box.text().endswith("Read the file(s) as cp1252?")


# ---- the explained pipeline --------------------------------------------------------------------------


@pytest.fixture
def probed_window(qtbot, main_window, session, monkeypatch):
    """The window with a freshly initialised tiny GPT to probe (its numbers are as checkable as a
    trained one's), the prompt scored."""
    torch.manual_seed(0)
    tokenizer = session.build_tokenizer()
    spec = session.registry.model(session.config.model.plugin)
    model = spec.build(build_params(spec.params, session.config.model.params, "model"), tokenizer.vocab_size)
    predictor = Predictor(model.eval(), tokenizer)
    monkeypatch.setattr(session, "predictor", lambda fresh=True: predictor)
    monkeypatch.setattr(session, "has_model", lambda: True)
    session.set_prompt("the cat sat on")  # fits the tiny model's context of 16: every position's logits kept
    scores = main_window.events.prompt_scores
    scores.refresh()
    qtbot.waitUntil(lambda: scores.latest is not None and scores.latest.score is not None
                    and scores.latest.text == session.prompt and not scores.is_busy(), timeout=WAIT_MS)
    main_window.predictor_ = predictor
    return main_window


def test_each_stage_is_explained_with_the_live_numbers(qtbot, probed_window, session):
    predictor, prompt = probed_window.predictor_, session.prompt
    tokens = predictor.tokens(prompt)
    position = 10  # inside the first context window (its logits are kept), and a next token is known
    facts = explain.gather_facts(session, probed_window.events.prompt_scores.latest, position, temperature=0.7)
    texts = explain.explain(facts)
    assert set(texts) == {key for key, _ in explain.STAGES}

    expected = predictor.next_token(prompt, position=position, temperature=0.7, k=5)
    top, vocab = expected.candidates[0], len(expected.probs)
    assert f"{len(tokens)} tokens" in texts["tokens"] and f"'{tokens[0].text}' → {tokens[0].id}" in texts["ids"]
    assert f"vocabulary of {vocab:,} entries" in texts["ids"]
    assert f"{vocab:,} logits" in texts["logits"] and f"{top.logit:+.2f}" in texts["logits"]
    assert f"{vocab:,} logits become {top.prob:.1%} for '{top.text}' after softmax" in texts["softmax"]
    assert "T = 0.7" in texts["softmax"] and f"After '{tokens[position].text}' (token {position})" in texts["logits"]
    p_true = float(predictor.next_token(prompt, position=position, k=1).probs[tokens[position + 1].id])
    assert f"−ln {p_true:.2f} = {-math.log(p_true):.2f}" in texts["loss"]
    assert f"ln {vocab:,} = {math.log(vocab):.2f}" in texts["loss"]
    assert f"{expected.entropy:.2f} nats" in texts["probabilities"]
    # at the last token there is no next one: the loss quotes the last token, as predicted before it
    last = explain.explain(explain.gather_facts(session, probed_window.events.prompt_scores.latest))
    p_last = float(predictor.next_token(prompt, position=len(tokens) - 2, k=1).probs[tokens[-1].id])
    assert f"'{tokens[-1].text}': loss = −ln p(true next token) = −ln {p_last:.2f}" in last["loss"]


def test_every_dock_has_a_question_mark_that_explains_it(qtbot, probed_window):
    for key, title, *_ in DOCKS:
        button = probed_window.findChild(QToolButton, f"{key}ExplainButton")
        assert button is not None and button.text() == "?", key
    tabbed_on_top = probed_window.docks["predictions"]
    button = probed_window.findChild(QToolButton, "predictionsExplainButton")
    qtbot.waitUntil(lambda: button.isVisible(), timeout=WAIT_MS)
    assert tabbed_on_top.rect().contains(button.geometry())  # inside its dock's title bar
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    dialog = probed_window.findChild(explain.ExplainDialog)
    assert dialog is not None and dialog.isVisible() and dialog.windowTitle().endswith("Predictions")
    text = dialog.plain_text()
    prediction = probed_window.predictor_.next_token(probed_window.session.prompt, k=1)
    assert f"{prediction.candidates[0].prob:.1%}" in text and "Softmax" in text and "Loss" in text
    probed_window.session.set_prompt("a bird")  # the open dialog follows the prompt
    scores = probed_window.events.prompt_scores
    qtbot.waitUntil(lambda: scores.latest.text == "a bird" and "'a' → " in dialog.plain_text(), timeout=WAIT_MS)


def test_explanations_without_a_model_say_what_to_do(qtbot, main_window, session):
    texts = explain.explain(explain.gather_facts(session, None))
    assert "Training › Start" in texts["softmax"] and f"{len(session.text):,} characters" in texts["text"]


# ---- the first-run guide and Help --------------------------------------------------------------------


def test_the_window_alone_opens_no_guide(qtbot, main_window):
    assert guide.should_show_on_start()  # a fresh LMSTUDIO_HOME: the launcher would show it
    assert main_window.findChild(guide.GuideDialog) is None  # but MainWindow never does by itself


def test_first_run_guide_steps_skip_and_reopen(qtbot, main_window, monkeypatch):
    dialog = guide.show_guide(main_window)
    assert dialog.isVisible() and not dialog.isModal() and dialog.index == 0
    assert [s.dock for s in guide.STEPS] == ["data", "tokenizer", "model", "training", "predictions"]
    qtbot.mouseClick(dialog.next_button, Qt.MouseButton.LeftButton)
    assert dialog.index == 1 and dialog.heading.text() == "<h3>Tokenize</h3>"
    qtbot.waitUntil(lambda: not main_window.docks["tokenizer"].visibleRegion().isEmpty(), timeout=WAIT_MS)
    qtbot.mouseClick(dialog.skip_button, Qt.MouseButton.LeftButton)
    assert not dialog.isVisible()
    assert load_settings()[guide.SEEN_KEY] is True and not guide.should_show_on_start()

    main_window.help_actions["First-run guide"].trigger()  # reopened from Help, at the first step
    assert dialog.isVisible() and dialog.index == 0
    for _ in guide.STEPS[1:]:
        qtbot.mouseClick(dialog.next_button, Qt.MouseButton.LeftButton)
    assert dialog.next_button.text() == "Done" and not dialog.skip_button.isVisible()
    qtbot.mouseClick(dialog.next_button, Qt.MouseButton.LeftButton)
    assert not dialog.isVisible()


def test_guide_can_be_switched_off_for_scripts(monkeypatch):
    monkeypatch.setenv(guide.GUIDE_ENV, "0")
    assert not guide.should_show_on_start()


def test_help_shows_the_plugin_guide_and_the_shortcuts(qtbot, main_window, modals):
    main_window.help_actions["Plugin guide"].trigger()
    main_window.help_actions["Keyboard shortcuts"].trigger()
    plugin_guide, shortcuts = modals.shown[-2:]
    assert plugin_guide.kind == "PluginGuideDialog" and "plugins.md" in plugin_guide.text
    assert help_menu.plugin_guide_path().is_file()
    dialog = help_menu.PluginGuideDialog()
    qtbot.addWidget(dialog)
    assert "lmstudio_models" in dialog.browser.toPlainText()  # the guide's text, rendered
    assert shortcuts.kind == "ShortcutsDialog"
    assert "Start: Ctrl+R" in shortcuts.text and "Keyboard shortcuts: Ctrl+/" in shortcuts.text
    keys = {(action, key) for _, action, key in help_menu.shortcut_rows(main_window)}
    assert ("Data", "Alt+1") in keys


# ---- View › Theme ------------------------------------------------------------------------------------


@pytest.fixture
def restore_theme():
    yield
    theme.set_theme("system", save=False)  # the QApplication outlives this test


def _plot_backgrounds(window) -> set[str]:
    import pyqtgraph as pg

    return {w.backgroundBrush().color().name() for w in window.findChildren(pg.PlotWidget)
            if w.backgroundBrush().color().alpha()}


def _axis_text_colours(window) -> set[str]:
    import pyqtgraph as pg

    return {w.getPlotItem().getAxis("bottom").textPen().color().name() for w in window.findChildren(pg.PlotWidget)}


def test_theme_switch_reaches_widgets_and_plots(qtbot, main_window, restore_theme):
    actions = main_window.theme_actions
    assert set(actions) == {"system", "light", "dark"} and actions["system"].isChecked()
    loss_plot = main_window.training_panel.loss_plot

    actions["dark"].trigger()
    assert load_settings()[theme.THEME_KEY] == "dark" and theme.is_dark()
    assert QApplication.palette().color(QPalette.ColorRole.Window).lightness() < 100
    assert loss_plot.plot_widget.backgroundBrush().color() == QColor(theme.DARK.background)
    assert _plot_backgrounds(main_window) == {QColor(theme.DARK.background).name()}  # every plot, not one
    assert loss_plot.train_curve.opts["pen"].color() == QColor(theme.DARK.train)
    assert _axis_text_colours(main_window) == {QColor(theme.DARK.foreground).name()}  # see-through plots too

    actions["light"].trigger()
    assert theme.theme_choice() == "light" and not theme.is_dark()
    assert QApplication.palette().color(QPalette.ColorRole.Window).lightness() > 180
    assert _plot_backgrounds(main_window) == {QColor(theme.LIGHT.background).name()}
    assert loss_plot.train_curve.opts["pen"].color() == QColor(theme.LIGHT.train)
    assert _axis_text_colours(main_window) == {QColor(theme.LIGHT.foreground).name()}


def test_the_theme_choice_is_applied_at_start(qtbot, restore_theme):
    from lmstudio_app.gui.app import create_application
    from lmstudio_app.settings import save_settings

    save_settings({theme.THEME_KEY: "dark"})
    create_application([])
    assert theme.applied_choice() == "dark"
    assert QApplication.palette().color(QPalette.ColorRole.Base).lightness() < 100


def test_the_training_explanation_quotes_the_run(qtbot, main_window, session):
    """A real (tiny) run: the Training panel's "?" quotes its last step and evaluation."""
    session.set_train({"max_steps": 10, "eval_interval": 5})
    with qtbot.waitSignal(main_window.events.training_finished, timeout=WAIT_MS):
        main_window.training_panel.start_training()
    qtbot.waitUntil(lambda: getattr(main_window, "_explain_step", None) is not None
                    and main_window._explain_step.step == session.config.train.max_steps, timeout=WAIT_MS)
    rows = session.run_folder().read_metrics()
    last, last_val = rows[-1], [r["val_loss"] for r in rows if "val_loss" in r][-1]
    qtbot.mouseClick(main_window.findChild(QToolButton, "trainingExplainButton"), Qt.MouseButton.LeftButton)
    text = main_window.findChild(explain.ExplainDialog).plain_text()
    assert f"{last['train_loss']:.2f} at step {last['step']:,} of {last['max_steps']:,}" in text
    assert f"on the held-out text {last_val:.2f}" in text
    assert "4 × 16 predicted tokens" in text  # the tiny config's batch and context
