"""The demo corpus: sentences from a small probabilistic grammar whose next-word odds are known.

Every sentence is drawn independently from :data:`GRAMMAR`, so for any sentence prefix the true
distribution of the next word follows exactly from the production probabilities, e.g.
``"the cat sat on the"`` → mat 0.6, floor 0.25, couch 0.15. The app trains on this text by
default, and the tests (and the curious user) can compare what the model predicts with the
truth. Some distributions depend on a word several positions back ("sat on the" continues
differently after "cat" and after "dog"), so a model has to use its context to get them right.

The grammar is finite, so :data:`TRUTH_SPEC` (the built-in ``"demo"`` truth) lists every
document of the corpus's distribution with its probability; the core turns that into the exact
next-token odds for any tokenizer (``lmstudio_app.inference.truth``).

``python -m lmstudio_builtins.demo_grammar`` rewrites the repository's ``resources/demo_corpus.txt``
deterministically (or the file given as its one argument).

Uses only the public plugin API, like every built-in plugin module.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from lmstudio_app.errors import ParamError
from lmstudio_app.specs import TruthSpec

# Nonterminal -> [(probability, symbols)]. Upper-case symbols are nonterminals; the rest are
# words. Each sentence ends with "." (and "." appears nowhere else), then a newline.
GRAMMAR: dict[str, list[tuple[float, tuple[str, ...]]]] = {
    "S": [(0.8, ("the", "THE_SUBJECT", ".")), (0.2, ("a", "bird", "BIRD_VP", "."))],
    "THE_SUBJECT": [(0.5, ("cat", "CAT_VP")), (0.3, ("dog", "DOG_VP")), (0.2, ("man", "MAN_VP"))],
    "CAT_VP": [
        (0.5, ("sat", "on", "the", "CAT_SEAT")),
        (0.3, ("chased", "the", "CAT_PREY")),
        (0.2, ("slept", "CAT_SLEEP")),
    ],
    "CAT_SEAT": [(0.6, ("mat",)), (0.25, ("floor",)), (0.15, ("couch",))],
    "CAT_PREY": [(0.7, ("mouse",)), (0.2, ("bird",)), (0.1, ("ball",))],
    "CAT_SLEEP": [(0.6, ()), (0.4, ("all", "day"))],
    "DOG_VP": [
        (0.4, ("sat", "on", "the", "DOG_SEAT")),
        (0.4, ("chased", "the", "DOG_PREY")),
        (0.2, ("barked", "at", "the", "DOG_TARGET")),
    ],
    "DOG_SEAT": [(0.5, ("floor",)), (0.3, ("mat",)), (0.2, ("couch",))],
    "DOG_PREY": [(0.6, ("cat",)), (0.3, ("ball",)), (0.1, ("bird",))],
    "DOG_TARGET": [(0.7, ("man",)), (0.3, ("cat",))],
    "MAN_VP": [
        (0.5, ("walked", "to", "the", "PLACE")),
        (0.3, ("ate", "the", "FOOD")),
        (0.2, ("read", "a", "book")),
    ],
    "PLACE": [(0.5, ("park",)), (0.3, ("store",)), (0.2, ("river",))],
    "FOOD": [(0.5, ("bread",)), (0.3, ("apple",)), (0.2, ("fish",))],
    "BIRD_VP": [(0.6, ("flew", "over", "the", "BIRD_PLACE")), (0.4, ("sang", "BIRD_SONG"))],
    "BIRD_PLACE": [(0.5, ("house",)), (0.3, ("tree",)), (0.2, ("river",))],
    "BIRD_SONG": [(0.5, ()), (0.5, ("a", "song"))],
}

START = "S"
END_OF_SENTENCE = "\n"  # what follows the final "."

# Prompts whose true next-word distributions are worth looking at (all sentence prefixes).
DEMO_PROMPTS: list[str] = [
    "the",
    "the cat",
    "the cat sat on the",
    "the dog sat on the",
    "the cat chased the",
    "the dog chased the",
    "the man walked to the",
    "a bird flew over the",
    "the dog barked at the",
]

# How much of a corpus text `recognises` reads: the complete lines of its first 64 KB, at most
# this many of them. Enough to tell the demo from anything else; cheap on a corpus of gigabytes.
RECOGNISE_SAMPLE_CHARS = 64 * 1024
RECOGNISE_MAX_LINES = 1000


def _is_nonterminal(symbol: str) -> bool:
    return symbol.isupper()


def _check_grammar() -> None:
    """Each nonterminal's probabilities must sum to 1, or the 'known' distributions are wrong."""
    for name, rules in GRAMMAR.items():
        total = sum(p for p, _ in rules)
        if abs(total - 1.0) > 1e-9:
            raise AssertionError(f"demo grammar: {name} probabilities sum to {total}, not 1")


_check_grammar()


def _expand(symbols: tuple[str, ...]) -> list[tuple[Fraction, tuple[str, ...]]]:
    """All word sequences a symbol sequence can produce, with their exact probabilities."""
    if not symbols:
        return [(Fraction(1), ())]
    head, rest = symbols[0], symbols[1:]
    tails = _expand(rest)
    heads = (
        [(Fraction(str(p)) * q, words) for p, body in GRAMMAR[head] for q, words in _expand(body)]
        if _is_nonterminal(head)
        else [(Fraction(1), (head,))]
    )
    return [(p * q, h + t) for p, h in heads for q, t in tails]


@lru_cache(maxsize=1)
def _exact_sentences() -> tuple[tuple[Fraction, tuple[str, ...]], ...]:
    # Fractions, so that the "known" probabilities come out as exactly 0.6, 0.25, ...
    return tuple(_expand((START,)))


def all_sentences() -> list[tuple[float, tuple[str, ...]]]:
    """Every sentence of the (finite) grammar with its probability; they sum to 1."""
    return [(float(p), words) for p, words in _exact_sentences()]


def vocabulary() -> list[str]:
    """The words of the grammar, sorted."""
    return sorted({w for _, words in all_sentences() for w in words})


def true_next_word_distribution(prompt: str) -> dict[str, float]:
    """The exact distribution of the word after ``prompt``, a sentence prefix.

    Words are separated by single spaces; leading/trailing whitespace is ignored. After a
    complete sentence (ending in ".") the next "word" is the newline: ``{"\\n": 1.0}``.
    Raises :class:`ParamError` when no sentence of the grammar starts with ``prompt``.
    """
    prefix = tuple(prompt.strip().split(" ")) if prompt.strip() else ()
    n = len(prefix)
    mass: dict[str, Fraction] = {}
    for p, words in _exact_sentences():
        if words[:n] != prefix:
            continue
        nxt = words[n] if n < len(words) else END_OF_SENTENCE
        mass[nxt] = mass.get(nxt, Fraction(0)) + p
    total = sum(mass.values(), Fraction(0))
    if total == 0:
        raise ParamError(f"demo prompt {prompt!r}: no sentence of the demo grammar starts with it")
    ranked = sorted(mass.items(), key=lambda kv: (-kv[1], kv[0]))
    return {w: float(p / total) for w, p in ranked}


# -- the truth hook ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def documents() -> tuple[tuple[float, str], ...]:
    """Every document of the corpus's distribution, ``"the cat sat on the mat .\\n"``, with its
    probability: what the ``"demo"`` truth's ``documents`` returns."""
    return tuple((float(p), " ".join(words) + END_OF_SENTENCE) for p, words in _exact_sentences())


@lru_cache(maxsize=1)
def _sentence_lines() -> frozenset[str]:
    return frozenset(" ".join(words) for _, words in _exact_sentences())


def recognises(text: str) -> bool:
    """True when the complete lines at the start of ``text`` (those of its first 64 KB, at most
    :data:`RECOGNISE_MAX_LINES`; a trailing partial line is ignored) are all demo sentences."""
    sample = text[:RECOGNISE_SAMPLE_CHARS]
    lines = sample.split(END_OF_SENTENCE)
    lines.pop()  # after the last "\n": "" or a line cut off by the sample's end (or the text's)
    lines = lines[:RECOGNISE_MAX_LINES]
    known = _sentence_lines()
    return bool(lines) and all(line in known for line in lines)


TRUTH_SPEC = TruthSpec(
    name="demo",
    description="The demo grammar: every sentence of the bundled demo corpus and its exact odds",
    documents=documents,
    recognises=recognises,
    prompts=tuple(DEMO_PROMPTS),
)


# -- the corpus ----------------------------------------------------------------------------


def _sample(symbol: str, rng: random.Random, out: list[str]) -> None:
    if not _is_nonterminal(symbol):
        out.append(symbol)
        return
    rules = GRAMMAR[symbol]
    r = rng.random()
    for p, body in rules:
        r -= p
        if r < 0:
            break
    # Falls through to the last rule when rounding leaves r a hair above 0.
    for child in body:
        _sample(child, rng, out)


def sample_sentence(rng: random.Random) -> str:
    words: list[str] = []
    _sample(START, rng, words)
    return " ".join(words)


def generate_demo_corpus(n_sentences: int = 20000, seed: int = 0) -> str:
    """``n_sentences`` independent sentences, one per line (with a final newline)."""
    if n_sentences < 1:
        raise ParamError(f"n_sentences: {n_sentences} is below the minimum 1")
    rng = random.Random(seed)
    return "".join(sample_sentence(rng) + END_OF_SENTENCE for _ in range(n_sentences))


def write_demo_corpus(path: str | Path, n_sentences: int = 20000, seed: int = 0) -> Path:
    """Write the corpus to ``path`` (temp file, then rename: never half a file); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written as bytes: "\n" line ends on every platform, so the file is byte-identical.
    data = generate_demo_corpus(n_sentences, seed).encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def bundled_corpus_path() -> Path:
    """``resources/demo_corpus.txt`` of the source checkout this module lives in."""
    return Path(__file__).resolve().parents[2] / "resources" / "demo_corpus.txt"


if __name__ == "__main__":
    written = write_demo_corpus(sys.argv[1] if len(sys.argv) > 1 else bundled_corpus_path())
    print(f"wrote {written} ({written.stat().st_size:,} bytes)")
