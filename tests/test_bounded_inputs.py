"""Everything the app reads is a regular file of bounded size, and tokenizers cannot degenerate.

Issue 14, cases 2 and 11 and the input weak items: FIFOs, devices, folders and symlink loops
among the corpus files, settings and tokenizer.json; NUL bytes anywhere in a file; a file
rewritten while it is read; chunked learning and encoding equal to unchunked for every built-in
tokenizer; a run of mostly ``<unk>`` refused before training; BPE learning fewer tokens than
asked; a tokenizer.json without ``<unk>`` or whose pre-tokenizer panics; progress lines.
"""

from __future__ import annotations

import io
import json
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lmstudio_app import file_reads, settings
from lmstudio_app import tokenizer as tokenizer_module
from lmstudio_app.cli import commands as cli
from lmstudio_app.config import RunConfig, load_config
from lmstudio_app.data import corpus as corpus_module
from lmstudio_app.data import files as files_module
from lmstudio_app.data.corpus import TableEncoder, iter_text_chunks, tokenize_corpus
from lmstudio_app.data.coverage import check_coverage
from lmstudio_app.data.files import load_corpus_text, read_text_file
from lmstudio_app.data.progress import StageProgress
from lmstudio_app.errors import DataError, TokenizerError
from lmstudio_app.params import build_params
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.tokenizer import Tokenizer
from lmstudio_app.training.trainer import Trainer

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover(use_user_dir=False)


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the Trainer applies train.threads process-wide


def finishes(fn: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """``fn()``'s result or exception, failing (not hanging) if it blocks: today's FIFO case."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"still blocked after {timeout_s} s (a FIFO opened for reading?)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def one_line(exc: pytest.ExceptionInfo[BaseException], *needles: str) -> None:
    text = str(exc.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


# -- case 2: non-regular files -------------------------------------------------------------


def _make_odd(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "loop":
        path.symlink_to(path.with_name("other" + path.suffix))
        path.with_name("other" + path.suffix).symlink_to(path)
    else:
        raise AssertionError(kind)


ODD = [("fifo", "named pipe"), ("dev_zero", "character device"), ("loop", "loops back on itself")]


@needs_fifo
@pytest.mark.parametrize(("kind", "said"), ODD)
def test_a_corpus_folder_with_a_non_regular_txt_is_refused_by_name_without_blocking(tmp_path, kind, said):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("some real text here\n", encoding="utf-8")
    _make_odd(kind, folder / "b.txt")
    with pytest.raises(DataError) as info:
        finishes(lambda: load_corpus_text([folder]))
    one_line(info, "b.txt" if kind != "loop" else ".txt", said)
    with pytest.raises(DataError) as info:  # named on its own: the same refusal
        finishes(lambda: load_corpus_text([folder / "b.txt"]))
    one_line(info, said)


def test_a_folder_named_like_a_text_file_is_walked_not_read(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "x.txt").mkdir(parents=True)
    (folder / "x.txt" / "inner.txt").write_text("inside the folder\n", encoding="utf-8")
    text, infos = load_corpus_text([folder])
    assert text == "inside the folder\n" and [i.path.name for i in infos] == ["inner.txt"]
    with pytest.raises(DataError, match="is a folder"):
        read_text_file(folder / "x.txt")


def test_a_corpus_file_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_text("x" * 5000, encoding="utf-8")
    monkeypatch.setattr(files_module, "CORPUS_FILE_LIMIT", 4096)
    reads: list[int] = []
    real = file_reads._read_fd
    monkeypatch.setattr(file_reads, "_read_fd", lambda fd, limit: reads.append(limit) or real(fd, limit))
    with pytest.raises(DataError) as info:
        load_corpus_text([path])
    one_line(info, "big.txt", "4.9 KiB", "4.0 KiB")
    assert reads == []  # refused on its size, not a byte read


@needs_fifo
def test_settings_that_are_a_fifo_or_a_device_read_as_empty_without_blocking(home, monkeypatch):
    home.mkdir(parents=True)
    os.mkfifo(settings.settings_path())
    assert finishes(settings.load_settings) == {}
    settings.settings_path().unlink()
    settings.settings_path().symlink_to("/dev/zero")
    assert finishes(settings.load_settings) == {}
    settings.settings_path().unlink()
    settings.settings_path().write_text("[" * 100_000, encoding="utf-8")  # nested too deep for json
    assert settings.load_settings() == {}


@needs_fifo
@pytest.mark.parametrize(("kind", "said"), ODD)
def test_a_tokenizer_json_that_is_not_a_regular_file_is_a_one_line_error(tmp_path, kind, said):
    path = tmp_path / "tokenizer.json"
    _make_odd(kind, path)
    with pytest.raises(TokenizerError) as info:
        finishes(lambda: Tokenizer.load(path))
    one_line(info, said)


def test_a_huge_tokenizer_json_is_refused_unread(tmp_path, monkeypatch, registry):
    path = tmp_path / "tokenizer.json"
    _char_tokenizer(registry, "abc").save(path)
    monkeypatch.setattr(tokenizer_module, "TOKENIZER_FILE_LIMIT", 64)
    with pytest.raises(TokenizerError) as info:
        Tokenizer.load(path)
    one_line(info, "tokenizer.json", "more than the 64 bytes")


# -- weak items: NUL bytes anywhere, a file rewritten while it is read -------------------------


def test_a_nul_byte_after_the_first_64_kb_is_refused(tmp_path):
    path = tmp_path / "late_nul.txt"
    path.write_bytes(b"plain text line\n" * 10_000 + b"\x00tail\n")  # the NUL at byte 160,000
    with pytest.raises(DataError) as info:
        load_corpus_text([path])
    one_line(info, "late_nul.txt", "NUL", "160,000")


def test_a_nul_character_from_a_reader_plugin_is_refused(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"text": "abc\u0000def"}) + "\n", encoding="utf-8")
    from lmstudio_builtins.readers import read_jsonl

    with pytest.raises(DataError) as info:
        load_corpus_text([path], readers={".jsonl": read_jsonl})
    one_line(info, "records.jsonl", "NUL character")
    path.write_text('{"text": "abc\\ud800def"}\n', encoding="utf-8")  # a lone surrogate: no character
    with pytest.raises(DataError) as info:
        load_corpus_text([path], readers={".jsonl": read_jsonl})
    one_line(info, "records.jsonl", "lone surrogate (U+D800) at character 3")


def test_a_file_rewritten_while_it_is_read_is_read_again_or_refused(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text("old " * 1000, encoding="utf-8")
    real = file_reads._read_fd
    rewrites: list[int] = []

    def read_then_rewrite(fd: int, limit: int) -> bytes:
        data = real(fd, limit)
        if not rewrites:  # another program rewrites the file in place during the first read
            rewrites.append(1)
            with open(path, "r+b") as fh:
                fh.write(b"new " * 1500)
        return data

    monkeypatch.setattr(file_reads, "_read_fd", read_then_rewrite)
    text, infos = load_corpus_text([path])
    assert text == "new " * 1500 and infos[0].n_chars == 6000  # the whole new file, not a mix

    def always_rewrite(fd: int, limit: int) -> bytes:
        data = real(fd, limit)
        with open(path, "ab") as fh:  # a log still being written
            fh.write(b"more ")
        return data

    monkeypatch.setattr(file_reads, "_read_fd", always_rewrite)
    with pytest.raises(DataError) as info:
        load_corpus_text([path])
    one_line(info, "corpus.txt", "kept changing while it was read")


# -- case 11: chunking never changes what a tokenizer learns or encodes -------------------------


def _mixed_text() -> str:
    rng = random.Random(5)
    no_spaces = "".join(rng.choice("abcdefghij") for _ in range(3000))
    parts = [
        "The cat sat on the mat. It's the cat's mat, isn't it?\n",
        no_spaces,
        "\n", "a.b,c;d!e?f(g)h[i]j{k}l-m_n'o\"p", " 12345abc 3.14 x1y2z3\n",
        "我是学生。你好吗？这是一个没有空格的句子。" * 30,
        "  two  spaces   three\n\n\nlines\t\ttabs\n",
        "<|endoftext|>special<unk>tokens<|endoftext|>" * 20,
        no_spaces[::-1], " don't won't we'll ", "....!!!???", "\n",
    ]
    return "".join(parts * 3)


def _build(registry: PluginRegistry, name: str, texts: Callable[[], Any], **values: Any) -> Tokenizer:
    spec = registry.tokenizer(name)
    return spec.build(build_params(spec.params, values, "tokenizer"), texts, None)


def _char_tokenizer(registry: PluginRegistry, text: str) -> Tokenizer:
    return _build(registry, "char", lambda: iter([text]))


@pytest.mark.parametrize("name", ["char", "byte", "bpe", "word", "file"])
def test_chunked_learning_and_encoding_equal_unchunked_for_each_builtin_tokenizer(registry, tmp_path,
                                                                                    monkeypatch, name):
    text = _mixed_text()
    if name == "file":
        word = _build(registry, "word", lambda: iter([text]))
        word.save(tmp_path / "tokenizer.json")
        whole = chunked = _build(registry, "file", lambda: iter([text]), path=str(tmp_path / "tokenizer.json"))
    else:
        # char: characters seen fewer than 4 times (the mixed text repeats 3 times) become <unk>
        values = {"vocab_size": 600} if name == "bpe" else {"min_frequency": 4} if name == "char" else {}
        whole = _build(registry, name, lambda: iter([text]), **values)
        chunked = _build(registry, name, lambda: iter_text_chunks(text, 100), **values)
        assert chunked.to_json() == whole.to_json()  # the same vocabulary (and merges), learned in pieces
    monkeypatch.setattr(corpus_module, "_ENCODE_CHUNK_CHARS", 64)  # hundreds of pieces, cut everywhere
    monkeypatch.setattr(corpus_module, "_TABLE_CHUNK_CHARS", 64)
    # char and byte encode by NumPy table lookup (the fast path), the others through the library
    assert (TableEncoder.of(chunked) is not None) == (name in ("char", "byte"))
    corpus = tokenize_corpus(chunked, text, 0.1)
    cut = int(len(text) * 0.9)
    assert corpus.train.tolist() == whole.encode(text[:cut])
    assert corpus.val.tolist() == whole.encode(text[cut:])
    if name == "char":
        assert whole.unk_id in corpus.train.tolist()  # the unknown-character path was taken


# letters, digits, CJK, ASCII and Unicode punctuation, a combining mark, symbols that are or look
# alphabetic, connectors, apostrophes and every kind of space: where a wrong cut would show
_ADVERSARIAL = list("abcXYZ019_'.,;!?-") + ["é", "e\u0301", "字", "。", "？", "、", "½", "²", "Ⓐ", "€", "‿", "—",
                                             "«", "»", " ", "  ", "\n", "\t", "<unk>", "<|endoftext|>", "don't"]


@pytest.mark.parametrize("seed", range(4))
def test_random_text_tokenizes_the_same_in_pieces_for_the_trained_tokenizers(registry, monkeypatch, seed):
    rng = random.Random(seed)
    text = "".join(rng.choice(_ADVERSARIAL) * rng.choice((1, 1, 1, 2, 7)) for _ in range(3000))
    monkeypatch.setattr(corpus_module, "_ENCODE_CHUNK_CHARS", 16 + seed)
    for name in ("word", "bpe"):
        values = {"vocab_size": 400} if name == "bpe" else {}
        whole = _build(registry, name, lambda: iter([text]), **values)
        assert _build(registry, name, lambda: iter_text_chunks(text, 12 + seed), **values).to_json() == whole.to_json()
        corpus = tokenize_corpus(whole, text, 0.0)
        assert corpus.train.tolist() == whole.encode(text), name


def test_chunks_never_split_a_word_or_an_added_token_and_still_join_to_the_text():
    text = "x" * 5000 + " tail<|endoftext|>" + "y" * 300
    chunks = list(iter_text_chunks(text, 100))
    assert "".join(chunks) == text
    assert chunks[0] == "x" * 5000  # no cut in the run of letters: the piece grows instead
    special = "<|endoftext|>"
    for offset in range(40):  # wherever the cuts fall, none lands inside the special token
        shifted = "z" * offset + text
        pieces = list(iter_text_chunks(shifted, 64, cut_anywhere=True, keep_whole=(special,)))
        assert "".join(pieces) == shifted and max(len(p) for p in pieces) <= 64
        at = shifted.index(special)
        cuts = {sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces))}
        assert not any(at < cut < at + len(special) for cut in cuts)


def test_the_word_tokenizer_on_text_without_spaces_stops_before_training(registry, tmp_path):
    rng = random.Random(1)
    (tmp_path / "nospace.txt").write_text("".join(rng.choice("abcdefgh") for _ in range(200_000)),
                                          encoding="utf-8")
    config = _tiny_config(tmp_path, '"word"')
    with pytest.raises(DataError) as info:
        Trainer(config, registry, write_run=False)
    one_line(info, "<unk>", "use the bpe or char tokenizer")
    assert "100%" in str(info.value) or "characters on average" in str(info.value)


def test_mostly_unknown_training_data_is_refused_with_the_share_and_the_cause(registry):
    rng = random.Random(2)
    words = [f"w{rng.randrange(5000)}" for _ in range(4000)]
    text = " ".join(words)
    small = _build(registry, "word", lambda: iter([text]), vocab_size=16)
    corpus = tokenize_corpus(small, text, 0.1)
    with pytest.raises(DataError) as info:
        check_coverage(small, corpus, text)
    one_line(info, "% <unk>", "too small", "tokenizer.vocab_size")
    share = float(str(info.value).split("the training data is ")[1].split("%")[0])
    assert 20 < share <= 100
    enough = _build(registry, "word", lambda: iter([text]))
    check_coverage(enough, tokenize_corpus(enough, text, 0.1), text)  # the same text, a real vocabulary: fine


# -- weak items: fewer BPE tokens than asked, a tokenizer.json without <unk> or that panics ------


def test_bpe_that_learns_fewer_tokens_than_asked_says_how_many_and_why(registry, tmp_path, capsys):
    text = "the cat sat on the mat. " * 300
    bpe = _build(registry, "bpe", lambda: iter([text]), vocab_size=65536)
    assert bpe.vocab_size < 1000 and len(bpe.notes) == 1
    note = bpe.notes[0]
    assert f"learned {bpe.vocab_size:,} of the 65,536" in note and "min_frequency" in note
    full = _build(registry, "bpe", lambda: iter([text]), vocab_size=260)
    assert full.vocab_size == 260 and full.notes == []
    word = _build(registry, "word", lambda: iter([text]), vocab_size=1000)  # the same class: say so
    assert len(word.notes) == 1 and f"learned {word.vocab_size:,} of the 1,000" in word.notes[0]

    (tmp_path / "corpus.txt").write_text(text * 4, encoding="utf-8")
    config = tmp_path / "bpe.toml"
    config.write_text(_TINY_TOML.format(tokenizer='"bpe"\nvocab_size = 65536'), encoding="utf-8")
    assert cli.main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "note: tokenizer bpe: learned" in err and "of the 65,536 tokens asked for" in err


def _word_level_json(vocab: dict[str, int], unk: str | None, pre_pattern: str | None = None) -> str:
    spec = json.loads(Tokenizer.from_json(_base_word_json()).to_json())
    spec["model"] = {"type": "WordLevel", "vocab": vocab, "unk_token": unk or "<unk>"}
    spec["added_tokens"] = []
    if pre_pattern is not None:
        spec["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": pre_pattern}, "behavior": "Isolated",
                                 "invert": False}
    return json.dumps(spec)


def _base_word_json() -> str:
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    hf = HF(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return hf.to_str()


def test_a_tokenizer_json_without_unk_is_a_clear_error_or_a_refusal(tmp_path):
    path = tmp_path / "no_unk.json"
    path.write_text(_word_level_json({"hello": 0, "world": 1}, unk=None), encoding="utf-8")
    tok = Tokenizer.load(path)
    assert tok.encode("hello world") == [0, 1] and tok.unk_id is None
    with pytest.raises(TokenizerError) as info:
        tokenize_corpus(tok, "hello there world", 0.0)
    one_line(info, "no_unk.json", "no unknown token")

    from tokenizers import Tokenizer as HF
    from tokenizers import models

    dropping = Tokenizer(HF(models.BPE({"a": 0, "b": 1}, merges=[])), kind="file", source="drops.json")
    text = "ab" + "xyz" * 100  # a BPE without <unk> silently drops x, y and z
    with pytest.raises(DataError) as info:
        check_coverage(dropping, tokenize_corpus(dropping, text, 0.0), text)
    one_line(info, "drops.json", "drops", "no unknown token")


def test_a_panicking_pre_tokenizer_is_one_line_naming_the_file(tmp_path, registry, capsys):
    path = tmp_path / "panics.json"
    path.write_text(_word_level_json({"a": 0, "<unk>": 1}, unk="<unk>", pre_pattern="(a+)+$"), encoding="utf-8")
    tok = Tokenizer.load(path)
    with pytest.raises(TokenizerError) as info:
        tok.encode_batch(["a" * 40 + "b"])
    one_line(info, "panics.json", "tokenizers library failed")
    with pytest.raises(TokenizerError):
        tok.encode("a" * 40 + "b")

    (tmp_path / "corpus.txt").write_text(("a" * 40 + "b\n") * 200, encoding="utf-8")
    config = tmp_path / "file.toml"
    config.write_text(_TINY_TOML.format(tokenizer=f'"file"\npath = "{path}"'), encoding="utf-8")
    assert cli.main(["train", str(config), "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lmstudio: error: ")]
    assert len(lines) == 1 and "panics.json" in lines[0] and "Traceback" not in err


# -- weak item: progress on the CLI for a big corpus -------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stage_progress_is_quiet_for_quick_stages_and_reports_slow_ones_with_throughput():
    out, clock = io.StringIO(), _Clock()
    progress = StageProgress(out, quiet_s=1.0, every_s=5.0, clock=clock)
    progress("reading", 0, 1000)
    clock.now = 0.5
    progress("reading", 1000, 1000)  # a quick stage: nothing
    assert out.getvalue() == ""
    total = 300_000_000
    for i in range(31):  # 30 s of tokenizing, a report every second
        clock.now = 1.0 + i
        progress("tokenizing", total * i // 30, total)
    lines = out.getvalue().splitlines()
    assert 5 <= len(lines) <= 8, lines  # rate-limited to one line per 5 s, plus the last one
    assert lines[-1] == "tokenizing: 100% (300.0 of 300.0 M characters, 10.0 M characters/s)"
    assert all(line.startswith("tokenizing: ") and "%" in line for line in lines)


_TINY_TOML = """\
[data]
files = ["corpus.txt"]
[tokenizer]
plugin = {tokenizer}
[model]
plugin = "gpt"
n_layer = 1
n_head = 2
n_embd = 16
context_length = 8
[train]
device = "cpu"
batch_size = 4
max_steps = 2
warmup_steps = 1
eval_interval = 2
eval_batches = 1
log_interval = 1
sample_tokens = 4
threads = 1
"""


def _tiny_config(folder: Path, tokenizer: str) -> RunConfig:
    path = folder / "tiny.toml"
    path.write_text(_TINY_TOML.format(tokenizer=tokenizer).replace('"corpus.txt"', f'"{folder / "nospace.txt"}"'),
                    encoding="utf-8")
    return load_config(path)
