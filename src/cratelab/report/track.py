"""Do the answers hold along training? Each effect of the report estimated at every tracked point (one
Estimator per point, over that point's checkpoints), a verdict per (effect, metric) from the last two
points, and how far each condition's val loss was still falling when training stopped.

Verdicts, from the last two tracked points (A before B), where "significant" is the report's own test at
that point (raw CI excludes 0 and Holm-adjusted p <= 1 - confidence, over that point's family):
- flipped: the estimate changed sign and is significant at A or at B;
- stable: the same significance at A and B, and the same sign (or significant at neither: no effect at both);
- still moving: anything else (the same sign but the significance changed), or fewer than two points with an
  interval (a single tracked point, or one seed: no test, so no claim that the answer holds);
- not tracked: no estimate at any tracked point (a condition with no checkpoints along training, such as an
  SAE arm, whose SAEs are trained on the final model only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .analysis import Contrast, Estimator, Metric
from .load import RunResult, Sweep, TrackPoint
from .stats import Interval

STABLE, MOVING, FLIPPED, UNTRACKED = "stable", "still moving", "flipped", "not tracked"
# a condition is "still learning" when its val loss fell by more than this share over the last quarter of
# training (a converged run's loss moves by evaluation noise only, well under 1% at the report's eval sizes)
STILL_LEARNING = 0.01


@dataclass(frozen=True)
class TrackedEstimate:
    """One effect on one metric at each tracked point, with its verdict."""

    intervals: list[Interval]  # one per tracked point, in training order
    significant: list[bool | None]  # the report's test at each point (None: no interval)
    verdict: str


def point_estimators(points: list[TrackPoint], contrasts: list[Contrast], metrics: list[Metric],
                     confidence: float, seed: int, n_boot: int) -> list[Estimator]:
    """An Estimator per tracked point, its Holm family the report's (every contrast, every metric)."""
    estimators = []
    for point in points:
        est = Estimator(point.sweep, confidence=confidence, seed=seed, n_boot=n_boot)
        est.set_family(contrasts, metrics)
        estimators.append(est)
    return estimators


def sign(value: float | None) -> int:
    return 0 if value is None else int(np.sign(value))


def track_verdict(intervals: list[Interval], significant: list[bool | None]) -> str:
    """The verdict of the module docstring, from the last two points that have an interval."""
    if all(iv.estimate is None for iv in intervals):
        return UNTRACKED
    known = [(iv, sig) for iv, sig in zip(intervals, significant) if iv.has_ci]
    if len(known) < 2:
        return MOVING
    (a, sig_a), (b, sig_b) = known[-2:]
    same_sign = sign(a.estimate) == sign(b.estimate)
    if not same_sign and (sig_a or sig_b):
        return FLIPPED
    if bool(sig_a) == bool(sig_b) and (same_sign or not sig_a):
        return STABLE
    return MOVING


def tracked_estimate(estimators: list[Estimator], metric: Metric, contrast: Contrast) -> TrackedEstimate:
    intervals = [est.estimate(metric, contrast) for est in estimators]
    significant = [est.significant(metric, contrast) for est in estimators]
    return TrackedEstimate(intervals, significant, track_verdict(intervals, significant))


def last_quarter_drop(curve: list[tuple[float, float]]) -> float | None:
    """Relative val-loss drop over the last quarter of training, (L(3/4 T) - L(T)) / L(3/4 T), with L
    interpolated linearly between evaluations; None without an evaluation at or before 3/4 of the run."""
    if len(curve) < 2:
        return None
    tokens, losses = np.array([t for t, _ in curve]), np.array([v for _, v in curve])
    at = 0.75 * tokens[-1]
    if tokens[0] > at:
        return None
    start = float(np.interp(at, tokens, losses))
    return (start - float(losses[-1])) / start


def condition_drops(sweep: Sweep) -> dict[str, tuple[float | None, int]]:
    """Per condition: the mean last-quarter drop over its seeds, and how many seeds have a curve for it."""
    drops: dict[str, tuple[float | None, int]] = {}
    for condition in sweep.conditions:
        runs: list[RunResult] = list(sweep.by_seed(condition).values())
        values = [d for r in runs if (d := last_quarter_drop(r.curve)) is not None]
        drops[condition.name] = (float(np.mean(values)) if values else None, len(values))
    return drops
