"""Per-user locations and settings: the plugin folder, the runs folder, recent files.

Paths come from platformdirs (app name ``lmstudio_app``). Setting ``LMSTUDIO_HOME`` puts
everything under one folder instead, so tests (and portable installs) never touch the real
user profile. The getters only compute paths; callers create folders when they write.

Settings are one JSON object in ``settings.json``. A missing, unreadable or corrupt file reads
as ``{}`` so a bad settings file can never stop the app from starting; nor can one that is a FIFO,
a device or huge (it is read through ``file_reads``, bounded and without blocking).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import platformdirs

from .atomic_files import atomic_write_text
from .errors import LMStudioError
from .file_reads import SMALL_FILE_LIMIT, read_text

APP_NAME = "lmstudio_app"
HOME_ENV = "LMSTUDIO_HOME"

_RECENT_KEY = "recent_files"
_DISABLED_KEY = "disabled_plugins"


def _home_override() -> Path | None:
    home = os.environ.get(HOME_ENV, "").strip()
    return Path(home).expanduser() if home else None


def user_data_dir() -> Path:
    """Where runs and user plugins live (``LMSTUDIO_HOME`` if set)."""
    home = _home_override()
    if home is not None:
        return home
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def user_config_dir() -> Path:
    """Where ``settings.json`` lives (``LMSTUDIO_HOME`` if set)."""
    home = _home_override()
    if home is not None:
        return home
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def user_plugin_dir() -> Path:
    """The folder scanned for drop-in plugin files: ``<data>/plugins``."""
    return user_data_dir() / "plugins"


def default_runs_dir() -> Path:
    """Where new runs are created unless the user picks another folder: ``<data>/runs``."""
    return user_data_dir() / "runs"


def settings_path() -> Path:
    return user_config_dir() / "settings.json"


def load_settings() -> dict[str, Any]:
    """The saved settings; ``{}`` when the file is missing, unreadable or not a JSON object."""
    try:
        values = json.loads(read_text(settings_path(), what="settings file", max_bytes=SMALL_FILE_LIMIT))
    except (LMStudioError, ValueError, RecursionError):  # RecursionError: [[[[...]]]] nested too deep
        return {}
    return values if isinstance(values, dict) else {}


def save_settings(values: dict[str, Any]) -> None:
    """Write all settings atomically (temp file + rename), so a crash never leaves half a file."""
    path = settings_path()
    atomic_write_text(path, json.dumps(values, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _string_list(values: dict[str, Any], key: str) -> list[str]:
    """A list of strings stored under ``key``; anything malformed is dropped, not fatal."""
    raw = values.get(key)
    if not isinstance(raw, list):
        return []
    return [item for item in raw if isinstance(item, str) and item]


def recent_files() -> list[str]:
    """Recently opened files and folders, newest first."""
    return _string_list(load_settings(), _RECENT_KEY)


def add_recent_file(path: str, limit: int = 10) -> list[str]:
    """Move ``path`` (made absolute) to the front of the recent list, keep ``limit``; return it."""
    entry = str(Path(path).expanduser().absolute())
    values = load_settings()
    recent = [entry] + [p for p in _string_list(values, _RECENT_KEY) if p != entry]
    values[_RECENT_KEY] = recent[: max(limit, 0)]
    save_settings(values)
    return list(values[_RECENT_KEY])


def disabled_plugins() -> list[str]:
    """Names of the plugins the user switched off in the plugins dialog."""
    return _string_list(load_settings(), _DISABLED_KEY)


def set_disabled_plugins(names: Iterable[str]) -> None:
    values = load_settings()
    values[_DISABLED_KEY] = sorted({name for name in names if name})
    save_settings(values)
