"""What the report estimates: the metrics, the contrasts between conditions, and their intervals.

A contrast maps conditions to weights ({c: 1} is c's mean, {c: 1, ref: -1} a paired difference); it is
evaluated per seed on the seeds that have a run of every condition in it, then averaged over those seeds.
Every metric gets a t interval over seeds (seeds are the unit of replication: decisions rest on it, decide.py);
interpretability metrics also get a hierarchical bootstrap over seeds and neurons, as a diagnostic of how much
of a contrast's spread comes from sampling neurons.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from ..layout import PROTOCOLS, interp_column
from ..config import curvature_key, interaction_key, level_text, main_key, slope_key
from ..config import SweepConfig
from ..sweep.design import Condition, condition_settings, grid_conditions
from .load import RunResult, Sweep
from .stats import (Interval, contrast_by_seed, curvature_weights, hierarchical_bootstrap, mean_ci,
                    percentile_interval, resample_run_scores, run_score, slope_weights)

Contrast = dict[Condition, float]


@dataclass(frozen=True)
class Metric:
    column: str  # results.csv column
    label: str
    digits: int
    scale: float = 1.0  # shown multiplied by this (correlations x 100, as in the paper)
    protocol: str | None = None  # interpretability metrics: the scoring protocol of the neuron scores

    def fmt(self, value: float | None, signed: bool = False) -> str:
        if value is None:
            return "n/a"
        return f"{value * self.scale:{'+' if signed else ''}.{self.digits}f}"


SEED_METRICS = (
    Metric("val_loss", "val loss (nats/token)", 4),
    Metric("bpb", "bits per byte", 4),
    Metric("zero_frac", "zero fraction", 4),
    Metric("l0", "L0 (active neurons/token)", 1),
    Metric("dead_frac", "dead fraction", 4),
)
INTERP_METRICS = tuple(Metric(interp_column(p), f"interp {p} (corr×100)", 2, 100.0, p) for p in PROTOCOLS)
METRICS = SEED_METRICS + INTERP_METRICS
# exact functions of another metric on the same runs (bpb = val loss x a constant of the fixed eval windows;
# L0 = width x (1 - zero fraction)): reported, never tested, so no answer is counted twice
DERIVED_METRICS = {"bpb": "val_loss", "l0": "zero_frac"}
TESTED_METRICS = tuple(m for m in METRICS if m.column not in DERIVED_METRICS)


def has_neuron_scores(run: RunResult, protocol: str) -> bool:
    return any(len(scores) for scores in run.neuron_scores.get(protocol, []))


def run_value(run: RunResult, metric: Metric) -> float | None:
    """A run's value of a metric; for interpretability, recomputed from the neuron scores when present,
    so the point estimate and the bootstrap rest on the same numbers."""
    if metric.protocol and has_neuron_scores(run, metric.protocol):
        return run_score(run.neuron_scores[metric.protocol])
    return run.values.get(metric.column)


def _stable_seed(*parts: str) -> int:
    """An RNG seed that depends on names only, so each interval is the same whatever else is computed."""
    return zlib.crc32("\x1f".join(parts).encode("utf-8"))


@dataclass(frozen=True)
class Diagnostic:
    """The hierarchical bootstrap of an interpretability contrast (Estimator.neuron_sampling)."""

    low: float
    high: float
    neuron_share: float | None  # share of the seed-to-seed variance that neuron sampling alone produces


class Estimator:
    """Intervals of contrasts over one sweep, with the neuron resamples of each run cached."""

    def __init__(self, sweep: Sweep, confidence: float = 0.95, seed: int = 0, n_boot: int = 2000):
        self.sweep, self.confidence, self.seed, self.n_boot = sweep, confidence, seed, n_boot
        self._runs = {c: sweep.by_seed(c) for c in sweep.conditions}
        self._n_draws = max(1, len(sweep.seeds))
        self._resampled: dict[tuple[str, str], np.ndarray] = {}
        self._estimates: dict[tuple, Interval] = {}
        self._diagnostics: dict[tuple, Diagnostic | None] = {}

    def runs(self, condition: Condition) -> dict[int, RunResult]:
        return self._runs.get(condition, {})

    def seed_values(self, metric: Metric, contrast: Contrast) -> dict[int, float]:
        """The contrast's value per seed, for the seeds where every condition has a run with the metric."""
        per_condition = [{seed: v for seed, run in self.runs(c).items() if (v := run_value(run, metric)) is not None}
                         for c in contrast]
        return contrast_by_seed(per_condition, list(contrast.values()))

    def estimate(self, metric: Metric, contrast: Contrast) -> Interval:
        """Mean of the contrast over seeds, with its interval (memoized: tables and plots ask twice)."""
        key = (metric, tuple(contrast.items()))
        if key not in self._estimates:
            self._estimates[key] = self._estimate(metric, contrast)
        return self._estimates[key]

    def _estimate(self, metric: Metric, contrast: Contrast) -> Interval:
        return mean_ci(list(self.seed_values(metric, contrast).values()), self.confidence)

    def neuron_sampling(self, metric: Metric, contrast: Contrast) -> Diagnostic | None:
        """For an interpretability contrast with neuron scores in every run: the hierarchical bootstrap interval
        (seeds, then neurons within each run) and the share of the seed-to-seed variance that neuron sampling
        alone would produce (mean over seeds of the resampling variance of the seed's contrast, over the variance
        of the contrast across seeds). A diagnostic: decisions use the t test over seeds, whose spread already
        contains the neuron noise."""
        key = (metric, tuple(contrast.items()))
        if key in self._diagnostics:
            return self._diagnostics[key]
        values = self.seed_values(metric, contrast)
        units = [[self.runs(c)[seed] for c in contrast] for seed in values]
        diagnostic = None
        if metric.protocol and len(values) >= 2 and all(has_neuron_scores(r, metric.protocol)
                                                        for unit in units for r in unit):
            resampled = [[self._resample(r, metric.protocol) for r in unit] for unit in units]
            name = "|".join(f"{c.name}:{w:g}" for c, w in contrast.items())
            rng = np.random.default_rng([self.seed, _stable_seed("seeds", metric.column, name)])
            low, high = percentile_interval(hierarchical_bootstrap(resampled, list(contrast.values()), rng),
                                            self.confidence)
            within = float(np.mean([np.var(sum(w * r[:, 0] for w, r in zip(contrast.values(), unit)), ddof=1)
                                    for unit in resampled]))
            between = float(np.var(list(values.values()), ddof=1))
            diagnostic = Diagnostic(low, high, within / between if between > 0 else None)
        self._diagnostics[key] = diagnostic
        return diagnostic

    def _resample(self, run: RunResult, protocol: str) -> np.ndarray:
        key = (run.name, protocol)
        if key not in self._resampled:
            rng = np.random.default_rng([self.seed, _stable_seed("neurons", run.name, protocol)])
            self._resampled[key] = resample_run_scores(run.neuron_scores[protocol], (self.n_boot, self._n_draws), rng)
        return self._resampled[key]


# ---------------------------------------------------------------- the contrasts the report asks for

def mean_of(condition: Condition) -> Contrast:
    return {condition: 1.0}


def difference(condition: Condition, reference: Condition) -> Contrast:
    """condition - reference, paired by seed."""
    return {condition: 1.0, reference: -1.0}


@dataclass(frozen=True)
class Effect:
    """One contrast of the report's family: what it estimates and its weights."""

    kind: str  # "main" (a level against the reference level), "slope" (per doubling), "curvature", "interaction", "arm"
    factors: tuple[str, ...]  # the factors it is about (none for an arm)
    key: str  # how [sweep.questions] and answers.csv name it (config.main_key, ...): e.g. "model.qkv = separate"
    title: str  # e.g. "model.qkv: separate − shared"
    description: str  # how it is computed, in words
    contrast: Contrast


class Design:
    """The sweep's grid as the report reads it: factors, levels, reference and the cell of each combination (every
    planned condition, whether or not it has runs yet: a contrast over missing runs has no estimate)."""

    def __init__(self, design: SweepConfig):
        conditions = grid_conditions(design)
        self.factors = {key: list(levels) for key, levels in design.factors.items()}
        self.reference = design.reference_levels()
        self.arms = [c for c in conditions if c.arm]
        self._cells = {self._key(c.levels): c for c in conditions if not c.arm}
        self.reference_condition = self._cells[self._key(self.reference)]
        self._design = design

    @staticmethod
    def _key(levels: dict) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, level_text(v)) for k, v in levels.items()))

    def cell(self, levels: dict) -> Condition | None:
        """The grid cell of these levels (None where the sweep has no run of it)."""
        return self._cells.get(self._key(levels))

    def others(self, *factors: str) -> list[dict]:
        """Every combination of the levels of the factors not named."""
        rest = [key for key in self.factors if key not in factors]
        combos = [[]]
        for key in rest:
            combos = [c + [(key, level)] for c in combos for level in self.factors[key]]
        return [dict(c) for c in combos]

    def settings(self, condition: Condition) -> dict:
        return condition_settings(self._design, condition)

    def describe(self, arm: Condition) -> str:
        """An arm's settings in words; an SAE arm's say which condition's runs its SAEs are trained on."""
        spec = next(a for a in self._design.arms if a.name == arm.name)
        if not spec.derived:
            return settings_text(self.settings(arm))
        sae = ", ".join(f"sae.{key} = {level_text(value)}" for key, value in spec.sae.items())
        return (f"an SAE on each layer's interpreted neurons of the {spec.of} runs"
                + "".join(f"; {text}" for text in (sae, settings_text(spec.set)) if text))

    def is_numeric(self, factor: str) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.factors[factor])


def _average(design: Design, terms: list[tuple[dict, float]], fixed: tuple[str, ...]) -> Contrast | None:
    """sum_i w_i * cell(levels_i), averaged over every combination of the other factors' levels; None when
    a cell it needs has no run."""
    others = design.others(*fixed)
    contrast: Contrast = {}
    for rest in others:
        for levels, weight in terms:
            cell = design.cell(levels | rest)
            if cell is None:
                return None
            contrast[cell] = contrast.get(cell, 0.0) + weight / len(others)
    return contrast


def averaged_over(design: Design, fixed: tuple[str, ...]) -> str:
    rest = [key for key in design.factors if key not in fixed]
    return f", averaged over {' × '.join(rest)}" if rest else ""


def design_effects(sweep: SweepConfig) -> list[Effect]:
    """Every contrast the report estimates, in one list: for each factor its main effect (each level against the
    reference level; for a numeric factor with >= 3 positive levels also the slope per doubling and the
    curvature), each two-factor interaction, each arm against the reference condition. Each is paired by seed.
    Their keys are the names [sweep.questions] may use (config.main_key and friends)."""
    design = Design(sweep)
    ref = design.reference
    effects: list[Effect] = []
    for factor, levels in design.factors.items():
        for level in levels:
            if level_text(level) == level_text(ref[factor]):
                continue
            contrast = _average(design, [({factor: level}, 1.0), ({factor: ref[factor]}, -1.0)], (factor,))
            if contrast:
                effects.append(Effect("main", (factor,), main_key(factor, level),
                                      f"{factor}: {level_text(level)} − {level_text(ref[factor])}",
                                      f"{factor} = {level_text(level)} minus {factor} = {level_text(ref[factor])}"
                                      f"{averaged_over(design, (factor,))}", contrast))
        positive = [v for v in levels if design.is_numeric(factor) and v > 0]
        if design.is_numeric(factor) and len(levels) >= 3 and len(positive) >= 2:
            levels_text = f"{{{', '.join(map(level_text, positive))}}}{averaged_over(design, (factor,))}"
            weights = slope_weights([math.log2(v) for v in positive])
            contrast = _average(design, [({factor: v}, float(w)) for v, w in zip(positive, weights)], (factor,))
            if contrast:
                effects.append(Effect("slope", (factor,), slope_key(factor), f"{factor}: per doubling",
                                      f"least-squares slope over log2 {factor} for {factor} in {levels_text}",
                                      contrast))
            weights = curvature_weights([math.log2(v) for v in positive])
            contrast = _average(design, [({factor: v}, float(w)) for v, w in zip(positive, weights)], (factor,))
            if contrast and len(positive) >= 3:
                effects.append(Effect("curvature", (factor,), curvature_key(factor), f"{factor}: curvature",
                                      f"quadratic coefficient of a least-squares fit over log2 {factor} (the change "
                                      f"of the slope per doubling; 0 for a straight line, a U or ∩ shape otherwise) "
                                      f"for {factor} in {levels_text}", contrast))
    keys = list(design.factors)
    for i, first in enumerate(keys):
        for second in keys[i + 1:]:
            for a in design.factors[first]:
                for b in design.factors[second]:
                    ra, rb = ref[first], ref[second]
                    if level_text(a) == level_text(ra) or level_text(b) == level_text(rb):
                        continue
                    terms = [({first: a, second: b}, 1.0), ({first: a, second: rb}, -1.0),
                             ({first: ra, second: b}, -1.0), ({first: ra, second: rb}, 1.0)]
                    contrast = _average(design, terms, (first, second))
                    if contrast:
                        effects.append(Effect(
                            "interaction", (first, second), interaction_key(first, a, second, b),
                            f"{first} × {second}: ({level_text(a)} − {level_text(ra)}) × "
                            f"({level_text(b)} − {level_text(rb)})",
                            f"how much the effect of {first} = {level_text(a)} (against {level_text(ra)}) changes "
                            f"when {second} is {level_text(b)} instead of {level_text(rb)}"
                            f"{averaged_over(design, (first, second))}", contrast))
    reference = design.reference_condition
    for arm in design.arms:
        effects.append(Effect("arm", (), arm.name, f"{arm.name} − reference",
                              f"the arm {arm.name} ({design.describe(arm)}) minus the reference "
                              f"condition {reference.name}", difference(arm, reference)))
    return effects


def settings_text(settings: dict) -> str:
    return ", ".join(f"{key} = {level_text(value)}" for key, value in settings.items())


def layer_intervals(est: Estimator, condition: Condition, column: str) -> dict[int, Interval]:
    """A results_layers.csv column per layer: mean and t interval over the condition's seeds."""
    per_layer: dict[int, list[float]] = {}
    for run in est.runs(condition).values():
        for row in run.layers:
            if row.get("layer") is not None and row.get(column) is not None:
                per_layer.setdefault(int(row["layer"]), []).append(float(row[column]))
    return {layer: mean_ci(values, est.confidence) for layer, values in sorted(per_layer.items())}
