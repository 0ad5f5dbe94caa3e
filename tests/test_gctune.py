"""``shared.gctune.frozen``: freezes the startup heap and raises the young threshold, and undoes both."""

import gc

from shared import gctune


def test_frozen_then_restored() -> None:
    before = gc.get_threshold()
    with gctune.frozen(young_threshold=12_345):
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (12_345, *before[1:])
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
