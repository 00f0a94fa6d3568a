"""The fast CPU preset (resources/presets/fast-cpu.toml, tuned in bench/NOTES.md) stays valid."""

from __future__ import annotations

import sys

from lmstudio_app.config import load_preset, validate_plugins
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.resources import preset_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_fast_cpu_preset_holds_no_data_and_validates() -> None:
    path = preset_path("fast-cpu")
    assert set(tomllib.loads(path.read_text(encoding="utf-8"))) == {"tokenizer", "model", "train"}
    config = load_preset(path)
    _, model_params = validate_plugins(config, PluginRegistry.discover(use_user_dir=False))
    assert model_params.qk_norm and config.train.optimizer == "muon"
    assert config.data.files == []  # the data is chosen separately
