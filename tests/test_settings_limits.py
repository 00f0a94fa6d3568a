"""Settings that cannot overflow, hang or surprise (docs/reliability.md §5d), exports that only
replace what an export wrote, generation in linear time, and the ranks' stall watch (§5e).

Every case here was a raw Python error, a silent surprise or data loss before: an OverflowError
for a 400-digit float, a RecursionError for nested TOML, a TypeError for a plugin field without
a default, numpy's ValueError for ``--seed -1``, nan probabilities at temperature 1e-320, a
100 MB error line, a learning rate that climbs, a FIFO config that hangs, an export that deleted
the folder it was pointed at.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers
from torch import distributed as dist

from lmstudio_app.cli import commands as cli
from lmstudio_app.config import TrainConfig, config_from_dict, load_config, load_preset
from lmstudio_app.errors import ConfigError, ExportError, ParamError, PluginCallError, TrainingError, shown
from lmstudio_app.inference.distributions import softmax
from lmstudio_app.inference.predictor import IncrementalDecoder, load_predictor
from lmstudio_app.params import build_params, param
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.runs.export_hf import MARKER, export_run
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.tokenizer import Tokenizer
from lmstudio_app.training import distributed
from lmstudio_app.training.optimizers import lr_at
from lmstudio_app.training.trainer import Trainer

HUGE_DIGITS = "9" * 400
LONG_LINE = 2000  # the most any one-line message may take (errors.MESSAGE_CHARS), whatever it quotes


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover(use_user_dir=False)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "home"))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- numbers, nesting, missing defaults: a message naming the key, never a Python error ---------


@pytest.mark.parametrize("key", ["train.learning_rate", "train.min_lr", "train.beta2", "data.val_fraction",
                                 "train.warmdown_fraction"])
def test_a_number_of_hundreds_of_digits_for_a_float_key_names_the_key(key, tmp_path):
    section, name = key.split(".")
    path = write(tmp_path / "c.toml", f"[{section}]\n{name} = {HUGE_DIGITS}\n")
    with pytest.raises(ConfigError, match=rf"c.toml: {key}: a number of about 400 digits is too large"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"{key}: a number of about 400 digits is too large"):
        load_config(None, [f"{key}={HUGE_DIGITS}"])


def test_huge_integers_are_refused_with_a_short_message(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"train.seed: a number of about 400 digits is above the maximum"):
        load_config(None, [f"train.seed={HUGE_DIGITS}"])
    # 5000 digits: past Python's int-to-text limit, where even printing the value raises.
    path = write(tmp_path / "c.toml", f"[train]\nmax_steps = {'1' * 5000}\n")
    code, _, err = run_cli(capsys, "train", str(path))
    assert code == 2 and err.startswith(f"lmstudio: error: {path}: invalid TOML") and len(err) < 400


def test_a_plugin_float_param_of_hundreds_of_digits_names_the_plugin_key(registry):
    from lmstudio_app.config import validate_plugins

    config = config_from_dict({"model": {"plugin": "gpt", "dropout": int(HUGE_DIGITS)}})
    with pytest.raises(ConfigError, match=r"model.dropout: a number of about 400 digits is too large"):
        validate_plugins(config, registry)


@pytest.mark.parametrize("nested", [
    "[train]\nx = " + "[" * 5000 + "]" * 5000,
    "[model]\nx = " + "{a = " * 3000 + "1" + "}" * 3000,
    "x = " + "[" * 100_000,
])
def test_deeply_nested_toml_is_a_config_error_naming_the_file(nested, tmp_path, capsys):
    path = write(tmp_path / "deep.toml", nested + "\n")
    with pytest.raises(ConfigError, match=r"deep.toml: invalid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"deep.toml: invalid TOML"):
        load_preset(path)
    code, _, err = run_cli(capsys, "train", str(path))
    assert code == 2 and err.count("\n") == 1 and "RecursionError" not in err


def test_nesting_that_parses_is_still_refused_by_key(tmp_path):
    path = write(tmp_path / "c.toml", "[model]\nplugin = 'gpt'\nshape = " + "[" * 40 + "]" * 40 + "\n")
    with pytest.raises(ConfigError, match=r"c.toml: model.shape nests lists or tables more than 8 levels deep"):
        load_config(path)
    # as a --set value it cannot parse either: kept as text, and the key's own check names it
    with pytest.raises(ConfigError, match=r"train.max_steps: expected an integer, got '\[\[\["):
        load_config(None, ["train.max_steps=" + "[" * 3000])


def test_a_plugin_params_field_without_a_default_names_the_key():
    @dataclasses.dataclass
    class WidthParams:
        width: int = dataclasses.field(metadata={})  # the plugin forgot the default
        depth: int = param(2, min=1)

    with pytest.raises(ParamError, match=r"model.width: a value is required \(.*WidthParams gives it no default\)"):
        build_params(WidthParams, {"depth": 3}, "model")
    assert build_params(WidthParams, {"width": 8}, "model") == WidthParams(width=8, depth=2)


def test_a_huge_string_value_makes_a_short_error_line(tmp_path, capsys):
    huge = "x" * 2_000_000
    for body in (f'[train]\ndevice = "{huge}"\n', f'[model]\nplugin = "{huge}"\n', f'[train]\n{huge} = 1\n',
                 f'[{huge}]\na = 1\n'):
        path = write(tmp_path / "big.toml", body)
        code, _, err = run_cli(capsys, "train", str(path))
        # (the longest: an unknown key's message lists the known keys)
        assert code == 2 and err.startswith(f"lmstudio: error: {path}: ") and len(err) < 700, err[:700]
    path = write(tmp_path / "ok.toml", "[train]\nmax_steps = 5\n")
    code, _, err = run_cli(capsys, "train", str(path), "--set", f"train.optimizer={huge}")
    assert code == 2 and "2,000,000 characters" in err and len(err) < 400, err[:400]


def test_shown_quotes_any_value_briefly():
    assert shown("abc") == "'abc'" and shown(3) == "3" and shown(-1.5) == "-1.5" and shown(None) == "None"
    assert len(shown("y" * 10**7)) < 120 and "10,000,000 characters" in shown("y" * 10**7)
    assert shown(10**5000) == "a number of about 5,001 digits"
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    assert shown(nested) == "a list nested too deeply to show"
    assert len(shown(list(range(10**6)))) < 120


# -- a learning-rate floor above the peak ---------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_min_lr_above_learning_rate_is_refused_naming_both_keys(schedule):
    with pytest.raises(ConfigError, match=r"train.min_lr = 0.01 is above train.learning_rate = 0.001"):
        load_config(None, [f"train.schedule={schedule}", "train.learning_rate=0.001", "train.min_lr=0.01"])
    with pytest.raises(ParamError, match=r"train.min_lr = 0.0001 is above train.learning_rate = 5e-05"):
        build_params(TrainConfig, {"schedule": schedule, "learning_rate": 5e-5}, "train")  # the default min_lr
    cfg = build_params(TrainConfig, {"schedule": schedule, "learning_rate": 1e-3, "min_lr": 1e-3,
                                     "warmup_steps": 2, "max_steps": 20}, "train")
    rates = [lr_at(step, cfg) for step in range(20)]
    assert max(rates[2:]) <= cfg.learning_rate  # never climbs past the peak after warmup


def test_a_constant_schedule_never_reads_min_lr():
    cfg = build_params(TrainConfig, {"schedule": "constant", "learning_rate": 1e-5, "min_lr": 1e-3}, "train")
    assert lr_at(500, cfg) == 1e-5


# -- config files are read as bounded regular files -----------------------------------------------


def test_a_config_that_is_a_fifo_a_device_or_huge_is_refused_without_reading(tmp_path, capsys):
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    device = tmp_path / "zero.toml"
    device.symlink_to("/dev/zero")
    huge = tmp_path / "huge.toml"
    with huge.open("wb") as fh:
        fh.truncate(17 * 1024 * 1024)  # sparse: above the 16 MiB limit without writing it
    done = threading.Event()
    results = {}

    def attempt() -> None:
        for path in (fifo, device, huge):
            try:
                load_config(path)
            except ConfigError as exc:
                results[path.name] = str(exc)
        done.set()

    threading.Thread(target=attempt, daemon=True).start()
    assert done.wait(20), "reading a config hung"
    assert "pipe.toml: the config file is a named pipe (FIFO), not a regular file" in results["pipe.toml"]
    assert "zero.toml: the config file is a character device" in results["zero.toml"]
    assert "huge.toml: the config file is 17.0 MiB, more than the 16.0 MiB" in results["huge.toml"]
    with pytest.raises(ConfigError, match=r"preset file is a named pipe"):
        load_preset(fifo)


def test_a_config_that_is_not_utf8_names_the_byte(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"[train]\nmax_steps = 5 # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"c.toml: cannot read config \(not UTF-8 at byte 27\)"):
        load_config(path)


# -- sampling settings ---------------------------------------------------------------------------


CORPUS = "the cat sat on the mat. the dog sat on the log. héllo wörld — café 日本 😀\n" * 40


def tiny_config(tmp_path: Path, tokenizer: str = "byte") -> dict:
    corpus = write(tmp_path / "corpus.txt", CORPUS)
    return {
        "data": {"files": [str(corpus)]},
        "tokenizer": {"plugin": tokenizer},
        "model": {"plugin": "gpt", "n_layer": 1, "n_embd": 16, "n_head": 2, "context_length": 16},
        "train": {"device": "cpu", "dtype": "float32", "threads": 1, "batch_size": 4, "max_steps": 4,
                  "eval_interval": 4, "log_interval": 2, "eval_batches": 1, "sample_tokens": 0,
                  "warmup_steps": 1, "learning_rate": 0.01, "min_lr": 0.001},
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, registry) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    threads = torch.get_num_threads()
    try:
        Trainer(config_from_dict(tiny_config(folder)), registry, folder / "run").run()
    finally:
        torch.set_num_threads(threads)
    return folder / "run"


def test_a_negative_or_non_integer_seed_is_a_usage_error(tiny_run, capsys):
    code, out, err = run_cli(capsys, "generate", str(tiny_run), "the", "--seed", "-1", "--max-tokens", "3")
    assert code == 2 and err == "lmstudio: error: seed: must be a whole number of at least 0, got -1\n" and not out
    code, out, _ = run_cli(capsys, "generate", str(tiny_run), "the", "--seed", HUGE_DIGITS, "--max-tokens", "3")
    assert code == 0 and out.startswith("the")  # any size of seed is a seed


@pytest.mark.parametrize("temperature", [1e-320, 5e-324])
def test_a_vanishing_temperature_samples_the_most_likely_token(temperature, tiny_run, registry, capsys):
    predictor = load_predictor(tiny_run, registry, "cpu")
    greedy = predictor.generate("the ", max_tokens=12, top_k=1, seed=0)
    assert predictor.generate("the ", max_tokens=12, temperature=temperature, seed=5) == greedy
    pred = predictor.next_token("the ", temperature=temperature)
    assert np.isfinite(pred.probs).all() and pred.candidates[0].prob == 1.0
    code, out, err = run_cli(capsys, "predict", str(tiny_run), "the ", "--temperature", str(temperature))
    assert code == 0 and "nan" not in out and not err


def test_softmax_at_extreme_temperatures_stays_a_distribution():
    logits = np.array([1.0, 3.0, 3.0, -50.0])
    assert softmax(logits, 1e-320).tolist() == [0.0, 0.5, 0.5, 0.0]
    assert np.allclose(softmax(logits, 10**400), 0.25)  # an int too large for a float
    assert np.allclose(softmax(logits, 1.0), np.exp(logits) / np.exp(logits).sum())


# -- generation decodes incrementally, and exactly ----------------------------------------------


def _metaspace_tokenizer() -> Tokenizer:
    """A SentencePiece-style decoder: it drops the leading space of the text's first token only."""
    vocab = {"<unk>": 0, "▁the": 1, "▁cat": 2, "s": 3, "▁": 4, "é": 5, ".": 6, "▁a": 7}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    return Tokenizer(hf, kind="file")


def _wordpiece_tokenizer() -> Tokenizer:
    """A WordPiece decoder: ``##`` joins a piece to the one before, others get a space."""
    vocab = {"[UNK]": 0, "un": 1, "##able": 2, "the": 3, "##s": 4, ",": 5, "cat": 6}
    hf = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    hf.decoder = decoders.WordPiece(cleanup=True)
    return Tokenizer(hf, kind="file")


def _tokenizers(registry) -> dict[str, Tokenizer]:
    out = {}
    for name, params in (("char", {}), ("byte", {}), ("bpe", {"vocab_size": 300}), ("word", {})):
        spec = registry.tokenizer(name)
        out[name] = registry.build_tokenizer(name, build_params(spec.params, params), lambda: [CORPUS], None)
    out["metaspace"], out["wordpiece"] = _metaspace_tokenizer(), _wordpiece_tokenizer()
    return out


def test_incremental_decoding_equals_the_full_decode_for_every_kind_of_tokenizer(registry):
    rng = random.Random(0)
    for name, tokenizer in _tokenizers(registry).items():
        # Random IDs: for byte-level tokenizers, UTF-8 split across tokens and invalid sequences.
        sequences = [[rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 80))] for _ in range(150)]
        sequences.append(tokenizer.encode(CORPUS[:400]))
        for ids in sequences:
            decoder = IncrementalDecoder(tokenizer)
            pieces = [decoder.push(i) for i in ids]
            assert "".join(pieces) + decoder.finish() == tokenizer.decode(ids), (name, ids)
        # Text comes out as soon as it is complete: after each token, everything that decodes
        # cleanly (no half character at the end) has been given out.
        ids = tokenizer.encode(CORPUS[:300])
        decoder = IncrementalDecoder(tokenizer)
        for k, token in enumerate(ids, 1):
            decoder.push(token)
            full = tokenizer.decode(ids[:k])
            if not full.endswith("\ufffd"):
                assert decoder.text == full, (name, k)


def test_generation_cost_per_token_does_not_grow_with_the_length(registry):
    """The work per token (tokens decoded) stays flat: counted, not timed (bench/generation_speed.py times it)."""
    tokenizer = _tokenizers(registry)["bpe"]
    decoded = []
    real = tokenizer.decode

    def counting(ids):
        ids = list(ids)
        decoded.append(len(ids))
        return real(ids)

    tokenizer.decode = counting  # type: ignore[method-assign]
    decoder = IncrementalDecoder(tokenizer)
    ids = tokenizer.encode(CORPUS * 4)
    per_token = []
    for token in ids:
        decoded.clear()
        decoder.push(token)
        per_token.append(sum(decoded))
    assert len(ids) > 2000 and max(per_token[-500:]) <= 16 and max(per_token) <= 16


# -- export --overwrite replaces only what an export wrote ---------------------------------------


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, registry) -> Path:
    folder = tmp_path_factory.mktemp("export")
    config = tiny_config(folder, "char")
    config["model"].update({"positional": "learned", "norm": "layernorm", "mlp": "gelu"})
    threads = torch.get_num_threads()
    try:
        Trainer(config_from_dict(config), registry, folder / "project" / "run").run()
    finally:
        torch.set_num_threads(threads)
    return folder / "project" / "run"


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_keeps_files_the_export_did_not_write(gpt2_run, registry, tmp_path, capsys):
    p = tmp_path / "p"
    p.mkdir()
    write(p / "config.json", "{}")  # a config.json alone no longer counts as an earlier export
    write(p / "important.txt", "my notes")
    code, _, err = run_cli(capsys, "export", str(gpt2_run), str(p), "--overwrite")
    assert code == 1 and f"{p}: not an earlier export (no {MARKER} marker)" in err
    assert _tree(p) == {"config.json": b"{}", "important.txt": b"my notes"}

    out = export_run(gpt2_run, tmp_path / "hf", registry)
    write(out / "important.txt", "my notes")
    (out / "mine").mkdir()
    write(out / "mine" / "a.txt", "a")
    old_files = set(json.loads((out / MARKER).read_text())["files"])
    assert old_files == {"config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
                         "tokenizer.json", "tokenizer_config.json"}
    old_weights = (out / "model.safetensors").read_bytes()
    assert run_cli(capsys, "export", str(gpt2_run), str(out), "--overwrite")[0] == 0
    assert (out / "important.txt").read_text() == "my notes" and (out / "mine" / "a.txt").read_text() == "a"
    assert (out / "model.safetensors").read_bytes() == old_weights  # same checkpoint, same bytes
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")], "temp folders left behind"


def test_export_into_the_run_folder_or_its_parent_never_deletes_the_run(gpt2_run, registry, capsys):
    before = _tree(gpt2_run)
    project = gpt2_run.parent
    for target in (gpt2_run, project, gpt2_run / "checkpoints"):
        code, _, err = run_cli(capsys, "export", str(gpt2_run), str(target), "--overwrite")
        assert code == 1 and err.count("\n") == 1, err
    # An earlier export into the parent (its marker there): overwriting it touches its files only.
    write(project / MARKER, json.dumps({"files": ["config.json", "model.safetensors"]}))
    assert run_cli(capsys, "export", str(gpt2_run), str(project), "--overwrite")[0] == 0
    assert _tree(gpt2_run) == before and (project / "model.safetensors").is_file()
    assert RunDir.open(gpt2_run).read_metrics()


@pytest.mark.parametrize("files", [["../run/config.toml"], ["sub/x"], "config.json", [MARKER], [3], None])
def test_a_marker_naming_anything_but_its_own_files_is_refused(files, gpt2_run, registry, tmp_path):
    out = tmp_path / "out"
    (out / "run").mkdir(parents=True)
    write(out / "run" / "config.toml", "x")
    write(out / MARKER, json.dumps({"files": files}))
    with pytest.raises(ExportError, match=rf"{MARKER}: (lists something that is not a plain file name|not a valid)"):
        export_run(gpt2_run, out, registry, overwrite=True)
    assert (out / "run" / "config.toml").read_text() == "x"


def test_a_marker_naming_a_folder_never_deletes_it(gpt2_run, registry, tmp_path):
    out = tmp_path / "out"
    (out / "run").mkdir(parents=True)
    write(out / "run" / "config.toml", "x")
    write(out / MARKER, json.dumps({"files": ["run"]}))  # a hand-edited (or hostile) marker
    export_run(gpt2_run, out, registry, overwrite=True)
    assert (out / "run" / "config.toml").read_text() == "x" and (out / "model.safetensors").is_file()


def test_a_file_of_the_persons_in_the_way_of_an_export_is_refused_by_name(gpt2_run, registry, tmp_path):
    out = export_run(gpt2_run, tmp_path / "hf", registry)
    write(out / MARKER, json.dumps({"files": ["config.json"]}))  # tokenizer.json etc. are not the export's
    with pytest.raises(ExportError, match=r"generation_config.json: is not from the earlier export"):
        export_run(gpt2_run, out, registry, overwrite=True)


# -- the ranks' stall watch, in one process ------------------------------------------------------


class _Verdict:
    def __init__(self) -> None:
        self.message: str | None = None
        self.given = threading.Event()

    def __call__(self, message: str) -> None:
        self.message = message
        self.given.set()


def _watch(store, rank: int, timeout: float, verdict: _Verdict) -> distributed.RankWatch:
    return distributed.RankWatch(distributed.DistInfo(rank, 2, rank, "gloo"), store, timeout, interval=0.05,
                                 on_stall=verdict)


def test_the_watch_names_a_rank_whose_heartbeat_stops_and_not_a_live_one():
    store = dist.HashStore()
    verdicts = [_Verdict(), _Verdict()]
    watches = [_watch(store, r, 0.6, verdicts[r]) for r in range(2)]
    for w in watches:
        w.beat()
        w.start()
    assert not verdicts[0].given.wait(1.2)  # both beating: nobody is stalled
    started = time.monotonic()
    watches[1].stop()  # rank 1 goes silent, as a process stopped with kill -STOP
    assert verdicts[0].given.wait(5)
    took = time.monotonic() - started
    watches[0].stop()
    assert 0.5 <= took < 2.5
    assert verdicts[0].message.startswith(f"rank 1 (pid {os.getpid()} on ")
    assert "has stalled: no sign of life for 1 s (LMSTUDIO_STALL_TIMEOUT=0.6)" in verdicts[0].message
    assert verdicts[1].message is None


def test_a_dead_rank_is_named_instead_of_the_model_plugin(monkeypatch):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer exists: rank 1's process, killed
    store = dist.HashStore()
    watch = _watch(store, 0, 30.0, _Verdict())
    store.set("lmstudio/beat/1", f"7 {gone.pid} {watch.host}")
    watch.check(time.monotonic())
    monkeypatch.setattr(distributed, "_WATCH", watch)
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [1.2.3.4]:99")
    wrapped = PluginCallError("builtins", "the training step", gloo)
    failure = distributed.rank_failure(wrapped)
    assert isinstance(failure, TrainingError)
    assert str(failure).startswith(f"rank 1 (pid {gone.pid} on {watch.host}) ended during training "
                                   "(Connection closed by peer [1.2.3.4]:99)")
    assert "plugin" not in str(failure)
    store.set("lmstudio/failed/1", "corpus.txt: no such file")  # a rank that explained itself first
    assert str(distributed.rank_failure(wrapped)) == "rank 1 failed: corpus.txt: no such file (this is rank 0; every rank stops)"
    assert distributed.rank_failure(PluginCallError("builtins", "the training step", IndexError("x"))) is None


@pytest.mark.parametrize("raw, expected", [("", 180.0), ("0", 0.0), ("2.5", 2.5)])
def test_the_stall_timeout_comes_from_the_environment(raw, expected, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_STALL_TIMEOUT", raw)
    assert distributed.stall_timeout_from_env() == expected


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "1e400"])
def test_a_bad_stall_timeout_names_the_variable(raw, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_STALL_TIMEOUT", raw)
    with pytest.raises(ConfigError, match="environment variable LMSTUDIO_STALL_TIMEOUT="):
        distributed.stall_timeout_from_env()
