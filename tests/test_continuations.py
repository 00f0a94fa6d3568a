"""Continuation counts: every answer of the suffix-array index against a brute-force count.

The reference is a plain Python loop over every position of the text. The index is built with
small ``depth``, ``chunk_size`` and first-sort widths as well as the defaults, so that on arrays
of a few hundred tokens every path runs: contexts longer than the sorted depth, sorting rounds,
chunks batched and split, the vectorised run counting of big ranges, and the fallbacks for huge
IDs and short keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

import lmstudio_app.data.continuations as continuations_module
from lmstudio_app.data.continuations import ContinuationIndex, Continuations
from lmstudio_app.errors import Cancelled, ParamError

# (depth, chunk_size, first-sort buckets): the defaults (on tiny vocabularies the first sort alone
# orders up to 7 tokens); a first sort by one token, then rounds, splits (chunks of 2 or 5) and
# contexts past the depth; depth 1.
BUILDS = [(16, 1 << 20, 1 << 20), (3, 5, 1), (1, 2, 1), (5, 16, 1), (12, 5, 1), (9, 2, 30)]


@pytest.fixture
def first_buckets(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def set_to(buckets: int) -> None:
        monkeypatch.setattr(continuations_module, "_FIRST_BUCKETS", buckets)

    return set_to


def next_counts(text: list[int], pattern: list[int]) -> Counter[int]:
    """The tokens that follow ``pattern`` in ``text``, counted position by position."""
    n = len(pattern)
    return Counter(text[j] for j in range(n, len(text)) if text[j - n:j] == pattern)


def occurrences(text: list[int], pattern: list[int]) -> int:
    """How often ``pattern`` occurs anywhere in ``text`` (the empty one: once per token)."""
    if not pattern:
        return len(text)
    n = len(pattern)
    return sum(1 for i in range(len(text) - n + 1) if text[i:i + n] == pattern)


def expected(text: list[int], context: list[int], max_n: int, min_count: int) -> tuple[int, Counter[int]]:
    """The longest suffix (up to ``max_n``) followed by a token at least ``min_count`` times."""
    for n in range(min(max_n, len(context)), 0, -1):
        counts = next_counts(text, context[len(context) - n:])
        if sum(counts.values()) >= min_count:
            return n, counts
    return 0, Counter(text)


def contexts_for(text: list[int], vocab: int, rng: np.random.Generator, count: int) -> list[list[int]]:
    """Contexts cut from the text (often at its very end) and random ones (often unseen)."""
    out: list[list[int]] = []
    for i in range(count):
        length = int(rng.integers(0, 12))
        if text and i % 3 == 0:
            out.append(text[max(0, len(text) - length):])  # the end: its last match has no next token
        elif text and i % 3 == 1:
            end = int(rng.integers(1, len(text) + 1))
            out.append(text[max(0, end - length):end])
        else:
            out.append(rng.integers(0, vocab + 1, length).tolist())  # vocab itself never occurs
    return out


def sorted_to_depth(index: ContinuationIndex, text: list[int], depth: int) -> bool:
    """The suffix array holds every position once, ordered by its first ``depth`` tokens."""
    suffixes = index._sa.tolist()
    keys = [text[p:p + depth] for p in suffixes]
    return sorted(suffixes) == list(range(len(text))) and keys == sorted(keys)


@pytest.mark.parametrize("depth, chunk, buckets", BUILDS)
def test_counts_match_brute_force_for_every_n(depth: int, chunk: int, buckets: int,
                                              first_buckets: Callable[[int], None]) -> None:
    first_buckets(buckets)
    rng = np.random.default_rng(depth * 1000 + chunk)
    for trial in range(40):
        size = int(rng.integers(1, 250))
        vocab = int(rng.integers(1, 7))
        dtype = [np.uint16, np.uint8, np.int64, np.uint32][trial % 4]
        tokens = rng.integers(0, vocab, size).astype(dtype)
        text = tokens.tolist()
        index = ContinuationIndex.build(tokens, depth=depth, chunk_size=chunk)
        assert sorted_to_depth(index, text, depth)
        for context in contexts_for(text, vocab, rng, 12):
            for n in range(len(context) + 1):  # every suffix of the context, each n on its own
                pattern = context[len(context) - n:]
                assert index.count(pattern) == occurrences(text, pattern), (text, pattern)
                got = index.continuations(pattern, max_n=n)
                want_n, want = expected(text, pattern, n, 1)
                assert (got.n, got.counts) == (want_n, dict(want)), (text, pattern)
                assert got.occurrences == sum(want.values()) and got.context == tuple(pattern[n - want_n:])
            max_n, min_count = int(rng.integers(0, 12)), int(rng.integers(1, 5))
            got = index.continuations(context, max_n=max_n, min_count=min_count)
            want_n, want = expected(text, context, max_n, min_count)
            assert (got.n, got.counts, got.occurrences) == (want_n, dict(want), sum(want.values())), (
                text, context, max_n, min_count)


def test_a_match_at_the_very_end_has_no_next_token() -> None:
    text = [5, 1, 2, 3, 1, 2]
    index = ContinuationIndex.build(np.array(text, np.uint16))
    assert index.count([1, 2]) == 2  # it occurs twice...
    got = index.continuations([1, 2])
    assert (got.n, got.occurrences, got.counts) == (2, 1, {3: 1})  # ...but only once with a next token
    # [3, 1, 2] occurs only as the text's end: nothing followed it, so the answer backs off
    got = index.continuations([3, 1, 2])
    assert index.count([3, 1, 2]) == 1
    assert (got.n, got.context, got.counts) == (2, (1, 2), {3: 1})
    # the whole text as the context: only its last token... is the end as well
    assert index.continuations(text).n == 2


def test_the_empty_context_gives_the_unigram_counts() -> None:
    text = [3, 1, 3, 3, 0, 1]
    index = ContinuationIndex.build(np.array(text, np.uint16))
    for context, max_n in (([], 8), ([3, 1], 0)):
        got = index.continuations(context, max_n=max_n)
        assert (got.n, got.occurrences, got.context) == (0, 6, ())
        assert got.counts == {3: 3, 1: 2, 0: 1}
        assert list(got.counts) == [3, 1, 0]  # largest count first
    assert index.count([]) == 6


@pytest.mark.parametrize("depth", [16, 1])
def test_a_context_that_never_occurs_falls_back_to_a_shorter_one(depth: int) -> None:
    text = [1, 2, 3, 1, 2, 4, 2, 3]
    index = ContinuationIndex.build(np.array(text, np.uint16), depth=depth)
    # 9 never occurs, so nothing before it can matter: [1, 2] is the longest suffix seen
    got = index.continuations([7, 9, 1, 2])
    assert (got.n, got.context, got.counts) == (2, (1, 2), {3: 1, 4: 1})
    # [4, 1, 2] does not occur, [1, 2] does
    assert index.continuations([4, 1, 2]).n == 2
    assert index.count([4, 1, 2]) == 0
    # a last token that never occurs: no context at all
    got = index.continuations([1, 2, 9])
    assert (got.n, got.occurrences) == (0, len(text))
    # token IDs outside anything the text holds, negative or huge, are simply unseen
    assert index.count([-1]) == 0 and index.count([1 << 40]) == 0
    assert index.continuations([2, 1 << 40]).n == 0
    assert index.continuations([-1, 1 << 40, 1, 2]).context == (1, 2)
    assert index.count([1 << 40, 1, 2]) == 0 and index.count([1, 2, 1 << 40]) == 0


def test_min_count_picks_the_longest_context_seen_often_enough() -> None:
    text = [1, 2, 3, 0, 2, 3, 0, 2, 3, 1, 2, 3, 0, 9, 3, 5]
    index = ContinuationIndex.build(np.array(text, np.uint16))
    # followed by a token: [1, 2, 3] twice, [2, 3] 4 times, [3] 5 times
    assert index.continuations([1, 2, 3]).n == 3
    assert index.continuations([1, 2, 3], min_count=2).n == 3
    for min_count in (3, 4):
        got = index.continuations([1, 2, 3], min_count=min_count)
        assert (got.n, got.occurrences, got.counts) == (2, 4, {0: 3, 1: 1})
    got = index.continuations([1, 2, 3], min_count=5)
    assert (got.n, got.occurrences, got.counts) == (1, 5, {0: 3, 1: 1, 5: 1})
    got = index.continuations([1, 2, 3], min_count=6)  # nothing is seen that often: no context
    assert (got.n, got.occurrences) == (0, len(text))
    assert index.continuations([1, 2, 3], min_count=1000).n == 0


def test_top_keeps_the_most_frequent_and_probabilities_divide_by_all() -> None:
    text = [0, 5, 0, 6, 0, 6, 0, 4, 0, 4, 0, 6, 0]
    index = ContinuationIndex.build(np.array(text, np.uint16))
    full = index.continuations([0])
    assert list(full.counts.items()) == [(6, 3), (4, 2), (5, 1)]
    assert full.distinct == 3 and sum(full.probabilities().values()) == pytest.approx(1.0)
    cut = index.continuations([0], top=2)
    assert list(cut.counts.items()) == [(6, 3), (4, 2)]
    assert cut.occurrences == 6 and cut.distinct == 3  # the cut token still counts in the total
    assert cut.probabilities() == {6: 0.5, 4: pytest.approx(1 / 3)}
    ties = ContinuationIndex.build(np.array([1, 9, 1, 8, 1, 7], np.uint16)).continuations([1])
    assert list(ties.counts) == [7, 8, 9]  # equal counts: smaller ID first
    assert index.continuations([0], top=0).counts == {}
    text_label = full.describe()
    assert "counts" in text_label and "not the true odds" in text_label and "6 occurrences" in text_label


@pytest.mark.parametrize("gather_below", [4096, 0])
def test_big_ranges_are_counted_exactly(monkeypatch: pytest.MonkeyPatch, gather_below: int,
                                        first_buckets: Callable[[int], None]) -> None:
    """Ranges far larger than the gather threshold are counted run by run without reading them
    whole; with the threshold at 0 every range is, down to single positions."""
    monkeypatch.setattr(continuations_module, "_GATHER_BELOW", gather_below)
    first_buckets(4)
    rng = np.random.default_rng(7)
    tokens = rng.choice(4, size=40_000, p=[0.55, 0.3, 0.1, 0.05]).astype(np.uint16)
    text = tokens.tolist()
    index = ContinuationIndex.build(tokens, depth=6, chunk_size=1 << 12)
    for context in ([0], [1], [0, 0], [2, 1], [3, 3, 3], [0, 1, 2, 3], text[-3:], text[-9:]):
        got = index.continuations(context, max_n=len(context))
        want_n, want = expected(text, context, len(context), 1)
        assert (got.n, got.counts) == (want_n, dict(want)), context
    lo, hi = index._range([1, 0])
    lo += int(text[-2:] == [1, 0])  # the occurrence at the very end has no next token
    ids, counts = index._runs(lo, hi, 2)  # 4 different next tokens: counted by halving, no gather
    assert dict(zip(ids.tolist(), counts.tolist())) == dict(next_counts(text, [1, 0]))


def test_run_counting_gives_up_when_every_next_token_differs() -> None:
    text = [v for k in range(1, 6000) for v in (0, k)]  # 0, then each time another token
    index = ContinuationIndex.build(np.array(text, np.uint16))
    lo, hi = index._range([0])
    assert index._runs(lo, hi, 1) is None  # halving would read more than gathering the range
    got = index.continuations([0])
    assert got.occurrences == 5999 and got.distinct == 5999 and set(got.counts.values()) == {1}


def test_the_fallback_sorts_give_the_same_index(monkeypatch: pytest.MonkeyPatch,
                                               first_buckets: Callable[[int], None]) -> None:
    """With sort keys too short for the index-in-the-low-bits trick, argsort takes over."""
    first_buckets(1)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 5, 300).astype(np.uint16)
    text = tokens.tolist()
    reference = ContinuationIndex.build(tokens, depth=6, chunk_size=7)
    monkeypatch.setattr(continuations_module, "_KEY_BITS", 10)
    index = ContinuationIndex.build(tokens, depth=6, chunk_size=7)
    assert sorted_to_depth(index, text, 6)
    for context in contexts_for(text, 5, rng, 30):
        assert index.continuations(context) == reference.continuations(context)


def test_huge_token_ids_and_every_integer_dtype() -> None:
    text = [1 << 30, 7, 1 << 30, 7, 1 << 30, 2]
    for dtype in (np.uint32, np.int64, np.uint64, np.dtype(">u4")):
        index = ContinuationIndex.build(np.array(text, dtype))  # IDs too big for a lookup table
        got = index.continuations([7, 1 << 30])
        assert (got.n, got.counts) == (2, {7: 1, 2: 1})
        assert index.count([1 << 30]) == 3
    wide = [70_000 + (i * 7919) % 70_001 for i in range(3000)]  # more than 65,536 distinct IDs
    index = ContinuationIndex.build(np.array(wide, np.uint32), depth=4, chunk_size=64)
    assert sorted_to_depth(index, wide, 4)
    assert index.continuations(wide[:2]).counts == dict(next_counts(wide, wide[:2]))


def test_empty_and_tiny_texts() -> None:
    empty = ContinuationIndex.build(np.array([], np.uint16))
    got = empty.continuations([1, 2])
    assert (got.n, got.occurrences, got.counts) == (0, 0, {})
    assert got.probabilities() == {} and empty.count([1]) == 0 and empty.count([]) == 0
    one = ContinuationIndex.build(np.array([4], np.uint16))
    assert one.continuations([4]) == Continuations(n=0, occurrences=1, counts={4: 1}, context=(), distinct=1)
    assert one.count([4]) == 1 and one.count([4, 4]) == 0


def test_the_index_references_the_tokens_and_costs_four_bytes_per_token() -> None:
    tokens = np.random.default_rng(0).integers(0, 300, 100_000).astype(np.uint16)
    index = ContinuationIndex.build(tokens)
    assert np.shares_memory(index._tokens, tokens)  # never copied
    assert index.n_tokens == 100_000 and index.depth == 16
    assert 4 * 100_000 <= index.nbytes < 4 * 100_000 + 50_000


def test_cancel_raises_cancelled() -> None:
    tokens = np.random.default_rng(0).integers(0, 3, 50_000).astype(np.uint16)
    with pytest.raises(Cancelled):
        ContinuationIndex.build(tokens, cancel=lambda: True)
    # a cancel that comes part of the way through, between two chunks
    calls: list[tuple[int, int]] = []
    with pytest.raises(Cancelled):
        ContinuationIndex.build(tokens, progress=lambda done, total: calls.append((done, total)),
                                cancel=lambda: len(calls) >= 3, chunk_size=1000)
    assert len(calls) == 3 and calls[-1][0] < calls[-1][1]


@pytest.mark.parametrize("size, chunk", [(0, 1 << 20), (1, 1 << 20), (50_000, 1000), (50_000, 1 << 20)])
def test_progress_rises_to_the_total(size: int, chunk: int) -> None:
    tokens = np.random.default_rng(1).integers(0, 4, size).astype(np.uint16)
    calls: list[tuple[int, int]] = []
    ContinuationIndex.build(tokens, progress=lambda done, total: calls.append((done, total)), chunk_size=chunk)
    assert calls, "no progress reported"
    totals = {total for _, total in calls}
    assert len(totals) == 1
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == calls[-1][1]
    if chunk == 1000:
        assert len(calls) > 10  # reported as it goes, not only at the end


def test_bad_arguments_are_refused() -> None:
    for bad in (np.zeros((2, 2), np.uint16), np.array([0.5, 1.0]), np.array([1, -1]),
                np.array([1 << 63], np.uint64)):
        with pytest.raises(ParamError):
            ContinuationIndex.build(bad)
    for kwargs in ({"depth": 0}, {"chunk_size": 1}):
        with pytest.raises(ParamError):
            ContinuationIndex.build(np.array([1, 2]), **kwargs)
    index = ContinuationIndex.build(np.array([1, 2, 1], np.uint16))
    for kwargs in ({"max_n": -1}, {"min_count": 0}, {"top": -1}):
        with pytest.raises(ParamError):
            index.continuations([1], **kwargs)
