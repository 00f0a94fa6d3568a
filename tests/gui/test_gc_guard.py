"""The GUI-thread garbage collector keeps the interpreter's rule for the oldest generation."""

from __future__ import annotations

import gc

import pytest
from PySide6.QtCore import QObject

from lmstudio_app.gui import gc_guard


@pytest.fixture
def collector(qapp):
    owner = QObject()
    made = gc_guard.GuiThreadCollector(owner)
    made.timer.stop()  # driven by hand below
    made.thresholds = (0, 0, 0)  # every generation due as soon as its count is positive
    yield made
    owner.deleteLater()


def make_due(collector: gc_guard.GuiThreadCollector) -> None:
    """Counts that pass every (zero) threshold: young objects, a gen-0 and a gen-1 collection."""
    gc.collect(1)  # counts (0, 0, 1)
    gc.collect(0)  # counts (0, 1, 1)
    keep.extend(Young() for _ in range(50))  # counts (~50, 1, 1): young objects, with room for frees
    assert min(gc.get_count()) > 0


class Young:
    """Instances are allocated by the collector's allocator (lists may come from a free list)."""


keep: list[Young] = []


def test_the_oldest_generation_waits_until_it_has_grown_by_a_quarter(collector):
    collector.long_lived_total = 10**9  # far more long-lived objects than will ever be new
    make_due(collector)
    collector.collect()
    assert collector.collections == [0, 1, 0]  # the middle generation, not a full walk

    collector.long_lived_total = 0  # now everything in the oldest generation is new
    make_due(collector)
    collector.collect()
    assert collector.collections == [0, 1, 1]
    assert collector.long_lived_total > 0  # measured again after it: the survivors


def test_young_garbage_alone_collects_the_young_generation(collector):
    collector.thresholds = (0, 10**6, 10**6)
    keep.extend(Young() for _ in range(50))
    collector.collect()
    assert collector.collections == [1, 0, 0]


def test_objects_alive_when_the_window_is_shown_are_frozen(main_window):
    assert gc.get_freeze_count() > 0
