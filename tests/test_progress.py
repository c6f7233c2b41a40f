"""progress.py: durations in words and the time left at the pace so far, at their edges."""

import pytest

from cratelab.progress import duration, time_left


@pytest.mark.parametrize("seconds,words", [(0, "0s"), (0.4, "0s"), (59.4, "59s"), (59.6, "1m 00s"), (61, "1m 01s"),
                                           (3599.6, "1h 00m 00s"), (3 * 3600 + 5 * 60 + 7, "3h 05m 07s"),
                                           (100 * 3600, "100h 00m 00s")])
def test_duration(seconds, words):
    assert duration(seconds) == words


@pytest.mark.parametrize("done,total,elapsed,words", [
    (1, 4, 10.0, ", about 30s left"), (3, 4, 30.0, ", about 10s left"), (4, 4, 40.0, ""), (0, 4, 5.0, ""),
    (5, 4, 5.0, ""), (1, 40, 3600.0, ", about 39h 00m 00s left")])
def test_time_left(done, total, elapsed, words):
    assert time_left(done, total, elapsed) == words
