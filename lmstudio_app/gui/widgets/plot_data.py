"""The numpy side of the loss plot: growing buffers, the EMA, and min/max ("peak") decimation.

Nothing here needs Qt. :class:`SeriesBuffer` holds a curve's points with amortised O(1)
appends and a cap (past it the older half thins 2:1); :func:`ema` smooths a whole series in
one vectorised pass; :class:`PeakDecimator` reduces a series to a few thousand points so that
a redraw costs the same at 1k or 1M points.

Decimation: a curve with more points than the plot has pixels is drawn from at most
``max_bins`` bins, each contributing its lowest and its highest value, so spikes stay visible
(pyqtgraph's "peak" mode does the same, but over every buffered point at every redraw). Here
the bins are aligned blocks of 2^k points, and each level k is cached and extended as points
arrive (level k is built from level k-1, pairwise), so a redraw only touches the new points
and the bins it returns. Zooming in picks a finer level over the visible slice; a slice short
enough is drawn raw. The x values must be increasing (training steps are).
"""

from __future__ import annotations

import numpy as np

DEFAULT_MAX_POINTS = 1_000_000
BASE_LEVEL = 3  # the first cached level: blocks of 2**BASE_LEVEL points (finer ones are computed on demand)


class SeriesBuffer:
    """Growing (x, y) float64 arrays: capacity doubles, and at ``max_points`` old points thin out."""

    def __init__(self, max_points: int = DEFAULT_MAX_POINTS, capacity: int = 1024) -> None:
        if max_points < 4:
            raise ValueError(f"max_points must be at least 4, got {max_points}")
        self.max_points = max_points
        self._xy = np.empty((2, min(capacity, max_points)), dtype=np.float64)
        self.size = 0
        self.version = 0  # bumped when points other than appended ones change (caches start over)

    def append(self, x: float, y: float) -> None:
        if self.size == self.max_points:
            self._thin_older_half()
        if self.size == self._xy.shape[1]:
            grown = np.empty((2, min(self.size * 2, self.max_points)), dtype=np.float64)
            grown[:, : self.size] = self._xy[:, : self.size]
            self._xy = grown
        self._xy[0, self.size] = x
        self._xy[1, self.size] = y
        self.size += 1

    def _thin_older_half(self) -> None:
        half = self.size // 2
        kept = self._xy[:, 0:half:2]
        n_kept = kept.shape[1]
        self._xy[:, :n_kept] = kept
        self._xy[:, n_kept : n_kept + self.size - half] = self._xy[:, half : self.size]
        self.size = n_kept + self.size - half
        self.version += 1

    @property
    def x(self) -> np.ndarray:
        return self._xy[0, : self.size]

    @property
    def y(self) -> np.ndarray:
        return self._xy[1, : self.size]

    def replace(self, x: np.ndarray, y: np.ndarray) -> None:
        """Swap in new contents of equal length (at most ``max_points``)."""
        n = len(x)
        if n != len(y) or n > self.max_points:
            raise ValueError(f"replace needs equal lengths <= {self.max_points}, got {n} and {len(y)}")
        if n > self._xy.shape[1]:
            self._xy = np.empty((2, min(max(n, 1024), self.max_points)), dtype=np.float64)
        self._xy[0, :n] = x
        self._xy[1, :n] = y
        self.size = n
        self.version += 1

    def clear(self) -> None:
        self.size = 0
        self.version += 1


def ema(values: np.ndarray, smoothing: float, block: int = 128) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing), vectorised in blocks.

    Within a block the EMA is a lower-triangular matrix product (powers of ``smoothing`` <= 1,
    so it is stable for any smoothing in [0, 1)); a Python loop only carries block ends.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    n = len(values)
    if n == 0 or smoothing == 0.0:
        return np.array(values, dtype=np.float64)
    a = smoothing
    pad = (-n) % block
    y = np.concatenate([np.asarray(values, dtype=np.float64), np.zeros(pad)]).reshape(-1, block)
    j = np.arange(block)
    powers = np.tril(a ** np.clip(j[:, None] - j[None, :], 0, None))  # M[j, i] = a^(j-i), i <= j
    local = (1.0 - a) * (y @ powers.T)  # each block's EMA started from zero
    carry_weights = a ** (j + 1)
    out = np.empty_like(local)
    carry = 0.0
    for k in range(local.shape[0]):
        out[k] = local[k] + carry_weights * carry
        carry = out[k, -1]
    flat = out.reshape(-1)[:n]
    return flat / (1.0 - a ** np.arange(1, n + 1))  # debias the zero start


class _Level:
    """The per-block minima and maxima of one level, in arrays that grow by doubling."""

    def __init__(self) -> None:
        self._lo = np.empty(0, dtype=np.float64)
        self._hi = np.empty(0, dtype=np.float64)
        self.size = 0

    def extend(self, lo: np.ndarray, hi: np.ndarray) -> None:
        end = self.size + len(lo)
        if end > len(self._lo):
            capacity = max(end, 2 * len(self._lo), 256)
            self._lo = np.concatenate([self._lo[: self.size], np.empty(capacity - self.size)])
            self._hi = np.concatenate([self._hi[: self.size], np.empty(capacity - self.size)])
        self._lo[self.size : end] = lo
        self._hi[self.size : end] = hi
        self.size = end

    @property
    def lo(self) -> np.ndarray:
        return self._lo[: self.size]

    @property
    def hi(self) -> np.ndarray:
        return self._hi[: self.size]


def _pairwise(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The next level's blocks from an even number of this level's blocks."""
    return np.minimum(lo[0::2], lo[1::2]), np.maximum(hi[0::2], hi[1::2])


def _interleave(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each bin as two points at its first x: (x, min), (x, max)."""
    return np.repeat(x, 2), np.column_stack([lo, hi]).reshape(-1)


class PeakDecimator:
    """Decimates one series (x increasing) to at most ``2 * max_bins + 3`` points per call.

    Call :meth:`reset` whenever points other than appended ones changed (the buffer thinned,
    was replaced or cleared); appends alone are picked up incrementally.
    """

    def __init__(self, max_bins: int = 2000) -> None:
        if max_bins < 2:
            raise ValueError(f"max_bins must be at least 2, got {max_bins}")
        self.max_bins = max_bins
        self._levels: list[_Level] = []  # index i holds level BASE_LEVEL + i
        self._seen = 0

    def reset(self) -> None:
        self._levels = []
        self._seen = 0

    def decimate(self, x: np.ndarray, y: np.ndarray, x_min: float | None = None,
                 x_max: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The points to draw for the x range [x_min, x_max] (None: from the start / to the end)."""
        n = len(x)
        if n < self._seen:  # the caller forgot reset() after a shrink: start over rather than lie
            self.reset()
        self._seen = n
        start = 0 if x_min is None else max(int(np.searchsorted(x, x_min, side="right")) - 1, 0)
        stop = n if x_max is None else min(int(np.searchsorted(x, x_max, side="left")) + 1, n)
        count = stop - start
        if count <= 2 * self.max_bins:
            return x[start:stop], y[start:stop]
        level = max(int(np.ceil(np.log2(count / self.max_bins))), 1)
        block = 1 << level
        first, last = start >> level, -(-stop // block)  # blocks touching [start, stop)
        if level < BASE_LEVEL:  # a short slice: compute its blocks directly
            lo, hi = self._blocks_from_raw(y, first * block, min(last * block, n), block)
        else:
            self._update(y, level)
            cached = self._levels[level - BASE_LEVEL]
            complete = min(last, cached.size)
            lo, hi = cached.lo[first:complete], cached.hi[first:complete]
            if last > cached.size:  # the last block is still filling: take its points as they are
                tail = y[cached.size * block :]
                lo, hi = np.append(lo, tail.min()), np.append(hi, tail.max())
        xs, ys = _interleave(x[first * block : n : block][: len(lo)], lo, hi)
        # A bin sits at its first step; the slice's last point closes the curve where it really ends.
        return np.append(xs, x[stop - 1]), np.append(ys, y[stop - 1])

    @staticmethod
    def _blocks_from_raw(y: np.ndarray, begin: int, end: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        whole = (end - begin) // block * block
        body = y[begin : begin + whole].reshape(-1, block)
        lo, hi = body.min(axis=1), body.max(axis=1)
        if begin + whole < end:
            rest = y[begin + whole : end]
            lo, hi = np.append(lo, rest.min()), np.append(hi, rest.max())
        return lo, hi

    def _update(self, y: np.ndarray, level: int) -> None:
        """Bring the cached levels up to ``level`` up to date with the points appended since."""
        while len(self._levels) <= level - BASE_LEVEL:
            self._levels.append(_Level())
        base = self._levels[0]
        block = 1 << BASE_LEVEL
        complete = len(y) // block
        if complete > base.size:
            body = y[base.size * block : complete * block].reshape(-1, block)
            base.extend(body.min(axis=1), body.max(axis=1))
        for finer, coarser in zip(self._levels, self._levels[1:]):
            pairs = finer.size // 2
            if pairs > coarser.size:
                lo = finer.lo[2 * coarser.size : 2 * pairs]
                hi = finer.hi[2 * coarser.size : 2 * pairs]
                coarser.extend(*_pairwise(lo, hi))
