"""The demo grammar's known probabilities, the generated corpus, and a model that learns them."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter

import pytest
import torch

from lmstudio_app.errors import ParamError
from lmstudio_app.resources import demo_corpus_path
from lmstudio_builtins.demo_grammar import (
    DEMO_PROMPTS,
    all_sentences,
    bundled_corpus_path,
    generate_demo_corpus,
    true_next_word_distribution,
    vocabulary,
    write_demo_corpus,
)

# chi-square critical values at p = 0.001 by degrees of freedom
CHI2_CRITICAL = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}


def chi_square(counts: Counter, expected: dict[str, float]) -> float:
    n = sum(counts.values())
    return sum((counts.get(w, 0) - n * p) ** 2 / (n * p) for w, p in expected.items())


def next_word_counts(lines: list[str], prompt: str) -> Counter:
    words = prompt.split(" ")
    counts: Counter = Counter()
    for line in lines:
        sentence = line.split(" ")
        if sentence[: len(words)] == words:
            counts[sentence[len(words)]] += 1
    return counts


def test_known_distributions():
    assert true_next_word_distribution("the cat sat on the") == {"mat": 0.6, "floor": 0.25, "couch": 0.15}
    assert true_next_word_distribution("the dog sat on the") == {"floor": 0.5, "mat": 0.3, "couch": 0.2}
    assert true_next_word_distribution("") == {"the": 0.8, "a": 0.2}
    assert true_next_word_distribution(" the cat slept ") == {".": 0.6, "all": 0.4}
    assert true_next_word_distribution("a bird sang .") == {"\n": 1.0}


def test_every_prefix_distribution_sums_to_one():
    assert math.isclose(sum(p for p, _ in all_sentences()), 1.0, rel_tol=1e-12)
    prefixes = {" ".join(words[:i]) for _, words in all_sentences() for i in range(len(words) + 1)}
    for prefix in prefixes | set(DEMO_PROMPTS):
        dist = true_next_word_distribution(prefix)
        assert math.isclose(sum(dist.values()), 1.0, rel_tol=1e-12), prefix
        assert list(dist.values()) == sorted(dist.values(), reverse=True)


def test_a_prompt_outside_the_grammar_is_an_error_naming_it():
    with pytest.raises(ParamError, match="'the cat flew'"):
        true_next_word_distribution("the cat flew")


def test_corpus_frequencies_match_the_grammar():
    lines = generate_demo_corpus(20000, seed=0).splitlines()
    assert len(lines) == 20000
    for prompt in DEMO_PROMPTS:
        expected = true_next_word_distribution(prompt)
        counts = next_word_counts(lines, prompt)
        assert set(counts) <= set(expected), prompt
        assert sum(counts.values()) > 500, prompt  # enough samples for the test to mean something
        assert chi_square(counts, expected) < CHI2_CRITICAL[len(expected) - 1], (prompt, counts)
    # the test has teeth: the cat's distribution does not fit the dog's
    cat_counts = next_word_counts(lines, "the cat sat on the")
    assert chi_square(cat_counts, true_next_word_distribution("the dog sat on the")) > 100


def test_bundled_corpus_is_the_generator_output(tmp_path):
    text = demo_corpus_path().read_text(encoding="utf-8")
    assert text == generate_demo_corpus()
    assert 200_000 <= len(text.encode("utf-8")) <= 600_000
    written = write_demo_corpus(tmp_path / "demo.txt")
    assert written.read_bytes() == demo_corpus_path().read_bytes()
    assert bundled_corpus_path() == demo_corpus_path()  # what `python -m ...demo_grammar` rewrites
    assert generate_demo_corpus(50, seed=1) != generate_demo_corpus(50, seed=2)
    words = set(text.split())
    assert words == set(vocabulary()) and 20 <= len(words) <= 60


def test_the_module_rewrites_the_corpus_from_the_command_line(tmp_path):
    target = tmp_path / "demo_corpus.txt"
    done = subprocess.run(
        [sys.executable, "-m", "lmstudio_builtins.demo_grammar", str(target)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert str(target) in done.stdout
    assert target.read_bytes() == demo_corpus_path().read_bytes()


# --- the model learns the true distributions --------------------------------------------------

KL_PROMPTS = ["the cat sat on the", "the dog sat on the", "the cat chased the", "the man walked to the",
              "the dog barked at the", "the"]


def predicted_next_words(predictor, prompt: str, words: list[str]) -> dict[str, float]:
    """P(" word" | "\\n" + prompt) from the model, whatever the tokenizer splits the word into."""
    context = "\n" + prompt
    out = {}
    for word in words:
        scored = predictor.surprise(f"{context} {word}")
        out[word] = math.prod(s.prob for s in scored if s.token.start >= len(context))
    return out


@pytest.fixture()
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the Trainer sets it process-wide from train.threads


@pytest.mark.slow
def test_a_small_gpt_learns_the_true_next_word_distributions(tmp_path, restore_torch_threads):
    from lmstudio_app.config import load_config
    from lmstudio_app.inference.predictor import Predictor
    from lmstudio_app.registry import PluginRegistry
    from lmstudio_app.training.trainer import Trainer

    registry = PluginRegistry.discover(use_user_dir=False)
    config = load_config(
        None,
        [
            "tokenizer.plugin=word",  # one token per word: the next token is the next word
            "model.n_layer=2", "model.n_head=4", "model.n_embd=64", "model.context_length=32",
            "train.batch_size=16", "train.max_steps=300", "train.learning_rate=3e-3", "train.min_lr=3e-4",
            "train.warmup_steps=30", "train.eval_interval=300", "train.eval_batches=4",
            "train.sample_tokens=0", "train.device=cpu",
            "train.threads=1",  # a model this small only loses time to thread hand-offs on a busy CPU
        ],
    )
    trainer = Trainer(config, registry, tmp_path / "run")
    for _ in trainer.steps():
        pass
    predictor = Predictor(trainer.model, trainer.tokenizer)
    for prompt in KL_PROMPTS:
        truth = true_next_word_distribution(prompt)
        predicted = predicted_next_words(predictor, prompt, list(truth))
        covered = sum(predicted.values())
        kl = sum(p * math.log(p / (predicted[w] / covered)) for w, p in truth.items())
        report = f"{prompt!r}: KL {kl:.4f}, mass on the possible words {covered:.3f}, {predicted}"
        assert covered > 0.9, report  # little probability on words that cannot come next
        assert kl <= 0.05, report
