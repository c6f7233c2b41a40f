"""A sweep's result rows (result.json, then a row of results.csv and its layers' rows of results_layers.csv):
one builder for a trained run's checkpoint (its neurons) and an SAE arm's run (its SAEs' features), so that
both fill the columns of layout.py alike."""

from __future__ import annotations

import math
from typing import Any

from . import layout


def mean_over_layers(values: list[float | None]) -> float | None:
    """The mean of the layers' finite values; None when there is none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def result_row(columns: dict[str, Any], metrics: dict[str, Any], layers: list[dict[str, Any]],
               scores: dict[tuple[int, str], dict[str, Any]]) -> dict[str, Any]:
    """The results row of a run: ``columns`` (which run it is), its ``metrics`` (params, tokens, train_s,
    val_loss, bpb), and per layer the measurement of its units (``layers``: the layer, the sparsity
    columns, dictionary_norm, and an SAE's columns) with each protocol's mean score and unscorable count
    (``scores``: interpret's summary entries by (layer, protocol)). The run's sparsity, SAE and interp
    columns are the means over its layers, nan_neurons the unscorable units of all layers; the layers'
    rows are under "layers"."""
    layer_rows = []
    for measured in layers:
        row = dict(columns) | measured
        for protocol in layout.PROTOCOLS:
            scored = scores.get((measured["layer"], protocol))
            row[layout.interp_column(protocol)] = scored["mean"] if scored else None
            row[layout.nan_column(protocol)] = scored["n_unscorable"] if scored else None
        layer_rows.append(row)
    row = dict(columns) | metrics
    for key in (*layout.SPARSITY_COLUMNS, *layout.SAE_COLUMNS, *map(layout.interp_column, layout.PROTOCOLS)):
        if any(key in layer for layer in layer_rows):
            row[key] = mean_over_layers([layer.get(key) for layer in layer_rows])
    row["nan_neurons"] = sum(s["n_unscorable"] for s in scores.values())
    return row | {"layers": layer_rows}
