"""User settings: locations (platformdirs / LMSTUDIO_HOME), atomic JSON, recent files, disabled plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmstudio_app import settings


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_lmstudio_home_holds_every_location(home: Path) -> None:
    assert settings.user_data_dir() == home
    assert settings.user_config_dir() == home
    assert settings.user_plugin_dir() == home / "plugins"
    assert settings.default_runs_dir() == home / "runs"
    assert settings.settings_path() == home / "settings.json"
    assert not home.exists()  # computing paths creates nothing


def test_without_override_paths_come_from_platformdirs(monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.delenv("LMSTUDIO_HOME")
    data = Path(platformdirs.user_data_dir("lmstudio_app", appauthor=False))
    assert settings.user_plugin_dir() == data / "plugins"
    assert settings.default_runs_dir() == data / "runs"
    assert settings.settings_path().parent == Path(
        platformdirs.user_config_dir("lmstudio_app", appauthor=False)
    )
    assert "lmstudio_app" in str(settings.settings_path())


def test_save_then_load_round_trips_and_leaves_no_temp_files(home: Path) -> None:
    assert settings.load_settings() == {}
    settings.save_settings({"theme": "dark", "sizes": [1, 2], "name": "Zoë"})
    assert settings.load_settings() == {"theme": "dark", "sizes": [1, 2], "name": "Zoë"}
    assert sorted(p.name for p in home.iterdir()) == ["settings.json"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", '"text"', ""])
def test_corrupt_or_non_object_file_reads_as_empty(home: Path, content: str) -> None:
    home.mkdir(parents=True)
    (home / "settings.json").write_text(content, encoding="utf-8")
    assert settings.load_settings() == {}
    assert settings.recent_files() == []
    assert settings.disabled_plugins() == []


def test_undecodable_file_reads_as_empty(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "settings.json").write_bytes(b"\xff\xfe\x00garbage")
    assert settings.load_settings() == {}


def test_failed_save_keeps_the_previous_file(home: Path) -> None:
    settings.save_settings({"keep": 1})
    with pytest.raises(TypeError):
        settings.save_settings({"bad": object()})  # not JSON-serialisable
    assert settings.load_settings() == {"keep": 1}
    assert sorted(p.name for p in home.iterdir()) == ["settings.json"]


def test_recent_files_newest_first_deduplicated_and_limited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    a, b, c = (str(tmp_path / name) for name in ("a.txt", "b.txt", "c.txt"))
    settings.add_recent_file(a)
    settings.add_recent_file(b)
    assert settings.add_recent_file(a) == [a, b]  # re-opening moves it to the front
    assert settings.add_recent_file(c, limit=2) == [c, a]
    assert settings.recent_files() == [c, a]
    assert settings.add_recent_file("rel.txt")[0] == str(tmp_path / "rel.txt")  # stored absolute


def test_recent_files_keep_other_settings() -> None:
    settings.save_settings({"theme": "dark"})
    settings.add_recent_file("/data/x.txt")
    assert settings.load_settings()["theme"] == "dark"


def test_disabled_plugins_sorted_unique(home: Path) -> None:
    settings.set_disabled_plugins(["zeta", "alpha", "zeta", ""])
    assert settings.disabled_plugins() == ["alpha", "zeta"]
    settings.set_disabled_plugins([])
    assert settings.disabled_plugins() == []
    settings.save_settings({"disabled_plugins": "alpha", "recent_files": [1, "/x", None]})
    assert settings.disabled_plugins() == []  # malformed value: ignored, not fatal
    assert settings.recent_files() == ["/x"]
