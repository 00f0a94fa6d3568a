"""The built-in tokenizers: training, round trips, offsets, saving and loading."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from lmstudio_app.errors import Cancelled, ParamError, TokenizerError
from lmstudio_app.params import build_params
from lmstudio_app.tokenizer import Tokenizer
from lmstudio_builtins.tokenizing import TOKENIZER_SPECS

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n"
) * 20
SPECS = {spec.name: spec for spec in TOKENIZER_SPECS}
ROUND_TRIP = "You are all resolved, hear me speak.\nFirst Citizen:\n"


def texts_of(text: str, chunk: int = 97):
    """A ``texts`` callable yielding small chunks, as the app does for a big corpus."""

    def texts() -> Iterator[str]:
        return (text[i : i + chunk] for i in range(0, len(text), chunk))

    return texts


def build(name: str, text: str = CORPUS, progress: Any = None, **values: Any) -> Tokenizer:
    spec = SPECS[name]
    return spec.build(build_params(spec.params, values, "tokenizer"), texts_of(text), progress)


@pytest.fixture(scope="module")
def trained() -> dict[str, Tokenizer]:
    return {name: build(name) for name in ("char", "byte", "bpe", "word")}


def test_specs_are_named_and_described() -> None:
    assert list(SPECS) == ["char", "byte", "bpe", "word", "file"]
    assert not SPECS["byte"].trains_on_corpus and not SPECS["file"].trains_on_corpus
    assert SPECS["bpe"].trains_on_corpus and SPECS["char"].trains_on_corpus
    assert all(spec.description for spec in TOKENIZER_SPECS)


@pytest.mark.parametrize("name", ["char", "byte", "bpe", "word"])
def test_round_trip_and_offsets(trained: dict[str, Tokenizer], name: str) -> None:
    tok = trained[name]
    assert tok.kind == name
    ids = tok.encode(ROUND_TRIP)
    assert tok.decode(ids) == ROUND_TRIP
    tokens = tok.encode_with_offsets(ROUND_TRIP)
    assert [t.id for t in tokens] == ids
    # The spans tile the text: each starts where the previous ended (byte tokens of one
    # character share that character's span), and together they cover every character.
    assert tokens[0].start == 0 and tokens[-1].end == len(ROUND_TRIP)
    for before, after in itertools.pairwise(tokens):
        assert after.start in (before.start, before.end)
    assert "".join(t.text for i, t in enumerate(tokens) if i == 0 or t.start != tokens[i - 1].start) == ROUND_TRIP


@pytest.mark.parametrize("name", ["byte", "bpe"])
def test_byte_level_tokenizers_round_trip_any_text(trained: dict[str, Tokenizer], name: str) -> None:
    text = "naïve café — 日本語 🙂\t\r\nzzz <|endoftext|>"
    tok = trained[name]
    assert tok.decode(tok.encode(text)) == text
    assert tok.unk_id is None


def test_char_vocabulary_is_sorted_characters_then_unk(trained: dict[str, Tokenizer]) -> None:
    tok = trained["char"]
    chars = sorted(set(CORPUS))
    assert tok.vocab_size == len(chars) + 1
    assert tok.encode("".join(chars)) == list(range(len(chars)))
    assert tok.unk_id == len(chars)
    ids = tok.encode("aZ€e")  # 'Z' and '€' never occur in the corpus
    assert ids == [chars.index("a"), tok.unk_id, tok.unk_id, chars.index("e")]
    assert [(t.start, t.end) for t in tok.encode_with_offsets("aZ€e")] == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_char_min_frequency_drops_rare_characters() -> None:
    tok = build("char", text="aaaab", min_frequency=2)
    assert tok.vocab_size == 2
    assert tok.encode("ab") == [0, tok.unk_id]
    with pytest.raises(TokenizerError, match="min_frequency: 9 leaves no character"):
        build("char", text="aaaab", min_frequency=9)


def test_char_reports_progress_in_characters() -> None:
    calls: list[tuple[int, int]] = []
    build("char", progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, len(CORPUS)) and calls[-1] == (len(CORPUS), len(CORPUS))
    assert len(calls) > 10  # chunk by chunk, not just start and end
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_progress_can_cancel_training() -> None:
    def cancel_halfway(done: int, total: int) -> None:
        if done > total // 2:
            raise Cancelled("stop")

    for name in ("char", "bpe", "word"):
        with pytest.raises(Cancelled):
            build(name, progress=cancel_halfway)


def test_byte_ids_are_byte_values(trained: dict[str, Tokenizer]) -> None:
    tok = trained["byte"]
    assert tok.vocab_size == 257
    assert tok.encode("Aé") == [0x41, 0xC3, 0xA9]
    assert [(t.start, t.end) for t in tok.encode_with_offsets("Aé")] == [(0, 1), (1, 2), (1, 2)]
    assert tok.encode("<|endoftext|>") == [256]


def test_bpe_honours_vocab_size_and_compresses(trained: dict[str, Tokenizer]) -> None:
    assert 257 < trained["bpe"].vocab_size <= 512  # a small corpus may run out of pairs to merge
    small = build("bpe", vocab_size=300)
    assert small.vocab_size == 300
    assert len(small.encode(CORPUS)) < len(CORPUS.encode("utf-8"))
    with pytest.raises(ParamError, match="tokenizer.vocab_size: 100 is below the minimum 260"):
        build("bpe", vocab_size=100)


@pytest.mark.parametrize("name", ["char", "bpe", "word"])
def test_training_is_deterministic(name: str) -> None:
    values = {} if name == "char" else {"vocab_size": 320}
    assert build(name, **values).to_json() == build(name, **values).to_json()


def test_word_tokens_are_words_punctuation_and_whitespace(trained: dict[str, Tokenizer]) -> None:
    tok = trained["word"]
    strings = [t.text for t in tok.encode_with_offsets("All:\nSpeak, speak.\n\n")]
    assert strings == ["All", ":", "\n", "Speak", ",", " speak", ".", "\n", "\n"]
    ids = tok.encode("You are zebras.")
    assert ids[2] == tok.unk_id and ids.count(tok.unk_id) == 1
    assert tok.decode(ids) == "You are<unk>."


def test_word_vocab_size_keeps_most_frequent() -> None:
    tok = build("word", vocab_size=16)
    assert tok.vocab_size == 16
    assert tok.unk_id is not None
    assert tok.encode(" to")[0] != tok.unk_id  # frequent words survive the cut


@pytest.mark.parametrize("name", ["char", "byte", "bpe", "word"])
def test_save_and_load_keep_ids(trained: dict[str, Tokenizer], name: str, tmp_path) -> None:
    path = tmp_path / name / "tokenizer.json"
    trained[name].save(path)
    loaded = Tokenizer.load(path)
    assert loaded.encode(CORPUS[:500]) == trained[name].encode(CORPUS[:500])
    assert loaded.decode(loaded.encode(ROUND_TRIP)) == ROUND_TRIP
    via_file = build("file", text="", path=str(path))
    assert via_file.kind == "file" and via_file.vocab_size == trained[name].vocab_size


def test_file_tokenizer_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(TokenizerError, match=r"^tokenizer\.path: no file given; choose a tokenizer\.json$"):
        build("file", path="  ")
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": {"type": "Nonsense"}}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="broken.json: not a valid tokenizer.json") as info:
        build("file", path=str(broken))
    assert "\n" not in str(info.value)
    with pytest.raises(TokenizerError, match="missing.json: tokenizer file not found"):
        build("file", path=str(tmp_path / "missing.json"))


@pytest.mark.parametrize("name", ["char", "bpe", "word"])
def test_empty_corpus_is_refused(name: str) -> None:
    with pytest.raises(TokenizerError, match=f"tokenizer {name}: the corpus is empty"):
        build(name, text="")
