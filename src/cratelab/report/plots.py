"""The report's figures (PNG). Error bars and bands are the report's confidence intervals.

Figures are built with matplotlib's object API on the Agg canvas, never pyplot: no global state, no
display needed, safe next to other code that uses pyplot. Each function returns False when the sweep has
no data for its figure, and then writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..evaluate import DENSITY_BIN_EDGES
from ..config import level_text
from ..sweep.design import Condition
from .analysis import INTERP_METRICS, Design, Estimator, Metric, layer_intervals, mean_of, run_value
from .load import RunResult, Sweep
from .stats import Interval
from .track import TrackedEstimate

ARM_COLOR = "0.35"


def condition_color(sweep: Sweep, condition: Condition) -> tuple | str:
    """One colour per grid cell (tab10, in the sweep's order); greys for the arms."""
    cells = [c for c in sweep.conditions if not c.arm]
    if condition.arm:
        arms = [c for c in sweep.conditions if c.arm]
        return str(0.2 + 0.5 * arms.index(condition) / max(1, len(arms)))
    return colormaps["tab10"](cells.index(condition) % 10)


def _marker(condition: Condition) -> str:
    return "^" if condition.arm else "o"


def _figure(n_panels: int, width: float = 4.6, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def _errors(intervals: Sequence[Interval], scale: float) -> np.ndarray:
    """Asymmetric error bars; 0 where there is no interval (one seed)."""
    low = [(iv.estimate - iv.low) * scale if iv.has_ci else 0.0 for iv in intervals]
    high = [(iv.high - iv.estimate) * scale if iv.has_ci else 0.0 for iv in intervals]
    return np.array([low, high])


def _arm_band(ax: Axes, iv: Interval, scale: float, color: str, label: str) -> None:
    if iv.estimate is None:
        return
    ax.axhline(iv.estimate * scale, color=color, lw=1.2, label=f"{label} (band: CI)")
    if iv.has_ci:
        ax.axhspan(iv.low * scale, iv.high * scale, color=color, alpha=0.15, lw=0)


def plot_vs_factor(est: Estimator, factor: str, metrics: Sequence[Metric], path: Path, title: str) -> bool:
    """One panel per metric: the metric against the factor's levels, one line per combination of the other
    factors' levels; each arm a horizontal band. Positive numeric levels on a log2 axis (doublings evenly)."""
    sweep = est.sweep
    design = Design(sweep.design)
    levels = design.factors[factor]
    panels = [m for m in metrics if any(run_value(r, m) is not None for r in sweep.runs)]
    if not panels:
        return False
    numeric = design.is_numeric(factor)
    log_axis = numeric and all(v > 0 for v in levels)
    positions = [float(v) for v in levels] if numeric else list(range(len(levels)))
    series = design.others(factor)
    fig, axes = _figure(len(panels))
    for ax, metric in zip(axes, panels):
        for i, rest in enumerate(series):
            cells = [design.cell({factor: level} | rest) for level in levels]
            points = [(x, est.estimate(metric, mean_of(c))) for x, c in zip(positions, cells) if c is not None]
            points = [(x, iv) for x, iv in points if iv.estimate is not None]
            if not points:
                continue
            nudge = 1 + 0.03 * (i - (len(series) - 1) / 2)  # lines nudged apart so error bars do not overlap
            xs = [x * nudge if log_axis else x + (nudge - 1) for x, _ in points]
            label = ", ".join(f"{k.split('.')[-1]}={level_text(v)}" for k, v in rest.items()) or "grid"
            ax.errorbar(xs, [iv.estimate * metric.scale for _, iv in points],
                        yerr=_errors([iv for _, iv in points], metric.scale), color=colormaps["tab10"](i % 10),
                        marker="o", capsize=4, label=label)
        for arm in (a for a in design.arms if est.runs(a)):
            _arm_band(ax, est.estimate(metric, mean_of(arm)), metric.scale, condition_color(sweep, arm), arm.name)
        if log_axis:
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
        ax.set_xticks(positions, [level_text(v) for v in levels])
        ax.set_xlabel(factor)
        ax.set_ylabel(metric.label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} (mean over seeds, error bars: {est.confidence:.0%} CI)")
    fig.savefig(path, dpi=110)
    return True


def plot_interp_vs_loss(est: Estimator, path: Path) -> bool:
    """Each run a point: interpretability against validation loss, one panel per protocol."""
    sweep = est.sweep
    panels = [m for m in INTERP_METRICS if any(run_value(r, m) is not None for r in sweep.runs)]
    if not panels:
        return False
    fig, axes = _figure(len(panels))
    for ax, metric in zip(axes, panels):
        for condition in sweep.conditions:
            points = [(r.values.get("val_loss"), run_value(r, metric)) for r in est.runs(condition).values()]
            points = [(x, y * metric.scale) for x, y in points if x is not None and y is not None]
            if points:
                ax.scatter(*zip(*points), color=condition_color(sweep, condition), marker=_marker(condition),
                           s=42, edgecolor="k", linewidth=0.4, label=condition.name)
        ax.set_xlabel("val loss (nats/token)")
        ax.set_ylabel(metric.label)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Interpretability against loss (one point per run)")
    fig.savefig(path, dpi=110)
    return True


def plot_layer_sparsity(est: Estimator, path: Path) -> bool:
    """Zero fraction by layer, one line per condition."""
    sweep = est.sweep
    series = {c: layer_intervals(est, c, "zero_frac") for c in sweep.conditions}
    series = {c: s for c, s in series.items() if s}
    if not series:
        return False
    fig, (ax,) = _figure(1, width=7.0, height=4.0)
    n = len(series)
    for i, (condition, per_layer) in enumerate(series.items()):
        layers = list(per_layer)
        offset = (i - (n - 1) / 2) * 0.6 / max(n, 1)  # side by side, so error bars do not hide each other
        ax.errorbar([layer + offset for layer in layers], [iv.estimate for iv in per_layer.values()],
                    yerr=_errors(list(per_layer.values()), 1.0), color=condition_color(sweep, condition),
                    marker=_marker(condition), capsize=3, label=condition.name)
    all_layers = sorted({layer for s in series.values() for layer in s})
    ax.set_xticks(all_layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("zero fraction of the interpreted neurons")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"Per-layer sparsity (mean over seeds, error bars: {est.confidence:.0%} CI)")
    fig.savefig(path, dpi=110)
    return True


def density_by_layer(sweep: Sweep, condition: Condition) -> dict[int, tuple[np.ndarray, int]]:
    """Per layer: the firing-density histogram summed over the condition's seeds, and the neurons behind it
    (dead ones included, though they sit in no bin)."""
    out: dict[int, tuple[np.ndarray, int]] = {}
    n_bins = len(DENSITY_BIN_EDGES) - 1
    for run in sweep.by_seed(condition).values():
        for row in run.density:
            hist = np.asarray(row.get("density_hist") or [], dtype=np.float64)
            if hist.size != n_bins:
                continue
            counts, neurons = out.get(int(row["layer"]), (np.zeros(n_bins), 0))
            out[int(row["layer"])] = (counts + hist, neurons + int(row.get("n_neurons") or hist.sum()))
    return out


def plot_density(sweep: Sweep, path: Path) -> bool:
    """Firing-density histograms (log10 firing rate), one panel per layer, one line per condition."""
    data = {c: density_by_layer(sweep, c) for c in sweep.conditions}
    layers = sorted({layer for d in data.values() for layer in d})
    if not layers:
        return False
    centres = (DENSITY_BIN_EDGES[:-1] + DENSITY_BIN_EDGES[1:]) / 2
    fig, axes = _figure(len(layers))
    for ax, layer in zip(axes, layers):
        for condition, per_layer in data.items():
            if layer in per_layer:
                counts, neurons = per_layer[layer]
                ax.plot(centres, counts / max(neurons, 1), color=condition_color(sweep, condition),
                        marker=_marker(condition), ms=3, label=condition.name)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("log10 firing rate")
        ax.set_ylabel("share of neurons (dead ones in no bin)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Firing-density histograms (summed over seeds)")
    fig.savefig(path, dpi=110)
    return True


def mean_curve(sweep: Sweep, condition: Condition,
               curve_of: Callable[[RunResult], list[tuple[float, float]]] = lambda run: run.curve) -> list[tuple[float, float]]:
    """(tokens, value) averaged over the condition's seeds at each evaluation point; by default val loss."""
    points: dict[float, list[float]] = {}
    for run in sweep.by_seed(condition).values():
        for tokens, loss in curve_of(run):
            points.setdefault(tokens, []).append(loss)
    return [(tokens, float(np.mean(losses))) for tokens, losses in sorted(points.items())]


def plot_curves(sweep: Sweep, path: Path) -> bool:
    curves = {c: mean_curve(sweep, c) for c in sweep.conditions}
    curves = {c: points for c, points in curves.items() if points}
    if not curves:
        return False
    fig, (ax,) = _figure(1, width=7.0, height=4.2)
    for condition, points in curves.items():
        ax.plot(*zip(*points), color=condition_color(sweep, condition), marker=_marker(condition), ms=3,
                label=condition.name)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("val loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Training curves (mean over seeds)")
    fig.savefig(path, dpi=110)
    return True


SPARSITY_CURVES = (("zero_frac", "zero fraction"), ("l0", "L0 (active neurons/token)"), ("dead_frac", "dead fraction"))


def plot_sparsity_curves(sweep: Sweep, path: Path) -> bool:
    """The interpreted layers' sparsity at each evaluation during training (metrics.jsonl), per condition."""
    if not any(run.sparsity_curves for run in sweep.runs):
        return False
    fig, axes = _figure(len(SPARSITY_CURVES), width=4.2, height=3.6)
    for ax, (stat, label) in zip(axes, SPARSITY_CURVES):
        for condition in sweep.conditions:
            points = mean_curve(sweep, condition, lambda run, stat=stat: run.sparsity_curves.get(stat, []))
            if points:
                ax.plot(*zip(*points), color=condition_color(sweep, condition), marker=_marker(condition), ms=3,
                        label=condition.name)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Sparsity during training (mean over interpreted layers and seeds, on the eval batches)")
    fig.savefig(path, dpi=110)
    return True


def plot_track(tokens: Sequence[float], metrics: Sequence[Metric], series: dict[str, list[TrackedEstimate]],
               path: Path, title: str) -> bool:
    """Each effect's estimate and CI at every tracked point, against training tokens: a panel per metric,
    a line per effect (``series``: effect title -> its TrackedEstimate for each metric)."""
    if len(tokens) < 2 or not series or not metrics:
        return False
    fig, axes = _figure(len(metrics), width=4.4, height=3.8)
    colors = colormaps["tab10"]
    for ax, (i, metric) in zip(axes, enumerate(metrics)):
        for j, (label, tracked) in enumerate(series.items()):
            intervals = tracked[i].intervals
            shown = [(t, iv) for t, iv in zip(tokens, intervals) if iv.estimate is not None]
            if not shown:
                continue
            xs, ivs = zip(*shown)
            ax.errorbar(xs, [iv.estimate * metric.scale for iv in ivs], yerr=_errors(ivs, metric.scale),
                        color=colors(j % 10), marker="o", ms=3, capsize=2, lw=1.2,
                        label=f"{label} ({tracked[i].verdict})" if tracked[i].verdict else label)
        ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
        ax.set_xlabel("training tokens")
        ax.set_ylabel(metric.label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title + ": estimate and CI at each tracked point")
    fig.savefig(path, dpi=110)
    return True
