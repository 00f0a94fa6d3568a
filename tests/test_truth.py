"""The truth of a synthetic corpus in token space: the hook, the demo's truth, TokenTruth, KL."""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from lmstudio_app import TruthSpec
from lmstudio_app.errors import PluginCallError, TokenizerError
from lmstudio_app.inference.truth import MIN_MODEL_PROB, TokenTruth, kl, token_truth
from lmstudio_app.params import build_params
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.resources import demo_corpus_path
from lmstudio_app.tokenizer import Tokenizer
from lmstudio_builtins.demo_grammar import (
    DEMO_PROMPTS,
    RECOGNISE_SAMPLE_CHARS,
    all_sentences,
    generate_demo_corpus,
    true_next_word_distribution,
)
from lmstudio_builtins.tokenizing import TOKENIZER_SPECS

TOKENIZERS = ("word", "char", "byte", "bpe")
SPECS = {spec.name: spec for spec in TOKENIZER_SPECS}


def build_tokenizer(name: str, text: str) -> Tokenizer:
    spec = SPECS[name]

    def texts() -> Iterator[str]:
        return iter([text])

    return spec.build(build_params(spec.params, {}, "tokenizer"), texts, None)


def named(tokenizer: Tokenizer, dist: dict[int, float] | None) -> dict[str, float] | None:
    return None if dist is None else {tokenizer.token_string(i): p for i, p in dist.items()}


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover(use_user_dir=False)


@pytest.fixture(scope="module")
def demo(registry: PluginRegistry) -> TruthSpec:
    return registry.truths()["demo"]


@pytest.fixture(scope="module")
def corpus() -> str:
    return demo_corpus_path().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizers(corpus: str) -> dict[str, Tokenizer]:
    return {name: build_tokenizer(name, corpus) for name in TOKENIZERS}


@pytest.fixture(scope="module")
def truths(demo: TruthSpec, tokenizers: dict[str, Tokenizer]) -> dict[str, TokenTruth]:
    return {name: TokenTruth(demo, tok) for name, tok in tokenizers.items()}


# ---- the demo through the hook ------------------------------------------------------------------


def test_the_builtins_provide_the_demo_truth(registry: PluginRegistry, demo: TruthSpec) -> None:
    assert registry.errors == []
    assert list(registry.truths()) == ["demo"] and registry.owner("truths", "demo") == "builtins"
    assert list(demo.prompts) == DEMO_PROMPTS and demo.description
    documents = demo.documents()
    assert len(documents) == len(all_sentences())
    assert math.isclose(sum(p for p, _ in documents), 1.0, rel_tol=1e-12)
    assert {text for _, text in documents} == {" ".join(words) + "\n" for _, words in all_sentences()}
    assert ("the cat sat on the mat .\n" in {text for _, text in documents})


def test_the_registry_finds_the_demo_truth_for_demo_text_only(
    registry: PluginRegistry, demo: TruthSpec, corpus: str
) -> None:
    assert registry.truth_for(corpus) is demo
    sentences = generate_demo_corpus(40, seed=7)
    assert registry.truth_for(sentences) is demo
    assert registry.truth_for(sentences + "the cat sa") is demo  # a cut-off last line is ignored
    assert registry.truth_for("the cat slept .") is None  # no complete line
    assert registry.truth_for("") is None
    assert registry.truth_for("hello world\n") is None
    assert registry.truth_for("the cat flew .\n" + sentences) is None  # not a sentence of the grammar
    assert registry.truth_for(sentences.replace("\n", "\r\n")) is None
    assert registry.truth_for(sentences + "\nhello world\n") is None  # a blank line is no sentence
    # only a bounded sample is read: text after the first 64 KB does not change the answer
    assert len(corpus) > RECOGNISE_SAMPLE_CHARS
    assert registry.truth_for(corpus + "\n\nanother file\n") is demo


# ---- TokenTruth on the demo ---------------------------------------------------------------------


def test_word_tokens_after_the_cat_sat_on_the(tokenizers: dict[str, Tokenizer], truths: dict[str, TokenTruth]) -> None:
    tok = tokenizers["word"]
    (mat,), (floor,), (couch,) = tok.encode(" mat"), tok.encode(" floor"), tok.encode(" couch")
    assert truths["word"].next_token("the cat sat on the") == {mat: 0.6, floor: 0.25, couch: 0.15}
    assert named(tok, truths["word"].next_token("the dog sat on the")) == {" floor": 0.5, " mat": 0.3, " couch": 0.2}
    assert named(tok, truths["word"].next_token("")) == {"the": 0.8, "a": 0.2}


def test_word_tokens_agree_with_the_grammar_after_every_prefix(
    tokenizers: dict[str, Tokenizer], truths: dict[str, TokenTruth]
) -> None:
    tok, truth = tokenizers["word"], truths["word"]
    prefixes = {" ".join(words[:i]) for _, words in all_sentences() for i in range(len(words) + 1)}
    assert len(prefixes) > 50
    for prefix in prefixes:
        expected = {
            (w if not prefix or w == "\n" else " " + w): p for w, p in true_next_word_distribution(prefix).items()
        }
        got = named(tok, truth.next_token(prefix))
        assert got.keys() == expected.keys(), prefix
        for word, p in expected.items():
            assert got[word] == pytest.approx(p, rel=1e-12), (prefix, word)


def test_character_level_truth(tokenizers: dict[str, Tokenizer], truths: dict[str, TokenTruth]) -> None:
    for name in ("char", "byte"):
        tok, truth = tokenizers[name], truths[name]
        assert named(tok, truth.next_token("the cat sat on the")) == {" ": 1.0}
        assert named(tok, truth.next_token("the cat sat on the ")) == {"m": 0.6, "f": 0.25, "c": 0.15}
        assert named(tok, truth.next_token("the ")) == {"c": 0.5, "d": 0.3, "m": 0.2}
        assert named(tok, truth.next_token("the cat s")) == {"a": float(Fraction(5, 7)), "l": float(Fraction(2, 7))}
        assert named(tok, truth.next_token("")) == {"t": 0.8, "a": 0.2}


def test_a_prompt_spanning_documents_conditions_on_the_last_one(
    tokenizers: dict[str, Tokenizer], truths: dict[str, TokenTruth]
) -> None:
    for name in TOKENIZERS:
        truth = truths[name]
        after_the_dog = truth.next_token("the dog")
        assert after_the_dog is not None
        assert truth.next_token("the cat slept .\nthe dog") == after_the_dog, name
        assert truth.next_token("a bird sang .\nthe cat slept all day .\nthe dog") == after_the_dog, name
        assert truth.next_token("\nthe dog") == after_the_dog, name  # the end of an unseen document
        assert truth.next_token("all day .\nthe dog") == after_the_dog, name
        assert truth.next_token("the cat slept .\n") == truth.next_token(""), name
        assert named(tokenizers[name], truth.next_token("the cat slept .")) == {"\n": 1.0}, name
        assert truth.next_token("the cat flew .\nthe dog") is None, name  # not after a document


def test_a_prompt_that_begins_no_document_has_no_truth(
    tokenizers: dict[str, Tokenizer], truths: dict[str, TokenTruth]
) -> None:
    for name in TOKENIZERS:
        assert truths[name].next_token("the cat flew") is None, name
        assert truths[name].next_token("cat sat") is None, name
    assert truths["word"].next_token("the ca") is None  # stops inside the token " cat"
    assert truths["char"].next_token("the ca") is not None


def test_every_demo_prompt_has_a_truth_for_every_tokenizer(truths: dict[str, TokenTruth]) -> None:
    for name, truth in truths.items():
        for prompt in DEMO_PROMPTS:
            dist = truth.next_token(prompt)
            assert dist is not None, (name, prompt)
            assert math.isclose(sum(dist.values()), 1.0, rel_tol=1e-12), (name, prompt)
            assert list(dist.values()) == sorted(dist.values(), reverse=True)


def test_no_token_spans_two_documents(corpus: str, tokenizers: dict[str, Tokenizer]) -> None:
    """The assumption TokenTruth rests on, for the built-in tokenizers on the demo corpus."""
    lines = corpus.splitlines(keepends=True)[:3000]
    stream = "".join(lines)
    for name, tok in tokenizers.items():
        assert tok.encode(stream) == [i for line in lines for i in tok.encode(line)], name


def test_entropy_rate_times_length_is_the_document_entropy_for_every_tokenizer(
    demo: TruthSpec, truths: dict[str, TokenTruth]
) -> None:
    entropy = -sum(p * math.log(p) for p, _ in all_sentences())
    chars = sum(p * (len(" ".join(words)) + 1) for p, words in all_sentences())
    words = sum(p * (len(words) + 1) for p, words in all_sentences())  # + the newline token
    assert truths["char"].mean_document_tokens() == pytest.approx(chars, rel=1e-12)
    assert truths["byte"].mean_document_tokens() == pytest.approx(chars, rel=1e-12)  # all ASCII
    assert truths["word"].mean_document_tokens() == pytest.approx(words, rel=1e-12)
    for name, truth in truths.items():
        assert truth.document_entropy() == pytest.approx(entropy, rel=1e-12), name
        assert truth.entropy_rate() * truth.mean_document_tokens() == pytest.approx(entropy, rel=1e-12), name
    rate_char, rate_word = truths["char"].entropy_rate(), truths["word"].entropy_rate()
    assert rate_char * chars == pytest.approx(rate_word * words, rel=1e-12)
    assert rate_char < rate_word  # the same information spread over more tokens


def test_token_truth_is_cached_per_tokenizer(demo: TruthSpec, tokenizers: dict[str, Tokenizer]) -> None:
    first = token_truth(demo, tokenizers["word"])
    assert token_truth(demo, tokenizers["word"]) is first
    assert token_truth(demo, tokenizers["char"]) is not first
    assert token_truth(demo, tokenizers["char"]).tokenizer is tokenizers["char"]


# ---- hand-checked small cases -------------------------------------------------------------------


def hand_spec(documents: list[tuple[float, str]], name: str = "hand") -> TruthSpec:
    return TruthSpec(name, "hand-made", lambda: documents, lambda text: False)


def test_two_documents_by_hand() -> None:
    spec = hand_spec([(0.75, "ab\n"), (0.25, "ac\n")])
    tok = build_tokenizer("char", "ab\nac\n")
    truth = TokenTruth(spec, tok)
    assert named(tok, truth.next_token("a")) == {"b": 0.75, "c": 0.25}
    assert named(tok, truth.next_token("")) == {"a": 1.0}
    assert named(tok, truth.next_token("ab")) == {"\n": 1.0}
    assert named(tok, truth.next_token("ab\n")) == {"a": 1.0}
    assert named(tok, truth.next_token("ac\nab\na")) == {"b": 0.75, "c": 0.25}
    assert named(tok, truth.next_token("b\na")) == {"b": 0.75, "c": 0.25}
    assert truth.next_token("b") is None and truth.next_token("aa") is None
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.5623 nats per document
    assert truth.document_entropy() == pytest.approx(entropy, rel=1e-15)
    assert truth.mean_document_tokens() == 3
    assert truth.entropy_rate() == pytest.approx(entropy / 3, rel=1e-15)


def test_documents_of_different_lengths_by_hand() -> None:
    spec = hand_spec([(0.5, "ab\n"), (0.5, "a\n")])
    tok = build_tokenizer("char", "ab\na\n")
    truth = TokenTruth(spec, tok)
    assert named(tok, truth.next_token("a")) == {"b": 0.5, "\n": 0.5}
    assert truth.mean_document_tokens() == 2.5  # (3 + 2) / 2
    assert truth.entropy_rate() == pytest.approx(math.log(2) / 2.5, rel=1e-15)


def test_probabilities_are_exact_and_rescaled() -> None:
    # floats read as their shortest decimals: 0.1 + 0.2 is exactly 0.3 here
    spec = hand_spec([(0.1, "ab\n"), (0.2, "ac\n"), (0.7, "b\n")])
    tok = build_tokenizer("char", "ab\nac\nb\n")
    truth = TokenTruth(spec, tok)
    assert named(tok, truth.next_token("a")) == {"c": float(Fraction(2, 3)), "b": float(Fraction(1, 3))}
    assert named(tok, truth.next_token("")) == {"b": 0.7, "a": 0.3}
    exact = hand_spec([(Fraction(1, 3), "ab\n"), (Fraction(2, 3), "ac\n")])
    assert named(tok, TokenTruth(exact, tok).next_token("a")) == {"c": 2 / 3, "b": 1 / 3}


def test_bad_documents_are_refused_and_name_the_plugin() -> None:
    tok = build_tokenizer("char", "ab\nac\n")
    with pytest.raises(ValueError, match="sum to 0.5"):
        TokenTruth(hand_spec([(0.25, "ab\n"), (0.25, "ac\n")]), tok)
    with pytest.raises(TypeError, match="non-empty str"):
        TokenTruth(hand_spec([(1.0, "")]), tok)

    def broken() -> list[tuple[float, str]]:
        raise RuntimeError("no documents today")

    spec = TruthSpec("broken", "raises", broken, lambda text: False)
    with pytest.raises(PluginCallError, match="plugin 'my_plugin' failed in listing the documents of truth 'broken'"):
        TokenTruth(spec, tok, owner="my_plugin")


def test_a_tokenizer_that_merges_across_documents_is_refused() -> None:
    vocab = {"a": 0, "b": 1, "c": 2, "\n": 3, "\na": 4}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[("\n", "a")]))
    tok = Tokenizer(hf, kind="merging")
    assert tok.encode("ab\nac\n") == [0, 1, 4, 2, 3]  # the token "\na" spans two documents
    with pytest.raises(TokenizerError, match="'merging' makes a token across the end of a document"):
        TokenTruth(hand_spec([(0.75, "ab\n"), (0.25, "ac\n")]), tok)


# ---- KL -----------------------------------------------------------------------------------------


def test_kl_by_hand() -> None:
    true = {0: 0.75, 1: 0.25}
    assert kl(true, np.array([0.5, 0.25, 0.25])) == pytest.approx(0.75 * math.log(1.5), rel=1e-15)
    assert kl(true, np.array([0.25, 0.5, 0.25])) == pytest.approx(
        0.75 * math.log(3) + 0.25 * math.log(0.5), rel=1e-15
    )
    assert kl(true, np.array([0.75, 0.25, 0.0])) == 0.0
    assert kl({2: 1.0}, np.array([0.2, 0.3, 0.5])) == pytest.approx(math.log(2), rel=1e-15)
    # a possible token the model rules out costs ln(p / MIN_MODEL_PROB), not infinity
    assert kl({0: 0.5, 1: 0.5}, np.array([1.0, 0.0])) == pytest.approx(
        0.5 * math.log(0.5) + 0.5 * math.log(0.5 / MIN_MODEL_PROB), rel=1e-15
    )
    assert TokenTruth.kl(true, np.array([0.5, 0.25, 0.25])) == kl(true, np.array([0.5, 0.25, 0.25]))


# ---- the hook: registry support -----------------------------------------------------------------


def plugin(tmp_path: Path, name: str, source: str) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(source, encoding="utf-8")
    return folder


TRUTH_PLUGIN = """
from lmstudio_app import TruthSpec, hookimpl

def recognises(text):
    {body}

@hookimpl
def lmstudio_truths():
    return [TruthSpec("{name}", "a test truth", lambda: [(1.0, "x\\n")], recognises, ("x",))]
"""


def test_a_raising_recognises_is_reported_naming_the_plugin(tmp_path: Path) -> None:
    source = TRUTH_PLUGIN.format(name="shaky", body='raise RuntimeError("cannot tell")')
    folder = plugin(tmp_path, "shaky_truth", source)
    registry = PluginRegistry.discover([folder], use_entry_points=False, use_user_dir=False)
    assert registry.errors == [] and list(registry.truths()) == ["shaky"]
    with pytest.raises(PluginCallError, match="plugin 'shaky_truth' failed in asking truth 'shaky'.*cannot tell"):
        registry.truth_for("x\n")


def test_a_recognises_that_answers_no_bool_is_reported(tmp_path: Path) -> None:
    folder = plugin(tmp_path, "vague_truth", TRUTH_PLUGIN.format(name="vague", body="return None"))
    registry = PluginRegistry.discover([folder], use_entry_points=False, use_user_dir=False)
    with pytest.raises(PluginCallError, match="plugin 'vague_truth'.*returned NoneType, not a bool"):
        registry.truth_for("x\n")


def test_the_first_truth_that_recognises_wins_and_later_ones_are_not_asked(tmp_path: Path, corpus: str) -> None:
    source = TRUTH_PLUGIN.format(name="shaky", body='raise RuntimeError("cannot tell")')
    registry = PluginRegistry.discover([plugin(tmp_path, "shaky_truth", source)], use_user_dir=False)
    assert list(registry.truths()) == ["demo", "shaky"]
    assert registry.truth_for(corpus) is registry.truths()["demo"]
    assert registry.owner("truth", "shaky") == "shaky_truth"
    with pytest.raises(PluginCallError, match="shaky_truth"):
        registry.truth_for("x\n")


def test_bad_truth_specs_are_plugin_errors(tmp_path: Path) -> None:
    source = """
from lmstudio_app import TruthSpec, hookimpl

@hookimpl
def lmstudio_truths():
    return [
        "not a spec",
        TruthSpec("", "no name", lambda: [], lambda text: False),
        TruthSpec("no-documents", "documents is a list", [(1.0, "x\\n")], lambda text: False),
        TruthSpec("no-recognises", "recognises is a bool", lambda: [], True),
        TruthSpec("str-prompts", "prompts is one string", lambda: [], lambda text: False, "the cat"),
        TruthSpec("demo", "taken by the built-ins", lambda: [], lambda text: False),
        TruthSpec("fine", "the one good spec", lambda: [(1.0, "x\\n")], lambda text: False, ["x"]),
    ]
"""
    registry = PluginRegistry.discover([plugin(tmp_path, "bad_truths", source)], use_user_dir=False)
    assert list(registry.truths()) == ["demo", "fine"]
    messages = [e.message for e in registry.errors]
    assert all(e.name == "bad_truths" for e in registry.errors)
    assert len(messages) == 6, messages
    assert "lmstudio_truths() returned 'not a spec' in its list, expected TruthSpec" in messages[0]
    assert "with an empty name" in messages[1]
    assert "'no-documents': its documents is not callable" in messages[2]
    assert "'no-recognises': its recognises is not callable" in messages[3]
    assert "'str-prompts': prompts must be a sequence of strings" in messages[4]
    assert "truth 'demo' is already provided by built-in" in messages[5]
    (info,) = [p for p in registry.plugins if p.name == "bad_truths"]
    assert info.provides["truths"] == ["fine"]


def test_a_truths_hook_that_returns_no_list_is_a_plugin_error(tmp_path: Path) -> None:
    source = """
from lmstudio_app import hookimpl

@hookimpl
def lmstudio_truths():
    return None
"""
    registry = PluginRegistry.discover(
        [plugin(tmp_path, "none_truths", source)], use_entry_points=False, use_user_dir=False
    )
    (error,) = registry.errors
    assert error.name == "none_truths" and "returned NoneType, expected a list of TruthSpec" in error.message
    assert registry.truths() == {} and registry.truth_for("x\n") is None
