"""The data path: reading files, splitting, tokenizing into arrays, sampling batches."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lmstudio_app.data.corpus import (
    BatchSampler,
    TokenizedCorpus,
    iter_text_chunks,
    split_text,
    token_dtype,
    tokenize_corpus,
)
from lmstudio_app.data.files import collect_files, detect_encoding, load_corpus_text, read_text_file
from lmstudio_app.errors import Cancelled, DataError, ParamError
from lmstudio_app.tokenizer import Tokenizer
from lmstudio_builtins.readers import READER_SPECS
from lmstudio_builtins.tokenizing import CharParams, WordParams, build_char, build_word

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 30


def char_tokenizer(text: str = TEXT) -> Tokenizer:
    return build_char(CharParams(), lambda: iter([text]), None)


# -- reading ------------------------------------------------------------------------------


def test_reads_utf8_and_strips_bom_and_carriage_returns(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffcafé\r\nline two\r\n".encode("utf-8"))
    assert read_text_file(path) == "café\nline two\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"empty\.txt: the file is empty$"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"looks like a binary file \(PNG image\), not text$"),
        (b"%PDF-1.7\n", r"binary file \(PDF document\)"),
        (b"abc\x00\x01\x02\xff\xfe\x00", r"binary file \(it contains NUL bytes\)"),
    ],
)
def test_unusable_files_raise_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_text_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_latin1_file_names_the_byte_and_the_encoding(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    data = b"plain ascii line\n" * 10 + "déjà vu\n".encode("latin-1")
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(DataError) as info:
        read_text_file(path)
    assert str(info.value) == (
        f"{path}: not valid UTF-8 at byte {offset}; it looks like latin-1 — choose that encoding to read it"
    )
    assert read_text_file(path, "latin-1").endswith("déjà vu\n")


def test_cp1252_quotes_are_recognised(tmp_path: Path) -> None:
    data = "“smart quotes” – dash".encode("cp1252")
    assert detect_encoding(data) == "cp1252"


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_detected_with_and_without_bom(tmp_path: Path, codec: str) -> None:
    text = "Hello, wörld\nsecond line\n"
    bom = b"\xff\xfe" if codec.endswith("le") else b"\xfe\xff"
    assert detect_encoding(bom + text.encode(codec)) == codec
    assert detect_encoding(text.encode(codec)) == codec
    path = tmp_path / "wide.txt"
    path.write_bytes(bom + text.encode(codec))
    with pytest.raises(DataError, match=f"looks like {codec} text — choose that encoding"):
        read_text_file(path)
    assert read_text_file(path, codec) == text  # the BOM does not become a character


def test_detect_encoding_utf8_and_binary() -> None:
    assert detect_encoding("ü".encode()) == "utf-8"
    assert detect_encoding(b"\xef\xbb\xbfabc") == "utf-8-sig"
    assert detect_encoding(bytes(range(256)) * 4) is None


def test_missing_file_folder_and_unknown_encoding(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.txt: file not found"):
        read_text_file(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is a folder"):
        read_text_file(tmp_path)
    (tmp_path / "x.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="unknown encoding 'klingon'"):
        read_text_file(tmp_path / "x.txt", "klingon")


def test_collect_files_walks_thousands_of_files_fast(tmp_path: Path) -> None:
    for i in range(2000):
        sub = tmp_path / f"d{i % 20:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:04d}.txt").write_text(f"file {i}\n", encoding="utf-8")
    (tmp_path / "d00" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.txt").write_text("no", encoding="utf-8")
    (tmp_path / "d01" / ".dotfile.txt").write_text("no", encoding="utf-8")
    started = time.perf_counter()
    files = collect_files([tmp_path])
    text, infos = load_corpus_text([tmp_path])
    elapsed = time.perf_counter() - started
    assert len(files) == 2000 and files == sorted(files)
    assert all(f.suffix == ".txt" and ".hidden" not in f.parts for f in files)
    assert text.startswith("file 0\n\n\nfile 20\n\n\n")  # d00/f0000, d00/f0020, ...
    assert len(infos) == 2000 and sum(i.n_chars for i in infos) + 2 * 1999 == len(text)
    assert elapsed < 10


def test_collect_files_keeps_explicit_files_and_rejects_empty_folders(tmp_path: Path) -> None:
    odd = tmp_path / "data.log"
    odd.write_text("log line\n", encoding="utf-8")
    assert collect_files([odd, odd]) == [odd]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: the folder has no text files \(\.markdown"):
        collect_files([empty])
    with pytest.raises(DataError, match="missing: no such file or folder"):
        collect_files([tmp_path / "missing"])
    with pytest.raises(DataError, match="no text files chosen"):
        load_corpus_text([])


def test_load_corpus_uses_readers_and_reports_progress(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "beta"}\n\n"gamma"\n', encoding="utf-8")
    (tmp_path / "c.txt").write_bytes("caf\xe9".encode("latin-1"))
    readers = {ext: spec.read for spec in READER_SPECS for ext in spec.extensions}
    with pytest.raises(DataError, match=r"c\.txt: not valid UTF-8 at byte 3"):
        load_corpus_text([tmp_path], readers)
    calls: list[tuple[int, int]] = []
    text, infos = load_corpus_text([tmp_path], readers, encoding="latin-1", progress=lambda d, t: calls.append((d, t)))
    assert text == "alpha\n\nbeta\n\ngamma\n\ncafé"
    assert [i.encoding for i in infos] == ["utf-8", "read_jsonl", "latin-1"]  # UTF-8 files stay UTF-8
    assert calls[-1][0] == calls[-1][1] == sum(i.size_bytes for i in infos) and len(calls) == 3


def test_jsonl_reader_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "x"}\n', encoding="utf-8")
    read = next(spec.read for spec in READER_SPECS if ".jsonl" in spec.extensions)
    with pytest.raises(DataError, match=r'bad\.jsonl:2: the record has no "text" field'):
        read(path)
    path.write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read(path)


# -- splitting and tokenizing -------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25])
def test_split_text_by_characters(fraction: float) -> None:
    text = "".join(chr(65 + i % 26) for i in range(1001))
    train, val = split_text(text, fraction)
    cut = int(1001 * (1 - fraction))
    assert train == text[:cut] and val == text[cut:]
    val_first_train, val_first = split_text(text, fraction, "start")
    assert val_first + val_first_train == text and len(val_first) == int(1001 * fraction)
    with pytest.raises(ParamError, match="data.val_split: 'middle'"):
        split_text(text, fraction, "middle")


def test_token_dtype() -> None:
    assert token_dtype(65) == np.uint8 and token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    with pytest.raises(DataError, match="too large"):
        token_dtype(2**32 + 1)


def test_chunks_cut_between_words_so_word_tokens_do_not_change() -> None:
    text = " ".join(f"word{i % 50}" for i in range(3000)) + "\n" + "Line two, here.\nAnd three!\n" * 200
    chunks = list(iter_text_chunks(text, 500))
    assert "".join(chunks) == text and len(chunks) > 20
    assert all(len(c) <= 500 for c in chunks)
    tok = build_word(WordParams(), lambda: iter([text]), None)
    assert [i for c in chunks for i in tok.encode(c)] == tok.encode(text)


def test_tokenize_corpus_splits_and_reports_progress() -> None:
    tok = char_tokenizer()
    calls: list[tuple[int, int]] = []
    corpus = tokenize_corpus(tok, TEXT, 0.1, progress=lambda d, t: calls.append((d, t)))
    assert isinstance(corpus, TokenizedCorpus)
    assert corpus.train.dtype == np.uint8 and corpus.vocab_size == tok.vocab_size  # < 257 tokens
    cut = int(len(TEXT) * 0.9)
    assert corpus.train.tolist() == tok.encode(TEXT[:cut]) and corpus.val.tolist() == tok.encode(TEXT[cut:])
    assert corpus.n_tokens == len(TEXT) and corpus.chars_per_token == pytest.approx(1.0)
    assert calls[0] == (0, len(TEXT)) and calls[-1] == (len(TEXT), len(TEXT))
    assert len(tokenize_corpus(tok, TEXT, 0.0).val) == 0


def test_tokenize_corpus_cancel_stops_between_chunks() -> None:
    big = TEXT * 200  # ~0.5 MB: several chunks
    checks = []

    def cancel() -> bool:
        checks.append(1)
        return len(checks) >= 2

    with pytest.raises(Cancelled):
        tokenize_corpus(char_tokenizer(), big, cancel=cancel)
    assert len(checks) == 2


def test_tokenize_corpus_spills_to_memmap(tmp_path: Path) -> None:
    tok = char_tokenizer()
    big = TEXT * 120
    corpus = tokenize_corpus(tok, big, 0.1, memmap_dir=tmp_path, memmap_threshold_tokens=1000)
    assert isinstance(corpus.train, np.memmap) and isinstance(corpus.val, np.memmap)
    assert (tmp_path / "train.bin").stat().st_size == corpus.train.dtype.itemsize * len(corpus.train)
    cut = int(len(big) * 0.9)
    assert np.array_equal(corpus.train, tok.encode(big[:cut]))
    sampler = BatchSampler(corpus.train, 4, 16, seed=1)
    x, y = sampler.sample()
    assert torch.equal(x[:, 1:], y[:, :-1])
    checks: list[int] = []

    def cancel_at_val() -> bool:  # the first check precedes train, the second precedes val
        checks.append(1)
        return len(checks) == 2

    with pytest.raises(Cancelled):
        tokenize_corpus(tok, big, memmap_dir=tmp_path / "c", memmap_threshold_tokens=1000, cancel=cancel_at_val)
    assert len(checks) == 2 and list((tmp_path / "c").iterdir()) == []  # the spilled train.bin is gone


# -- sampling -----------------------------------------------------------------------------


def test_batch_sampler_shapes_targets_and_determinism() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = BatchSampler(tokens, 8, 32, seed=3).sample()
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # consecutive IDs: the target is the next token
    a, b = BatchSampler(tokens, 8, 32, seed=3), BatchSampler(tokens, 8, 32, seed=3)
    assert all(torch.equal(a.sample()[0], b.sample()[0]) for _ in range(5))
    assert not torch.equal(BatchSampler(tokens, 8, 32, seed=4).sample()[0], BatchSampler(tokens, 8, 32, seed=3).sample()[0])


def test_batch_sampler_reaches_the_last_token() -> None:
    tokens = np.arange(11, dtype=np.uint16)
    sampler = BatchSampler(tokens, 64, 10, seed=0)  # exactly one window fits
    x, y = sampler.sample()
    assert torch.equal(x[0], torch.arange(10)) and torch.equal(y[0], torch.arange(1, 11))


def test_batch_sampler_state_round_trip() -> None:
    tokens = np.arange(5000, dtype=np.uint32)
    sampler = BatchSampler(tokens, 4, 16, seed=7)
    sampler.sample()
    state = sampler.get_state()
    expected = [sampler.sample()[0] for _ in range(3)]
    resumed = BatchSampler(tokens, 4, 16, seed=999)
    resumed.set_state(state.clone())
    assert all(torch.equal(resumed.sample()[0], e) for e in expected)
    with pytest.raises(DataError, match="saved random state does not fit"):
        resumed.set_state(torch.zeros(3, dtype=torch.uint8))


def test_batch_sampler_refuses_a_too_short_split() -> None:
    with pytest.raises(DataError) as info:
        BatchSampler(np.zeros(40, np.uint16), 4, 64, seed=0)
    assert str(info.value) == (
        "the train split has 40 tokens, fewer than the context length 64 + 1; "
        "add text or lower model.context_length"
    )
    with pytest.raises(DataError, match="the val split has 64 tokens.*data.val_fraction"):
        BatchSampler(np.zeros(64, np.uint16), 4, 64, seed=0, split="val")
