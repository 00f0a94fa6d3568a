"""Issue 14, cases 1, 7, 8 and 9: plugins and models that hang, lie, exit or do not fit.

- a model too large for the machine is refused before anything is allocated (or tokenized),
  with the estimate, the memory available and the setting to lower;
- a plugin that hangs at import (or in a hook) is skipped after a limit, and everything else goes on;
- a model whose logits are not ``(B, T, V)`` floating and causal is refused, naming the plugin,
  before the first training step and before a loaded model's first prediction;
- ``sys.exit()``, a KeyboardInterrupt raised by code and a native panic are the plugin's error,
  while the person's Ctrl-C still interrupts; a dead rank's error does not blame the plugin.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from lmstudio_app.cli import commands as cli
from lmstudio_app.config import load_config, validate_plugins
from lmstudio_app.errors import PluginCallError, TrainingError
from lmstudio_app.inference.predictor import Predictor
from lmstudio_app.registry import (
    ModelOutputError,
    PluginRegistry,
    check_model_output,
    plugin_call,
    reraise_plugin_failure,
    user_interrupts_marked,
)
from lmstudio_app.training import model_checks
from lmstudio_app.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
CORPUS = "the cat sat on the mat. the dog sat on the log. a cat and a dog ran.\n" * 40

CONFIG = """\
[data]
files = ["{corpus}"]

[tokenizer]
plugin = "{tokenizer}"

[model]
plugin = "{model}"
{model_params}

[train]
device = "cpu"
dtype = "float32"
batch_size = 2
max_steps = 2
warmup_steps = 1
eval_interval = 2
eval_batches = 1
log_interval = 1
sample_tokens = 4
threads = 1
"""

FAULTY_MODELS = '''\
"""Models that answer wrongly, exit, or interrupt; a tokenizer that exits; a reader that interrupts."""
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from torch import nn

from lmstudio_app import CorpusReaderSpec, ModelSpec, TokenizerSpec, hookimpl, param
from lmstudio_app.model_api import LanguageModel
from lmstudio_app.tokenizer import Tokenizer


@dataclass
class P:
    context_length: int = param(8, min=2, max=64, help="Longest input.")


class Base(LanguageModel):
    def __init__(self, p, vocab_size):
        super().__init__()
        self.vocab_size, self.context_length = vocab_size, p.context_length
        self.embed = nn.Embedding(vocab_size, 8)
        self.head = nn.Linear(8, vocab_size)

    def logits(self, idx):
        return self.head(self.embed(idx))

    def forward(self, idx):
        return self.logits(idx)


class Swapped(Base):
    def forward(self, idx):
        return self.logits(idx).transpose(0, 1)  # (T, B, V)


class Short(Base):
    def forward(self, idx):
        return self.logits(idx)[..., :-1]  # (B, T, V - 1)


class Peeking(Base):
    def forward(self, idx):
        return self.logits(torch.roll(idx, -1, dims=1))  # position t sees token t + 1


class IntLogits(Base):
    def forward(self, idx):
        return (self.logits(idx) * 100).long()


class Exiting(Base):
    def forward(self, idx):
        if self.training:
            sys.exit(3)
        return self.logits(idx)


class Interrupting(Base):
    def forward(self, idx):
        if self.training:
            raise KeyboardInterrupt
        return self.logits(idx)


class CtrlC(Base):
    """The person presses Ctrl-C twice while this model's forward runs."""

    def forward(self, idx):
        if self.training and idx.device.type != "meta":  # not the memory estimate: training
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)
        return self.logits(idx)


def char_tokenizer(texts, pre_tokenizer):
    chars = sorted({ch for chunk in texts() for ch in chunk})
    hf = HFTokenizer(models.WordLevel({"<unk>": 0, **{c: i + 1 for i, c in enumerate(chars)}}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizer
    hf.decoder = decoders.Fuse()
    return Tokenizer(hf, kind="test-char")


def exiting_tokenizer(params, texts, progress=None):
    sys.exit("the tokenizer gives up")


def panicking_tokenizer(params, texts, progress=None):
    # a backtracking regex: the tokenizers library panics (PanicException) on a long run of a's
    return char_tokenizer(texts, pre_tokenizers.Split(Regex(r"(a+)+$"), behavior="isolated"))


def interrupting_reader(path):
    raise KeyboardInterrupt


@hookimpl
def lmstudio_models():
    kinds = {"swapped": Swapped, "short": Short, "peeking": Peeking, "int-logits": IntLogits,
             "exiting": Exiting, "interrupting": Interrupting, "ctrl-c": CtrlC}
    return [ModelSpec(name, "a faulty model", P, cls) for name, cls in kinds.items()]


@hookimpl
def lmstudio_tokenizers():
    return [TokenizerSpec("exiting-tok", "exits", P, exiting_tokenizer),
            TokenizerSpec("panicking-tok", "panics", P, panicking_tokenizer)]


@hookimpl
def lmstudio_corpus_readers():
    return [CorpusReaderSpec("interrupting", "interrupts", (".boom",), interrupting_reader)]
'''

# Waits until the test opens the gate: hangs at import for as long as the test wants.
HANGING_AT_IMPORT = '''\
import sys
import time

gate = sys.modules["lmstudio_test_gate"].released
while not gate.is_set():
    time.sleep(0.01)
'''

HANGING_HOOK = '''\
import sys
import time

from lmstudio_app import hookimpl


@hookimpl
def lmstudio_models():
    gate = sys.modules["lmstudio_test_gate"].released
    while not gate.is_set():
        time.sleep(0.01)
    return []
'''


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "faulty_models.py").write_text(FAULTY_MODELS, encoding="utf-8")
    return folder


def write_config(tmp_path: Path, model: str = "gpt", tokenizer: str = "char", model_params: str = "",
                 corpus: str = CORPUS, suffix: str = ".txt") -> Path:
    corpus_file = tmp_path / f"corpus{suffix}"
    corpus_file.write_text(corpus, encoding="utf-8")
    if model == "gpt" and not model_params:
        model_params = "n_layer = 1\nn_head = 2\nn_embd = 16\ncontext_length = 8"
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(corpus=corpus_file.as_posix(), tokenizer=tokenizer, model=model,
                                  model_params=model_params), encoding="utf-8")
    return path


def train_cli(capsys, config: Path, plugins: Path | None = None) -> tuple[int, str, str]:
    first = ["--plugins-dir", str(plugins)] if plugins is not None else []
    code = cli.main([*first, "train", str(config), "--out", str(config.parent / "run")])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def gate():
    """A module the hanging test plugins wait on; released (and removed) after the test."""
    module = types.ModuleType("lmstudio_test_gate")
    module.released = threading.Event()
    sys.modules[module.__name__] = module
    yield module.released
    module.released.set()
    sys.modules.pop(module.__name__, None)


# ---- case 1: a model too large for the machine ---------------------------------------------


def test_a_model_too_large_for_the_memory_is_refused_before_tokenizing(home, tmp_path, capsys, monkeypatch):
    # the example: about 39 billion parameters, ~620 GB with AdamW
    config = write_config(tmp_path, model_params="n_layer = 48\nn_head = 64\nn_embd = 8192\ncontext_length = 256")

    def must_not_run(*args, **kwargs):
        raise AssertionError("reached before the memory check")

    monkeypatch.setattr(PluginRegistry, "build_tokenizer", must_not_run)  # refused before minutes of tokenizing
    monkeypatch.setattr(PluginRegistry, "build_model", must_not_run)  # and never allocated
    code, _, err = train_cli(capsys, config)
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("lmstudio: error: the model does not fit in memory: training needs ~")
    assert "billion parameters" in line and "adamw state" in line and "of memory is available" in line
    assert "lower model.n_embd (now 8192" in line or "lower model.n_layer (now 48" in line
    assert not (tmp_path / "run").exists()


def test_the_app_refuses_a_model_too_large_for_the_memory_too(session, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("built before the memory check")

    monkeypatch.setattr(PluginRegistry, "build_model", must_not_run)
    # the tiny model, on a machine with 1 kB to spare (the 39-billion one: the CLI test above)
    monkeypatch.setattr(model_checks, "available_memory", lambda device, dist=None: (1000, "of memory is available"))
    failures: list[BaseException] = []
    session.run.events.failed.connect(lambda exc, trace: failures.append(exc))
    session.start_training()
    assert session.run.wait(120)
    assert len(failures) == 1 and isinstance(failures[0], TrainingError)  # the dialog shows this line
    assert str(failures[0]).startswith("the model does not fit in memory: training needs ~")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_micro_batch_too_large_for_the_memory_names_the_batch_settings(home, registry, tmp_path, monkeypatch,
                                                                         device):
    config = load_config(write_config(tmp_path))
    config.train.batch_size = 64
    _, model_params = validate_plugins(config, registry)
    meta = model_checks._meta_model(registry.model("gpt"), "builtins", model_params, 30)
    estimate = model_checks.estimate_memory(meta, config.train, 30, torch.device("cpu"))
    assert estimate.smallest < estimate.total
    between = (estimate.smallest + estimate.total) // 2  # one sequence fits, 64 do not
    monkeypatch.setattr(model_checks, "available_memory", lambda device, dist=None: (between, "of memory is available"))
    check = lambda: model_checks.check_memory(registry, config, model_params, 30, torch.device(device))  # noqa: E731
    if device == "cuda":
        check()  # on CUDA an allocation that fails shrinks the micro-batches: nothing to refuse
        return
    with pytest.raises(TrainingError, match=r"lower train\.batch_size \(now 64\) or raise train\.grad_accum"):
        check()  # on a CPU the kernel kills the process instead of failing the allocation


def test_the_available_memory_is_read_with_or_without_psutil(monkeypatch):
    import psutil

    total = psutil.virtual_memory().total
    free, where = model_checks.available_memory(torch.device("cpu"))
    assert 0 < free <= total and where == "of memory is available"
    monkeypatch.setitem(sys.modules, "psutil", None)  # "import psutil" now fails: /proc/meminfo
    fallback = model_checks.system_available_memory()
    assert fallback is not None and 0 < fallback <= total


# ---- case 7: a plugin that hangs -----------------------------------------------------------


def test_a_plugin_hanging_at_import_is_skipped_and_the_command_ends(home, tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "hanging_plugin.py").write_text("import time\nwhile True:\n    time.sleep(1)\n", encoding="utf-8")
    (folder / "good_plugin.py").write_text((ROOT / "tests/plugins/good_plugin.py").read_text(), encoding="utf-8")
    env = {**os.environ, "LMSTUDIO_HOME": str(home), "LMSTUDIO_PLUGIN_TIMEOUT": "1"}
    env.pop("LMSTUDIO_PLUGINS", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "lmstudio_app", "--plugins-dir", str(folder), "plugins"],
                            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "hanging_plugin (folder): still importing after 1 s; skipped" in result.stdout
    assert "models: test-tiny" in result.stdout  # the plugins after it still load
    assert elapsed < 60  # ended although a thread is still stuck in the import


def test_a_hanging_plugin_or_hook_is_skipped_and_training_goes_on(home, tmp_path, gate):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "hangs_at_import.py").write_text(HANGING_AT_IMPORT, encoding="utf-8")
    (folder / "hangs_in_a_hook.py").write_text(HANGING_HOOK, encoding="utf-8")
    started = time.monotonic()
    registry = PluginRegistry.discover([folder], use_user_dir=False, import_timeout=0.3)
    assert time.monotonic() - started < 10
    messages = {error.name: error.message for error in registry.errors}
    assert messages["hangs_at_import"].startswith("still importing after 0 s; skipped (limit 0.3 s")
    assert messages["hangs_in_a_hook"].startswith("still running lmstudio_models() after 0 s; skipped")
    hung = next(e for e in registry.errors if e.name == "hangs_at_import")
    assert "hangs_at_import.py" in hung.traceback and "time.sleep(0.01)" in hung.traceback  # where it was stuck
    trainer = Trainer(load_config(write_config(tmp_path)), registry, write_run=False)
    assert trainer.run() is not None and trainer.step == 2


SLOW_BUT_PROGRESSING = '''\
"""Takes three times the limit to import, but imports a new module every 0.1 s meanwhile."""
import importlib
import sys
import time
from pathlib import Path

from lmstudio_app import hookimpl

parts = Path(__file__).parent / "_slow_parts"
parts.mkdir(exist_ok=True)
sys.path.insert(0, str(parts))
for i in range(15):
    (parts / f"slow_part_{i}.py").write_text(f"VALUE = {i}\\n")
    importlib.invalidate_caches()
    importlib.import_module(f"slow_part_{i}")
    time.sleep(0.1)
sys.path.remove(str(parts))


@hookimpl
def lmstudio_models():
    return []
'''


def test_the_app_starts_with_a_plugin_hanging_in_the_user_plugin_folder(home, gate, monkeypatch):
    from lmstudio_app.session import Session
    from lmstudio_app.settings import user_plugin_dir

    user_plugin_dir().mkdir(parents=True)
    (user_plugin_dir() / "hangs_at_import.py").write_text(HANGING_AT_IMPORT, encoding="utf-8")
    monkeypatch.setenv("LMSTUDIO_PLUGIN_TIMEOUT", "0.3")
    session = Session()  # what the window is built on; gui/app.py discovers the same way
    assert [e.name for e in session.registry.errors] == ["hangs_at_import"]
    assert "gpt" in session.registry.models()


def test_a_slow_plugin_that_keeps_importing_is_not_cut_off(home, tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "slow_plugin.py").write_text(SLOW_BUT_PROGRESSING, encoding="utf-8")
    started = time.monotonic()
    registry = PluginRegistry.discover([folder], use_entry_points=False, use_user_dir=False, import_timeout=0.5)
    assert time.monotonic() - started > 1.0  # well past the limit…
    assert registry.errors == [] and [p.name for p in registry.plugins] == ["slow_plugin"]  # …and loaded


def test_the_import_limit_comes_from_the_environment_or_the_settings(home, tmp_path, gate, monkeypatch):
    from lmstudio_app.settings import save_settings

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "hangs_at_import.py").write_text(HANGING_AT_IMPORT, encoding="utf-8")
    monkeypatch.delenv("LMSTUDIO_PLUGIN_TIMEOUT", raising=False)
    save_settings({"plugin_import_timeout_s": 0.2})
    registry = PluginRegistry.discover([folder], use_entry_points=False, use_user_dir=False)
    assert "(limit 0.2 s without progress" in registry.errors[0].message
    monkeypatch.setenv("LMSTUDIO_PLUGIN_TIMEOUT", "0.4")  # the environment wins
    registry = PluginRegistry.discover([folder], use_entry_points=False, use_user_dir=False)
    assert "(limit 0.4 s without progress" in registry.errors[0].message
    monkeypatch.setenv("LMSTUDIO_PLUGIN_TIMEOUT", "soon")  # a typo never stops the app: the default, and a note
    registry = PluginRegistry.discover(use_entry_points=False, use_user_dir=False)
    assert [e.message for e in registry.errors] == [
        "LMSTUDIO_PLUGIN_TIMEOUT: 'soon' is not a number of seconds >= 0; using 5 s"]


# ---- case 8: a model's output is checked -----------------------------------------------------


@pytest.mark.parametrize(("model", "problem"), [
    ("swapped", r"logits of shape \(8, 3, \d+\) for token IDs of shape \(3, 8\); expected \(3, 8, \d+\) = "
                r"\(batch, time, vocab_size\): batch and time are swapped"),
    ("short", r"expected \(3, 8, (\d+)\) = \(batch, time, vocab_size\): \d+ scores per position but the "
              r"tokenizer has \1 token IDs"),
    ("peeking", r"its model is not causal: the logits at position 3 changed when only the token at position 4 did"),
    ("int-logits", r"logits of dtype torch.int64; expected a floating-point dtype"),
])
def test_a_wrong_model_output_is_refused_before_the_first_step(home, plugins_dir, tmp_path, model, problem):
    registry = PluginRegistry.discover([plugins_dir], use_user_dir=False)
    config = load_config(write_config(tmp_path, model=model, model_params="context_length = 8"))
    with pytest.raises(ModelOutputError, match=problem) as info:
        Trainer(config, registry, tmp_path / "run")
    assert str(info.value).startswith("plugin 'faulty_models': its model")
    assert str(info.value).endswith("(before training)")
    assert info.value.plugin == "faulty_models" and isinstance(info.value, PluginCallError)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step


@pytest.mark.parametrize("model", ["swapped", "peeking"])
def test_a_wrong_model_output_is_refused_at_the_first_prediction(home, plugins_dir, tmp_path, registry, model):
    plugins = PluginRegistry.discover([plugins_dir], use_user_dir=False)
    config = load_config(write_config(tmp_path))
    tokenizer = Trainer(config, registry, write_run=False).tokenizer
    net = plugins.build_model(model, plugins.model(model).params(), tokenizer.vocab_size)
    predictor = Predictor(net, tokenizer, owner="faulty_models")
    with pytest.raises(ModelOutputError, match=r"^plugin 'faulty_models': its model.*\(its first prediction\)$"):
        predictor.next_token("the cat")


def test_exit_from_a_model_while_it_predicts_is_the_plugins_error(registry, tmp_path, home):
    from lmstudio_app.model_api import LanguageModel

    class ExitsWhenAsked(LanguageModel):
        def __init__(self) -> None:
            super().__init__()
            self.vocab_size, self.context_length = 40, 8
            self.head = torch.nn.Embedding(40, 40)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            sys.exit("no predictions today")

    tokenizer = Trainer(load_config(write_config(tmp_path)), registry, write_run=False).tokenizer
    predictor = Predictor(ExitsWhenAsked(), tokenizer, owner="exits")
    with pytest.raises(PluginCallError, match="^plugin 'exits' failed in .*: SystemExit: no predictions today$"):
        predictor.next_token("the cat")


@pytest.mark.parametrize("model_params", [
    {},
    {"positional": "rotary", "qk_norm": True, "dropout": 0.5, "mlp": "swiglu", "norm": "rmsnorm"},
    {"context_length": 3},  # as many rows as positions: the check adds a row
])
def test_the_built_in_models_pass_the_output_check(registry, model_params):
    from lmstudio_app.params import build_params

    for name in ("gpt", "bigram"):
        spec = registry.model(name)
        values = {"n_layer": 1, "n_embd": 16, "n_head": 2, **model_params} if name == "gpt" else {}
        net = registry.build_model(name, build_params(spec.params, values), 37).train()
        check_model_output(net, "builtins", 37, "test")
        assert net.training  # its mode is given back


def test_the_example_lstm_passes_the_output_check():
    registry = PluginRegistry.discover([ROOT / "plugins"], use_entry_points=False, use_user_dir=False)
    if "lstm" not in registry.models():
        pytest.skip("the example plugin provides no 'lstm' model")
    net = registry.build_model("lstm", registry.model("lstm").params(), 23)
    check_model_output(net, "lstm_example", 23, "test")


# ---- case 9: any BaseException from plugin code is the plugin's error ----------------------------


@pytest.mark.parametrize(("model", "tokenizer", "suffix", "expected"), [
    ("exiting", "char", ".txt", "plugin 'faulty_models' failed in the training step: SystemExit: 3"),
    ("interrupting", "char", ".txt", "plugin 'faulty_models' failed in the training step: KeyboardInterrupt"),
    ("gpt", "exiting-tok", ".txt",
     "plugin 'faulty_models' failed in building tokenizer 'exiting-tok': SystemExit: the tokenizer gives up"),
    ("gpt", "char", ".boom", "with corpus reader 'interrupting': KeyboardInterrupt"),
])
def test_exit_or_keyboard_interrupt_from_a_plugin_is_its_error(home, plugins_dir, tmp_path, capsys, model,
                                                              tokenizer, suffix, expected):
    params = "context_length = 8" if model != "gpt" else ""
    config = write_config(tmp_path, model=model, tokenizer=tokenizer, model_params=params, suffix=suffix)
    code, _, err = train_cli(capsys, config, plugins_dir)
    assert code == 1, err  # not 0 (sys.exit) nor 130 (the user's Ctrl-C)
    assert err.startswith("lmstudio: error: ") and expected in err and err.count("\n") == 1
    assert "interrupted" not in err


def test_a_native_panic_is_one_line_not_a_traceback(home, plugins_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RUST_BACKTRACE", "0")
    config = write_config(tmp_path, tokenizer="panicking-tok", corpus=CORPUS + "a" * 40 + "b\n")
    code, _, err = train_cli(capsys, config, plugins_dir)
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("lmstudio:")]
    assert len(lines) == 1 and "retry-limit-in-match" in lines[0]  # the panic's own words, on one line


def test_the_persons_ctrl_c_still_interrupts_training_in_plugin_code(home, plugins_dir, tmp_path, capsys):
    config = write_config(tmp_path, model="ctrl-c", model_params="context_length = 8")
    code, _, err = train_cli(capsys, config, plugins_dir)
    assert code == 130  # Ctrl-C twice: quit at once, as the person asked
    assert err.strip().splitlines()[-1] == "lmstudio: error: interrupted" and "plugin" not in err


def test_the_persons_ctrl_c_passes_plugin_call_but_code_raising_it_does_not(home):
    with user_interrupts_marked(), pytest.raises(KeyboardInterrupt):  # a real SIGINT
        with plugin_call("some_plugin", "running"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    with user_interrupts_marked(), pytest.raises(PluginCallError, match="KeyboardInterrupt"):
        with plugin_call("some_plugin", "running"):
            raise KeyboardInterrupt  # code, not the person
    caught: list[BaseException] = []

    def in_a_thread() -> None:  # no signal ever reaches another thread: always code
        try:
            with plugin_call("some_plugin", "running"):
                raise KeyboardInterrupt
        except BaseException as exc:
            caught.append(exc)

    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    assert isinstance(caught[0], PluginCallError)


def test_a_dead_ranks_error_does_not_blame_the_plugin(tmp_path):
    import torch.distributed as dist

    lost = dist.DistBackendError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242")
    with pytest.raises(PluginCallError):  # without a process group it is an ordinary plugin error
        reraise_plugin_failure("builtins", "the training step", lost)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for exc in (lost, RuntimeError("Connection reset by peer")):
            with pytest.raises(TrainingError) as info:
                reraise_plugin_failure("builtins", "the training step", exc)
            assert not isinstance(info.value, PluginCallError) and "plugin" not in str(info.value)
            assert str(info.value).startswith("another rank stopped or stopped responding during the training step (")
            assert info.value.__cause__ is exc  # distributed.rank_failure finds it there to name the rank
        with pytest.raises(PluginCallError):  # the model's own bug is still the model's
            reraise_plugin_failure("builtins", "the training step", IndexError("index out of range in self"))
    finally:
        dist.destroy_process_group()


def test_an_exit_outside_any_plugin_call_is_one_line(home, capsys, monkeypatch):
    class PanicException(BaseException):  # what pyo3 raises: not an Exception
        pass

    def panics(args, registry):
        raise PanicException("called `Result::unwrap()` on an `Err` value\nstack backtrace: ...")

    def exits(args, registry):
        sys.exit(4)

    for command, expected in ((panics, "lmstudio: error: PanicException: called `Result::unwrap()` on an `Err` value"),
                              (exits, "lmstudio: error: plugins was ended by a call to exit(4)")):
        monkeypatch.setitem(cli.COMMANDS, "plugins", command)
        assert cli.main(["plugins"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(expected) and "Traceback" not in err
