"""progress.py: durations in words and the time left at the pace so far, at their edges."""

import pytest

from cratelab.progress import duration, time_left


@pytest.mark.parametrize("seconds,words", [(0, "0s"), (0.4, "0s"), (59.4, "59s"), (59.6, "1m 00s"), (61, "1m 01s"),
                                           (3599.6, "1h 00m 00s"), (3 * 3600 + 5 * 60 + 7, "3h 05m 07s"),
                                           (100 * 3600, "100h 00m 00s")])
def test_duration(seconds, words):
    assert duration(seconds) == words


@pytest.mark.parametrize("done,total,elapsed,at_once,words", [
    (1, 4, 10.0, 1, ", about 30s left"), (3, 4, 30.0, 1, ", about 10s left"), (4, 4, 40.0, 1, ""), (0, 4, 5.0, 1, ""),
    (5, 4, 5.0, 1, ""), (1, 40, 3600.0, 1, ", about 39h 00m 00s left"),
    # two at a time, each an hour: when the first ends the second has run an hour too, 19.5 pairs are left
    (1, 40, 3600.0, 2, ", about 19h 30m 00s left"), (2, 40, 3600.0, 2, ", about 19h 00m 00s left"),
    (10, 40, 5 * 3600.0, 2, ", about 15h 00m 00s left"),
    (1, 3, 60.0, 8, ", about 40s left"),  # more workers than runs: the pace of the three that started together
    (1, 40, 3600.0, 0, ", about 39h 00m 00s left")])
def test_time_left(done, total, elapsed, at_once, words):
    assert time_left(done, total, elapsed, at_once) == words
