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

from ..io import write_text
from ..config import SweepConfig, level_text
from ..layout import PLOTS, PROTOCOLS, REPORT_HTML, REPORT_MD, RESULTS, RESULTS_LAYERS, RESULTS_TRACK, SWEEP_CONFIG
from ..sweep import Condition
from .analysis import (INTERP_METRICS, METRICS, SEED_METRICS, Contrast, Design, Effect, Estimator, Metric,
                       design_effects, difference, layer_intervals, mean_of, run_value, settings_text)
from .document import Block, Bullets, Heading, Image, Link, Paragraph, Table, Text, to_html, to_markdown
from .load import RunResult, Sweep, TrackPoint, read_sweep_results, read_track_points
from .plots import (plot_curves, plot_density, plot_interp_vs_loss, plot_layer_sparsity, plot_sparsity_curves,
                    plot_track, plot_vs_factor)
from .stats import Interval, t_critical
from .track import (FLIPPED, MOVING, STABLE, STILL_LEARNING, UNTRACKED, condition_drops, point_estimators,
                    tracked_estimate)

TITLE = "CRATE ablation: report"
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


def verdict(est: Estimator, metric: Metric, contrast: Contrast) -> str:
    """Plain words: is the difference distinguishable from 0, after the Holm adjustment?"""
    iv, conf = est.estimate(metric, contrast), pct(est.confidence)
    if iv.estimate is None:
        return "not tested: no seed has both runs"
    if not iv.has_ci:
        return f"not tested: {iv.method}"
    p_adj = est.adjusted_p(metric, contrast)
    if p_adj is None:  # one seed: a CI only from neurons, no t test, outside the family
        return (f"significant at {conf}: the CI excludes 0 (over neurons only: 1 seed; not adjusted)" if iv.significant
                else f"not significant at {conf}: the CI includes 0")
    adjusted = f"Holm-adjusted p = {p_adj:.3g}"
    if est.significant(metric, contrast):
        return f"significant at {conf} after Holm adjustment: the CI excludes 0, {adjusted}"
    if iv.significant:
        return f"not significant at {conf} after Holm adjustment ({adjusted}), though the raw CI excludes 0"
    return f"not significant at {conf}: the CI includes 0 ({adjusted})"


def direction(iv: Interval) -> str:
    return "increases" if iv.estimate > 0 else "decreases"


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


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
    return [f"{c.name} seed {seed}" for c in sweep.conditions for seed in sweep.seeds
            if seed not in sweep.by_seed(c)]


def header(est: Estimator, reference: Condition, generated: datetime) -> list[Block]:
    sweep = est.sweep
    runs = sweep.runs
    train_s = [r.values["train_s"] for r in runs if r.values.get("train_s") is not None]
    tokens = sorted({r.values["tokens"] for r in runs if r.values.get("tokens") is not None})
    methods = sorted({r.method for r in runs if r.method})
    design = Design(sweep)
    files: list = ["Files: "]
    for name in (RESULTS, RESULTS_LAYERS, RESULTS_TRACK, SWEEP_CONFIG):
        if (sweep.out_dir / name).is_file():
            files += [Link(name, name), " "]
    missing = missing_runs(sweep)
    items: list[Text] = [
        f"Runs: {len(runs)} finished, {len(sweep.conditions)} conditions, seeds "
        f"{', '.join(map(str, sweep.seeds)) or 'none'}.",
        "Factors (a full grid): " + ("; ".join(f"{key} in {{{', '.join(map(level_text, levels))}}}"
                                               for key, levels in design.factors.items()) or "none") + ".",
        "Arms: " + ("; ".join(f"{arm.name} ({design.describe(arm)})" for arm in design.arms)
                    or "none") + ".",
        "Missing runs (not in results.csv): " + ("; ".join(missing) + "." if missing else "none."),
        f"Model: {model_description(sweep)} (in the reference condition). Parameters: {parameter_counts(sweep)}.",
        f"Training tokens per run: {span(tokens)}.",
        f"Total training time: {duration(sum(train_s))} over {len(train_s)} runs"
        + (f" (mean {duration(sum(train_s) / len(train_s))} a run)." if train_s else "."),
        "Interpretability scored with: " + (", ".join(methods) if methods else "no neuron-level scores found") + ".",
        f"Reference condition for paired differences: {reference.name} "
        f"({settings_text(design.reference) or 'the shared config'}).",
        files,
    ]
    return [Heading(1, TITLE), Paragraph(f"Generated {generated:%Y-%m-%d %H:%M} UTC from {sweep.out_dir}."),
            Bullets(items)]


def methods(est: Estimator) -> list[Block]:
    conf = pct(est.confidence)
    n = len(est.sweep.seeds)
    t_note = (f"with the sweep's n = {n} seeds the t quantile is {t_critical(est.confidence, n - 1):.2f}, so only "
              f"large effects can show" if n >= 2 else "with a single seed there is no interval at all")
    return [Heading(2, "How the numbers are computed"), Bullets([
        f"Loss and sparsity: mean over seeds and a {conf} t interval (df = n − 1; {t_note}). "
        f"n is stated wherever fewer seeds contribute.",
        "Interpretability: pooled Pearson correlation × 100 (as in the paper); a run's score is the mean over "
        "layers of the mean over its scored neurons. Its interval is the union of a hierarchical bootstrap "
        f"({est.n_boot} resamples, seed {est.seed}: seeds with replacement, then neurons with replacement within "
        "each layer of each drawn run) and the t interval over seeds. A bootstrap over a few seeds alone covers "
        "too little, the t interval alone rests on normality; a difference is called significant only if both "
        "exclude 0 (and the adjustment for multiple comparisons below keeps it).",
        "Differences are paired by seed: per seed, condition minus reference; then mean and interval over the "
        "seeds that have both runs.",
        f"Multiple comparisons: the {conf} CIs shown are raw (unadjusted). \"Significant\" in this report means "
        f"significant after a Holm–Bonferroni adjustment over the family of all {est.family_size} tested "
        f"contrasts (every effect of the Effects section, for each metric): "
        f"the raw CI excludes 0 and the Holm-adjusted p-value is at most {1 - est.confidence:g}. The p-values "
        f"are the paired t test's on the same per-seed values as the t interval (for interpretability too, "
        f"where the CI is the union with the bootstrap's); this keeps the chance of any false positive in the "
        f"family at or below {1 - est.confidence:g}. Differences without a p-value (1 seed) are not adjusted.",
        "Unscorable neurons (a constant real or simulated side) have no score: they are counted below and left "
        "out of the means, never hidden.",
        ("Along training (sweep.track): each tracked checkpoint is evaluated and scored with the same settings as "
         "the final one, and every effect is estimated at each point by the same code, with the Holm family taken "
         "within that point. The verdict compares the last two tracked points: flipped = the estimate changed "
         "sign and is significant at either point; stable = the same significance at both, and the same sign (or "
         "significant at neither); still moving = anything else (the same sign, but significant at one point "
         "only), or fewer than two points with an interval (one seed gives loss and sparsity none); not tracked "
         "= no estimate at any point (a condition without checkpoints along training, such as an SAE arm)."),
        (f"Convergence: a condition's val loss at 3/4 of its training tokens (interpolated between evaluations) "
         f"against its last value, as a share of the former, averaged over seeds; a drop above "
         f"{100 * STILL_LEARNING:g}% marks it as still learning."),
    ])]


# ---------------------------------------------------------------- along training

TRACK_HEADING = "Do the answers hold along training?"
TRACKED_KINDS = ("main", "slope", "arm")  # drawn against training tokens (interactions are in the table only)


def fmt_tokens(tokens: float) -> str:
    return f"{tokens / 1e6:.2f}M tokens" if tokens >= 1e5 else f"{tokens:,.0f} tokens"


def track_cell(iv: Interval, significant: bool | None, metric: Metric) -> str:
    return fmt_interval(iv, metric, signed=True) + (" *" if significant else "")


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


def track_section(est: Estimator, effects: list[Effect], points: list[TrackPoint], plots_dir: Path
                  ) -> tuple[list[Block], list[Block]]:
    """The verdicts with the convergence lines (the top of the answers), and the plots (drawn later with
    the others); the tracked estimates come from one Estimator per point."""
    blocks: list[Block] = [Heading(2, TRACK_HEADING)]
    convergence, learning = convergence_blocks(est.sweep)
    metrics = measured_metrics(est)
    if len(points) < 2 or not effects:
        why = ("the sweep kept no checkpoint along training (sweep.track is empty)" if len(points) < 2
               else "the sweep has a single condition")
        blocks.append(Paragraph(f"Not measured: {why}, so whether the answers below hold with more (or less) "
                                f"training is unknown." + (" This report is an early-training preview: the "
                                                            "models are still learning." if learning else "")))
        return blocks + convergence, []
    estimators = point_estimators(points, [e.contrast for e in effects], metrics, est.confidence, est.seed,
                                  est.n_boot)
    tracked = {(e.title, m.column): tracked_estimate(estimators, m, e.contrast) for e in effects for m in metrics}
    counts = Counter(t.verdict for t in tracked.values())
    last = f"{fmt_tokens(points[-2].tokens)} and {fmt_tokens(points[-1].tokens)}"
    summary = (f"Verdicts over the last two tracked points ({last} of training), for {len(tracked)} (effect, "
               f"metric) pairs: {counts[STABLE]} {STABLE}, {counts[MOVING]} {MOVING}, {counts[FLIPPED]} {FLIPPED}"
               + (f", {counts[UNTRACKED]} {UNTRACKED} (conditions without checkpoints along training, such as SAE "
                  f"arms)" if counts[UNTRACKED] else "") + ".")
    all_hold = counts[STABLE] == len(tracked) - counts[UNTRACKED]
    if all_hold and not learning:
        summary += " The answers below hold over the last two tracked points."
    elif all_hold:
        summary += (" The answers below hold over the last two tracked points, but the models are still learning "
                    "(see Convergence): this report is an early-training preview; more training may change them.")
    else:
        summary += (" This report is an early-training preview: some of its answers are still changing with "
                    "training" + (" and the models are still learning" if learning else "")
                    + "; more training may change them.")
    blocks.append(Paragraph(summary))
    changing = [f"{title} on {next(m.label for m in metrics if m.column == column)} ({t.verdict})"
                for (title, column), t in tracked.items() if t.verdict != STABLE and any(t.significant)]
    if changing:
        blocks.append(Paragraph("Not stable, and significant at some tracked point: " + "; ".join(changing) + "."))
    blocks += convergence
    columns = ["effect", "metric"] + [f"{fmt_tokens(p.tokens)} ({p.fraction:g})" for p in points] + ["verdict"]
    rows = [[e.title, m.label] + [track_cell(iv, sig, m) for iv, sig in zip(t.intervals, t.significant)] + [t.verdict]
            for e in effects for m in metrics for t in [tracked[(e.title, m.column)]]]
    blocks.append(Table(columns, rows, f"Each effect at each tracked point (training tokens, fraction of "
                                       f"train.max_steps): estimate [{pct(est.confidence)} CI]; * significant "
                                       f"after the Holm adjustment at that point", numeric=set(range(2, 2 + len(points)))))
    drawn = [e for e in effects if e.kind in TRACKED_KINDS]
    tokens = [p.tokens for p in points]
    groups = [("loss", [m for m in metrics if m.column in ("val_loss", "zero_frac")]),
              ("interp", [m for m in metrics if m.protocol])]
    figures_blocks: list[Block] = []
    for stem, chosen in groups:
        filename = f"track_{stem}.png"
        series = {e.title: [tracked[(e.title, m.column)] for m in chosen] for e in drawn}
        title = f"Effects against training tokens ({', '.join(m.label for m in chosen)})"
        if chosen and plot_track(tokens, chosen, series, plots_dir / filename, title):
            figures_blocks += [Heading(3, title), Image(f"{plots_dir.name}/{filename}", title)]
    return blocks, figures_blocks


# ---------------------------------------------------------------- answers

def effect_items(est: Estimator, contrast: Contrast, metrics: list[Metric]) -> tuple[list[Text], dict[str, list[str]]]:
    """One line per metric, and the metrics sorted by outcome: a significant effect after adjustment
    (worded), one significant only before it, a CI that includes 0, no interval at all."""
    items: list[Text] = []
    outcome: dict[str, list[str]] = {"shown": [], "unadjusted": [], "nothing": [], "untested": []}
    for metric in metrics:
        iv = est.estimate(metric, contrast)
        n = f" (n={iv.n})" if iv.has_ci else ""
        items.append(f"{metric.label}: {fmt_interval(iv, metric, signed=True)}{n}: {verdict(est, metric, contrast)}")
        if est.significant(metric, contrast):
            outcome["shown"].append(f"{metric.label} {direction(iv)}")
        elif iv.significant:
            outcome["unadjusted"].append(f"{metric.label} {direction(iv)}")
        elif iv.has_ci:
            outcome["nothing"].append(metric.label)
        else:
            outcome["untested"].append(metric.label)
    return items, outcome


def summary_line(outcome: dict[str, list[str]]) -> str:
    shown, nothing, untested = outcome["shown"], outcome["nothing"], outcome["untested"]
    text = "The data show: " + ("; ".join(shown) if shown else "no significant effect on any tested metric") + "."
    if outcome["unadjusted"]:
        text += (" Significant before but not after the Holm adjustment (suggestive only): "
                 + "; ".join(outcome["unadjusted"]) + ".")
    if nothing:
        text += " They show nothing (CI includes 0) for: " + ", ".join(nothing) + "."
    if untested:
        text += " Not tested (no interval, too few seeds): " + ", ".join(untested) + "."
    return text


EFFECT_SECTIONS = (("main", "Main effects"), ("slope", "Slopes per doubling"),
                   ("interaction", "Two-factor interactions"), ("arm", "Arms against the reference"))


def effects_section(est: Estimator, effects: list[Effect]) -> list[Block]:
    """Every contrast of the family, grouped by kind and, for main effects and slopes, by factor."""
    metrics = measured_metrics(est)
    blocks: list[Block] = [Heading(2, "Effects")]
    if not effects:
        blocks.append(Paragraph("The sweep has a single condition: nothing to compare."))
    for kind, title in EFFECT_SECTIONS:
        chosen = [e for e in effects if e.kind == kind]
        if not chosen:
            continue
        blocks.append(Heading(3, title))
        for effect in chosen:
            items, outcome = effect_items(est, effect.contrast, metrics)
            blocks += [Heading(4, effect.title), Paragraph(f"{effect.description}, paired by seed:"),
                       Bullets(items), Paragraph(summary_line(outcome))]
    if not est.runs(est.sweep.reference):
        blocks.append(Paragraph(f"The reference condition {est.sweep.reference.name} has no runs: no contrast with "
                                f"it can be estimated."))
    return blocks


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
    column = "nan_" + protocol.replace("-", "_")
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
    return Table(["condition", "protocol", "scored neurons", "unscorable (NaN)", "main reasons"], rows,
                 "Unscorable neurons, summed over seeds and layers", numeric={2, 3})


def per_condition(est: Estimator) -> list[Block]:
    interp = [m for m in measured_metrics(est) if m.protocol]
    blocks: list[Block] = [Heading(2, "Results per condition"),
                           condition_table(est, list(SEED_METRICS),
                                           f"Loss and sparsity: mean [{pct(est.confidence)} CI] over seeds")]
    if not interp:
        return blocks + [Paragraph("No interpretability scores in this sweep (the interp columns are empty).")]
    blocks.append(condition_table(est, interp, f"Interpretability, correlation × 100: mean "
                                               f"[{pct(est.confidence)} CI over seeds and neurons]"))
    table = unscorable_table(est)
    nan_total = sum(r.values.get("nan_neurons") or 0 for r in est.sweep.runs)
    blocks.append(table if table.rows else Paragraph(
        f"Unscorable neurons: {nan_total:.0f} in total (nan_neurons of results.csv); no per-protocol counts."))
    return blocks


# ---------------------------------------------------------------- the paper

def paper_section(est: Estimator, reference: Condition) -> list[Block]:
    """Only where the sweep has a GPT arm against a CRATE reference (the paper's comparison)."""
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
        significant = est.significant(metric, difference(reference, gpt)) if diff else None
        rows.append([metric.label, f"{paper_crate:g}", f"{paper_gpt:g}", f"{paper_crate - paper_gpt:+.2f}",
                     fmt_interval(ours[0], metric) if ours[0] else "n/a",
                     fmt_interval(ours[1], metric) if ours[1] else "n/a",
                     fmt_interval(diff, metric, signed=True) if diff else "n/a",
                     agreement(paper_crate - paper_gpt, diff, significant)])
    return blocks + [Table(["quantity", "paper CRATE", "paper GPT", "paper CRATE − GPT", f"ours {reference.name}",
                            f"ours {gpt.name}", f"ours CRATE − GPT [{pct(est.confidence)} CI]", "direction"], rows,
                           numeric={1, 2, 3, 4, 5, 6})]


def agreement(paper_difference: float, ours: Interval | None, significant: bool | None) -> str:
    if ours is None or ours.estimate is None:
        return "n/a"
    if not significant:
        if not ours.has_ci:
            return "undecided: no CI"
        return ("undecided: not significant after the Holm adjustment (the raw CI excludes 0)" if ours.significant
                else "undecided: our CI includes 0")
    same = (ours.estimate > 0) == (paper_difference > 0)
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
                     "n/a" if v.get("nan_neurons") is None else f"{v['nan_neurons']:.0f}", cards])
    return [Heading(2, "Runs"), Table(["run", "condition", "seed", "params", "tokens", "train s", "val loss",
                                       "zero fraction", "unscorable neurons", "neuron cards"], rows,
                                      numeric={2, 3, 4, 5, 6, 7, 8})]


# ---------------------------------------------------------------- entry point

def build(est: Estimator, plots_dir: Path, generated: datetime, points: list[TrackPoint] = ()) -> list[Block]:
    """The report's blocks; ``points``: the sweep at each tracked point of training (read_track_points)."""
    reference = est.sweep.reference
    if not est.sweep.runs:
        return header(est, reference, generated) + [Paragraph(f"{RESULTS} lists no finished run yet: nothing to "
                                                              f"report.")]
    plots_dir.mkdir(parents=True, exist_ok=True)
    for stale in plots_dir.glob("*.png"):  # a figure from an earlier report (or design) must not survive
        stale.unlink()
    effects = design_effects(est.sweep)
    est.set_family([effect.contrast for effect in effects], measured_metrics(est))
    along, along_plots = track_section(est, effects, list(points), plots_dir)
    return (header(est, reference, generated) + methods(est) + along + effects_section(est, effects)
            + per_condition(est) + paper_section(est, reference) + per_layer(est)
            + figures(est, plots_dir, along_plots) + runs_section(est))


def write_report(out_dir: Path, design: SweepConfig, confidence: float = 0.95, seed: int = 0,
                 n_boot: int = 2000) -> Path:
    """Write OUT/report.md, OUT/report.html and OUT/plots/*.png for the sweep folder OUT, run from the sweep
    `design` (its [sweep] section); returns report.md. seed and n_boot: the bootstrap's RNG seed and
    resamples (the same seed gives the same report numbers)."""
    out_dir = Path(out_dir)
    sweep = read_sweep_results(out_dir, design)
    est = Estimator(sweep, confidence=confidence, seed=seed, n_boot=n_boot)
    blocks = build(est, out_dir / PLOTS, datetime.now(timezone.utc), read_track_points(out_dir, design))
    # atomically: a full disk leaves the previous report whole
    write_text(out_dir / REPORT_MD, to_markdown(blocks))
    write_text(out_dir / REPORT_HTML, to_html(TITLE, blocks))
    return out_dir / REPORT_MD
