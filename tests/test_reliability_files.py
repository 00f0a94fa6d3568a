"""The reliability matrix, core side, part 2: untrusted files are refused with a clear line and
never unpickled; long runs keep memory flat; docs/reliability.md names only tests that exist."""

from __future__ import annotations

import gc
import re
import shutil
import tracemalloc
from pathlib import Path

import pytest
import torch
from reliability_support import ROOT, SENTENCES, assert_one_line, tiny_config

from lmstudio_app.errors import CheckpointError, ConfigError, TokenizerError
from lmstudio_app.inference.predictor import load_predictor
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.runs.checkpoints import list_checkpoints
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.runs.loading import load_run
from lmstudio_app.session import Session
from lmstudio_app.training.trainer import Trainer


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover(use_user_dir=False)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the Trainer applies train.threads process-wide


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(SENTENCES * 60, encoding="utf-8")
    return path



# -- 3. untrusted files ---------------------------------------------------------------------------

UNSAFE_LOADS = [
    (re.compile(r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    (re.compile(r"^\s*(import|from)\s+(pickle|cPickle|_pickle|dill|joblib|shelve|marshal)\b", re.MULTILINE),
     "a pickle-family module"),
    (re.compile(r"\b(np|numpy)\.load\([^)]*allow_pickle\s*=\s*True"), "numpy.load with allow_pickle=True"),
    (re.compile(r"\btorch\.jit\.load\("), "torch.jit.load (a TorchScript archive runs code)"),
    (re.compile(r"\b(eval|exec)\((?!\s*\))"), "eval/exec"),
]


def unsafe_uses(source: str) -> list[str]:
    return [what for pattern, what in UNSAFE_LOADS if pattern.search(source)]


def test_nothing_in_the_package_or_builtins_can_unpickle_or_execute_a_file():
    assert unsafe_uses("state = torch.load(path)") == ["torch.load without weights_only=True"]  # the check bites
    assert unsafe_uses("import pickle\n") and unsafe_uses("np.load(p, allow_pickle=True)")
    assert unsafe_uses("torch.load(path, weights_only=True)") == []
    found = []
    for path in sorted([*(ROOT / "lmstudio_app").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]):
        for what in unsafe_uses(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(ROOT)}: {what}")
    assert found == []


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("run-home")
    corpus = home / "corpus.txt"
    corpus.write_text(SENTENCES * 60, encoding="utf-8")
    trainer = Trainer(tiny_config([corpus], max_steps=3), PluginRegistry.discover(use_user_dir=False), home / "run")
    trainer.run()
    return home / "run"


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "weights of another shape": (lambda run: _edit_config(run, "n_embd = 16", "n_embd = 32"), CheckpointError,
                                 "model.n_embd is 32 in config.toml but 16 beside the weights"),
    "truncated safetensors": (lambda run: _truncate(next((run / "checkpoints").glob("step_*/model.safetensors"))),
                              CheckpointError, "model.safetensors: corrupted checkpoint file"),
    "malformed tokenizer.json": (lambda run: (run / "tokenizer.json").write_text('{"model": ', encoding="utf-8"),
                                 TokenizerError, "tokenizer.json: not a valid tokenizer.json"),
    "malformed config.toml": (lambda run: (run / "config.toml").write_text("[model\n", encoding="utf-8"),
                              ConfigError, "config.toml: invalid TOML"),
    "config.toml naming a missing plugin": (lambda run: _edit_config(run, 'plugin = "gpt"', 'plugin = "gtp"'),
                                            ConfigError, "'gtp'"),
}


def _edit_config(run: Path, old: str, new: str) -> None:
    path = run / "config.toml"
    text = path.read_text(encoding="utf-8")
    assert old in text, text
    path.write_text(text.replace(old, new), encoding="utf-8")


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_run_folder_is_refused_with_a_clear_message(registry, run_copy, case):
    damage, error, needle = DAMAGE[case]
    damage(run_copy)
    with pytest.raises(error) as info:
        load_predictor(run_copy, registry, "cpu")
    assert_one_line(info.value, needle)
    session = Session(registry)
    before = (session.loaded_run, session.config.to_dict())
    with pytest.raises(error):
        session.load_run(run_copy)
    assert (session.loaded_run, session.config.to_dict()) == before


def test_resuming_a_run_whose_only_checkpoint_is_corrupted_keeps_its_metrics(registry, run_copy):
    metrics_before = (run_copy / "metrics.jsonl").read_text(encoding="utf-8")
    for folder in list_checkpoints(RunDir.open(run_copy)):
        _truncate(folder / "optimizer.safetensors")
    with pytest.raises(CheckpointError) as info:
        Trainer(None, registry, run_copy, resume=True)
    assert_one_line(info.value, "optimizer.safetensors: corrupted checkpoint file", "no complete checkpoint is left")
    assert (run_copy / "metrics.jsonl").read_text(encoding="utf-8") == metrics_before  # not wiped
    with pytest.raises(CheckpointError, match="no complete checkpoint is left"):
        load_run(run_copy, registry, "cpu")


# -- 4. long runs ---------------------------------------------------------------------------------


def test_nothing_in_the_engine_grows_per_step(registry, corpus_file, tmp_path):
    config = tiny_config([corpus_file], max_steps=100_000, eval_interval=100_000, batch_size=4)
    trainer = Trainer(config, registry, tmp_path / "run")
    sizes: dict[int, int] = {}
    try:
        for metrics in trainer.steps():  # every step is logged and written to metrics.jsonl
            if metrics.step in (100, 300, 500):
                gc.collect()
                if metrics.step == 100:
                    tracemalloc.start()
                sizes[metrics.step] = tracemalloc.get_traced_memory()[0]
            if metrics.step == 500:
                break
    finally:
        tracemalloc.stop()
    # A kept StepMetrics (or a list entry per step) would add tens of KB per 200 steps.
    assert sizes[500] - sizes[300] < 16_000, sizes


def test_every_test_named_in_docs_reliability_exists():
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    files = {path.stem: path for path in (ROOT / "tests").rglob("test_*.py")}
    files["R"], files["RF"], files["RG"] = (files["test_reliability"], files["test_reliability_files"],
                                            files["test_reliability_gui"])
    named = re.findall(r"`(\w+)::(test_\w+)", text)  # `test_file::test_name[...]`, R:: and RG:: shorthands
    assert len(named) > 50
    missing = [f"{module}::{test}" for module, test in named
               if module not in files or f"def {test}(" not in files[module].read_text(encoding="utf-8")]
    assert missing == []
