"""The package layout is the architecture: few flat modules, and each package says what it holds.

The import rules themselves (layers, Qt only in the GUI, no cycles) are import-linter contracts in
pyproject.toml, checked by ``lint-imports`` in ``make test``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lmstudio_app"
MAX_FLAT_MODULES = 16  # the plugin API, the entry points, the session and a few shared pieces


def test_the_package_root_stays_small() -> None:
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(flat) <= MAX_FLAT_MODULES, f"{len(flat)} flat modules; group them into packages: {flat}"


def test_every_package_says_what_it_holds_and_may_import() -> None:
    for init in sorted(PACKAGE.rglob("__init__.py")):
        if init.parent == PACKAGE:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        where = init.relative_to(ROOT)
        assert "Holds:" in doc, f"{where}: the docstring should say what the package holds"
        assert "May import:" in doc, f"{where}: the docstring should say what the package may import"
