"""Where the bundled files live: the demo corpus and the presets in ``resources/``."""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path


def installed_data_dir(name: str) -> Path:
    """``<checkout>/<name>`` when running from the source tree, else where a wheel put it.

    pyproject's ``[tool.setuptools.data-files]`` installs ``resources/`` and the plugin guide
    under ``<prefix>/share/lmstudio_app/``; the prefix is the environment's (venv, pipx) or the
    user base for ``pip install --user``. The first folder that exists wins.
    """
    root = Path(__file__).resolve().parent.parent
    checkout = root / name
    # Only a source tree (it has pyproject.toml): site-packages/resources may be another package's.
    candidates = [checkout] if (root / "pyproject.toml").is_file() else []
    prefixes = [sysconfig.get_path("data"), sys.prefix, getattr(site, "USER_BASE", None)]
    candidates += [Path(p) / "share" / "lmstudio_app" / name for p in prefixes if p]
    return next((path for path in candidates if path.is_dir()), checkout)


RESOURCES_DIR = installed_data_dir("resources")


def resource_path(*parts: str) -> Path:
    return RESOURCES_DIR.joinpath(*parts)


def demo_corpus_path() -> Path:
    return resource_path("demo_corpus.txt")


def preset_path(name: str) -> Path:
    """``resources/presets/<name>.toml``."""
    return resource_path("presets", f"{name}.toml")


def list_presets() -> list[str]:
    return sorted(p.stem for p in resource_path("presets").glob("*.toml"))
