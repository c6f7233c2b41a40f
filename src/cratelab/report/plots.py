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
from .analysis import (INTERP_METRICS, Estimator, Metric, crate_lambdas, crate_qkvs, layer_intervals, mean_of,
                       run_value)
from .load import Condition, RunResult, Sweep
from .stats import Interval

QKV_STYLE = {"shared": ("tab:blue", "o", "-"), "separate": ("tab:orange", "s", "--")}
DODGE = {"shared": 0.97, "separate": 1.03}  # lambda nudged apart so error bars do not overlap
GPT_COLOR = "0.35"
SHADES = ("Blues", "Oranges", "Greens", "Purples")


def condition_color(sweep: Sweep, condition: Condition) -> tuple | str:
    """One colour family per Q,K,V variant, darker for larger lambda; grey for GPT."""
    if not condition.is_crate:
        return GPT_COLOR
    families = crate_qkvs(sweep)
    lambdas = crate_lambdas(sweep, condition.qkv)
    shade = 0.45 + 0.5 * (lambdas.index(condition.ista_lambda) / max(1, len(lambdas) - 1))
    return colormaps[SHADES[families.index(condition.qkv) % len(SHADES)]](shade)


def _marker(condition: Condition) -> str:
    return QKV_STYLE.get(condition.qkv, ("k", "D", "-"))[1] if condition.is_crate else "^"


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


def _gpt_band(ax: Axes, iv: Interval, scale: float) -> None:
    if iv.estimate is None:
        return
    ax.axhline(iv.estimate * scale, color=GPT_COLOR, lw=1.2, label="GPT-ReLU (band: CI)")
    if iv.has_ci:
        ax.axhspan(iv.low * scale, iv.high * scale, color=GPT_COLOR, alpha=0.15, lw=0)


def plot_vs_lambda(est: Estimator, metrics: Sequence[Metric], path: Path, title: str) -> bool:
    """One panel per metric: the metric against lambda for each Q,K,V variant; GPT as a horizontal band."""
    sweep = est.sweep
    gpt = [c for c in sweep.conditions if not c.is_crate]
    panels = [m for m in metrics if any(run_value(r, m) is not None for r in sweep.runs)]
    if not panels:
        return False
    fig, axes = _figure(len(panels))
    for ax, metric in zip(axes, panels):
        for qkv in crate_qkvs(sweep):
            lambdas = crate_lambdas(sweep, qkv)
            intervals = [est.estimate(metric, mean_of(Condition("crate", qkv, lam))) for lam in lambdas]
            points = [(lam, iv) for lam, iv in zip(lambdas, intervals) if iv.estimate is not None]
            if not points:
                continue
            color, marker, style = QKV_STYLE.get(qkv, ("k", "D", "-"))
            ax.errorbar([p[0] * DODGE.get(qkv, 1.0) for p in points], [p[1].estimate * metric.scale for p in points],
                        yerr=_errors([p[1] for p in points], metric.scale), color=color, marker=marker,
                        ls=style, capsize=4, label=f"CRATE, Q,K,V {qkv}")
        if gpt:
            _gpt_band(ax, est.estimate(metric, mean_of(gpt[0])), metric.scale)
        lambdas = sorted({lam for qkv in crate_qkvs(sweep) for lam in crate_lambdas(sweep, qkv)})
        if lambdas and lambdas[0] > 0:  # a log axis shows doublings evenly, but cannot show lambda = 0
            ax.set_xscale("log", base=2)
            ax.set_xticks(lambdas, [f"{lam:g}" for lam in lambdas])
            ax.minorticks_off()
        ax.set_xlabel("ISTA sparsity penalty λ")
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
                           s=42, edgecolor="k", linewidth=0.4, label=condition.label)
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
                    marker=_marker(condition), capsize=3, label=condition.label)
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
                        marker=_marker(condition), ms=3, label=condition.label)
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
                label=condition.label)
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
                        label=condition.label)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Sparsity during training (mean over interpreted layers and seeds, on the eval batches)")
    fig.savefig(path, dpi=110)
    return True
