"""Shared by the benchmarks that report memory: the peak resident set size of this process."""

from __future__ import annotations

import threading

import psutil


class RssSampler:
    """Peak resident set size of this process, sampled on a background thread."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self._process = psutil.Process()
        self._interval = interval_s
        self.peak = self.now()
        self._lock = threading.Lock()  # so a reset is never overwritten by a sample taken before it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return int(self._process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                self.peak = max(self.peak, self.now())

    def reset(self) -> None:
        with self._lock:
            self.peak = self.now()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
