"""The report's statistics: t intervals over seeds, linear contrasts between conditions, and a hierarchical
bootstrap over seeds and neurons. Pure functions of numbers and arrays, so tests can check them against
NumPy and brute force.

Every reported number is a *contrast*: per seed, a weighted sum of the runs of a few conditions (weight 1 for
a condition's mean, +1/-1 for a paired difference, least-squares weights for a slope), then a mean over the
seeds that have all those runs. Pairing by seed removes seed-to-seed variation shared by the conditions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval; low/high are None when there is no interval, and
    `method` says how it was made or why there is none."""

    estimate: float | None
    low: float | None
    high: float | None
    n: int  # seeds (or seed pairs) behind the estimate
    method: str
    p_value: float | None = None  # two-sided t test of "mean = 0" on the same seed values; None below 2 seeds

    @property
    def has_ci(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def significant(self) -> bool | None:
        """Whether the interval excludes 0 (unadjusted); None without an interval."""
        if not self.has_ci:
            return None
        return not (self.low <= 0.0 <= self.high)


# ---------------------------------------------------------------- Student's t (no SciPy)

def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's continued fraction of the incomplete beta function (Numerical Recipes, betacf)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use symmetry on the other
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


def t_critical(confidence: float, df: int) -> float:
    """Two-sided critical value: P(|T_df| <= t) = confidence. Bisection on the exact CDF (df >= 1);
    for df > 1000 the normal quantile, which it equals to 3 decimals."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    p = (1.0 + confidence) / 2.0
    if df > 1000:
        return NormalDist().inv_cdf(p)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
        if high - low < 1e-12 * high:
            break
    return (low + high) / 2.0


# ---------------------------------------------------------------- seed-level intervals and contrasts

def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t interval over independent values (one per seed), df = n - 1."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Interval(None, None, None, 0, "no data")
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, None, None, 1, "1 seed: no confidence interval")
    se = float(x.std(ddof=1)) / math.sqrt(n)
    half = t_critical(confidence, n - 1) * se
    return Interval(mean, mean - half, mean + half, n, f"t over {n} seeds (df {n - 1})", t_p_value(mean, se, n - 1))


def t_p_value(mean: float, se: float, df: int) -> float:
    """Two-sided p-value of t = mean / se under Student's t with df degrees of freedom (the test whose
    inversion is mean_ci's interval). Identical seed values (se = 0) give p = 0, or 1 when the mean is 0."""
    if se == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    t = mean / se
    return regularized_beta(df / (df + t * t), df / 2.0, 0.5)  # = 2 P(T > |t|), without 1 - cdf's rounding


def holm_bonferroni(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: with the p-values sorted ascending,
    p_adj(i) = max over j <= i of min(1, (m - j + 1) p(j)) (i, j from 1; m tests). Rejecting every test
    with p_adj <= alpha controls the family-wise error rate at alpha, under any dependence."""
    p = np.asarray(p_values, dtype=np.float64)
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must be in [0, 1], got {list(p_values)}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted.tolist()


def contrast_by_seed(values: Sequence[Mapping[int, float]], weights: Sequence[float]) -> dict[int, float]:
    """Per seed present in every mapping (seed -> a condition's value): sum of weight * value. With
    weights (1, -1) these are the paired differences of two conditions."""
    seeds = sorted(set.intersection(*(set(v) for v in values))) if values else []
    return {seed: float(sum(w * v[seed] for w, v in zip(weights, values))) for seed in seeds}


def slope_weights(x: Sequence[float]) -> np.ndarray:
    """Weights w with w @ y = the least-squares slope of y on x (so a slope is a linear contrast)."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean()
    return centred / float(centred @ centred)


# ---------------------------------------------------------------- hierarchical bootstrap

def run_score(layers: Sequence[np.ndarray]) -> float:
    """A run's interpretability score as the sweep reports it: the mean over layers of each layer's mean
    neuron score (layers without a scored neuron left out)."""
    means = [float(np.mean(scores)) for scores in layers if len(scores)]
    if not means:
        raise ValueError("no scored neuron in any layer")
    return float(np.mean(means))


def resample_run_scores(layers: Sequence[np.ndarray], shape: tuple[int, ...],
                        rng: np.random.Generator) -> np.ndarray:
    """Run scores of neuron resamples, an array of `shape`: each entry resamples every layer's neurons
    with replacement (independently) and takes run_score of the resample."""
    kept = [np.asarray(scores, dtype=np.float64) for scores in layers if len(scores)]
    if not kept:
        raise ValueError("no scored neuron in any layer")
    total = np.zeros(shape)
    for scores in kept:
        total += scores[rng.integers(0, scores.size, size=shape + (scores.size,))].mean(axis=-1)
    return total / len(kept)


def hierarchical_bootstrap(resampled: Sequence[Sequence[np.ndarray]], weights: Sequence[float],
                           rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of a contrast's mean over seeds, resampling seeds, then neurons within each run.

    resampled[i][c] is an (n_boot, n_draws) array of neuron resamples (resample_run_scores) of seed i's run
    in condition c, with n_draws >= the number of seeds. Replicate b draws the seeds with replacement; its
    j-th draw uses column j of the neuron resamples, so a seed drawn twice gets two independent neuron
    resamples, as in a two-stage bootstrap. Returns the n_boot replicates.
    """
    per_seed = np.stack([sum(w * r for w, r in zip(weights, runs)) for runs in resampled])  # (seeds, boot, draws)
    n_seeds, n_boot, n_draws = per_seed.shape
    if n_draws < n_seeds:
        raise ValueError(f"{n_draws} neuron resamples per replicate for {n_seeds} seeds")
    picks = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    return per_seed[picks, np.arange(n_boot)[:, None], np.arange(n_seeds)[None, :]].mean(axis=1)


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(replicates, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


def envelope(t_interval: Interval, boot_low: float, boot_high: float) -> Interval:
    """The union of the t interval over seeds and the hierarchical-bootstrap interval.

    Why both: resampling only 3 seeds under-covers (the bootstrap spread of a 3-value mean is about its
    min-max range, ~75% coverage), while the t interval over per-seed scores is exact for normal seed effects
    and already contains neuron noise (each seed's score is a mean over sampled neurons) but leans on
    normality. A difference is called significant only when both intervals exclude 0. With one seed only
    the bootstrap over neurons is left, and the method says so.
    """
    if not t_interval.has_ci:
        return Interval(t_interval.estimate, boot_low, boot_high, t_interval.n,
                        "bootstrap over neurons only (1 seed: seed-to-seed variation not measured)")
    # the p-value is the t test's; the significance rule (Estimator.significant) also wants this union to exclude 0
    return Interval(t_interval.estimate, min(t_interval.low, boot_low), max(t_interval.high, boot_high),
                    t_interval.n, f"hierarchical bootstrap and t over {t_interval.n} seeds (union)",
                    t_interval.p_value)
