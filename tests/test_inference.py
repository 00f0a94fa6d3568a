"""Predictor on a hand-made bigram model whose probabilities the tests can compute exactly."""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest
import torch
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from torch import nn

from lmstudio_app.errors import LMStudioError, ParamError
from lmstudio_app.inference.distributions import filter_probs, softmax
from lmstudio_app.inference.predictor import EmptyPromptError, Predictor
from lmstudio_app.model_api import LanguageModel
from lmstudio_app.tokenizer import Tokenizer

VOCAB = ["<unk>", "\n", "a", "b", "c", " ", "d", "e"]


def make_char_tokenizer(vocab: list[str] = VOCAB) -> Tokenizer:
    """One token per character of ``vocab`` (its first entry the unknown token)."""
    hf = HFTokenizer(models.WordLevel({s: i for i, s in enumerate(vocab)}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    hf.decoder = decoders.Fuse()
    return Tokenizer(hf, kind="char")


class TableBigram(LanguageModel):
    """logits[t] = table[idx[t]]; records what each forward call saw."""

    def __init__(self, table: torch.Tensor, context_length: int = 8) -> None:
        super().__init__()
        self.vocab_size = table.shape[0]
        self.context_length = context_length
        self.table = nn.Embedding(self.vocab_size, self.vocab_size)
        with torch.no_grad():
            self.table.weight.copy_(table)
        self.calls: list[dict] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        assert idx.shape[1] <= self.context_length, "the predictor must crop to the context"
        self.calls.append({"len": idx.shape[1], "training": self.training, "grad": torch.is_grad_enabled()})
        return self.table(idx)  # (B, T, V)


@pytest.fixture()
def table() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(len(VOCAB), len(VOCAB), generator=gen) * 2


@pytest.fixture()
def predictor(table: torch.Tensor) -> Predictor:
    return Predictor(TableBigram(table), make_char_tokenizer())


def test_next_token_probabilities_match_softmax_of_the_last_tokens_row(predictor, table):
    pred = predictor.next_token("abc", temperature=0.7, k=5)
    row = table[VOCAB.index("c")].double().numpy()
    expected = np.exp(row / 0.7) / np.exp(row / 0.7).sum()
    np.testing.assert_allclose(pred.probs, expected, rtol=1e-6)
    np.testing.assert_allclose(pred.logits, row, rtol=1e-6)
    assert pred.probs.dtype == np.float64 and math.isclose(pred.probs.sum(), 1.0, rel_tol=1e-12)
    assert [t.text for t in pred.tokens] == ["a", "b", "c"] and pred.position == 2
    assert len(pred.candidates) == 5
    probs = [c.prob for c in pred.candidates]
    assert probs == sorted(probs, reverse=True)
    assert pred.candidates[0].id == int(np.argmax(expected))
    assert pred.candidates[0].text == predictor.tokenizer.token_string(pred.candidates[0].id)
    assert math.isclose(pred.entropy, float(-(expected * np.log(expected)).sum()), rel_tol=1e-9)
    # with no filtering, sampling uses the plain probabilities
    assert all(math.isclose(c.sample_prob, c.prob, rel_tol=1e-9) for c in pred.candidates)


def test_position_selects_an_earlier_token(predictor, table):
    pred = predictor.next_token("abc", position=0)
    np.testing.assert_allclose(pred.logits, table[VOCAB.index("a")].double().numpy(), rtol=1e-6)
    with pytest.raises(ParamError, match="position"):
        predictor.next_token("abc", position=3)


def test_top_k_and_top_p_filter_only_the_sampling_distribution(predictor):
    pred = predictor.next_token("ab", top_k=2, k=len(VOCAB))
    kept = [c for c in pred.candidates if c.sample_prob > 0]
    assert [c.id for c in kept] == [c.id for c in pred.candidates[:2]]
    assert math.isclose(sum(c.sample_prob for c in kept), 1.0, rel_tol=1e-9)
    assert math.isclose(kept[0].sample_prob, kept[0].prob / (kept[0].prob + kept[1].prob), rel_tol=1e-9)
    assert math.isclose(sum(c.prob for c in pred.candidates), 1.0, rel_tol=1e-9)  # prob stays unfiltered


def test_filter_probs_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(filter_probs(probs, None, 0.8), [0.5 / 0.8, 0.3 / 0.8, 0, 0])
    np.testing.assert_allclose(filter_probs(probs, None, 0.81), [0.5, 0.3, 0.15, 0] / np.float64(0.95))
    np.testing.assert_allclose(filter_probs(probs, None, 0.1), [1, 0, 0, 0])
    np.testing.assert_allclose(filter_probs(probs, 3, 0.99), [0.5, 0.3, 0.15, 0] / np.float64(0.95))


@pytest.mark.parametrize(
    "kwargs, key",
    [({"temperature": 0}, "temperature"), ({"temperature": -1.0}, "temperature"),
     ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")],
)
def test_bad_sampling_settings_name_the_setting(predictor, kwargs, key):
    with pytest.raises(ParamError, match=f"^{key}: must be"):
        predictor.next_token("ab", **kwargs)
    with pytest.raises(ParamError, match=f"^{key}: must be"):
        predictor.generate("ab", **kwargs)


def test_empty_prompt_is_a_friendly_error_but_generation_starts_a_new_line(predictor):
    for call in (predictor.next_token, predictor.surprise):
        with pytest.raises(LMStudioError, match="the prompt is empty — type some text"):
            call("")
    text = predictor.generate("", max_tokens=5, seed=1)
    assert len(text) == 5
    assert predictor.model.calls[0]["len"] == 1  # started from the newline token alone


def test_empty_prompt_without_a_newline_token_cannot_generate(table):
    hf = HFTokenizer(models.WordLevel({"<unk>": 0, "b": 1}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    model = TableBigram(table[:2, :2])
    with pytest.raises(EmptyPromptError):
        Predictor(model, Tokenizer(hf)).generate("", max_tokens=3)


def test_long_prompts_are_cropped_to_the_context(table):
    model = TableBigram(table, context_length=4)
    pred = Predictor(model, make_char_tokenizer()).next_token("abcabcab")
    assert model.calls[-1]["len"] == 4
    assert pred.context_start == 4 and len(pred.tokens) == 8


def test_unknown_characters_are_reported(predictor):
    pred = predictor.next_token("ab xé")
    assert pred.unknown_chars == ["x", "é"]
    assert [t.id for t in pred.tokens][-2:] == [0, 0]
    assert predictor.next_token("ab c").unknown_chars == []


def test_model_mode_is_restored_and_no_gradients_are_tracked(predictor):
    predictor.model.train()
    predictor.next_token("ab")
    predictor.surprise("abc")
    predictor.generate("a", max_tokens=2, seed=0)
    assert predictor.model.training  # back in training mode for the paused training loop
    assert predictor.model.calls and all(not c["training"] and not c["grad"] for c in predictor.model.calls)
    predictor.model.eval()
    predictor.next_token("ab")
    assert not predictor.model.training


def test_the_lock_is_held_while_the_model_runs(predictor):
    lock = threading.RLock()
    predictor.lock = lock
    done = threading.Event()
    lock.acquire()  # the "training loop" is mid-step
    worker = threading.Thread(target=lambda: (predictor.next_token("ab"), done.set()))
    worker.start()
    assert not done.wait(0.2)
    lock.release()
    assert done.wait(5)
    worker.join()


def test_surprise_is_the_probability_of_each_actual_token(table):
    model = TableBigram(table, context_length=3)  # shorter than the text: exercises windows
    predictor = Predictor(model, make_char_tokenizer())
    text = "abcab dca"
    scores = predictor.surprise(text)
    assert [s.token.text for s in scores] == list(text)
    assert scores[0].prob is None and scores[0].loss is None
    for prev, cur in itertools.pairwise(scores):
        expected = softmax(table[prev.token.id].double().numpy())[cur.token.id]
        assert math.isclose(cur.prob, expected, rel_tol=1e-6)
        assert math.isclose(cur.loss, -math.log(expected), rel_tol=1e-6)


def test_seeded_generation_repeats_and_streams_the_same_text(predictor):
    first = predictor.generate("ab", max_tokens=30, seed=123)
    assert predictor.generate("ab", max_tokens=30, seed=123) == first
    assert "".join(predictor.generate_iter("ab", max_tokens=30, seed=123)) == first
    assert len(first) == 30  # one character per token, prompt not included
    others = {predictor.generate("ab", max_tokens=30, seed=s) for s in range(5)}
    assert len(others) > 1


def test_greedy_like_sampling_follows_the_argmax_chain(table):
    predictor = Predictor(TableBigram(table), make_char_tokenizer())
    out = predictor.generate("a", max_tokens=6, top_k=1, seed=0)
    current, expected = VOCAB.index("a"), []
    for _ in range(6):
        current = int(torch.argmax(table[current]))
        expected.append(current)
    assert out == predictor.tokenizer.decode(expected)


def test_device_argument_moves_the_model(table):
    model = TableBigram(table)
    predictor = Predictor(model, make_char_tokenizer(), device="cpu")
    assert predictor.device == torch.device("cpu")
    assert predictor.next_token("a").candidates


def test_unknown_words_are_reported_without_their_space():
    hf = HFTokenizer(models.WordLevel({"<unk>": 0, "the": 1, " cat": 2}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?\w+| ?[^\w\s]+|\s"), "isolated")
    hf.decoder = decoders.Fuse()
    model = TableBigram(torch.zeros(3, 3))
    pred = Predictor(model, Tokenizer(hf)).next_token("the dog cat")
    assert [t.text for t in pred.tokens] == ["the", " dog", " cat"]
    assert pred.unknown_chars == ["dog"]


# --- loading a saved run -----------------------------------------------------------------------

def test_load_run_rebuilds_the_trained_model(tmp_path):
    from lmstudio_app.config import load_config
    from lmstudio_app.errors import CheckpointError
    from lmstudio_app.inference.predictor import load_predictor
    from lmstudio_app.registry import PluginRegistry
    from lmstudio_app.runs.checkpoints import list_checkpoints
    from lmstudio_app.runs.folder import RunDir
    from lmstudio_app.runs.loading import load_run
    from lmstudio_app.training.trainer import Trainer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcab cab bca\n" * 200, encoding="utf-8")
    registry = PluginRegistry.discover(use_user_dir=False)
    config = load_config(None, [f"data.files=['{corpus.as_posix()}']", "model.n_layer=1", "model.n_head=2",
                                "model.n_embd=16", "model.context_length=8", "train.batch_size=4",
                                "train.max_steps=6", "train.eval_interval=3", "train.eval_batches=1",
                                "train.sample_tokens=0", "train.device=cpu"])
    trainer = Trainer(config, registry, tmp_path / "run")
    for _ in trainer.steps():
        pass
    live = trainer.predictor().next_token("abc ca")

    loaded_config, model, tokenizer = load_run(tmp_path / "run", registry, device="cpu")
    assert loaded_config.model.params["n_embd"] == 16 and not model.training
    assert tokenizer.vocab_size == trainer.tokenizer.vocab_size
    again = Predictor(model, tokenizer).next_token("abc ca")
    np.testing.assert_allclose(again.logits, live.logits, rtol=1e-5, atol=1e-6)
    assert [c.id for c in load_predictor(tmp_path / "run", registry, "cpu").next_token("abc ca").candidates] == [
        c.id for c in live.candidates]

    first = list_checkpoints(RunDir.open(tmp_path / "run"))[0]  # step 3: different weights
    _, early, _ = load_run(tmp_path / "run", registry, device="cpu", checkpoint=first)
    assert not np.allclose(Predictor(early, tokenizer).next_token("abc ca").logits, live.logits)

    empty = RunDir.create(tmp_path / "fresh", trainer.config, trainer.tokenizer)
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        load_run(empty.path, registry)
