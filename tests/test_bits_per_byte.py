"""Bits per byte: validation loss per UTF-8 byte of the validation text, one unit for every tokenizer.

The identity checked: bits/byte = nats/token × tokens / (bytes × ln 2), with the tokens and bytes
of the validation split counted independently here (the split text encoded by the tokenizer, and
by Python's UTF-8 codec). The text mixes one-, two- and three-byte characters so that characters
and bytes differ.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmstudio_app.cli import commands as cli
from lmstudio_app.config import RunConfig, load_config
from lmstudio_app.data.corpus import split_text, tokenize_corpus, utf8_size
from lmstudio_app.params import build_params
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.training.trainer import Trainer
from lmstudio_builtins.tokenizing import TOKENIZER_SPECS

# Hand-made: ASCII, Latin accents (2 bytes each) and CJK (3 bytes each), repeated so that BPE
# learns merges and the word tokenizer sees every word in the training part too.
TEXT = ("the café sat on the mat .\nthe naïve dog sat on the rug .\n東京 の 猫 が 寝た .\n") * 40
SPECS = {spec.name: spec for spec in TOKENIZER_SPECS}
PARAMS = {"char": {}, "byte": {}, "bpe": {"vocab_size": 300}, "word": {}}

RUN = """
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
max_steps = 4
warmup_steps = 1
eval_interval = 2
eval_batches = 2
log_interval = 2
sample_tokens = 0
threads = 1
"""


def build(name: str):
    spec = SPECS[name]
    return spec.build(build_params(spec.params, PARAMS[name], "tokenizer"), lambda: iter([TEXT]), None)


@pytest.mark.parametrize("name", ["char", "byte", "bpe", "word"])
def test_bits_per_byte_is_nats_times_tokens_over_bytes(name: str) -> None:
    tokenizer = build(name)
    corpus = tokenize_corpus(tokenizer, TEXT, val_fraction=0.25)
    train_text, val_text = split_text(TEXT, 0.25)
    val_bytes = len(val_text.encode("utf-8"))
    assert val_bytes > len(val_text)  # the split holds multi-byte characters: bytes are not characters
    assert (corpus.train_bytes, corpus.val_bytes) == (len(train_text.encode("utf-8")), val_bytes)
    val_tokens = len(tokenizer.encode(val_text))
    assert len(corpus.val) == val_tokens
    nats = 1.7
    expected = nats * val_tokens / (val_bytes * math.log(2))
    assert corpus.bits_per_byte(nats) == pytest.approx(expected, rel=1e-12)
    assert corpus.bits_per_byte(nats, "train") == pytest.approx(
        nats * len(corpus.train) / (corpus.train_bytes * math.log(2)), rel=1e-12)
    assert corpus.bytes_per_token == pytest.approx(len(TEXT.encode("utf-8")) / corpus.n_tokens)
    if name == "byte":  # one token per byte: bits per byte is plain nats → bits
        assert corpus.bits_per_byte(nats) == pytest.approx(nats / math.log(2))
    assert corpus.bits_per_byte(None) is None


def test_byte_counts_are_unknown_for_a_hand_made_corpus() -> None:
    corpus = tokenize_corpus(build("char"), TEXT, val_fraction=0.25)
    corpus.val_bytes = 0  # as an old or hand-built TokenizedCorpus: no denominator
    assert corpus.bits_per_byte(2.0) is None
    assert utf8_size("a\udc80") == 4  # a lone surrogate counts, rather than failing the whole corpus


@pytest.fixture
def text_path(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run_config(tmp_path: Path, text_path: Path, tokenizer: str) -> RunConfig:
    path = tmp_path / f"{tokenizer}.toml"
    params = "".join(f"\n{key} = {value}" for key, value in PARAMS[tokenizer].items())
    path.write_text(f'[data]\nfiles = ["{text_path.as_posix()}"]\nval_fraction = 0.25\n'
                    f'[tokenizer]\nplugin = "{tokenizer}"{params}\n{RUN}', encoding="utf-8")
    return load_config(path)


def test_char_and_bpe_runs_share_one_bits_per_byte_axis(home, registry, tmp_path, text_path) -> None:
    val_text = split_text(TEXT, 0.25)[1]
    seen: dict[str, tuple[float, float]] = {}
    for name in ("char", "bpe"):
        trainer = Trainer(run_config(tmp_path, text_path, name), registry, tmp_path / f"run-{name}")
        trainer.run()
        assert trainer.corpus.val_bytes == len(val_text.encode("utf-8"))  # the same denominator for both
        records = [r for r in RunDir.open(tmp_path / f"run-{name}").read_metrics() if "val_loss" in r]
        assert [r["step"] for r in records] == [2, 4]
        for record in records:  # recorded beside val_loss, in the unit the identity gives
            tokens = len(trainer.tokenizer.encode(val_text))
            assert record["val_bpb"] == pytest.approx(
                record["val_loss"] * tokens / (len(val_text.encode("utf-8")) * math.log(2)), rel=1e-9)
        seen[name] = (records[-1]["val_loss"], records[-1]["val_bpb"])
    # Per token the two are far apart (a BPE token covers several characters); per byte they are
    # the same kind of number: a barely trained model costs a few bits for each byte.
    (char_nats, char_bpb), (bpe_nats, bpe_bpb) = seen["char"], seen["bpe"]
    assert bpe_nats > char_nats
    for bpb in (char_bpb, bpe_bpb):
        assert 0.5 < bpb < 9.0


def test_old_metrics_without_val_bpb_still_load(tmp_path) -> None:
    run = tmp_path / "old-run"
    run.mkdir()
    lines = [{"step": 2, "max_steps": 4, "elapsed_s": 0.1, "train_loss": 3.0, "lr": 1e-3, "tokens_per_s": 10.0,
              "tokens_seen": 64, "val_loss": 3.1}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    records = RunDir(run).read_metrics()
    assert records == lines and "val_bpb" not in records[0]


def test_eval_prints_val_bpb(home, registry, tmp_path, text_path, capsys) -> None:
    Trainer(run_config(tmp_path, text_path, "bpe"), registry, tmp_path / "run").run()
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "run"), "--batches", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    tokenizer = RunDir.open(tmp_path / "run").load_tokenizer()
    val_text = split_text(TEXT, 0.25)[1]
    tokens, n_bytes = len(tokenizer.encode(val_text)), len(val_text.encode("utf-8"))
    assert result["val_bpb"] == pytest.approx(result["val_loss"] * tokens / (n_bytes * math.log(2)), rel=1e-9)
