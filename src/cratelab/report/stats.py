"""The report's statistics: t intervals and tests over seeds (difference and equivalence), Holm's step-down
levels, seeds needed for 80% power, linear contrasts between conditions, and a hierarchical bootstrap over seeds
and neurons (a diagnostic: how much of a contrast's spread comes from sampling neurons). Pure functions of numbers
and arrays, so tests can check them against SciPy, statsmodels' conventions and brute force.

Every reported number is a *contrast*: per seed, a weighted sum of the runs of a few conditions (weight 1 for
a condition's mean, +1/-1 for a paired difference, least-squares weights for a slope or a curvature), then a
mean over the seeds that have all those runs. Pairing by seed removes seed-to-seed variation shared by the
conditions; seeds are the unit of replication, so every decision rests on the t test over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import chi2, nct as noncentral_t, t as student_t


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
    sd: float | None = None  # the standard deviation of the seed values (n >= 2)

    @property
    def has_ci(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def significant(self) -> bool | None:
        """Whether the interval excludes 0 (unadjusted); None without an interval."""
        if not self.has_ci or math.isnan(self.low) or math.isnan(self.high):
            return None
        return not (self.low <= 0.0 <= self.high)


# ---------------------------------------------------------------- Student's t

def t_cdf(t: float, df: float) -> float:
    return float(student_t.cdf(t, df))


def t_critical(confidence: float, df: int) -> float:
    """Two-sided critical value: P(|T_df| <= t) = confidence."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(student_t.ppf((1.0 + confidence) / 2.0, df))


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
    if not se > 0.0:  # identical values: no spread to test against (a mean of 3 equal seeds is not "certain")
        return Interval(mean, None, None, n, f"{n} seeds with identical values (zero variance): no test", sd=0.0)
    half = t_critical(confidence, n - 1) * se
    return Interval(mean, mean - half, mean + half, n, f"t over {n} seeds (df {n - 1})", t_p_value(mean, se, n - 1),
                    sd=se * math.sqrt(n))


def t_p_value(mean: float, se: float, df: int) -> float:
    """Two-sided p-value of t = mean / se under Student's t with df degrees of freedom (the test whose
    inversion is mean_ci's interval); se > 0."""
    return float(2.0 * student_t.sf(abs(mean) / se, df))


def equivalence_p_value(mean: float, se: float, df: int, margin: float) -> float:
    """Two one-sided t tests (TOST) of |true mean| >= margin: the larger of the p-values of "mean <= -margin"
    and "mean >= margin". p <= alpha exactly when the (1 - 2 alpha) t interval lies within (-margin, margin)."""
    return float(max(student_t.sf((mean + margin) / se, df), student_t.cdf((mean - margin) / se, df)))


def t_interval(mean: float, se: float, df: int, confidence: float) -> tuple[float, float]:
    half = t_critical(confidence, df) * se
    return mean - half, mean + half


# ---------------------------------------------------------------- seeds needed (power of the paired t test)

MAX_SEEDS = 10_000  # seeds_needed beyond this is reported as infinite (no finite study decides it)


def _tail(value: float) -> float:
    """A noncentral-t tail probability; SciPy returns NaN for some far tails, which are 0 for any power."""
    return 0.0 if math.isnan(value) else float(value)


def difference_power(n: int, effect: float, sd: float, alpha: float) -> float:
    """Power of the two-sided one-sample t test at level alpha with n seeds, true mean `effect`, SD `sd`
    (noncentral t)."""
    df, shift = n - 1, abs(effect) / (sd / math.sqrt(n))
    critical = student_t.ppf(1.0 - alpha / 2.0, df)
    return _tail(noncentral_t.sf(critical, df, shift)) + _tail(noncentral_t.cdf(-critical, df, shift))


def equivalence_power(n: int, effect: float, sd: float, margin: float, alpha: float) -> float:
    """Power of TOST at level alpha with n seeds when the true mean is `effect` (|effect| < margin for any
    power): 1 - P(miss the lower test) - P(miss the upper test), a lower bound that is tight at useful powers."""
    df, se = n - 1, sd / math.sqrt(n)
    critical = student_t.ppf(1.0 - alpha, df)
    miss_low = _tail(noncentral_t.cdf(critical, df, (effect + margin) / se))
    miss_high = _tail(noncentral_t.sf(-critical, df, (effect - margin) / se))
    return max(0.0, 1.0 - miss_low - miss_high)


def seeds_needed(power_at: Callable[[int], float], target: float = 0.8) -> int | None:
    """The fewest seeds (>= 2) whose power reaches `target` (power grows with n); None beyond MAX_SEEDS."""
    if power_at(MAX_SEEDS) < target:
        return None
    low, high = 2, MAX_SEEDS
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if power_at(mid) >= target else (mid + 1, high)
    return low


def sd_upper_bound(sd: float, n: int, confidence: float = 0.8) -> float:
    """One-sided upper confidence bound of a standard deviation estimated from n values (chi-square, n - 1 df):
    the SD a power calculation should allow for when it rests on a few seeds."""
    return sd * math.sqrt((n - 1) / chi2.ppf(1.0 - confidence, n - 1))


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


def holm_levels(p_values: Sequence[float], alpha: float) -> tuple[list[bool], list[float]]:
    """Holm's step-down test at family-wise level alpha, in the input order: whether each hypothesis is rejected,
    and the level it was tested at. With the p-values sorted ascending, the j-th (from 0) is tested at
    alpha / (m - j) while every earlier one was rejected; once one is not, it and all later ones keep that
    level and are not rejected. An interval at a test's own level therefore excludes what it rejected, and only
    that: intervals and decisions agree (the first level is Bonferroni's alpha / m)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    rejected, levels = [False] * m, [alpha] * m
    stopped: float | None = None
    for j, i in enumerate(np.argsort(p, kind="stable")):
        level = stopped if stopped is not None else alpha / (m - j)
        levels[i] = level
        if stopped is None and p[i] <= level:
            rejected[i] = True
        else:
            stopped = level
    return rejected, levels


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg q-values, in the input order: q(i) = min over j >= i of m p(j) / j (sorted ascending,
    j from 1), capped at 1. For exploratory contrasts: a false-discovery rate, not a decision."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty(m)
    out[order] = q
    return out.tolist()


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


def curvature_weights(x: Sequence[float]) -> np.ndarray:
    """Weights w with w @ y = c of the least-squares fit y = a + b x + c x^2 (>= 3 distinct x): with x = log2 of
    a factor, the change of the slope per doubling, per doubling (0 for a straight line in log2 x)."""
    x = np.asarray(x, dtype=np.float64)
    design = np.stack([np.ones_like(x), x - x.mean(), (x - x.mean()) ** 2], axis=1)
    return np.linalg.pinv(design)[2]


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
