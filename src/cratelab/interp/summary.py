"""The summary of an `interpret` run: layer and model means per protocol (summary.json), and its Markdown.

Per layer and protocol: the mean over scorable neurons (the paper's layer score) with a bootstrap CI,
the mean counting unscorable neurons as 0, and the counts. Per protocol, over layers: the mean of the
layer means (layers without a scorable neuron cannot enter it, and are named), and the mean of the
zero-counted layer means over every layer. Every requested layer is listed, scorable or not.
Degenerate explanations (score.DEGENERATE) are counted per layer and protocol, by kind.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any, Sequence

import numpy as np

from .config import InterpConfig
from .score import DEGENERATE, NeuronScore, summarize_layer


def summarize(rows: Sequence[dict[str, Any]], layers: Sequence[int], protocols: Sequence[str],
              icfg: InterpConfig) -> dict[str, Any]:
    """Per layer and protocol: means, bootstrap CI, counts; per protocol: the means over layers.
    rows: flagged by score.flag_degenerate."""
    per_layer, model = [], {}
    for protocol in protocols:
        means, zero_counted, without = [], [], []
        for layer in layers:
            mine = [r for r in rows if r["layer"] == layer and r["protocol"] == protocol]
            if not mine:  # no neuron of the layer was asked for under this protocol
                continue
            s = summarize_layer([NeuronScore.from_row(r) for r in mine], n_bootstrap=icfg.bootstrap,
                                confidence=icfg.confidence, seed=icfg.seed)
            per_layer.append({**dataclasses.asdict(s),
                              "degenerate": dict(Counter(r["degenerate"] for r in mine if r.get("degenerate")))})
            zero_counted.append(s.mean_all_neurons)
            if s.mean is None:
                without.append(layer)
            else:
                means.append(s.mean)
        model[protocol] = {"mean": float(np.mean(means)) if means else None, "n_layers": len(means),
                           "mean_all_neurons": float(np.mean(zero_counted)) if zero_counted else None,
                           "n_layers_total": len(zero_counted), "layers_without_score": without}
    return {"layers": per_layer, "model": model}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def model_line(model: dict[str, Any]) -> str:
    """The model means of one protocol in words (summary.md and the CLI)."""
    line = (f"mean over {model['n_layers']} of {model['n_layers_total']} layers: {_fmt(model['mean'])}; "
            f"counting unscorable neurons as 0: {_fmt(model['mean_all_neurons'])}")
    if model["layers_without_score"]:
        line += f" (no scorable neuron in layer {', '.join(map(str, model['layers_without_score']))})"
    return line


def transport_failures_line(summary: dict[str, Any]) -> str | None:
    """What to do about the neurons that failed for transport reasons (summary.md and the CLI), or None."""
    n = summary.get("n_transport_failures", 0)
    if not n:
        return None
    return (f"{n} neuron{'s' if n != 1 else ''} failed for transport reasons (timeouts, connection or server "
            "errors, the neuron deadline); rerun with --retry-failed to score them again")


def md_code(text: str) -> str:
    """``text`` as a Markdown code span, shown literally whatever it holds (a path may hold `*`, `<`, `]`)."""
    text = " ".join(str(text).splitlines())
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def summary_markdown(summary: dict[str, Any]) -> str:
    conf = round(100 * summary["settings"]["confidence"])
    lines = [f"# Neuron interpretability: {md_code(summary['checkpoint'])}", "",
             f"step {summary['step']}, method `{summary['method']}`, {summary['n_tokens']:,} held-out tokens, "
             f"{summary['neurons_per_layer']} neurons scored per layer (of {summary['n_neurons']}), "
             f"seed {summary['settings']['seed']}. Score: pooled Pearson correlation of simulated and real "
             "activations (the paper reports it x100). The mean is over scorable neurons, as in the paper; "
             "the next column counts unscorable neurons as 0.", ""]
    for protocol, model in summary["model"].items():
        lines += [f"## {protocol}", "",
                  f"| layer | mean | {conf}% CI | mean, unscorable = 0 | scored | unscorable |",
                  "|---|---|---|---|---|---|"]
        for s in summary["layers"]:
            if s["protocol"] == protocol:
                ci = f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]" if s["mean"] is not None else "n/a"
                lines.append(f"| {s['layer']} | {_fmt(s['mean'])} | {ci} | {_fmt(s['mean_all_neurons'])} "
                             f"| {s['n_scored']} | {s['n_unscorable']} |")
        lines += ["", f"Model {model_line(model)}", ""]
    if line := transport_failures_line(summary):
        lines += [line + ".", ""]
    reasons = [(s["layer"], s["protocol"], reason, n) for s in summary["layers"]
               for reason, n in s["unscorable_reasons"].items()]
    degenerate = [(s["layer"], s["protocol"], kind, n) for s in summary["layers"]
                  for kind, n in s.get("degenerate", {}).items()]
    if degenerate:
        lines += ["## Degenerate explanations", "", "Scored as any other, but they say nothing about the neuron.", "",
                  "| layer | protocol | neurons | kind |", "|---|---|---|---|"]
        lines += [f"| {layer} | {protocol} | {n} | ⚠ {kind}: {DEGENERATE.get(kind, kind)} |"
                  for layer, protocol, kind, n in degenerate]
        lines.append("")
    if reasons:
        lines += ["## Unscorable neurons", "", "| layer | protocol | neurons | reason |", "|---|---|---|---|"]
        lines += [f"| {layer} | {protocol} | {n} | {reason} |" for layer, protocol, reason, n in reasons]
        lines.append("")
    return "\n".join(lines)
