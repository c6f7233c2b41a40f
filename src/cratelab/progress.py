"""Progress of long work as plain words, for logs as much as terminals: how long something took and, at the pace
so far, how long is left (interpret's scoring lines, a sweep's line per finished run, the report's times)."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """'1h 05m 07s', '3m 07s', '42s'."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def time_left(done: int, total: int, elapsed_s: float) -> str:
    """', about 1h 05m 07s left' at the pace of the ``done`` of ``total`` so far; '' once all are done."""
    return f", about {duration(elapsed_s / done * (total - done))} left" if 0 < done < total else ""
