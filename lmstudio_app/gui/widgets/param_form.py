"""A form generated from a params dataclass: the only GUI code any plugin's settings ever get.

Each field's :class:`~lmstudio_app.params.ParamInfo` picks the editor (check box, combo box,
spin box, line edit) and supplies its range, step, tooltip and label. Values are checked with
the same :func:`~lmstudio_app.params.build_params` the TOML config uses, so the form, the
config file and ``--set`` agree on what is valid.

Number editors accept out-of-range values as typed and report them inline (naming the key)
instead of silently rejecting keystrokes: a person who types 500 into "layers" should learn
what the field's maximum is, not wonder why nothing happens. The arrows stay in range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.errors import ParamError
from lmstudio_app.params import ParamInfo, build_params, coerce, param_infos

from .. import theme

_INT_LIMIT = 2**31 - 1  # QSpinBox holds a C int
_FLOAT_LIMIT = 1e15
_INVALID_PROPERTY = "paramInvalid"


def _step_flags(value: float, lo: float, hi: float) -> QAbstractSpinBox.StepEnabledFlag:
    """The arrows a spin box limited to [lo, hi] offers at ``value``: up below hi, down above lo."""
    flags = QAbstractSpinBox.StepEnabledFlag.StepNone
    if value < hi:
        flags |= QAbstractSpinBox.StepEnabledFlag.StepUpEnabled
    if value > lo:
        flags |= QAbstractSpinBox.StepEnabledFlag.StepDownEnabled
    return flags


def _is_path_field(info: ParamInfo) -> bool:
    name = info.name.lower()
    return info.type is str and (name == "path" or name.endswith(("_path", "_file")))


class _IntSpinBox(QSpinBox):
    """Typing may leave the parameter's range (reported by the form); arrows stay inside it."""

    def __init__(self, info: ParamInfo) -> None:
        super().__init__()
        self._lo = int(max(info.min, -_INT_LIMIT)) if info.min is not None else -_INT_LIMIT
        self._hi = int(min(info.max, _INT_LIMIT)) if info.max is not None else _INT_LIMIT
        self.setRange(-_INT_LIMIT, _INT_LIMIT)
        self.setSingleStep(int(info.step) if info.step else 1)
        self.setMinimumWidth(90)

    def stepBy(self, steps: int) -> None:
        target = self.value() + steps * self.singleStep()
        self.setValue(min(max(target, self._lo), self._hi))

    def stepEnabled(self) -> QAbstractSpinBox.StepEnabledFlag:
        return _step_flags(self.value(), self._lo, self._hi)


class _FloatSpinBox(QDoubleSpinBox):
    """A spin box that shows and accepts any float notation, e.g. ``3e-4`` for learning rates.

    QDoubleSpinBox rounds to ``decimals`` and formats with a fixed number of digits; here the
    value keeps 15 decimals and is shown with ``%.8g`` so 0.0003 and 1e-07 both read naturally.
    ``log_scale`` fields step multiplicatively (×10^0.1 per arrow press).
    """

    def __init__(self, info: ParamInfo) -> None:
        super().__init__()
        self._info = info
        self._lo = float(info.min) if info.min is not None else -_FLOAT_LIMIT
        self._hi = float(info.max) if info.max is not None else _FLOAT_LIMIT
        self.setDecimals(15)
        self.setRange(-_FLOAT_LIMIT, _FLOAT_LIMIT)
        self.setSingleStep(float(info.step) if info.step else self._default_step())
        self.setMinimumWidth(90)

    def _default_step(self) -> float:
        if self._info.min is not None and self._info.max is not None and self._hi > self._lo:
            span = (self._hi - self._lo) / 100
            return 10 ** math.floor(math.log10(span))  # a round step near 1% of the range
        return 0.1

    def textFromValue(self, value: float) -> str:
        return f"{value:.8g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text.strip())
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int) -> object:  # Qt override
        from PySide6.QtGui import QValidator

        stripped = text.strip()
        try:
            value = float(stripped)
        except ValueError:
            # a number on its way: "", "-", "3e", "3e-", "."
            partial = stripped.rstrip("eE+-.") if stripped else ""
            ok = partial == "" or _parses(partial) or _parses(partial + "0")
            state = QValidator.State.Intermediate if ok else QValidator.State.Invalid
            return state, text, pos
        if not math.isfinite(value) or abs(value) > _FLOAT_LIMIT:
            return QValidator.State.Invalid, text, pos
        return QValidator.State.Acceptable, text, pos

    def stepBy(self, steps: int) -> None:
        value = self.value()
        if self._info.log_scale and value > 0:
            target = float(f"{value * 10 ** (steps / 10):.3g}")
        else:
            target = value + steps * self.singleStep()
            target = round(target, 12)  # keep 0.1 + 0.2 from showing as 0.30000000000000004
        self.setValue(min(max(target, self._lo), self._hi))

    def stepEnabled(self) -> QAbstractSpinBox.StepEnabledFlag:
        return _step_flags(self.value(), self._lo, self._hi)


def _parses(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclasses.dataclass
class _Field:
    """One row of the form: the editor, how to read/write it, and the optional "set" toggle."""

    info: ParamInfo
    editor: QWidget
    read: Callable[[], Any]
    write: Callable[[Any], None]
    enabled_box: QCheckBox | None = None  # only for optional numbers: unchecked means None


class ParamForm(QWidget):
    """Editors for every field of ``params_cls``, with live validation shown under the form."""

    changed = Signal()  # a value changed and the whole form is valid

    def __init__(
        self,
        params_cls: type,
        values: Mapping[str, Any] | None = None,
        parent: QWidget | None = None,
        where: str = "",
        groups: Sequence[tuple[str, Sequence[str]]] | None = None,
    ) -> None:
        """``groups``: (title, field names) per tab, in order; fields no group names go into
        the last one. Without groups, one form of every field."""
        super().__init__(parent)
        self.params_cls = params_cls
        self.where = where
        self._fields: dict[str, _Field] = {}
        self._error: str | None = None
        self._loading = False

        self._rows: dict[str, tuple[QFormLayout, QWidget]] = {}
        self.tabs: QTabWidget | None = None
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        infos = param_infos(params_cls)
        forms = self._group_forms(outer, infos, groups)
        for info in infos:
            field = self._make_field(info)
            self._fields[info.name] = field
            label = QLabel(info.title)
            label.setToolTip(info.help)
            form = forms[info.name]
            row = self._row_widget(field)
            form.addRow(label, row)
            self._rows[info.name] = (form, row)
        self._error_label = QLabel()
        self._error_label.setStyleSheet(theme.ERROR_STYLE)
        self._error_label.setWordWrap(True)
        self._error_label.hide()
        outer.addWidget(self._error_label)

        self._loading = True
        for field in self._fields.values():
            self._write_field(field, field.info.default)
        self._loading = False
        if values:
            self.set_values(values)
        else:
            self._validate()

    # ----- public API -------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """The current values, typed as the dataclass declares (they may still be out of range)."""
        out: dict[str, Any] = {}
        for name, field in self._fields.items():
            if field.enabled_box is not None and not field.enabled_box.isChecked():
                out[name] = None
            else:
                out[name] = field.read()
        return out

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Show ``values`` (missing keys keep their current value); does not emit ``changed``.

        Unknown keys and values of the wrong type raise :class:`ParamError`; out-of-range
        values are shown and reported by :meth:`error`, as if typed.
        """
        unknown = sorted(set(values) - set(self._fields))
        if unknown:
            prefix = f"{self.where}." if self.where else ""
            raise ParamError(f"{prefix}{unknown[0]}: unknown key (known keys: {', '.join(self._fields)})")
        converted = {}
        for name, value in values.items():
            loose = dataclasses.replace(self._fields[name].info, min=None, max=None, choices=None)
            converted[name] = coerce(loose, value, self.where)
        self._loading = True
        try:
            for name, value in converted.items():
                self._write_field(self._fields[name], value)
        finally:
            self._loading = False
        self._validate()

    def params(self) -> Any:
        """A validated params instance; raises :class:`ParamError` naming the key at fault."""
        try:
            return build_params(self.params_cls, self.values(), self.where)
        except ParamError:
            raise
        except Exception:
            raise ParamError(self._validate_message()) from None

    def _validate_message(self) -> str:
        self._validate()
        return self._error or f"{self.where or self.params_cls.__name__}: invalid parameters"

    def error(self) -> str | None:
        """The current validation message (also shown in red under the form), or None."""
        return self._error

    def set_field_visible(self, name: str, visible: bool) -> None:
        """Show or hide one field's row (e.g. a setting another control edits)."""
        form, row = self._rows[name]
        form.setRowVisible(row, visible)

    def group_of(self, name: str) -> str | None:
        """The tab a field is in (None without groups)."""
        if self.tabs is None:
            return None
        form, _ = self._rows[name]
        for index in range(self.tabs.count()):
            if self.tabs.widget(index).layout() is form:
                return self.tabs.tabText(index).removeprefix("⚠ ")
        return None

    def widget_for(self, name: str) -> QWidget:
        """The editor of one field (a QSpinBox, QCheckBox, QComboBox, QLineEdit, ...)."""
        return self._fields[name].editor

    # ----- building ---------------------------------------------------------------------

    def _group_forms(self, outer: QVBoxLayout, infos: Sequence[ParamInfo],
                     groups: Sequence[tuple[str, Sequence[str]]] | None) -> dict[str, QFormLayout]:
        """The form layout each field goes into: one, or one per tab of ``groups``."""
        def new_form() -> QFormLayout:
            form = QFormLayout()
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
            return form

        if not groups:
            form = new_form()
            outer.addLayout(form)
            return {info.name: form for info in infos}
        self.tabs = QTabWidget()
        self.tabs.setObjectName("paramGroups")
        self.tabs.setDocumentMode(True)
        outer.addWidget(self.tabs)
        placed: dict[str, QFormLayout] = {}
        forms = []
        for title, _names in groups:
            page = QWidget()
            form = new_form()
            page.setLayout(form)
            self.tabs.addTab(page, title)
            forms.append(form)
        known = {info.name for info in infos}
        for (_title, names), form in zip(groups, forms):
            for name in names:
                if name in known:
                    placed.setdefault(name, form)
        return {info.name: placed.get(info.name, forms[-1]) for info in infos}

    def _make_field(self, info: ParamInfo) -> _Field:
        if info.choices is not None:
            combo = QComboBox()
            for choice in info.choices:
                combo.addItem(str(choice), choice)
            combo.currentIndexChanged.connect(self._on_edit)

            def write_choice(value: Any, combo: QComboBox = combo) -> None:
                index = combo.findData(value)
                if index < 0:  # a value outside the choices: show it so the error makes sense
                    combo.addItem(str(value), value)
                    index = combo.count() - 1
                combo.setCurrentIndex(index)

            field = _Field(info, combo, combo.currentData, write_choice)
        elif info.type is bool:
            box = QCheckBox()
            box.toggled.connect(self._on_edit)
            field = _Field(info, box, box.isChecked, lambda v, b=box: b.setChecked(bool(v)))
        elif info.type is int:
            spin = _IntSpinBox(info)
            spin.valueChanged.connect(self._on_edit)
            field = _Field(info, spin, spin.value, lambda v, s=spin: s.setValue(int(v)))
        elif info.type is float:
            fspin = _FloatSpinBox(info)
            fspin.valueChanged.connect(self._on_edit)
            field = _Field(info, fspin, fspin.value, lambda v, s=fspin: s.setValue(float(v)))
        elif info.type is list:
            edit = QLineEdit()
            edit.setPlaceholderText("comma-separated")
            edit.textChanged.connect(self._on_edit)
            field = _Field(
                info,
                edit,
                lambda e=edit: [part.strip() for part in e.text().split(",") if part.strip()],
                lambda v, e=edit: e.setText(", ".join(v)),
            )
        else:
            line = QLineEdit()
            line.textChanged.connect(self._on_edit)
            read = (lambda e=line: e.text() or None) if info.optional else line.text
            field = _Field(info, line, read, lambda v, e=line: e.setText("" if v is None else str(v)))
        field.editor.setToolTip(info.help)
        field.editor.setObjectName(f"param_{info.name}")
        if info.optional and info.type in (int, float):
            field.enabled_box = QCheckBox()
            field.enabled_box.setToolTip(f"Set {info.title.lower()} (unchecked = none)")
            field.enabled_box.toggled.connect(field.editor.setEnabled)
            field.enabled_box.toggled.connect(self._on_edit)
        return field

    def _row_widget(self, field: _Field) -> QWidget:
        if field.enabled_box is None and not _is_path_field(field.info):
            return field.editor
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        if field.enabled_box is not None:
            layout.addWidget(field.enabled_box)
        layout.addWidget(field.editor, 1)
        if _is_path_field(field.info):
            browse = QToolButton()
            browse.setText("…")
            browse.setToolTip("Choose a file")
            browse.clicked.connect(lambda: self._browse(field))
            layout.addWidget(browse)
        return row

    def _browse(self, field: _Field) -> None:
        path, _ = QFileDialog.getOpenFileName(self, field.info.title, str(field.read() or ""))
        if path:
            field.write(path)

    def _write_field(self, field: _Field, value: Any) -> None:
        if field.enabled_box is not None:
            field.enabled_box.setChecked(value is not None)
            field.editor.setEnabled(value is not None)
            if value is None:
                return
        field.write(value)

    # ----- validation -------------------------------------------------------------------

    def _on_edit(self, *_args: Any) -> None:
        if self._loading:
            return
        if self._validate():
            self.changed.emit()

    def _validate(self) -> bool:
        """Check each field, then the cross-field rules; show the first problem. True if valid."""
        values = self.values()
        bad_field: str | None = None
        message: str | None = None
        for name, field in self._fields.items():
            try:
                coerce(field.info, values[name], self.where)
            except ParamError as exc:
                bad_field, message = name, str(exc)
                break
        if message is None:
            try:
                build_params(self.params_cls, values, self.where)
            except ParamError as exc:
                message = str(exc)
            except Exception as exc:
                prefix = f"{self.where}: " if self.where else ""
                message = f"{prefix}{type(exc).__name__}: {exc}"
        for name, field in self._fields.items():
            self._mark_invalid(field.editor, name == bad_field)
        self._mark_tab(bad_field)
        self._error = message
        self._error_label.setText(message or "")
        self._error_label.setVisible(message is not None)
        return message is None

    def _mark_tab(self, bad_field: str | None) -> None:
        """The tab holding the invalid field says so: it may not be the tab on screen."""
        if self.tabs is None:
            return
        bad_form = self._rows[bad_field][0] if bad_field is not None else None
        for index in range(self.tabs.count()):
            title = self.tabs.tabText(index).removeprefix("⚠ ")
            invalid = bad_form is not None and self.tabs.widget(index).layout() is bad_form
            self.tabs.setTabText(index, f"⚠ {title}" if invalid else title)

    @staticmethod
    def _mark_invalid(editor: QWidget, invalid: bool) -> None:
        if bool(editor.property(_INVALID_PROPERTY)) == invalid:
            return
        editor.setProperty(_INVALID_PROPERTY, invalid)
        editor.setStyleSheet(f"border: 1px solid {theme.ERROR_COLOR};" if invalid else "")
