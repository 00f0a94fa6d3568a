"""What followed this context in the training text: exact next-token counts from a suffix array.

For a prompt's token IDs, :meth:`ContinuationIndex.continuations` finds the longest suffix of the
prompt (its last ``n`` tokens, ``n`` up to ``max_n``) that occurs in the training tokens at least
``min_count`` times with a token after it, and returns how often each token followed it. These
are *counts in one text*, an empirical reference to set beside the model's probabilities, not
the true odds of the language (show them labelled so: :meth:`Continuations.describe`).

The algorithm, and why
----------------------
The index is a suffix array: the text's positions ordered by the tokens that start there, read
forwards. All occurrences of a context ``c`` are then one contiguous range of it, and inside
that range the positions are ordered by the token *after* ``c``, so:

* finding ``c`` is a binary search per token of ``c`` inside the range of the tokens before it
  (the first token's range is a table lookup): about ``2 n log2(range)`` scalar reads through
  memoryviews, tens of microseconds for ``n = 8`` on 100 M tokens. The longest suffix with
  enough occurrences is found by bisection on ``n`` (occurrences only fall as ``n`` grows);
* counting the next tokens need not read the whole range (``" "`` covers a sixth of an English
  text): the range is sorted by the next token, so it is cut into its runs of equal next tokens
  by a vectorised bisection that reads about ``2 D log2(range / D)`` entries for ``D`` different
  next tokens. Where ``D`` may be a large part of the range (big vocabularies) the range is
  gathered and counted instead, with ``bincount`` (no sort) when it holds more entries than IDs.

A suffix array costs one integer per token, against one hash entry per distinct n-gram per n
for n-gram tables (many times the text for n up to 8) or tens of bytes per token and a
Python-speed build for a suffix tree or automaton. It is built with numpy alone.

The sort is exact for the first ``depth`` tokens of each suffix (default 16: queries use
``n <= 8`` by default, and counting at ``n`` needs ``n + 1`` sorted tokens); suffixes that share
their first ``depth`` tokens stay in text order. That bounds the build where the text repeats
itself: a file pasted twice would make a full suffix array keep sorting every position for
~log2(N) more rounds. Queries stay exact past the depth: a context longer than ``depth`` ends
with its last ``depth`` tokens, whose occurrences are one exact range, and each occurrence is
extended backwards token by token, dropping mismatches, until too few remain (one pass for all
``n``; its cost grows with how often those ``depth`` tokens occur).

Why not prefix doubling (the textbook numpy suffix array): each doubling round ranks *every*
position by a pair of ranks, which needs a global rank array and an ``argsort`` of 8-byte pair
keys over all N positions: 20+ bytes per token at its peak and ``log2(depth)`` global sorts.
Here no stage needs more than the suffix array itself and one chunk:

1. The tokens are remapped to ``1..S`` in order (0 = past the end) into a padded big-endian
   copy of 1, 2 or 4 bytes per token, and positions are counting-sorted by their first
   ``width`` tokens, chunk by chunk (``width`` as large as keeps S**width <= 2**20 buckets:
   3 tokens for a 100-character vocabulary, 1 for BPE). The order inside a bucket never
   depends on other buckets, so each is finished on its own.
2. Consecutive buckets are batched up to ``chunk_size`` positions and sorted in rounds: a
   ``uint64`` key holds the group's number, as many next tokens as fit (one unaligned 8-byte
   read of the big-endian copy gives 8, 4 or 2 of them already in sorting order) and the
   element's index in the low bits, so numpy's value sort (several times faster than
   ``argsort``) gives the order. Groups still tied go to the next round with the next tokens,
   until ``depth`` tokens are sorted or every group is one position.
3. A bucket bigger than ``chunk_size`` is first split by its next token (the same chunked
   counting sort), recursively.

On this project's 2-core machine, 100 MB of byte-level text (105 M tokens) builds in about
20-25 s and 100 MB as BPE-like IDs (26 M tokens) in 2-3 s; see ``bench/continuations.py``.

Memory
------
The index: **4 bytes per token** (the ``uint32`` suffix array; 8 past 2**32 tokens) plus tables
of the distinct tokens (a few MB for a 50K vocabulary). It keeps a reference to the caller's
token array (2 bytes per token for ``uint16``, already in memory as the corpus) and never copies
it, so the array must not be changed afterwards.

Building adds, temporarily: the padded copy (1 byte per token up to 255 distinct tokens, 2 up
to 65,535, else 4), 4 bytes per position of the largest bucket bigger than ``chunk_size`` (a
split's output), and about 80 bytes per position of one chunk (~80 MB at the default 2**20),
whatever the text's size: about 6 bytes per token in all at 100 M byte tokens.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import Cancelled, ParamError

DEFAULT_DEPTH = 16  # tokens sorted exactly; the counting path is fastest for n < depth
DEFAULT_CHUNK = 1 << 20  # positions sorted at once: bounds the build's temporary memory
_GATHER_BELOW = 4096  # ranges up to this size are gathered and counted outright
_RUNS_BUDGET = 2  # counting runs gives up for a gather once it has read 1/this of the range
_LUT_MAX_ID = 1 << 24  # token IDs below this are remapped through a lookup table, else a search
_FIRST_BUCKETS = 1 << 20  # the first sort's buckets: as many leading tokens as fit this many
_KEY_BITS = 64  # bits of a sort key (a constant so that a test can force the fallback paths)


@dataclass(frozen=True)
class Continuations:
    """The next tokens seen after a context in the training text, as raw counts.

    ``n`` is how many of the prompt's last tokens were matched (0: no context, the counts are
    the whole text's unigram counts); ``context`` holds those ``n`` tokens. ``occurrences`` is
    how often that context occurs followed by a token (an occurrence at the very end of the text
    has no next token and is not counted); it is the sum of all the counts, including those cut
    by ``top``. ``counts`` maps next token ID to its count, largest count first (ties: smaller ID
    first); ``distinct`` is how many different next tokens there were before ``top``.
    """

    n: int
    occurrences: int
    counts: dict[int, int]
    context: tuple[int, ...] = ()
    distinct: int = 0

    def probabilities(self) -> dict[int, float]:
        """Each count over ``occurrences``: relative frequencies in this text, not true odds.

        With ``top`` set they sum to less than 1 (the cut tokens keep their share).
        """
        if self.occurrences == 0:
            return {}
        return {token: count / self.occurrences for token, count in self.counts.items()}

    def describe(self) -> str:
        """A one-line label that says what these numbers are (for a panel or the CLI)."""
        what = "the whole text (no context matched)" if self.n == 0 else (
            f"the last {self.n} token{'s' if self.n != 1 else ''} of the prompt"
        )
        return (f"counts in the training text after {what}: {self.occurrences:,} occurrences, "
                f"{self.distinct:,} different next tokens (counts, not the true odds)")


class ContinuationIndex:
    """A suffix array over one token array: context counts and next-token counts in milliseconds.

    Build it once per corpus (on a worker thread: :meth:`build` reports progress and honours a
    cancel), then query it from any thread; it is read-only after the build.
    """

    def __init__(self, tokens: np.ndarray, suffixes: np.ndarray, ids: np.ndarray, starts: np.ndarray,
                 depth: int) -> None:
        """Use :meth:`build`. ``suffixes`` is the suffix array sorted to ``depth`` tokens,
        ``ids`` the distinct token IDs (ascending) and ``starts`` where each one's range starts."""
        self._tokens = tokens
        self._sa = suffixes
        self._n = int(len(tokens))
        self._depth = depth
        self._ids_array = ids
        self._unigram = np.diff(np.append(starts, self._n)).astype(np.int64)
        # Python lists and memoryviews: indexing them yields Python ints without numpy's
        # per-element overhead, which is what makes the scalar binary searches fast.
        self._ids = ids.tolist()
        self._starts = starts.tolist() + [self._n]
        self._tok_view = memoryview(tokens) if self._n else memoryview(b"")
        self._sa_view = memoryview(suffixes) if self._n else memoryview(b"")

    # -- building ------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        tokens: np.ndarray,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        *,
        depth: int = DEFAULT_DEPTH,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> ContinuationIndex:
        """Index a 1-D array of non-negative integer token IDs (for example ``corpus.train``).

        ``progress(done, total)`` is called after each chunk of work and last with
        ``done == total``; ``cancel()`` is polled as often and raises
        :class:`~lmstudio_app.errors.Cancelled` when it returns true. ``depth`` is how many
        tokens of each suffix are sorted exactly (queries stay exact beyond it, just slower);
        ``chunk_size`` how many positions are sorted at once (the build's temporary memory).
        """
        tokens = _check_tokens(tokens)
        if depth < 1:
            raise ParamError(f"depth: {depth} is below the minimum 1")
        if chunk_size < 2:
            raise ParamError(f"chunk_size: {chunk_size} is below the minimum 2")
        suffixes, ids, starts = _Builder(tokens, depth, chunk_size, progress, cancel).run()
        return cls(tokens, suffixes, ids, starts, depth)

    # -- facts ---------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        """How many tokens the indexed text has."""
        return self._n

    @property
    def depth(self) -> int:
        """How many leading tokens of each suffix are sorted exactly."""
        return self._depth

    @property
    def nbytes(self) -> int:
        """Memory the index holds beyond the caller's token array (suffix array and tables)."""
        python_lists = 40 * (len(self._ids) + len(self._starts))  # a pointer and an int each, about
        return int(self._sa.nbytes + self._ids_array.nbytes + self._unigram.nbytes + python_lists)

    # -- queries -------------------------------------------------------------------------

    def count(self, context: Sequence[int]) -> int:
        """How many times ``context`` occurs in the text, anywhere (also as its very end).

        The empty context counts once per token. ``continuations(c).occurrences`` counts only
        the occurrences followed by a token, so it is this number or one less.
        """
        pattern = _as_ints(context)
        if not pattern:
            return self._n
        lo, hi = self._range(pattern)
        if len(pattern) <= self._depth:
            return hi - lo
        return int(len(self._filter_long(pattern, lo, hi)))

    def continuations(
        self,
        context: Sequence[int],
        max_n: int = 8,
        min_count: int = 1,
        top: int | None = None,
    ) -> Continuations:
        """The counts of the token after the longest suffix of ``context`` seen in the text.

        ``n`` is the largest length up to ``max_n`` (and ``len(context)``) whose last ``n``
        tokens occur at least ``min_count`` times followed by a token; with none, ``n = 0``
        and the counts are the unigram counts of the whole text. ``top`` keeps only that
        many of the most frequent next tokens (``occurrences`` still counts all of them).
        """
        if max_n < 0:
            raise ParamError(f"max_n: {max_n} is below the minimum 0")
        if min_count < 1:
            raise ParamError(f"min_count: {min_count} is below the minimum 1")
        if top is not None and top < 0:
            raise ParamError(f"top: {top} is below the minimum 0")
        tokens = _as_ints(context)
        longest = min(max_n, len(tokens))
        past_depth = self._extend_back(tokens, longest, min_count) if longest > self._depth else None
        if past_depth is not None:
            n, (ids, counts) = past_depth[0], self._gather_counts(past_depth[1])
        else:
            # The occurrences of the last n tokens can only fall as n grows (each occurrence of
            # a longer suffix ends where one of the shorter does), so the longest n that has
            # enough of them is found by bisection on n: about log2(max_n) searches, not max_n.
            low, high = 0, min(longest, self._depth)  # n = 0 always qualifies (the fallback)
            while low < high:
                mid = (low + high + 1) // 2
                if self._followed(tokens[len(tokens) - mid:]) >= min_count:
                    low = mid
                else:
                    high = mid - 1
            n = low
            ids, counts = self._next_counts(tokens[len(tokens) - n:] if n else [])
        pattern = tokens[len(tokens) - n:] if n else []
        occurrences = int(counts.sum())
        order = np.lexsort((ids, -counts))  # count descending, then token ID ascending
        if top is not None:
            order = order[:top]
        return Continuations(
            n=n,
            occurrences=occurrences,
            counts=dict(zip(ids[order].tolist(), counts[order].tolist())),
            context=tuple(pattern),
            distinct=int(len(ids)),
        )

    # -- internals -----------------------------------------------------------------------

    def _extend_back(self, context: list[int], longest: int, min_count: int) -> tuple[int, np.ndarray] | None:
        """Past the sorted depth: (n, the tokens that followed) for the longest n in
        ``(depth, longest]`` with at least ``min_count`` occurrences, else None.

        Every such suffix ends with the context's last ``depth`` tokens, whose occurrences are
        one exact range; so that range is read once and each occurrence is extended backwards
        token by token, dropping those that stop matching, until fewer than ``min_count``
        remain (one pass for every n, instead of a search per n)."""
        depth, n_text = self._depth, self._n
        lo, hi = self._range(context[len(context) - depth:])
        starts = self._sa[lo:hi].astype(np.int64)
        starts = starts[starts + depth < n_text]  # followed by a token
        if len(starts) < min_count:
            return None
        extra = 0
        for back in range(1, longest - depth + 1):
            previous = starts - back
            token = context[len(context) - depth - back]
            keep = previous >= 0
            keep[keep] = self._tokens[previous[keep]] == token
            if int(keep.sum()) < min_count:
                break
            starts, extra = starts[keep], back
        return depth + extra, self._tokens[starts + depth]

    def _followed(self, pattern: list[int]) -> int:
        """How often a non-empty pattern occurs followed by a token."""
        total = self.count(pattern)
        return total - int(total > 0 and self._ends_with(pattern))

    def _ends_with(self, pattern: list[int]) -> bool:
        n = len(pattern)
        return n <= self._n and self._tokens[self._n - n:].tolist() == pattern

    def _range(self, pattern: list[int]) -> tuple[int, int]:
        """The suffix-array range of the suffixes starting with ``pattern[:depth]``."""
        first = pattern[0]
        i = bisect.bisect_left(self._ids, first)
        if i == len(self._ids) or self._ids[i] != first:
            return 0, 0
        lo, hi = self._starts[i], self._starts[i + 1]
        for k in range(1, min(len(pattern), self._depth)):
            if lo >= hi:
                break
            lo, hi = self._narrow(lo, hi, k, pattern[k])
        return lo, hi

    def _narrow(self, lo: int, hi: int, k: int, token: int) -> tuple[int, int]:
        """Within a range of suffixes that share ``k`` tokens (sorted by the next one, since
        ``k < depth``), the sub-range whose token at offset ``k`` is ``token``."""
        sa, tok, n = self._sa_view, self._tok_view, self._n
        if sa[lo] + k >= n:
            lo += 1  # the one suffix that is exactly those k tokens ends the text: it sorts first
        a, b = lo, hi
        while a < b:
            m = (a + b) >> 1
            if tok[sa[m] + k] < token:
                a = m + 1
            else:
                b = m
        start, b = a, hi
        while a < b:
            m = (a + b) >> 1
            if tok[sa[m] + k] <= token:
                a = m + 1
            else:
                b = m
        return start, a

    def _filter_long(self, pattern: list[int], lo: int, hi: int) -> np.ndarray:
        """Positions in ``[lo, hi)`` (which match ``pattern[:depth]``) that match it all.

        Past ``depth`` the range is in text order, so the rest is compared position by
        position, dropping mismatches as it goes."""
        positions = self._sa[lo:hi].astype(np.int64)
        positions = positions[positions + len(pattern) <= self._n]
        for k in range(self._depth, len(pattern)):
            if not len(positions):
                break
            positions = positions[self._tokens[positions + k] == pattern[k]]
        return positions

    def _next_counts(self, pattern: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(next token IDs ascending, their counts) after every occurrence of ``pattern``
        (of at most ``depth`` tokens)."""
        n = len(pattern)
        if n == 0:
            return self._ids_array.astype(np.int64), self._unigram.copy()
        lo, hi = self._range(pattern)
        if n == self._depth:  # the range is not sorted by the next token: gather it
            positions = self._sa[lo:hi].astype(np.int64)
            return self._gather_counts(self._tokens[positions[positions + n < self._n] + n])
        if lo < hi and self._sa_view[lo] + n >= self._n:
            lo += 1  # the occurrence that ends the text has no next token
        size, distinct = hi - lo, min(len(self._ids), hi - lo)
        # Runs need about 2 D log2(size / D) reads for D <= `distinct` different next tokens,
        # each dearer than one read of a gather: worth it when well under the range's size.
        worth_runs = size > _GATHER_BELOW and 2 * distinct * np.log2(size / distinct + 1) < size / _RUNS_BUDGET
        counted = self._runs(lo, hi, n) if worth_runs else None
        if counted is not None:
            return counted
        return self._gather_counts(self._tokens[self._sa[lo:hi].astype(np.int64) + n])

    def _gather_counts(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distinct values, counts): by a count per ID when the IDs are fewer than the values
        (no sort), else by sorting."""
        if len(values) and len(values) >= self._ids[-1]:
            counts = np.bincount(values, minlength=self._ids[-1] + 1)
            ids = np.flatnonzero(counts)
            return ids.astype(np.int64), counts[ids].astype(np.int64)
        return _unique_counts(values)

    def _runs(self, lo: int, hi: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Next-token counts of a large range sorted by its next token, without reading it all;
        None when that would read more than a gather (too many different next tokens).

        Intervals whose first and last next tokens are equal are runs of that token; the others
        are halved, all at once, until none is left. Only interval ends are read: about
        ``2 D log2(range / D)`` entries for ``D`` different next tokens."""
        sa, tokens = self._sa, self._tokens
        budget = (hi - lo) // _RUNS_BUDGET

        def next_token(at: np.ndarray) -> np.ndarray:
            return tokens[sa[at].astype(np.int64) + n].astype(np.int64)

        a = np.array([lo], np.int64)
        b = np.array([hi], np.int64)
        first, last = next_token(a), next_token(b - 1)
        values: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        while len(a):
            same = first == last
            values.append(first[same])
            lengths.append((b - a)[same])
            split = ~same
            a, b, first, last = a[split], b[split], first[split], last[split]
            if not len(a):
                break
            budget -= 2 * len(a)
            if budget < 0:
                return None
            mid = (a + b) >> 1  # b - a >= 2 here: the ends differ
            left_last, right_first = next_token(mid - 1), next_token(mid)
            a, b = np.concatenate([a, mid]), np.concatenate([mid, b])
            first, last = np.concatenate([first, right_first]), np.concatenate([left_last, last])
        ids, inverse = np.unique(np.concatenate(values), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate(lengths), minlength=len(ids))
        return ids, counts.astype(np.int64)


# -- helpers ----------------------------------------------------------------------------


def _check_tokens(tokens: np.ndarray) -> np.ndarray:
    """The token array as a contiguous, native-endian integer array (a view when it is one)."""
    array = np.asarray(tokens)
    if array.ndim != 1:
        raise ParamError(f"tokens: expected a 1-D array of token IDs, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise ParamError(f"tokens: expected integer token IDs, got dtype {array.dtype}")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    array = np.ascontiguousarray(array)  # memoryviews (the fast scalar reads) need it
    if len(array) and array.dtype.kind == "i" and int(array.min()) < 0:
        raise ParamError("tokens: token IDs must be non-negative")
    if array.dtype == np.uint64:  # numpy's counting functions refuse uint64; IDs that big are absurd
        if len(array) and int(array.max()) >= 1 << 63:
            raise ParamError("tokens: token IDs must be below 2**63")
        array = array.view(np.int64)
    return array


def _as_ints(context: Sequence[int]) -> list[int]:
    return [int(token) for token in context]


def _unique_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, counts = np.unique(values, return_counts=True)
    return ids.astype(np.int64), counts.astype(np.int64)


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("building the continuation index cancelled")


class _Builder:
    """One build: the remapped tokens, the suffix array being sorted, progress and cancel.

    Progress runs over ``3 * N`` units: N for the remapping, N for the first-token sort, N for
    the positions whose order is final (each counted once). It is reported, and the cancel
    polled, about once per chunk of units.
    """

    def __init__(self, tokens: np.ndarray, depth: int, chunk: int,
                 progress: Callable[[int, int], None] | None, cancel: Callable[[], bool] | None) -> None:
        self.tokens = tokens
        self.n = int(len(tokens))
        self.depth = depth
        self.chunk = chunk
        self.progress = progress
        self.cancel = cancel
        self.done = 0
        self.total = 3 * self.n
        self.reported = -1
        self.sa = np.empty(self.n, np.uint32 if self.n < 1 << 32 else np.int64)

    def advance(self, amount: int) -> None:
        self.done += amount
        if self.done - self.reported < self.chunk and self.done < self.total:
            return  # singletons come by the thousand: report about once per chunk
        _check_cancel(self.cancel)
        self.reported = self.done
        if self.progress is not None:
            self.progress(self.done, self.total)

    def run(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _check_cancel(self.cancel)
        ids = self.remap()
        if self.n == 0:
            self.advance(0)
            return self.sa, ids, np.zeros(0, np.int64)
        unigram = _bincount(self.dense[:self.n], self.symbols, self.chunk)[1:]
        starts = np.concatenate([[0], np.cumsum(unigram)[:-1]]).astype(np.int64)
        width, counts = self.first_tokens_sort()
        self.finish(0, counts, depth=width)
        assert self.done == self.total, (self.done, self.total)
        del self.dense, self.words
        return self.sa, ids, starts

    def remap(self) -> np.ndarray:
        """Make ``self.dense``: the tokens as 1..S-1 (order kept; 0 means "past the end"),
        big-endian, padded with zeros; and ``self.words``, a view of it as overlapping
        big-endian ``uint64`` words, one per position, so that one gather reads the next
        ``8 // itemsize`` tokens of a suffix already packed in sorting order. Returns the IDs."""
        n, tokens = self.n, self.tokens
        top = int(tokens.max()) if n else 0
        if top < _LUT_MAX_ID:
            present = _bincount(tokens, top + 1, self.chunk) > 0
            ids = np.flatnonzero(present).astype(np.int64)
            lut_values = np.cumsum(present)  # id -> its rank among the present IDs, from 1
        else:  # huge IDs: a lookup table would be too big, search the sorted distinct IDs
            ids = np.unique(tokens).astype(np.int64)
            lut_values = None
        self.symbols = symbols = len(ids) + 1
        dtype = np.dtype(np.uint8 if symbols <= 1 << 8 else ">u2" if symbols <= 1 << 16 else ">u4")
        self.token_bits = 8 * dtype.itemsize
        self.dense = np.zeros(n + self.depth + 8, dtype)  # reads reach depth + 8 tokens past the end
        self.words = np.ndarray((n + self.depth,), np.dtype(">u8"), self.dense, strides=(dtype.itemsize,))
        lut = lut_values.astype(dtype) if lut_values is not None else None
        step = max(self.chunk, 1 << 22)
        for start in range(0, n, step):
            part = tokens[start:start + step]
            if lut is not None:
                self.dense[start:start + len(part)] = lut[part]
            else:
                self.dense[start:start + len(part)] = np.searchsorted(ids, part) + 1
            self.advance(len(part))
        return ids

    def first_tokens_sort(self) -> tuple[int, np.ndarray]:
        """Counting-sort every position by its first ``width`` tokens into ``self.sa``, chunk by
        chunk (stable: each bucket in text order). ``width`` is as many tokens as make at most
        2**20 buckets (3 for a char vocabulary): fewer big buckets to split later, and those
        tokens need no random reads, they are next to each other. Returns (width, the size of
        each bucket)."""
        n, dense, symbols = self.n, self.dense, self.symbols
        width = 1
        while width < self.depth and symbols ** (width + 1) <= _FIRST_BUCKETS:
            width += 1
        buckets = symbols ** width

        def bucket_of(start: int, end: int) -> np.ndarray:  # the first `width` tokens as one number
            value = dense[start:end].astype(np.int64)
            for k in range(1, width):
                value *= symbols
                value += dense[start + k:end + k]
            return value

        counts = np.zeros(buckets, np.int64)
        for start in range(0, n, self.chunk):
            counts += np.bincount(bucket_of(start, min(start + self.chunk, n)), minlength=buckets)
        write = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        bits = (buckets - 1).bit_length()
        for start in range(0, n, self.chunk):
            values = bucket_of(start, min(start + self.chunk, n))
            order, ordered = _stable_order(values, bits)
            self.sa[_bucket_destinations(ordered, write, buckets)] = order + start
            self.advance(len(values))
        return width, counts

    def finish(self, start: int, counts: np.ndarray, depth: int) -> None:
        """Sort consecutive pieces of the given sizes from ``start`` (ranges of suffixes that
        share ``depth`` tokens) to ``self.depth``: neighbours batched into chunks of up to
        ``self.chunk`` positions, bigger pieces split by their next token first."""
        if depth >= self.depth:  # ties at full depth: their text order stays
            self.advance(int(counts.sum()))
            return
        self.advance(int((counts == 1).sum()))  # single positions are already in place
        sizes = counts[counts > 0]
        ends = start + np.cumsum(sizes)
        big = np.flatnonzero(sizes > self.chunk).tolist()
        first = 0  # pieces [first, i) between two big ones are batched into chunks
        for i in [*big, len(sizes)]:
            while first < i:  # the most pieces from `first` that fit in a chunk (at least one)
                last = max(first + 1, int(np.searchsorted(ends, ends[first] - sizes[first] + self.chunk,
                                                           side="right")))
                last = min(last, i)
                if (sizes[first:last] > 1).any():
                    self.sort_chunk(int(ends[first] - sizes[first]), sizes[first:last], depth)
                first = last
            if i < len(sizes):
                self.split(int(ends[i] - sizes[i]), int(ends[i]), depth)
                first = i + 1

    def split(self, start: int, end: int, depth: int) -> None:
        """Counting-sort a big piece by its token at offset ``depth``, then finish the parts."""
        counts = np.zeros(self.symbols, np.int64)
        for c0 in range(start, end, self.chunk):  # pass 1: the size of each part
            counts += np.bincount(self.dense[self.sa[c0:min(c0 + self.chunk, end)].astype(np.int64) + depth],
                                  minlength=self.symbols)
            _check_cancel(self.cancel)
        write = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        out = np.empty(end - start, self.sa.dtype)
        for c0 in range(start, end, self.chunk):  # pass 2: move each position into its part
            positions = self.sa[c0:min(c0 + self.chunk, end)]
            order, ordered = _stable_order(self.dense[positions.astype(np.int64) + depth], self.token_bits)
            out[_bucket_destinations(ordered, write, self.symbols)] = positions[order]
            _check_cancel(self.cancel)
        self.sa[start:end] = out
        del out
        self.finish(start, counts, depth + 1)

    def sort_chunk(self, start: int, sizes: np.ndarray, depth: int) -> None:
        """Sort consecutive pieces (each sharing ``depth`` tokens) from ``start`` to
        ``self.depth`` tokens, in a local copy of that stretch of the suffix array.

        Each round sorts the still-tied positions by their group and as many of their next
        tokens as fit, packed into one ``uint64`` with the element's index in the low bits, so
        a value sort gives the order; groups that are still tied go into the next round."""
        local = self.sa[start:start + int(sizes.sum())].astype(np.int64)
        tied = np.repeat(sizes > 1, sizes)
        select = np.flatnonzero(tied)  # the unfinished elements of `local`, in order
        group = np.repeat(np.arange(len(sizes), dtype=np.uint64), sizes)[tied]
        group = np.cumsum(np.concatenate([[0], group[1:] != group[:-1]])).astype(np.uint64)
        token_bits, words = self.token_bits, self.words
        while len(select) and depth < self.depth:
            _check_cancel(self.cancel)  # a round of a chunk: tens of milliseconds
            m = len(select)
            positions = local[select]
            index_bits = max(1, (m - 1).bit_length())
            group_bits = max(1, int(group[-1]).bit_length())
            word = words[positions + depth].astype(np.uint64)  # the next 8 // itemsize tokens
            free = _KEY_BITS - index_bits - group_bits  # bits left for tokens beside the index
            if free >= token_bits:
                # The word's top bits: whole tokens, then maybe part of one (harmless: it only
                # splits ties early, and the next round reads that token again).
                key = group << np.uint64(free + index_bits)
                word >>= np.uint64(64 - free)
                word <<= np.uint64(index_bits)
                key |= word
                key |= np.arange(m, dtype=np.uint64)
                key.sort()
                order = (key & np.uint64((1 << index_bits) - 1)).astype(np.int64)
                key >>= np.uint64(index_bits)
            else:  # no room for the index (chunks of huge vocabularies): a stable argsort
                free = 64 - group_bits
                key = (group << np.uint64(free)) | (word >> np.uint64(64 - free))
                order = np.argsort(key, kind="stable")
                key = key[order]
            # Sorting by the group first keeps every element inside its group's own slots.
            local[select] = positions[order]
            depth += min(free // token_bits, 64 // token_bits)
            # Still tied: the elements of runs of equal keys longer than one (an element is
            # alone when both it and the next start a run). They get new group numbers,
            # consecutive and ascending along the slots, as the next round's key needs.
            starts = np.empty(m + 1, bool)
            starts[0] = starts[m] = True
            np.not_equal(key[1:], key[:-1], out=starts[1:m])
            still = ~(starts[:m] & starts[1:])
            select = select[still]
            self.advance(m - len(select))
            group = np.cumsum(starts[:m][still], dtype=np.uint64) - np.uint64(1)
        self.advance(len(select))  # tied at full depth: their text order stays
        self.sa[start:start + len(local)] = local


def _bincount(values: np.ndarray, length: int, chunk: int) -> np.ndarray:
    """``np.bincount`` chunk by chunk: it casts its input to ``int64``, which for a whole token
    array would be a temporary 4-8 times its size."""
    counts = np.zeros(length, np.int64)
    for start in range(0, len(values), max(chunk, 1 << 16)):
        counts += np.bincount(values[start:start + max(chunk, 1 << 16)], minlength=length)
    return counts


def _stable_order(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, values[order]) of a stable sort of non-negative integers below ``2**bits``, by
    a value sort of ``value << index_bits | index`` (much faster than ``argsort``)."""
    m = len(values)
    index_bits = max(1, (m - 1).bit_length())
    if index_bits + bits > _KEY_BITS:  # chunks of 2**32+ positions, or huge vocabularies
        order = np.argsort(values, kind="stable")
        return order, values[order].astype(np.int64)
    key = (values.astype(np.uint64) << np.uint64(index_bits)) | np.arange(m, dtype=np.uint64)
    key.sort()
    order = (key & np.uint64((1 << index_bits) - 1)).astype(np.int64)
    return order, (key >> np.uint64(index_bits)).astype(np.int64)


def _bucket_destinations(ordered: np.ndarray, write: np.ndarray, symbols: int) -> np.ndarray:
    """Where each of a chunk's stably sorted values goes in a counting sort; advances ``write``
    (each symbol's next free slot) past them."""
    counts = np.bincount(ordered, minlength=symbols)
    first = np.cumsum(counts) - counts  # where each symbol's run starts inside the chunk
    destinations = write[ordered] + (np.arange(len(ordered), dtype=np.int64) - first[ordered])
    write += counts
    return destinations
