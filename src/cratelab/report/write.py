"""The ablation report: `write_report(OUT)` reads a sweep folder and writes OUT/report.md, OUT/report.html
(the same content) and OUT/plots/*.png.

The report follows the sweep's design (its factors, levels, reference and arms), whatever fields it varies.
Sections, in order: what was run; how the numbers are computed; whether the answers hold along training (each
effect at every tracked point, a verdict per effect and metric, the val-loss convergence of each condition:
track.py); the effects (for each factor its main effect
and, if numeric, its slope per doubling; each two-factor interaction; each arm against the reference: the
family analysis.design_effects builds); per-condition results; the paper's numbers (where a GPT arm meets a
CRATE reference); per-layer results; plots against each factor; the runs.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..config import QuestionsConfig, SweepConfig, level_text
from ..io import write_text
from ..layout import (ANSWERS, PLOTS, PROTOCOLS, REPORT_HTML, REPORT_MD, RESULTS, RESULTS_LAYERS, RESULTS_TRACK,
                      SWEEP_CONFIG, UNSCORABLE, unscorable_column)
from ..progress import duration
from ..sweep.design import Condition, grid_conditions
from .analysis import (DERIVED_METRICS, INTERP_METRICS, METRICS, SEED_METRICS, Design, Effect, Estimator, Metric,
                       design_effects, difference, layer_intervals, mean_of, run_value, settings_text)
from .decide import DIFFERS, EQUIVALENT, NO_TEST, Answer, answer_questions, write_answers
from .document import Block, Bullets, Heading, Image, Link, Paragraph, Table, Text, to_html, to_markdown
from .load import RunResult, Sweep, TrackPoint, read_sweep_results, read_track_points
from .plots import (plot_curves, plot_density, plot_interp_vs_loss, plot_layer_sparsity, plot_sparsity_curves,
                    plot_track, plot_vs_factor)
from .stats import Interval, t_critical
from .track import (LAST_POINTS, STILL_LEARNING, VERDICTS, TrackedEstimate, condition_drops, matched_loss,
                    point_estimators, tracked_estimate)

TITLE = "CRATE ablation: report"
STATS_DOC = "docs/statistics.md in the cratelab repository"
# the paper's default-lambda results (paper-facts section 4): CRATE, GPT-2; correlations x 100
PAPER = {
    1: {"val_loss": (4.06, 3.83), "top-and-random": (3.9, 8.8), "random-only": (4.8, 8.9), "anthropic": (10.1, 14.2)},
    2: {"val_loss": (3.55, 3.23), "top-and-random": (8.05, 4.2), "random-only": (6.95, 1.95),
        "anthropic": (11.35, 10.2)},
    3: {"val_loss": (3.46, 3.11), "top-and-random": (9.1, 3.57), "random-only": (8.43, 1.37),
        "anthropic": (11.23, 9.2)},
}


# ---------------------------------------------------------------- wording of numbers

def pct(confidence: float) -> str:
    return f"{100 * confidence:g}%"


def fmt_interval(iv: Interval, metric: Metric, signed: bool = False) -> str:
    if iv.estimate is None:
        return "n/a"
    if not iv.has_ci:
        return f"{metric.fmt(iv.estimate, signed)} (n={iv.n}, no CI)"
    return f"{metric.fmt(iv.estimate, signed)} [{metric.fmt(iv.low, signed)}, {metric.fmt(iv.high, signed)}]"


def exploratory_words(iv: Interval, est: Estimator) -> str:
    """An exploratory contrast in plain words: what its raw interval shows, never a decision."""
    if iv.estimate is None:
        return "no estimate: no seed has a run of every condition in it"
    if not iv.has_ci:
        return f"no interval: {iv.method}"
    side = "excludes 0" if iv.significant else "includes 0"
    return f"raw {pct(est.confidence)} CI {side}, p = {iv.p_value:.3g} (unadjusted)"


def direction(iv: Interval) -> str:
    return "increases" if iv.estimate > 0 else "decreases"


def span(values: list[float]) -> str:
    """A sorted list of counts as one value or a range."""
    if not values:
        return "n/a"
    return f"{values[0]:,.0f}" if values[0] == values[-1] else f"{values[0]:,.0f} to {values[-1]:,.0f}"


def arch_of(sweep: Sweep, condition: Condition) -> str | None:
    """The model.arch of a condition's runs (from their config.toml)."""
    return next((r.model.get("arch") for r in sweep.by_seed(condition).values() if r.model), None)


def gpt_condition(sweep: Sweep) -> Condition | None:
    """An arm that trains the GPT baseline, when the reference condition is CRATE: the paper's comparison."""
    if arch_of(sweep, sweep.reference) != "crate":
        return None
    trained = {arm.name for arm in sweep.design.arms if not arm.derived}  # not a GPT + SAE arm
    return next((c for c in sweep.conditions if c.name in trained and arch_of(sweep, c) == "gpt"), None)


def measured_metrics(est: Estimator) -> list[Metric]:
    """Metrics with at least one value: the interpretability ones drop out of a sweep that did not score."""
    return [m for m in METRICS if any(run_value(r, m) is not None for r in est.sweep.runs)]


# ---------------------------------------------------------------- header and methods

def model_description(sweep: Sweep) -> str:
    reference_first = sorted(sweep.runs, key=lambda r: r.condition != sweep.reference)
    model = next((r.model for r in reference_first if r.model), None)
    n_layers = max((len(r.layers) for r in sweep.runs), default=0)
    if model is None:
        return (f"{n_layers} layers (from {RESULTS_LAYERS}); no run folder has a config.toml" if n_layers
                else "shape unknown (no config.toml, no per-layer results)")
    neurons = model.get("overcomplete", 4) * model.get("n_embd", 0)
    vocab = model.get("vocab_size") or "the tokenizer's"
    return (f"{model.get('n_layer')} layers, d={model.get('n_embd')}, {model.get('n_head')} heads, "
            f"context {model.get('block_size')}, vocabulary {vocab}, {neurons} interpreted neurons per layer")


def n_layers(sweep: Sweep) -> int | None:
    model = next((r.model for r in sweep.runs if r.model), None)
    if model and model.get("n_layer"):
        return int(model["n_layer"])
    return max((len(r.layers) for r in sweep.runs), default=0) or None


def parameter_counts(sweep: Sweep) -> str:
    counts = sorted({run.values["params"] for run in sweep.runs if run.values.get("params") is not None})
    return "/".join(f"{p:,.0f}" for p in counts) or "n/a"


def missing_runs(sweep: Sweep) -> list[str]:
    """Every planned run (each condition of the design x each of its seeds) without a row in results.csv."""
    return [f"{c.name} seed {seed}" for c in grid_conditions(sweep.design) for seed in sweep.design.seeds
            if seed not in sweep.by_seed(c)]


def data_line(runs: list[RunResult]) -> str:
    """Which tokenized training data the runs were measured on (the sha256 their data.json names)."""
    hashes = Counter(r.train_data_sha256 or "not recorded" for r in runs)
    return "Training data (sha256 of the tokenized training split, from each run's data.json): " + "; ".join(
        f"{sha} ({n} run{'s' if n != 1 else ''})" for sha, n in hashes.most_common()) + "."


def header(est: Estimator, reference: Condition) -> list[Block]:
    sweep = est.sweep
    runs = sweep.runs
    train_s = [r.values["train_s"] for r in runs if r.values.get("train_s") is not None]
    tokens = sorted({r.values["tokens"] for r in runs if r.values.get("tokens") is not None})
    methods = sorted({r.method for r in runs if r.method})
    design = Design(sweep.design)
    files: list = ["Files: "]
    for name in (ANSWERS, RESULTS, RESULTS_LAYERS, RESULTS_TRACK, SWEEP_CONFIG):
        if name == ANSWERS or (sweep.out_dir / name).is_file():  # answers.csv is written with the report
            files += [Link(name, name), " "]
    missing = missing_runs(sweep)
    items: list[Text] = [
        f"Runs: {len(runs)} finished of {len(grid_conditions(sweep.design)) * len(sweep.design.seeds)} planned "
        f"({len(grid_conditions(sweep.design))} conditions x seeds {', '.join(map(str, sweep.design.seeds))}).",
        "Factors (a full grid): " + ("; ".join(f"{key} in {{{', '.join(map(level_text, levels))}}}"
                                               for key, levels in design.factors.items()) or "none") + ".",
        "Arms: " + ("; ".join(f"{arm.name} ({design.describe(arm)})" for arm in design.arms)
                    or "none") + ".",
        "Missing runs (not in results.csv): " + ("; ".join(missing) + "." if missing else "none."),
        f"Model: {model_description(sweep)} (in the reference condition). Parameters: {parameter_counts(sweep)}.",
        f"Training tokens per run: {span(tokens)}.",
        data_line(runs),
        f"Total training time: {duration(sum(train_s))} over {len(train_s)} runs"
        + (f" (mean {duration(sum(train_s) / len(train_s))} a run)." if train_s else "."),
        "Interpretability scored with: " + (", ".join(methods) if methods else "no neuron-level scores found") + ".",
        f"Reference condition for paired differences: {reference.name} "
        f"({settings_text(design.reference) or 'the shared config'}).",
        files,
    ]
    return [Heading(2, "What was run"), Bullets(items)]


def methods(est: Estimator, questions: QuestionsConfig, schedule: str | None) -> list[Block]:
    conf = pct(est.confidence)
    n = len(est.sweep.seeds)
    t_note = (f"with n = {n} seeds the t quantile is {t_critical(est.confidence, n - 1):.2f}" if n >= 2
              else "with a single seed there is no interval at all")
    alpha = questions.alpha
    return [Heading(2, "How the numbers are computed"), Paragraph(f"The rules and the reason for each: {STATS_DOC}."),
            Bullets([
        "Seeds are the unit of replication. Every contrast is computed per seed (condition minus reference, or a "
        "slope's least-squares weights), then its mean and a t interval over the seeds that have every run of it "
        f"(df = n − 1; {t_note}). Identical values across seeds (zero variance) or one seed: no test.",
        f"Declared questions ([sweep.questions]) are decided by the paired t test over seeds, with Holm's step-down "
        f"procedure at α = {alpha:g} within the primary family and within the secondary family. A difference test "
        f"asks whether the effect is 0; an equivalence test (two one-sided tests) whether it lies within ±margin. "
        f"Each answer's interval is at the level its test was made at (α/m for the first step of Holm, the "
        f"simultaneous Bonferroni interval; larger levels at later steps), two-sided for a difference and "
        f"1 − 2·level for an equivalence, so an interval excludes 0 (or lies within ±margin) exactly when its "
        f"decision says so.",
        "An inconclusive answer states the seeds needed for 80% power at the observed effect and SD, and at the "
        "SD's upper 80% confidence bound (the SD of a few seeds is itself uncertain), tested at α/m. An "
        "equivalence answer also states the smallest margin the present seeds establish.",
        f"Everything else is exploratory: its raw {conf} interval, an unadjusted p-value and a Benjamini–Hochberg "
        f"q-value over the exploratory rows; never a decision. Metrics that are exact functions of another (bits "
        f"per byte of val loss, L0 of the zero fraction) are shown, never tested.",
        "Interpretability: pooled Pearson correlation × 100 (as in the paper); a run's score is the mean over "
        "layers of the mean over its scored neurons. A hierarchical bootstrap over seeds and then neurons "
        f"({est.n_boot} resamples, seed {est.seed}) is shown as a diagnostic with the share of the seed-to-seed "
        "variance that neuron sampling alone produces; decisions do not use it (the per-seed scores already carry "
        "the neuron noise).",
        "Unscorable neurons (a constant real or simulated side) have no score: they are counted below and left "
        "out of the means, never hidden.",
        ("Along training (sweep.track): each tracked checkpoint is evaluated and scored with the same settings as "
         "the final one" + (" and, under train.schedule = \"wsd\", is an annealed model: a cooldown branched from "
                            "the stable phase, the model a run of that budget gives" if schedule == "wsd" else
                            "; under the cosine schedule the earlier points are mid-schedule models, not the "
                            "models those budgets would give") +
         f". For each declared answer, each seed's change of the contrast per doubling of training tokens over the "
         f"last {LAST_POINTS} tracked points (at most) gets a t interval over seeds: settled when its 90% interval "
         f"lies within ±margin, changing when its 95% interval excludes 0, undetermined otherwise."),
        (f"Convergence: a condition's val loss at 3/4 of its training tokens (interpolated between evaluations) "
         f"against its last value, as a share of the former, averaged over seeds; a drop above "
         f"{100 * STILL_LEARNING:g}% marks it as still learning."),
    ])]


# ---------------------------------------------------------------- along training

TRACK_HEADING = "Do the answers hold along training?"
TRACKED_KINDS = ("main", "slope", "arm")  # drawn against training tokens (interactions are in the table only)


def fmt_tokens(tokens: float) -> str:
    return f"{tokens / 1e6:.2f}M tokens" if tokens >= 1e5 else f"{tokens:,.0f} tokens"


def track_cell(iv: Interval, metric: Metric) -> str:
    return fmt_interval(iv, metric, signed=True)


def change_cell(t: TrackedEstimate, metric: Metric) -> str:
    """The change per doubling of training tokens: estimate, 95% and (in braces) 90% interval."""
    if t.change is None or t.change.estimate is None:
        return "n/a"
    text = fmt_interval(t.change, metric, signed=True)
    if t.settled_band:
        text += f" {{90%: {metric.fmt(t.settled_band[0], True)}, {metric.fmt(t.settled_band[1], True)}}}"
    return text


def convergence_blocks(sweep: Sweep) -> tuple[list[Block], bool]:
    """A line per condition (its last-quarter val-loss drop), and whether any condition is still learning."""
    drops = condition_drops(sweep)
    items: list[Text] = []
    learning = []
    for name, (drop, n) in drops.items():
        if drop is None:
            items.append(f"{name}: no training curve with an evaluation before 3/4 of training.")
            continue
        still = drop > STILL_LEARNING
        learning += [name] if still else []
        items.append(f"{name}: val loss fell {100 * drop:.2f}% over the last quarter of training (mean of {n} "
                     f"seed{'s' if n != 1 else ''})" + (": still learning." if still else "."))
    blocks: list[Block] = [Heading(3, "Convergence"), Bullets(items)]
    if learning:
        blocks.append(Paragraph(
            f"Warning: {len(learning)} of {len(drops)} conditions are still learning (val loss fell more than "
            f"{100 * STILL_LEARNING:g}% over the last quarter of training: {', '.join(learning)}). Effects measured "
            f"on models that are still learning can change size or sign with more training; read them together "
            f"with the verdicts above, and train longer (a larger train.max_steps) before drawing "
            f"conclusions."))
    return blocks, bool(learning)


def track_section(est: Estimator, effects: list[Effect], points: list[TrackPoint], plots_dir: Path,
                  margins: dict[tuple[str, str], float]) -> tuple[list[Block], list[Block], dict]:
    """The verdicts of the declared answers along training with the convergence lines, the plots (drawn later with
    the others), and the tracked estimates by (effect key, metric column); ``margins``: the declared answers'."""
    blocks: list[Block] = [Heading(2, TRACK_HEADING)]
    convergence, learning = convergence_blocks(est.sweep)
    metrics = measured_metrics(est)
    if len(points) < 2 or not effects:
        why = ("the sweep kept no checkpoint along training (sweep.track is empty)" if len(points) < 2
               else "the sweep has a single condition")
        blocks.append(Paragraph(f"Not measured: {why}, so whether the answers hold with more (or less) training is "
                                f"unknown." + (" The models are still learning." if learning else "")))
        return blocks + convergence, [], {}
    estimators = point_estimators(points, est.confidence, est.seed, est.n_boot)
    tokens = [p.tokens for p in points]
    tracked = {(e.key, m.column): tracked_estimate(estimators, tokens, m, e.contrast, margins.get((e.key, m.column)))
               for e in effects for m in metrics}
    declared = {key: t for key, t in tracked.items() if t.verdict is not None}
    counts = Counter(t.verdict for t in declared.values())
    last = ", ".join(fmt_tokens(t) for t in tokens[-LAST_POINTS:])
    if declared:
        blocks.append(Paragraph(
            f"For {len(declared)} declared answers, the change of the contrast per doubling of training tokens over "
            f"the last tracked points ({last}): " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])
            + ". Settled: the 90% interval of the change lies within ±margin; changing: its 95% interval excludes "
              "0; undetermined: neither." + (" The models are still learning (see Convergence)." if learning else "")))
        effect_title = {e.key: e.title for e in effects}
        rows = [[effect_title[key], next(m.label for m in metrics if m.column == column),
                 fmt_margin(margins[(key, column)], next(m for m in metrics if m.column == column)),
                 change_cell(t, next(m for m in metrics if m.column == column)), t.verdict]
                for (key, column), t in declared.items()]
        blocks.append(Table(["answer", "metric", "margin", "change per doubling of tokens [95% CI] {90%}",
                             "verdict"], rows, "Declared answers along training"))
    else:
        blocks.append(Paragraph("The sweep declares no questions ([sweep.questions]), so no answer gets a verdict "
                                "along training; the estimates at each point are below."))
    blocks += convergence + [Heading(3, "Each effect at each tracked point")]
    columns = ["effect", "metric"] + [f"{fmt_tokens(p.tokens)} ({p.fraction:g})" for p in points] + ["verdict"]
    rows = [[e.title, m.label] + [track_cell(iv, m) for iv in t.intervals] + [t.verdict or "exploratory"]
            for e in effects for m in metrics for t in [tracked[(e.key, m.column)]]]
    blocks.append(Table(columns, rows, f"Each effect at each tracked point (training tokens, fraction of "
                                       f"train.max_steps): estimate [raw {pct(est.confidence)} CI]",
                        numeric=set(range(2, 2 + len(points)))))
    drawn = [e for e in effects if e.kind in TRACKED_KINDS]
    groups = [("loss", [m for m in metrics if m.column in ("val_loss", "zero_frac")]),
              ("interp", [m for m in metrics if m.protocol])]
    figures_blocks: list[Block] = []
    for stem, chosen in groups:
        filename = f"track_{stem}.png"
        series = {e.title: [tracked[(e.key, m.column)] for m in chosen] for e in drawn}
        title = f"Effects against training tokens ({', '.join(m.label for m in chosen)})"
        if chosen and plot_track(tokens, chosen, series, plots_dir / filename, title):
            figures_blocks += [Heading(3, title), Image(f"{plots_dir.name}/{filename}", title)]
    return blocks, figures_blocks, tracked


def fmt_margin(margin: float | None, metric: Metric) -> str:
    return "n/a" if margin is None else f"±{metric.fmt(margin)}"


# ---------------------------------------------------------------- answers

def decision_words(a: Answer) -> str:
    """An answer's decision in plain words."""
    m = a.metric
    if a.decision == DIFFERS:
        return f"differs: {'higher' if a.estimate > 0 else 'lower'} by {m.fmt(abs(a.estimate))}"
    if a.decision == EQUIVALENT:
        return f"equivalent within ±{m.fmt(a.margin)}"
    if a.decision == NO_TEST:
        return f"no test: {a.note}"
    words = "inconclusive"
    if a.test == "equivalence" and a.margin_reachable is not None:
        words += f" (these seeds establish ±{m.fmt(a.margin_reachable)} at most)"
    if a.seeds_needed is None:
        return words + ("; no number of seeds shows equivalence at this effect" if a.test == "equivalence"
                        else "; no number of seeds decides it at an effect of 0")
    upper = "no finite number" if a.seeds_needed_sd_upper is None else str(a.seeds_needed_sd_upper)
    return words + f"; about {a.seeds_needed} seeds needed for 80% power ({upper} at the SD's upper 80% bound)"


def answer_interval(a: Answer) -> str:
    if a.estimate is None:
        return "n/a"
    if a.ci_low is None:
        return f"{a.metric.fmt(a.estimate, True)} (n={a.n_seeds}, no CI)"
    return (f"{a.metric.fmt(a.estimate, True)} [{a.metric.fmt(a.ci_low, True)}, {a.metric.fmt(a.ci_high, True)}] "
            f"({100 * a.ci_level:.4g}%)")


def question_text(a: Answer) -> str:
    test = f"equivalent within ±{a.metric.fmt(a.margin)}?" if a.test == "equivalence" else "differs from 0?"
    return f"{a.effect.title} on {a.metric.label}: {test}"


def answers_section(answers: list[Answer], tracked: dict, questions: QuestionsConfig) -> list[Block]:
    """The report's opening: each declared answer in a short table and in words, before any detail."""
    declared = [a for a in answers if a.family != "exploratory"]
    blocks: list[Block] = [Heading(2, "Answers")]
    if not declared:
        return blocks + [Paragraph(f"This sweep declares no questions ([sweep.questions]): every effect below is "
                                   f"exploratory (raw intervals, no decision). See {STATS_DOC} for how to declare them "
                                   f"before running a sweep, so that its answers are decided.")]
    tokens = sorted({a.tokens for a in declared if a.tokens})
    blocks.append(Paragraph(
        f"The declared questions ({ANSWERS}), decided by the paired t test over seeds with Holm's procedure at α = "
        f"{questions.alpha:g} within each family" + (f", after {span(tokens)} training tokens per run" if tokens else "")
        + ". Each interval is at the level its test was made at, so it agrees with the decision."))
    rows = []
    for a in declared:
        verdict = tracked.get((a.effect.key, a.metric.column))
        rows.append([a.family, question_text(a), answer_interval(a), decision_words(a), str(a.n_seeds),
                     verdict.verdict if verdict is not None and verdict.verdict else "not tracked"])
    blocks.append(Table(["family", "question", "estimate [CI]", "decision", "seeds", "along training"], rows,
                        "Declared answers"))
    words = []
    for family in ("primary", "secondary"):
        chosen = [a for a in declared if a.family == family]
        if not chosen:
            continue
        decided = [a for a in chosen if a.decided]
        words.append(f"{family.capitalize()} family: {len(decided)} of {len(chosen)} tests decided"
                     + (": " + "; ".join(f"{a.effect.title} {decision_words(a)} on {a.metric.label}" for a in decided)
                        if decided else "") + ".")
    return blocks + [Paragraph(" ".join(words))]


def effect_items(est: Estimator, effect: Effect, metrics: list[Metric], answers: dict) -> list[Text]:
    """One line per metric: the raw interval, the decision where the answer was declared (else exploratory), and
    for interpretability the bootstrap diagnostic."""
    items: list[Text] = []
    for metric in metrics:
        iv = est.estimate(metric, effect.contrast)
        n = f" (n={iv.n})" if iv.has_ci else ""
        decided = [a for a in answers.get((effect.key, metric.column), []) if a.family != "exploratory"]
        if decided:
            words = "; ".join(f"{a.family} {a.test} test: {decision_words(a)}" for a in decided)
        elif metric.column in DERIVED_METRICS:
            words = f"not tested (an exact function of {DERIVED_METRICS[metric.column]})"
        else:
            words = "exploratory: " + exploratory_words(iv, est)
        diagnostic = est.neuron_sampling(metric, effect.contrast)
        if diagnostic is not None:
            share = ("" if diagnostic.neuron_share is None else
                     f", {100 * diagnostic.neuron_share:.0f}% of the seed-to-seed variance from neuron sampling")
            words += (f"; hierarchical bootstrap [{metric.fmt(diagnostic.low, True)}, "
                      f"{metric.fmt(diagnostic.high, True)}]{share}")
        items.append(f"{metric.label}: {fmt_interval(iv, metric, signed=True)}{n}: {words}")
    return items


EFFECT_SECTIONS = (("main", "Main effects"), ("slope", "Slopes per doubling"), ("curvature", "Curvatures"),
                   ("interaction", "Two-factor interactions"), ("arm", "Arms against the reference"))


def effects_section(est: Estimator, effects: list[Effect], answers: list[Answer]) -> list[Block]:
    """Every contrast, grouped by kind: raw intervals (declared answers with their decisions)."""
    metrics = measured_metrics(est)
    by_key: dict[tuple[str, str], list[Answer]] = {}
    for a in answers:
        by_key.setdefault((a.effect.key, a.metric.column), []).append(a)
    blocks: list[Block] = [Heading(2, "Effects"), Paragraph(
        f"Every contrast of the design on every metric, with its raw {pct(est.confidence)} interval over seeds. "
        f"Only the declared answers (above) are decisions; the rest is exploratory.")]
    if not effects:
        blocks.append(Paragraph("The sweep has a single condition: nothing to compare."))
    estimable = [e for e in effects if any(est.estimate(m, e.contrast).estimate is not None for m in metrics)]
    for kind, title in EFFECT_SECTIONS:
        chosen = [e for e in estimable if e.kind == kind]
        if not chosen:
            continue
        blocks.append(Heading(3, title))
        for effect in chosen:
            blocks += [Heading(4, effect.title), Paragraph(f"{effect.description}, paired by seed (`{effect.key}`):"),
                       Bullets(effect_items(est, effect, metrics, by_key))]
    if len(estimable) < len(effects):
        blocks.append(Paragraph("No estimate yet (no seed has a run of every condition in it): "
                                + "; ".join(e.title for e in effects if e not in estimable) + "."))
    if not est.runs(est.sweep.reference):
        blocks.append(Paragraph(f"The reference condition {est.sweep.reference.name} has no runs: no contrast with "
                                f"it can be estimated."))
    return blocks


def matched_loss_section(est: Estimator, points: list[TrackPoint]) -> list[Block]:
    """GPT against CRATE at matched val loss (descriptive): only where a GPT arm meets a CRATE reference and the
    sweep tracked points along training."""
    gpt = gpt_condition(est.sweep)
    interp = [m for m in measured_metrics(est) if m.protocol]
    if gpt is None or len(points) < 2 or not interp:
        return []
    reference = est.sweep.reference
    rows = []
    for metric in interp:
        at_ref, at_gpt = matched_loss(points, gpt, reference, metric, SEED_METRICS[0], est.confidence)
        rows.append([metric.label, fmt_interval(at_ref, metric, signed=True) + (f" (n={at_ref.n})" if at_ref.n else ""),
                     fmt_interval(at_gpt, metric, signed=True) + (f" (n={at_gpt.n})" if at_gpt.n else "")])
    return [Heading(2, "GPT against CRATE at matched loss"), Paragraph(
        f"Descriptive, not a test: {gpt.name} minus {reference.name} on interpretability where both have the same "
        f"val loss, per seed, interpolated linearly in val loss between tracked points (no extrapolation: a seed "
        f"counts only where the loss to match lies within the other's tracked range). Left: {gpt.name} at the val "
        f"loss {reference.name} ends at, minus {reference.name} at its end. Right: {gpt.name} at its end, minus "
        f"{reference.name} at that loss. Raw {pct(est.confidence)} t intervals over seeds."),
        Table(["metric", f"at {reference.name}'s final loss", f"at {gpt.name}'s final loss"], rows,
              "Interpretability difference at matched val loss")]


# ---------------------------------------------------------------- per condition

def condition_cell(est: Estimator, metric: Metric, condition: Condition, n_seeds: int) -> str:
    iv = est.estimate(metric, mean_of(condition))
    text = fmt_interval(iv, metric)
    return text + (f" (n={iv.n})" if iv.has_ci and iv.n < n_seeds else "")


def condition_table(est: Estimator, metrics: list[Metric], caption: str) -> Table:
    rows = []
    for condition in est.sweep.conditions:
        runs = est.runs(condition)
        params = sorted({r.values["params"] for r in runs.values() if r.values.get("params") is not None})
        rows.append([condition.name, str(len(runs)), "/".join(f"{p:,.0f}" for p in params) or "n/a"]
                    + [condition_cell(est, m, condition, len(runs)) for m in metrics])
    return Table(["condition", "seeds", "params"] + [m.label for m in metrics], rows, caption,
                 numeric=set(range(1, 3 + len(metrics))))


def unscorable_counts(runs: list[RunResult], protocol: str) -> tuple[int | None, int | None, Counter]:
    """Scored and unscorable neurons summed over runs, with reasons; from scores.jsonl where every run has
    one, else the unscorable count of results_layers.csv (scored unknown)."""
    if runs and all(protocol in r.neuron_scores for r in runs):
        scored = sum(len(s) for r in runs for s in r.neuron_scores[protocol])
        reasons = sum((r.unscorable.get(protocol, Counter()) for r in runs), Counter())
        return scored, sum(reasons.values()), reasons
    column = unscorable_column(protocol)
    values = [row[column] for r in runs for row in r.layers if row.get(column) is not None]
    return None, (int(sum(values)) if values else None), Counter()


def unscorable_table(est: Estimator) -> Table:
    rows = []
    for condition in est.sweep.conditions:
        runs = list(est.runs(condition).values())
        for protocol in PROTOCOLS:
            scored, unscorable, reasons = unscorable_counts(runs, protocol)
            if scored is None and unscorable is None:
                continue
            reason = "; ".join(f"{n}: {text}" for text, n in reasons.most_common(2))
            rows.append([condition.name, protocol, "n/a" if scored is None else str(scored),
                         "n/a" if unscorable is None else str(unscorable), reason])
    return Table(["condition", "protocol", "scored neurons", "unscorable", "main reasons"], rows,
                 "Unscorable neurons, summed over seeds and layers", numeric={2, 3})


def per_condition(est: Estimator) -> list[Block]:
    interp = [m for m in measured_metrics(est) if m.protocol]
    blocks: list[Block] = [Heading(2, "Results per condition"),
                           condition_table(est, list(SEED_METRICS),
                                           f"Loss and sparsity: mean [{pct(est.confidence)} CI] over seeds")]
    if not interp:
        return blocks + [Paragraph("No interpretability scores in this sweep (the interp columns are empty).")]
    blocks.append(condition_table(est, interp, f"Interpretability, correlation × 100: mean "
                                               f"[{pct(est.confidence)} CI] over seeds"))
    table = unscorable_table(est)
    total = sum(r.values.get(UNSCORABLE) or 0 for r in est.sweep.runs)
    blocks.append(table if table.rows else Paragraph(
        f"Unscorable scores: {total:.0f} in total ({UNSCORABLE} of results.csv); no per-protocol counts."))
    return blocks


# ---------------------------------------------------------------- the paper

def paper_section(est: Estimator, reference: Condition, answers: list[Answer]) -> list[Block]:
    """Only where the sweep has a GPT arm against a CRATE reference (the paper's comparison). A direction is
    claimed only where the sweep declared the GPT arm's difference on that metric and decided it."""
    sweep = est.sweep
    depth = n_layers(sweep)
    row = depth if depth in PAPER else 2
    gpt = gpt_condition(sweep)
    if gpt is None:
        return []
    tokens = max((r.values.get("tokens") or 0 for r in sweep.runs), default=0)
    blocks: list[Block] = [Heading(2, f"Comparison with the paper ({row}-layer models)"), Paragraph(
        f"The paper (Bai & Ma, arXiv 2410.16443) trained {row}-layer d=128 models on the Pile for 600k steps "
        f"(hundreds of thousands of tokens per step, GPT-2 vocabulary of 50k) and scored neurons with "
        f"Mistral-7B explanations simulated by LLaMA-2-7B. Here each model saw {tokens:,.0f} tokens of a small "
        f"corpus ({model_description(sweep)}) and neurons were scored by "
        f"{', '.join(sorted({r.method for r in sweep.runs if r.method})) or 'no scorer'}. The levels are not "
        f"comparable (loss depends on corpus, vocabulary and model size; correlations depend on the explainer "
        f"and simulator, and the offline token-pattern one is a floor for LLM scores); only the direction of "
        f"CRATE ({reference.name}) minus GPT ({gpt.name}) is; the paper's CRATE has λ = 0.1, shared Q,K,V."
        + ("" if depth in PAPER else f" Our models have {depth} layers; the paper's 2-layer row is used."))]
    rows = []
    for metric in [SEED_METRICS[0]] + list(INTERP_METRICS):
        paper_crate, paper_gpt = PAPER[row][metric.protocol or metric.column]
        ours = [est.estimate(metric, mean_of(c)) if c and est.runs(c) else None for c in (reference, gpt)]
        diff = est.estimate(metric, difference(reference, gpt)) if all(ours) else None
        decided = next((a for a in answers if a.effect.key == gpt.name and a.metric.column == metric.column
                        and a.test == "difference" and a.family != "exploratory"), None)
        rows.append([metric.label, f"{paper_crate:g}", f"{paper_gpt:g}", f"{paper_crate - paper_gpt:+.2f}",
                     fmt_interval(ours[0], metric) if ours[0] else "n/a",
                     fmt_interval(ours[1], metric) if ours[1] else "n/a",
                     fmt_interval(diff, metric, signed=True) if diff else "n/a",
                     agreement(paper_crate - paper_gpt, decided)])
    return blocks + [Table(["quantity", "paper CRATE", "paper GPT", "paper CRATE − GPT", f"ours {reference.name}",
                            f"ours {gpt.name}", f"ours CRATE − GPT [{pct(est.confidence)} CI]", "direction"], rows,
                           numeric={1, 2, 3, 4, 5, 6})]


def agreement(paper_difference: float, answer: Answer | None) -> str:
    """Our decided direction against the paper's; the answer is GPT − CRATE, the paper's difference CRATE − GPT."""
    if answer is None:
        return "undecided: exploratory (not a declared question)"
    if answer.decision != DIFFERS:
        return f"undecided: {answer.decision}"
    same = (-answer.estimate > 0) == (paper_difference > 0)
    return "same as the paper" if same else "opposite to the paper"


# ---------------------------------------------------------------- per layer, plots, runs

LAYER_COLUMNS = (Metric("zero_frac", "zero fraction", 4), Metric("l0", "L0", 1),
                 Metric("dead_frac", "dead fraction", 4), Metric("dictionary_norm", "dictionary norm", 3))


def per_layer(est: Estimator) -> list[Block]:
    rows = []
    for condition in est.sweep.conditions:
        columns = [layer_intervals(est, condition, m.column) for m in LAYER_COLUMNS]
        for layer in sorted({layer for c in columns for layer in c}):
            rows.append([condition.name, str(layer)] + [fmt_interval(c[layer], m) if layer in c else "n/a"
                                                         for c, m in zip(columns, LAYER_COLUMNS)])
    if not rows:
        return [Heading(2, "Per layer"), Paragraph(f"No per-layer results ({RESULTS_LAYERS} missing or empty).")]
    return [Heading(2, "Per layer"), Table(["condition", "layer"] + [m.label for m in LAYER_COLUMNS], rows,
                                           f"Mean [{pct(est.confidence)} CI] over seeds", numeric={1, 2, 3, 4, 5})]


def figures(est: Estimator, plots_dir: Path, drawn: list[Block] = ()) -> list[Block]:
    interp = [m for m in INTERP_METRICS if any(run_value(r, m) is not None for r in est.sweep.runs)]
    specs: list[tuple[str, str, Callable[[Path], bool]]] = []
    for factor in est.sweep.design.factors:
        stem = "".join(c if c.isalnum() else "_" for c in factor)
        specs += [
            (f"loss_vs_{stem}.png", f"Loss against {factor}",
             lambda p, f=factor: plot_vs_factor(est, f, list(SEED_METRICS[:2]), p, f"Loss against {f}")),
            (f"sparsity_vs_{stem}.png", f"Sparsity against {factor}",
             lambda p, f=factor: plot_vs_factor(est, f, [SEED_METRICS[2], SEED_METRICS[3]], p,
                                                f"Sparsity against {f}")),
            (f"interp_vs_{stem}.png", f"Interpretability against {factor}",
             lambda p, f=factor: bool(interp) and plot_vs_factor(est, f, interp, p, f"Interpretability against {f}")),
        ]
    specs += [
        ("interp_vs_loss.png", "Interpretability against loss", lambda p: plot_interp_vs_loss(est, p)),
        ("layer_sparsity.png", "Per-layer sparsity", lambda p: plot_layer_sparsity(est, p)),
        ("firing_density.png", "Firing-density histograms", lambda p: plot_density(est.sweep, p)),
        ("training_curves.png", "Training curves", lambda p: plot_curves(est.sweep, p)),
        ("sparsity_curves.png", "Sparsity during training", lambda p: plot_sparsity_curves(est.sweep, p)),
    ]
    blocks: list[Block] = [Heading(2, "Plots"), *drawn]
    for filename, title, draw in specs:
        if draw(plots_dir / filename):
            blocks += [Heading(3, title), Image(f"{plots_dir.name}/{filename}", title)]
        else:
            blocks += [Heading(3, title), Paragraph("Not drawn: the sweep has no data for it.")]
    return blocks


def runs_section(est: Estimator) -> list[Block]:
    rows = []
    out = est.sweep.out_dir
    order = {c: i for i, c in enumerate(est.sweep.conditions)}
    for run in sorted(est.sweep.runs, key=lambda r: (order[r.condition], r.seed)):
        v = run.values
        cards: Text = [Link("cards", run.cards.relative_to(out).as_posix())] if run.cards else "none"
        rows.append([run.name, run.condition.name, str(run.seed),
                     *(f"{v[k]:,.0f}" if v.get(k) is not None else "n/a" for k in ("params", "tokens", "train_s")),
                     SEED_METRICS[0].fmt(v.get("val_loss")), SEED_METRICS[2].fmt(v.get("zero_frac")),
                     "n/a" if v.get(UNSCORABLE) is None else f"{v[UNSCORABLE]:.0f}", cards])
    return [Heading(2, "Runs"), Table(["run", "condition", "seed", "params", "tokens", "train s", "val loss",
                                       "zero fraction", "unscorable scores", "neuron cards"], rows,
                                      numeric={2, 3, 4, 5, 6, 7, 8})]


# ---------------------------------------------------------------- entry point

def build(est: Estimator, plots_dir: Path, generated: datetime, points: list[TrackPoint] = (),
          ) -> tuple[list[Block], list[Answer]]:
    """The report's blocks and the answers of answers.csv; ``points``: the sweep at each tracked point of training
    (read_track_points)."""
    reference = est.sweep.reference
    design = est.sweep.design
    opening = [Heading(1, TITLE), Paragraph(f"Generated {generated:%Y-%m-%d %H:%M} UTC from {est.sweep.out_dir}.")]
    if not est.sweep.runs:
        return opening + header(est, reference) + [Paragraph(f"{RESULTS} lists no finished run yet: nothing to "
                                                             f"report.")], []
    plots_dir.mkdir(parents=True, exist_ok=True)
    for stale in plots_dir.glob("*.png"):  # a figure from an earlier report (or design) must not survive
        stale.unlink()
    effects = design_effects(design)
    answers = answer_questions(est, effects, design.questions, measured_metrics(est))
    margins = {(a.effect.key, a.metric.column): a.margin for a in answers
               if a.family != "exploratory" and a.margin is not None}
    along, along_plots, tracked = track_section(est, effects, list(points), plots_dir, margins)
    schedule = next((r.train.get("schedule", "cosine") for r in est.sweep.runs if r.train), None)
    blocks = (opening + answers_section(answers, tracked, design.questions) + header(est, reference)
              + methods(est, design.questions, schedule) + along + matched_loss_section(est, list(points))
              + effects_section(est, effects, answers) + per_condition(est) + paper_section(est, reference, answers)
              + per_layer(est) + figures(est, plots_dir, along_plots) + runs_section(est))
    return blocks, answers


def write_report(out_dir: Path, design: SweepConfig, confidence: float = 0.95, seed: int = 0,
                 n_boot: int = 2000) -> Path:
    """Write OUT/report.md, OUT/report.html and OUT/plots/*.png for the sweep folder OUT, run from the sweep
    `design` (its [sweep] section); returns report.md. seed and n_boot: the bootstrap's RNG seed and
    resamples (the same seed gives the same report numbers)."""
    out_dir = Path(out_dir)
    sweep = read_sweep_results(out_dir, design)
    est = Estimator(sweep, confidence=confidence, seed=seed, n_boot=n_boot)
    blocks, answers = build(est, out_dir / PLOTS, datetime.now(timezone.utc), read_track_points(out_dir, design))
    # atomically: a full disk leaves the previous report whole
    write_answers(out_dir, answers)
    write_text(out_dir / REPORT_MD, to_markdown(blocks))
    write_text(out_dir / REPORT_HTML, to_html(TITLE, blocks))
    return out_dir / REPORT_MD
