"""ParamForm: editors come from the dataclass metadata; errors are inline and name the key."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLabel, QLineEdit, QSpinBox

from lmstudio_app.config import TrainConfig
from lmstudio_app.errors import ParamError
from lmstudio_app.gui.widgets.param_form import ParamForm
from lmstudio_app.params import param


@dataclass
class FakeModelParams:
    n_layer: int = param(2, min=1, max=64, help="Transformer blocks")
    n_head: int = param(2, min=1, max=64)
    n_embd: int = param(64, min=8, max=4096, step=8)
    dropout: float = param(0.0, min=0.0, max=0.9, step=0.05)
    learning_rate: float = param(1e-3, min=1e-7, max=10.0, log_scale=True)
    bias: bool = param(True, help="Use bias terms")
    activation: str = param("gelu", choices=("gelu", "relu"))
    name: str = param("tiny")
    special_tokens: list = param(["<unk>"])
    vocab_path: str = param("")
    max_vocab: int | None = param(None, min=1, max=100_000)

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd must be divisible by n_head ({self.n_embd} % {self.n_head} != 0)")


@pytest.fixture
def form(qtbot):
    widget = ParamForm(FakeModelParams, where="model")
    qtbot.addWidget(widget)
    return widget


def test_editor_per_type(form):
    assert isinstance(form.widget_for("n_layer"), QSpinBox)
    assert isinstance(form.widget_for("dropout"), QDoubleSpinBox)
    assert isinstance(form.widget_for("bias"), QCheckBox)
    assert isinstance(form.widget_for("activation"), QComboBox)
    assert isinstance(form.widget_for("name"), QLineEdit)
    assert isinstance(form.widget_for("special_tokens"), QLineEdit)
    assert form.widget_for("n_layer").toolTip() == "Transformer blocks"
    assert form.widget_for("n_embd").singleStep() == 8
    assert [form.widget_for("activation").itemText(i) for i in range(2)] == ["gelu", "relu"]


def test_defaults_and_round_trip(form):
    assert form.values() == {
        "n_layer": 2, "n_head": 2, "n_embd": 64, "dropout": 0.0, "learning_rate": 1e-3, "bias": True,
        "activation": "gelu", "name": "tiny", "special_tokens": ["<unk>"], "vocab_path": "", "max_vocab": None,
    }
    new = {"n_layer": 6, "n_head": 4, "n_embd": 256, "dropout": 0.15, "learning_rate": 3e-4, "bias": False,
           "activation": "relu", "name": "wide", "special_tokens": ["<unk>", "<eos>"], "vocab_path": "/tmp/v.json",
           "max_vocab": 5000}
    form.set_values(new)
    assert form.values() == new
    params = form.params()
    assert isinstance(params, FakeModelParams) and params.n_embd == 256 and params.learning_rate == 3e-4
    assert form.error() is None
    form.set_values({"max_vocab": None})
    assert form.values()["max_vocab"] is None


def test_typing_emits_changed(form, qtbot):
    spin = form.widget_for("n_layer")
    with qtbot.waitSignal(form.changed, timeout=1000):
        spin.setValue(5)
    assert form.values()["n_layer"] == 5


def test_learning_rate_in_scientific_notation(form, qtbot):
    box = form.widget_for("learning_rate")
    box.lineEdit().selectAll()
    qtbot.keyClicks(box.lineEdit(), "3e-4")
    box.interpretText()
    assert form.values()["learning_rate"] == pytest.approx(3e-4)
    assert form.error() is None
    box.stepBy(10)  # log scale: ten presses = one decade
    assert form.values()["learning_rate"] == pytest.approx(3e-3)


def test_out_of_range_typed_reports_key_without_changed(form, qtbot):
    spin = form.widget_for("n_layer")
    emitted = []
    form.changed.connect(lambda: emitted.append(True))
    spin.lineEdit().selectAll()
    qtbot.keyClicks(spin.lineEdit(), "500")
    spin.interpretText()
    assert spin.value() == 500
    assert form.error() is not None
    assert "model.n_layer" in form.error() and "64" in form.error()
    # "5" and "50" are valid intermediate values; "500" must not have produced a changed signal
    assert len(emitted) == 2
    with pytest.raises(ParamError, match="n_layer"):
        form.params()
    assert any(form.error() == label.text() for label in form.findChildren(QLabel) if label.isVisibleTo(form))
    spin.setValue(3)
    assert form.error() is None


def test_arrows_stay_in_range(form):
    spin = form.widget_for("n_layer")
    spin.setValue(64)
    spin.stepBy(5)
    assert spin.value() == 64


def test_cross_field_error_shown_inline(form, qtbot):
    emitted = []
    form.changed.connect(lambda: emitted.append(True))
    form.widget_for("n_head").setValue(3)
    assert emitted == []
    assert "n_embd must be divisible by n_head" in form.error()
    labels = [label.text() for label in form.findChildren(QLabel) if label.isVisibleTo(form)]
    assert any("divisible" in text for text in labels)
    form.widget_for("n_head").setValue(4)
    assert form.error() is None and emitted == [True]


def test_optional_number_toggle(form, qtbot):
    form.widget_for("max_vocab").setValue(10)
    assert form.values()["max_vocab"] is None  # still unset until ticked
    toggle = form._fields["max_vocab"].enabled_box
    toggle.setChecked(True)
    assert form.values()["max_vocab"] == 10


def test_set_values_rejects_unknown_and_bad_types(form):
    with pytest.raises(ParamError, match="model.nope"):
        form.set_values({"nope": 1})
    with pytest.raises(ParamError, match="n_layer"):
        form.set_values({"n_layer": "many"})


def test_choice_combo_and_list_editing(form, qtbot):
    combo = form.widget_for("activation")
    combo.setCurrentIndex(1)
    assert form.values()["activation"] == "relu"
    edit = form.widget_for("special_tokens")
    edit.clear()
    qtbot.keyClicks(edit, "<a>, <b> ,")
    assert form.values()["special_tokens"] == ["<a>", "<b>"]
    form.widget_for("bias").click()
    assert form.values()["bias"] is False


def test_train_config_form(qtbot):
    form = ParamForm(TrainConfig, {"learning_rate": 3e-4, "optimizer": "muon"}, where="train")
    qtbot.addWidget(form)
    params = form.params()
    assert params.learning_rate == pytest.approx(3e-4) and params.optimizer == "muon"
    assert params.max_steps == TrainConfig().max_steps
    box = form.widget_for("min_lr")
    box.lineEdit().selectAll()
    qtbot.keyClick(box.lineEdit(), Qt.Key.Key_Backspace)
    qtbot.keyClicks(box.lineEdit(), "-1")
    box.interpretText()
    assert "train.min_lr" in form.error()


@dataclass
class BuggyParams:
    size: int = param(4, min=1, max=100)

    def validate(self) -> None:
        if self.size == 13:
            raise TypeError("unlucky size")


def test_plugin_bug_in_validate_is_reported_not_raised(qtbot):
    form = ParamForm(BuggyParams, where="model")
    qtbot.addWidget(form)
    form.widget_for("size").setValue(13)
    assert form.error() == "model: TypeError: unlucky size"
    with pytest.raises(ParamError, match="unlucky size"):
        form.params()
    form.widget_for("size").setValue(12)
    assert form.error() is None and form.params().size == 12
