"""The exact truth of a synthetic corpus in one tokenizer's token space.

A :class:`~lmstudio_app.specs.TruthSpec` lists every document of a corpus's generating
distribution with its probability, and the corpus is an i.i.d. stream of those documents, each
ending with its separator (``"the cat sat on the mat .\\n"``). Because the list is finite, the
true odds of the next token after any prompt, and the lowest loss any model can reach, follow by
enumeration, for whatever tokenizer the run uses: :class:`TokenTruth`.

The one assumption about the tokenizer: **no token spans two documents**, i.e. the tokens of a
stream are the tokens of its documents one after the other, ``encode(a + b) == encode(a) +
encode(b)``. The built-in word, char, byte and BPE tokenizers never merge across the demo's
``"\\n"`` (their pre-tokenizers split it off, or they never merge at all); :class:`TokenTruth`
spot-checks it and refuses a tokenizer that does. The documents are assumed prefix-free (no
document begins another), as a separator that appears nowhere else guarantees.
"""

from __future__ import annotations

import math
import numbers
import threading
import weakref
from collections.abc import Mapping
from fractions import Fraction

import numpy as np

from ..errors import TokenizerError
from ..registry import plugin_call
from ..specs import TruthSpec
from ..tokenizer import Tokenizer

# The smallest model probability :func:`kl` uses: a model that gives a possible token
# probability 0 costs ln(p_true / 1e-12) (~27.6 nats at p_true = 1), not infinity.
MIN_MODEL_PROB = 1e-12

_SUM_TOLERANCE = 1e-6  # how far from 1 the documents' probabilities may sum (they are rescaled)


def kl(true: Mapping[int, float], model_probs: np.ndarray) -> float:
    """KL(true || model) in nats: ``sum p_true * ln(p_true / p_model)`` over the true tokens.

    ``true`` maps token IDs to probabilities (as :meth:`TokenTruth.next_token` returns them);
    ``model_probs`` is the model's distribution over the whole vocabulary, indexed by token ID.
    Model probabilities are floored at :data:`MIN_MODEL_PROB`, so the answer is always finite.
    """
    q = np.asarray(model_probs, dtype=np.float64).reshape(-1)
    total = 0.0
    for token_id, p in true.items():
        if p > 0:
            total += p * math.log(p / max(float(q[token_id]), MIN_MODEL_PROB))
    return total


def _exact(probability: object) -> Fraction:
    """A document's probability as a Fraction; a float is read as the shortest decimal that
    gives it back (0.12 -> 3/25), so a grammar's decimal probabilities stay exact."""
    if isinstance(probability, bool) or not isinstance(probability, numbers.Real):
        raise TypeError(f"a probability must be a number, got {probability!r:.40}")
    if isinstance(probability, numbers.Rational):
        return Fraction(probability.numerator, probability.denominator)
    value = float(probability)
    if not math.isfinite(value):
        raise ValueError(f"a probability must be finite, got {value}")
    return Fraction(repr(value))


class TokenTruth:
    """A truth's documents in ``tokenizer``'s token space: next-token odds and the best loss.

    Each document is tokenized once, with ``tokenizer.encode``. Documents with the same token IDs
    (possible when words become ``<unk>``) are one sequence to a model, and are merged. ``owner``
    names the plugin that provides ``spec``: calling its ``documents()`` then goes through
    :func:`~lmstudio_app.registry.plugin_call`, so a failure names the plugin. Use
    :func:`token_truth` for an instance cached per tokenizer.
    """

    def __init__(self, spec: TruthSpec, tokenizer: Tokenizer, *, owner: str | None = None) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        if owner is None:
            documents = _checked_documents(spec)
        else:
            with plugin_call(owner, f"listing the documents of truth {spec.name!r}"):
                documents = _checked_documents(spec)
        self._texts = [text for _, text in documents]
        self._end_chars = frozenset(text[-1] for text in self._texts)
        ids_of = [tuple(tokenizer.encode(text)) for text in self._texts]
        _check_no_token_spans_two_documents(spec, tokenizer, self._texts, ids_of)

        sequences: dict[tuple[int, ...], Fraction] = {}
        for (p, _), ids in zip(documents, ids_of):
            sequences[ids] = sequences.get(ids, Fraction(0)) + p
        self._sequences = sequences
        # prefix -> {next token ID: probability mass}, and the mass of documents ending there
        self._after: dict[tuple[int, ...], dict[int, Fraction]] = {}
        self._ending: dict[tuple[int, ...], Fraction] = {}
        for ids, p in sequences.items():
            for n in range(len(ids)):
                following = self._after.setdefault(ids[:n], {})
                following[ids[n]] = following.get(ids[n], Fraction(0)) + p
            self._ending[ids] = self._ending.get(ids, Fraction(0)) + p
        self._first = self._distribution(self._after.get((), {}), Fraction(0))

    # ---- the odds after a prompt ---------------------------------------------------------------

    def next_token(self, prompt: str) -> dict[int, float] | None:
        """The exact distribution of the token after ``prompt``, most likely first; None when the
        prompt's tokens begin no document.

        ``prompt`` is a document prefix (``"the cat sat on the"``; ``""`` gives the first token of
        a document). It may also hold earlier documents, or the end of one (``"the cat slept
        .\\nthe dog"``, ``"\\nthe dog"``): documents are independent, so only the text after the
        last document boundary counts. The answer is for the prompt's tokens, so a prompt that
        stops inside a token (``"the ca"`` for a word tokenizer) begins no document.
        """
        remainder = prompt[self._start_of_last_document(prompt) :]
        ids = tuple(self.tokenizer.encode(remainder)) if remainder else ()
        following = self._after.get(ids)
        ending = self._ending.get(ids, Fraction(0))
        if following is None and not ending:
            return None
        return self._distribution(following or {}, ending)

    def _distribution(self, following: dict[int, Fraction], ending: Fraction) -> dict[int, float]:
        """Normalised next-token odds: after a complete document the next one begins."""
        mass = dict(following)
        if ending:
            for token_id, p in self._first.items():
                mass[token_id] = mass.get(token_id, Fraction(0)) + ending * Fraction(p)
        total = sum(mass.values(), Fraction(0))
        ranked = sorted(mass.items(), key=lambda kv: (-kv[1], kv[0]))
        return {token_id: float(p / total) for token_id, p in ranked}

    def _start_of_last_document(self, prompt: str) -> int:
        """Where the last document of ``prompt`` begins: after the last place where the text so
        far can be the end of a document followed by whole documents (0 when there is none)."""
        longest = max(len(text) for text in self._texts)
        tail_ends: set[int] = set()  # e with prompt[:e] = (the end of a document) + whole documents
        for end in range(1, len(prompt) + 1):
            if prompt[end - 1] not in self._end_chars:
                continue
            head = prompt[:end]
            if (end <= longest and any(text.endswith(head) for text in self._texts)) or any(
                len(text) < end and (end - len(text)) in tail_ends and prompt.endswith(text, 0, end)
                for text in self._texts
            ):
                tail_ends.add(end)
        return max(tail_ends, default=0)

    # ---- the best loss -------------------------------------------------------------------------

    def document_entropy(self) -> float:
        """H(documents) in nats: the information in one document, whatever the tokenizer."""
        return -sum(float(p) * math.log(float(p)) for p in self._sequences.values())

    def mean_document_tokens(self) -> float:
        """E[tokens per document] for this tokenizer."""
        return float(sum((p * len(ids) for ids, p in self._sequences.items()), Fraction(0)))

    def entropy_rate(self) -> float:
        """The lowest achievable mean loss, nats per token: H(documents) / E[tokens per document].

        Exact for a model that knows where each document begins; a training window that starts
        inside a document hides that, so a real run's loss settles a little above this.
        """
        return self.document_entropy() / self.mean_document_tokens()

    kl = staticmethod(kl)


def _checked_documents(spec: TruthSpec) -> list[tuple[Fraction, str]]:
    """``spec.documents()`` with exact probabilities summing to 1; ValueError/TypeError if unusable."""
    documents: list[tuple[Fraction, str]] = []
    for item in spec.documents():
        probability, text = item
        if not isinstance(text, str) or not text:
            raise TypeError(f"truth {spec.name!r}: a document must be a non-empty str, got {text!r:.40}")
        p = _exact(probability)
        if p < 0:
            raise ValueError(f"truth {spec.name!r}: document {text!r:.40} has probability {float(p)} < 0")
        if p:
            documents.append((p, text))
    total = sum((p for p, _ in documents), Fraction(0))
    if not documents or abs(float(total) - 1.0) > _SUM_TOLERANCE:
        raise ValueError(f"truth {spec.name!r}: the documents' probabilities sum to {float(total)}, not 1")
    return [(p / total, text) for p, text in documents]


def _check_no_token_spans_two_documents(
    spec: TruthSpec, tokenizer: Tokenizer, texts: list[str], ids_of: list[tuple[int, ...]]
) -> None:
    """Spot-check ``encode(a + b) == encode(a) + encode(b)``: each document before the next one
    in the list, and before the first one."""
    for i, (text, ids) in enumerate(zip(texts, ids_of)):
        for j in {0, (i + 1) % len(texts)}:
            if tuple(tokenizer.encode(text + texts[j])) != ids + ids_of[j]:
                raise TokenizerError(
                    f"tokenizer {tokenizer.kind!r} makes a token across the end of a document "
                    f"({text[-20:]!r} + {texts[j][:20]!r}), so truth {spec.name!r} cannot be "
                    "computed in its tokens"
                )


_CACHE: weakref.WeakKeyDictionary[Tokenizer, dict[str, TokenTruth]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def token_truth(spec: TruthSpec, tokenizer: Tokenizer, *, owner: str | None = None) -> TokenTruth:
    """The :class:`TokenTruth` of ``spec`` for ``tokenizer``, built once per tokenizer and spec."""
    with _CACHE_LOCK:
        cached = _CACHE.get(tokenizer, {}).get(spec.name)
    if cached is not None and cached.spec is spec:
        return cached
    truth = TokenTruth(spec, tokenizer, owner=owner)  # outside the lock: tokenizing takes a moment
    with _CACHE_LOCK:
        _CACHE.setdefault(tokenizer, {})[spec.name] = truth
    return truth
