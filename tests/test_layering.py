"""The import-linter contract must list every core module, or a new module escapes the check."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# The top-level entry point may import the GUI; everything else in the package root is core.
NOT_CORE = {"lmstudio_app.launcher", "lmstudio_app.__main__", "lmstudio_app.__init__"}


def test_qt_contract_lists_every_core_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    qt = next(c for c in contracts if "Qt" in c["name"])
    listed = set(qt["source_modules"])
    core = {f"lmstudio_app.{p.stem}" for p in (ROOT / "lmstudio_app").glob("*.py")} - NOT_CORE
    assert core - listed == set(), "add these modules to the Qt contract in pyproject.toml"
    assert {"PySide6", "pyqtgraph", "lmstudio_app.gui"} <= set(qt["forbidden_modules"])
