"""Where runs live: the runs folder the user chose (where a new run goes and the first folder the
runs index scans) and the further folders the user added to the index; both kept in the settings.

Its own module so that ``folder.new_run_path`` can use it (``index`` imports ``folder``).
May import: ``settings``.
"""

from __future__ import annotations

from pathlib import Path

from ..settings import default_runs_dir, load_settings, save_settings

RUNS_DIR_KEY = "runs_dir"  # settings: where new runs go
RUN_FOLDERS_KEY = "run_folders"  # settings: more folders the user added to the runs index


def runs_folder() -> Path:
    """The runs folder from the settings, else the default ``<data>/runs``."""
    value = load_settings().get(RUNS_DIR_KEY)
    return Path(value).expanduser() if isinstance(value, str) and value else default_runs_dir()


def set_runs_folder(folder: str | Path | None) -> None:
    """Choose where new runs go (None: back to the default)."""
    values = load_settings()
    if folder is None:
        values.pop(RUNS_DIR_KEY, None)
    else:
        values[RUNS_DIR_KEY] = str(Path(folder).expanduser().absolute())
    save_settings(values)


def added_folders() -> list[Path]:
    """The folders the user added to the runs index (each a folder of runs, or one run folder)."""
    raw = load_settings().get(RUN_FOLDERS_KEY)
    return [Path(p) for p in raw if isinstance(p, str) and p] if isinstance(raw, list) else []


def add_folder(folder: str | Path) -> list[Path]:
    """Add a folder to the runs index; returns the added folders."""
    entry = str(Path(folder).expanduser().absolute())
    values = load_settings()
    current = [str(p) for p in added_folders()]
    values[RUN_FOLDERS_KEY] = current + ([entry] if entry not in current else [])
    save_settings(values)
    return added_folders()


def remove_folder(folder: str | Path) -> list[Path]:
    entry = str(Path(folder).expanduser().absolute())
    values = load_settings()
    values[RUN_FOLDERS_KEY] = [str(p) for p in added_folders() if str(p) != entry]
    save_settings(values)
    return added_folders()
