"""Do the answers hold along training? Each effect of the report estimated at every tracked point (one
Estimator per point, over that point's checkpoints), a verdict per declared answer that is itself a test, and how
far each condition's val loss was still falling when training stopped.

The verdict of a declared answer (effect, metric, with its margin), over the last two or three tracked points:
each seed's change of the contrast per doubling of training tokens (the least-squares slope of its values against
log2 tokens), and a t interval of those changes over seeds:
- settled: the 90% interval lies within ±margin (the change per doubling is too small to matter: two one-sided
  tests at 5%, as an equivalence test);
- changing: otherwise, when the 95% interval excludes 0;
- undetermined: anything else, including fewer than two seeds or points (no test, so no claim);
- not tracked: no estimate at any tracked point (a condition without checkpoints along training, such as an SAE arm).
Comparing significance at two points is not a test of change (significant at one and not at the other can be
noise); the per-seed change is paired, so seed effects shared by the points cancel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .analysis import Contrast, Estimator, Metric, run_value
from .load import RunResult, Sweep, TrackPoint
from .stats import Interval, mean_ci, slope_weights, t_interval

SETTLED, CHANGING, UNDETERMINED, UNTRACKED = "settled", "changing", "undetermined", "not tracked"
VERDICTS = (SETTLED, CHANGING, UNDETERMINED, UNTRACKED)
LAST_POINTS = 3  # the change is measured over at most this many of the last tracked points
SETTLED_CONFIDENCE, CHANGING_CONFIDENCE = 0.90, 0.95
# a condition is "still learning" when its val loss fell by more than this share over the last quarter of
# training (a converged run's loss moves by evaluation noise only, well under 1% at the report's eval sizes)
STILL_LEARNING = 0.01


@dataclass(frozen=True)
class TrackedEstimate:
    """One effect on one metric at each tracked point, and (declared answers) the change over the last points."""

    intervals: list[Interval]  # one per tracked point, in training order (raw intervals)
    change: Interval | None  # per doubling of training tokens over the last points: 95% t interval over seeds
    settled_band: tuple[float, float] | None  # the change's 90% interval
    verdict: str | None  # None: not a declared answer (no verdict is claimed)


def point_estimators(points: list[TrackPoint], confidence: float, seed: int, n_boot: int) -> list[Estimator]:
    return [Estimator(point.sweep, confidence=confidence, seed=seed, n_boot=n_boot) for point in points]


def change_per_doubling(estimators: list[Estimator], tokens: list[float], metric: Metric,
                        contrast: Contrast) -> dict[int, float]:
    """Per seed with a value at each of the last LAST_POINTS points: the least-squares slope of the contrast against
    log2 training tokens."""
    last = list(range(len(estimators)))[-LAST_POINTS:]
    values = [estimators[i].seed_values(metric, contrast) for i in last]
    seeds = sorted(set.intersection(*(set(v) for v in values))) if values else []
    weights = slope_weights([math.log2(tokens[i]) for i in last])
    return {seed: float(sum(w * v[seed] for w, v in zip(weights, values))) for seed in seeds}


def track_verdict(changes: list[float], margin: float) -> tuple[str, Interval, tuple[float, float] | None]:
    """The verdict of the module docstring from the per-seed changes per doubling."""
    change = mean_ci(changes, CHANGING_CONFIDENCE)
    if not change.has_ci:
        return UNDETERMINED, change, None
    low, high = t_interval(change.estimate, change.sd / math.sqrt(change.n), change.n - 1, SETTLED_CONFIDENCE)
    if -margin < low and high < margin:
        return SETTLED, change, (low, high)
    if change.significant:
        return CHANGING, change, (low, high)
    return UNDETERMINED, change, (low, high)


def tracked_estimate(estimators: list[Estimator], tokens: list[float], metric: Metric, contrast: Contrast,
                     margin: float | None) -> TrackedEstimate:
    """``margin``: the declared answer's (None for an exploratory effect: estimates only, no verdict)."""
    intervals = [est.estimate(metric, contrast) for est in estimators]
    if all(iv.estimate is None for iv in intervals):
        return TrackedEstimate(intervals, None, None, UNTRACKED if margin is not None else None)
    if margin is None or len(estimators) < 2:
        return TrackedEstimate(intervals, None, None, UNDETERMINED if margin is not None else None)
    verdict, change, band = track_verdict(list(change_per_doubling(estimators, tokens, metric, contrast).values()),
                                          margin)
    return TrackedEstimate(intervals, change, band, verdict)


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


def matched_loss(points: list[TrackPoint], arm, reference, metric: Metric, loss: Metric,
                 confidence: float) -> tuple[Interval, Interval]:
    """Descriptive: arm minus reference on ``metric`` at matched val loss, per seed, from the tracked points. First:
    the arm's value interpolated (linearly in val loss) at the val loss the reference reaches at the end, minus the
    reference's final value; second: the arm's final value minus the reference's interpolated at the arm's final
    val loss. A seed counts where the loss to match lies within the other's tracked range (no extrapolation)."""
    def curve(condition, seed):
        pairs = []
        for point in points:
            run = point.sweep.by_seed(condition).get(seed)
            values = (run_value(run, loss), run_value(run, metric)) if run else (None, None)
            if None not in values:
                pairs.append(values)
        return pairs

    def at(pairs, target):
        losses = [p[0] for p in pairs]
        if not pairs or not min(losses) <= target <= max(losses):
            return None
        order = np.argsort(losses)
        return float(np.interp(target, np.asarray(losses)[order], np.asarray([p[1] for p in pairs])[order]))

    at_reference_loss, at_arm_loss = [], []
    seeds = sorted({r.seed for point in points for r in point.sweep.runs})
    for seed in seeds:
        a, r = curve(arm, seed), curve(reference, seed)
        if not a or not r:
            continue
        if (value := at(a, r[-1][0])) is not None:
            at_reference_loss.append(value - r[-1][1])
        if (value := at(r, a[-1][0])) is not None:
            at_arm_loss.append(a[-1][1] - value)
    return mean_ci(at_reference_loss, confidence), mean_ci(at_arm_loss, confidence)
