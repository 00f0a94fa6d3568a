"""Fixtures shared by the core tests (tests/gui/ has its own, for the GUI).

- ``home``: ``LMSTUDIO_HOME`` under ``tmp_path`` and the plugin switches unset (settings, runs and
  the user plugin folder never touch the real home); ``session`` uses it.
- ``registry``: the built-in plugins (module-scoped: discovering them is not free).
- ``restore_torch_threads``: torch's thread count put back after a module that trains.
- ``tiny_config``: a char tokenizer and a 1-layer GPT that train 12 steps in about a second.
- ``text_file``: a small UTF-8 text; ``session``: a :class:`Session` over it (tokenizer not built).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmstudio_app.config import RunConfig, load_preset
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.session import Session

TINY = """
[tokenizer]
plugin = "char"
[model]
plugin = "gpt"
n_layer = 1
n_embd = 32
n_head = 2
context_length = 16
[train]
device = "cpu"
dtype = "float32"
batch_size = 4
max_steps = 12
warmup_steps = 2
eval_interval = 6
eval_batches = 2
log_interval = 2
sample_tokens = 8
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LMSTUDIO_PLUGINS", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def restore_torch_threads():
    """Put torch's thread count back after a module whose Trainers applied train.threads (process-wide)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover(use_user_dir=False)


@pytest.fixture
def tiny_config(tmp_path: Path) -> RunConfig:
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY, encoding="utf-8")
    return load_preset(preset, RunConfig())


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text("the cat sat on the mat .\nthe dog sat on the rug .\n" * 60, encoding="utf-8")
    return path


@pytest.fixture
def session(home, registry, tiny_config, text_file) -> Session:
    s = Session(registry, tiny_config)
    s.set_files([text_file])
    return s
