"""The decisions: every declared question of [sweep.questions] answered *differs*, *equivalent* or *inconclusive*
(with the seeds a decision would need), every other effect reported as exploratory, and answers.csv, the contract
other tools read (docs/statistics.md has each rule and the reason for it).

- Tests are the paired t test over seeds (seeds are the unit of replication): a difference test of "effect = 0"
  (two-sided), an equivalence test of "|effect| >= margin" (two one-sided tests, TOST).
- Holm's step-down procedure within the primary family, and within the secondary family, at level alpha. Each
  interval is at the level its test was performed at (stats.holm_levels; two-sided 1 - level for a difference,
  1 - 2 level for an equivalence, as TOST), so an interval excludes 0 (lies within ±margin) exactly when its
  test decided so.
- A test without spread (identical seed values, or under 2 seeds) is "no test", never a decision.
- Exploratory rows (every effect and tested metric not declared): the raw interval at the report's confidence,
  a Benjamini-Hochberg q-value in p_adjusted, and never a decision ("no test").
- Seeds needed: for an inconclusive answer, the fewest seeds with 80% power at the observed effect and SD (and at
  the SD's upper 80% confidence bound), tested at the family's first Holm level alpha / m (a bound: later steps
  test at larger levels).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import QuestionsConfig, SweepConfig
from ..errors import ConfigError
from ..io import write_text
from ..layout import ANSWERS, ANSWER_COLUMNS
from .analysis import DERIVED_METRICS, TESTED_METRICS, Effect, Estimator, Metric, design_effects
from .stats import (benjamini_hochberg, difference_power, equivalence_p_value, equivalence_power, holm_bonferroni,
                    holm_levels, sd_upper_bound, seeds_needed, t_interval)

DIFFERS, EQUIVALENT, INCONCLUSIVE, NO_TEST = "differs", "equivalent", "inconclusive", "no test"
POWER = 0.8


@dataclass(frozen=True)
class Answer:
    """One row of answers.csv."""

    family: str  # "primary" | "secondary" | "exploratory"
    effect: Effect
    metric: Metric
    test: str  # "difference" | "equivalence"
    margin: float | None
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    ci_level: float | None  # the interval's confidence
    p_value: float | None  # unadjusted
    p_adjusted: float | None  # Holm (declared families) or Benjamini-Hochberg q-value (exploratory)
    decision: str
    seeds_needed: int | None  # for 80% power at the observed SD; None: no finite number (or not needed)
    seeds_needed_sd_upper: int | None  # the same at the SD's upper 80% confidence bound
    margin_reachable: float | None  # equivalence: the smallest margin these seeds establish at this test's level
    n_seeds: int
    tokens: float | None  # training tokens per run (the mean over the runs)
    note: str = ""

    @property
    def decided(self) -> bool:
        return self.decision in (DIFFERS, EQUIVALENT)


def metric_by_column(column: str) -> Metric | None:
    return next((m for m in TESTED_METRICS if m.column == column), None)


def check_questions(design: SweepConfig) -> None:
    """Each declared question names an effect of this design and a tested metric: checked before anything runs."""
    keys = [e.key for e in design_effects(design)]
    questions = design.questions
    for family, declared in questions.families().items():
        for i, q in enumerate(declared):
            name = f"sweep.questions.{family}[{i}]"
            if q.effect not in keys:
                raise ConfigError(name + ".effect", f"{q.effect!r} is not an effect of this sweep (its effects: "
                                                    f"{'; '.join(keys) or 'none: a single condition'}); declare "
                                                    f"questions it can answer, or none: --set 'sweep.questions={{}}'")
            if q.metric in DERIVED_METRICS:
                raise ConfigError(name + ".metric", f"{q.metric} is an exact function of {DERIVED_METRICS[q.metric]} "
                                                    f"(reported, never tested): ask about {DERIVED_METRICS[q.metric]}")
            if metric_by_column(q.metric) is None:
                raise ConfigError(name + ".metric", f"unknown metric {q.metric!r} (tested metrics: "
                                                    f"{', '.join(m.column for m in TESTED_METRICS)})")
    for metric in questions.margins:
        if metric_by_column(metric) is None:
            raise ConfigError(f"sweep.questions.margins.{metric}", f"unknown metric (tested metrics: "
                                                                   f"{', '.join(m.column for m in TESTED_METRICS)})")


def mean_tokens(est: Estimator, effect: Effect) -> float | None:
    tokens = [r.values["tokens"] for c in effect.contrast for r in est.runs(c).values()
              if r.values.get("tokens") is not None]
    return sum(tokens) / len(tokens) if tokens else None


def _family_answers(est: Estimator, family: str, rows: list[tuple[Effect, Metric, str, float]],
                    alpha: float) -> list[Answer]:
    """Holm within one declared family; rows: (effect, metric, test, margin)."""
    tested = []  # (row, interval, p-value) of the rows with a test
    answers: dict[int, Answer] = {}
    for i, (effect, metric, test, margin) in enumerate(rows):
        iv = est.estimate(metric, effect.contrast)
        if iv.sd is None or iv.sd == 0.0 or iv.n < 2:
            why = ("no seed has a run of every condition in it" if iv.estimate is None else
                   f"{iv.n} seed{'s' if iv.n != 1 else ''} with identical values: no spread to test against"
                   if iv.sd == 0.0 else f"{iv.n} seed: no spread to test against")
            answers[i] = Answer(family, effect, metric, test, margin, iv.estimate, None, None, None, None, None,
                                NO_TEST, None, None, None, iv.n, mean_tokens(est, effect), why)
            continue
        se = iv.sd / math.sqrt(iv.n)
        p = (equivalence_p_value(iv.estimate, se, iv.n - 1, margin) if test == "equivalence"
             else float(iv.p_value))
        tested.append((i, iv, se, p))
    m = len(tested)
    rejected, levels = holm_levels([p for *_, p in tested], alpha)
    adjusted = holm_bonferroni([p for *_, p in tested]) if tested else []
    for (i, iv, se, p), reject, level, p_adj in zip(tested, rejected, levels, adjusted):
        effect, metric, test, margin = rows[i]
        df = iv.n - 1
        confidence = 1.0 - 2.0 * level if test == "equivalence" else 1.0 - level
        low, high = t_interval(iv.estimate, se, df, confidence)
        first_level = alpha / m
        reachable = max(abs(low), abs(high)) if test == "equivalence" else None
        needed = needed_upper = None
        if not reject:
            needed = _seeds_needed(test, iv.estimate, iv.sd, margin, first_level)
            needed_upper = _seeds_needed(test, iv.estimate, sd_upper_bound(iv.sd, iv.n), margin, first_level)
        decision = (EQUIVALENT if test == "equivalence" else DIFFERS) if reject else INCONCLUSIVE
        answers[i] = Answer(family, effect, metric, test, margin, iv.estimate, low, high, confidence, p, p_adj,
                            decision, needed, needed_upper, reachable, iv.n, mean_tokens(est, effect))
    return [answers[i] for i in range(len(rows))]


def _seeds_needed(test: str, effect: float, sd: float, margin: float, alpha: float) -> int | None:
    if test == "equivalence":
        if abs(effect) >= margin:
            return None  # at this effect no number of seeds shows equivalence within the margin
        return seeds_needed(lambda n: equivalence_power(n, effect, sd, margin, alpha), POWER)
    if effect == 0.0:
        return None
    return seeds_needed(lambda n: difference_power(n, effect, sd, alpha), POWER)


def answer_questions(est: Estimator, effects: list[Effect], questions: QuestionsConfig,
                     metrics: list[Metric]) -> list[Answer]:
    """Every row of answers.csv: the declared families (in their order), then the exploratory rows (every other
    effect on every tested metric with a value, in the report's order)."""
    by_key = {e.key: e for e in effects}
    answers: list[Answer] = []
    declared = set()
    for family, listed in questions.families().items():
        rows = []
        for q in listed:
            effect, metric = by_key.get(q.effect), metric_by_column(q.metric)
            if effect is None or metric is None:  # check_questions refuses these before a sweep runs
                continue
            tests = ("difference", "equivalence") if q.test == "both" else (q.test,)
            rows += [(effect, metric, test, questions.margin(q)) for test in tests]
            declared.add((q.effect, q.metric))
        answers += _family_answers(est, family, rows, questions.alpha)
    exploratory = []
    for effect in effects:
        for metric in metrics:
            if metric.column in DERIVED_METRICS or (effect.key, metric.column) in declared:
                continue
            iv = est.estimate(metric, effect.contrast)
            if iv.estimate is None:
                continue
            exploratory.append(Answer("exploratory", effect, metric, "difference", None, iv.estimate, iv.low, iv.high,
                                      est.confidence if iv.has_ci else None, iv.p_value, None, NO_TEST, None, None,
                                      None, iv.n, mean_tokens(est, effect),
                                      "exploratory: not a declared question" if iv.has_ci else iv.method))
    q_values = iter(benjamini_hochberg([a.p_value for a in exploratory if a.p_value is not None]))
    exploratory = [a if a.p_value is None else _with_q(a, next(q_values)) for a in exploratory]
    return answers + exploratory


def _with_q(answer: Answer, q: float) -> Answer:
    return replace(answer, p_adjusted=q, note=answer.note + "; p_adjusted is a Benjamini-Hochberg q-value")


def _cell(value: float | int | None) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def answers_csv(answers: list[Answer]) -> str:
    """answers.csv: layout.ANSWER_COLUMNS, in the metric's own units (correlations, not ×100); an empty cell is
    no value (seeds_needed empty on an inconclusive row: no finite number of seeds reaches 80% power)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ANSWER_COLUMNS)
    for a in answers:
        writer.writerow([a.family, a.effect.key, a.metric.column, a.test, _cell(a.margin), _cell(a.estimate),
                         _cell(a.ci_low), _cell(a.ci_high), _cell(a.p_adjusted), a.decision, _cell(a.seeds_needed),
                         a.n_seeds, _cell(a.tokens), _cell(a.seeds_needed_sd_upper), _cell(a.margin_reachable),
                         _cell(a.ci_level), _cell(a.p_value), a.note])
    return buffer.getvalue()


def write_answers(out_dir: Path, answers: list[Answer]) -> Path:
    path = Path(out_dir) / ANSWERS
    write_text(path, answers_csv(answers))
    return path
