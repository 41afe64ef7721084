"""`grpcchat serve` tunes the garbage collector once it is up (see grpcchat.server.collector);
the effect on latency is measured by the benchmarks, not here."""

from __future__ import annotations

import gc

from grpcchat.server.collector import THRESHOLDS, tune_for_serving


def test_serving_freezes_what_exists_and_collects_young_objects_in_larger_batches() -> None:
    before = gc.get_threshold()
    try:
        tune_for_serving()
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 0
        assert THRESHOLDS[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
