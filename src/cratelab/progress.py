"""Progress of long work as plain words, for logs as much as terminals: how long something took and, at the pace
so far, how long is left (interpret's scoring lines, a sweep's line per finished run, the report's times)."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """'1h 05m 07s', '3m 07s', '42s'."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def time_left(done: int, total: int, elapsed_s: float, at_once: int = 1) -> str:
    """', about 1h 05m 07s left' at the pace of the ``done`` of ``total`` so far, ``at_once`` of them running at a
    time; '' once all are done. When the first ends, the others that started with it have run as long: until
    ``at_once`` have ended, the pace is that of ``at_once`` (not of one run in that time, a pace off by that
    factor)."""
    if not 0 < done < total:
        return ""
    return f", about {duration(elapsed_s / max(done, min(at_once, total)) * (total - done))} left"
