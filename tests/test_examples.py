"""Every example config and bundled preset parses, validates against its plugins and builds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lmstudio_app.cli.commands import resolve_data_files
from lmstudio_app.config import load_config, load_preset, validate_plugins
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.resources import list_presets, preset_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover(use_user_dir=False)


def test_the_examples_are_there():
    names = {p.name for p in EXAMPLES}
    assert {"tinyshakespeare.toml", "demo.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates_and_builds(path: Path, registry: PluginRegistry, monkeypatch):
    monkeypatch.chdir(ROOT)  # the documented place to run the examples from
    config = resolve_data_files(load_config(path), path.parent)
    _, model_params = validate_plugins(config, registry)
    model = registry.model(config.model.plugin).build(model_params, 100)
    assert model.num_parameters() > 0
    for entry in config.data.files:
        if not Path(entry).exists():
            pytest.skip(f"{entry} is not on this machine")
        assert Path(entry).is_absolute()


def test_shakespeare_example_is_the_classic_recipe():
    config = load_config(ROOT / "examples" / "tinyshakespeare.toml")
    assert config.tokenizer.plugin == "char"
    assert config.model.plugin == "gpt"
    assert {k: config.model.params[k] for k in ("n_layer", "n_head", "n_embd", "context_length")} == {
        "n_layer": 4, "n_head": 4, "n_embd": 128, "context_length": 64}
    assert (config.train.batch_size, config.train.max_steps) == (12, 2000)
    assert config.data.files == ["../shared/data/tinyshakespeare.txt"]


def test_relative_data_files_resolve_next_to_the_config_then_the_current_folder(tmp_path, monkeypatch):
    config_dir, cwd = tmp_path / "configs", tmp_path / "cwd"
    (config_dir / "data").mkdir(parents=True)
    (cwd / "data").mkdir(parents=True)
    (config_dir / "data" / "both.txt").write_text("x")
    (cwd / "data" / "both.txt").write_text("x")
    (cwd / "data" / "cwd_only.txt").write_text("x")
    path = config_dir / "run.toml"
    path.write_text('[data]\nfiles = ["data/both.txt", "data/cwd_only.txt", "nowhere.txt"]\n')
    monkeypatch.chdir(cwd)
    config = resolve_data_files(load_config(path), config_dir)
    assert config.data.files == [
        str((config_dir / "data" / "both.txt").resolve()),
        str((cwd / "data" / "cwd_only.txt").resolve()),
        "nowhere.txt",  # left as written so the loader's error names it
    ]


@pytest.mark.parametrize("name", list_presets())
def test_preset_validates(name: str, registry: PluginRegistry):
    raw = tomllib.loads(preset_path(name).read_text(encoding="utf-8"))
    assert set(raw) <= {"tokenizer", "model", "train"}, "a preset never chooses the data"
    config = load_preset(preset_path(name))
    _, model_params = validate_plugins(config, registry)
    assert registry.model(config.model.plugin).build(model_params, 50).num_parameters() > 0


def test_default_preset_exists():
    assert "default" in list_presets()
