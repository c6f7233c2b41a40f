"""What a sweep folder holds: the result rows (result.json, then a row of results.csv and its layers' rows
of results_layers.csv: one builder for a trained run's checkpoint, its neurons, and an SAE arm's run, its
SAEs' features, so that both fill the columns of layout.py alike), the tables collected from them, and
sweep.toml with the guard that refuses to resume a folder made with other settings."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import tomli_w

from .. import layout
from ..config import (ConfigError, RunConfig, SweepConfig, changed_settings, execution_settings, load_sweep_config,
                      read_toml)
from ..errors import CratelabError
from ..io import read_json, remove_tree, write_csv, write_text
from .design import PlannedRun, design_keys


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
    columns are the means over its layers, unscorable_scores the unscorable (unit, protocol) scores of all layers; the layers'
    rows are under "layers"."""
    layer_rows = []
    for measured in layers:
        row = dict(columns) | measured
        for protocol in layout.PROTOCOLS:
            scored = scores.get((measured["layer"], protocol))
            row[layout.interp_column(protocol)] = scored["mean"] if scored else None
            row[layout.unscorable_column(protocol)] = scored["n_unscorable"] if scored else None
        layer_rows.append(row)
    row = dict(columns) | metrics
    for key in (*layout.SPARSITY_COLUMNS, *layout.SAE_COLUMNS, *map(layout.interp_column, layout.PROTOCOLS)):
        if any(key in layer for layer in layer_rows):
            row[key] = mean_over_layers([layer.get(key) for layer in layer_rows])
    row[layout.UNSCORABLE] = sum(s["n_unscorable"] for s in scores.values())
    return row | {"layers": layer_rows}


def read_result(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run's result.json: (its row, None) when the run is finished, (None, None) when it has none, and
    (None, what is wrong) when the file is damaged or foreign: that run counts as unfinished."""
    if not path.is_file():
        return None, None
    try:
        row = read_json(path, what="run result")
    except CratelabError:
        return None, f"{path}: damaged (not valid JSON)"
    if not isinstance(row, dict):
        return None, f"{path}: damaged (a JSON {type(row).__name__}, not a run result)"
    missing = [key for key in (*layout.condition_columns([]), "layers") if key not in row]
    if missing:
        return None, f"{path}: damaged (no {', '.join(map(repr, missing))})"
    if not isinstance(row["layers"], list) or not all(isinstance(layer, dict) for layer in row["layers"]):
        return None, f"{path}: damaged ('layers' is not a list of objects)"
    if not isinstance(row.get("tracked", []), list) or not all(isinstance(p, dict) for p in row.get("tracked", [])):
        return None, f"{path}: damaged ('tracked' is not a list of objects)"
    if wrong := _wrong_type(row):
        return None, f"{path}: damaged ({wrong})"
    return row, None

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

def _wrong_type(row: dict[str, Any]) -> str | None:
    """The first field of a result row whose value the tables cannot hold (a string where a number belongs,
    say): "'field' is VALUE, not TYPE"; None when every field is right (metrics may be null)."""
    if not isinstance(row["name"], str) or not isinstance(row["condition"], str):
        key = "name" if not isinstance(row["name"], str) else "condition"
        return f"{key!r} is {row[key]!r}, not a string"
    if not isinstance(row["seed"], int) or isinstance(row["seed"], bool):
        return f"'seed' is {row['seed']!r}, not an integer"
    parts = [("", row, layout.RESULT_METRIC_COLUMNS)]
    parts += [(f"layers[{i}].", layer, layout.LAYER_METRIC_COLUMNS) for i, layer in enumerate(row["layers"])]
    parts += [(f"tracked[{i}].", point, ["track", "step", *layout.RESULT_METRIC_COLUMNS])
              for i, point in enumerate(row.get("tracked", []))]
    for prefix, values, columns in parts:
        for key in columns:
            if values.get(key) is not None and not _is_number(values[key]):
                return f"{prefix + key!r} is {values[key]!r}, not a number"
    return None

def collect_results(out_dir: Path, sweep: SweepConfig, runs: list[PlannedRun]) -> list[dict[str, Any]]:
    """results.csv, results_layers.csv and results_track.csv from the finished runs' result.json files (of this sweep's runs
    only: a folder left by a level since removed from the sweep file is not this sweep's); a damaged one is
    an error naming it (`cratelab ablate` redoes that run)."""
    rows = []
    for run in sorted(runs, key=lambda r: r.name):
        row, damage = read_result(layout.run_folder(out_dir, run.name) / layout.RUN_RESULT)
        if damage:
            raise CratelabError(f"{damage}; rerun `cratelab ablate` on {out_dir} to redo that run")
        if row is not None:
            rows.append(row)
    varied = design_keys(sweep)
    write_csv(out_dir / layout.RESULTS, layout.result_columns(varied), rows)
    write_csv(out_dir / layout.RESULTS_LAYERS, layout.layer_columns(varied),
              [layer for row in rows for layer in row["layers"]])
    write_csv(out_dir / layout.RESULTS_TRACK, layout.track_columns(varied),
              [point for row in rows for point in row.get("tracked", []) if isinstance(point, dict)])
    return rows

def unfinished_runs(runs: list[PlannedRun], out_dir: Path) -> list[PlannedRun]:
    """The runs without a valid result.json (a damaged one is said on stderr: that run is redone)."""
    todo = []
    for r in runs:
        finished, damage = read_result(layout.run_folder(out_dir, r.name) / layout.RUN_RESULT)
        if damage:
            print(f"{damage}: the run is redone", file=sys.stderr)
        if finished is None:
            todo.append(r)
    return todo

def sweep_values(base: RunConfig, sweep: SweepConfig) -> dict[str, Any]:
    """What sweep.toml holds: the settings the runs share, and the [sweep] grid."""
    return base.to_dict() | {"sweep": sweep.to_dict()}

def save_sweep(base: RunConfig, sweep: SweepConfig, out_dir: Path) -> None:
    write_text(out_dir / layout.SWEEP_CONFIG, tomli_w.dumps(sweep_values(base, sweep)))

# Settings a sweep folder may be rerun with: the execution settings of its runs and of the sweep (workers,
# launcher, [sweep.slurm]), the seeds and the factor levels (a run's config depends on its own cell alone and its
# name on its levels, so cells may be added or dropped), and the questions (the report's, not the runs'). Anything
# else (the shared settings, the reference and the arms, which arms build on) would put runs computed with other
# settings under the same name.
SWEEP_RESUMABLE_CHANGES = execution_settings(RunConfig) | execution_settings(SweepConfig, "sweep.") | {
    "sweep.seeds", "sweep.factors", "sweep.questions"}

def check_sweep_unchanged(base: RunConfig, sweep: SweepConfig, out_dir: Path) -> None:
    """Refuse to run into a sweep folder made with other settings (its sweep.toml), before anything runs."""
    path = out_dir / layout.SWEEP_CONFIG
    if not path.is_file():
        return
    old, new = read_toml(path), sweep_values(base, sweep)
    try:  # read as this version reads it: a setting added since then compares as its default (its old behaviour)
        old_base, old_sweep = load_sweep_config(old)
        old = sweep_values(old_base, old_sweep)
    except ConfigError:
        pass  # settings this version refuses: compared as written, so the changed ones are named
    diffs = changed_settings(old, new, SWEEP_RESUMABLE_CHANGES)
    if set(old.get("sweep", {}).get("factors", {})) != set(sweep.factors):  # another factor renames every run
        diffs.append(f"sweep.factors {sorted(old.get('sweep', {}).get('factors', {}))} -> {sorted(sweep.factors)}")
    if diffs:
        raise CratelabError(f"{out_dir} holds a sweep run with other settings ({'; '.join(diffs)}); pass --fresh "
                            "to start over, or choose another --out")

def remove_sweep_outputs(out_dir: Path) -> None:
    """`ablate --fresh`: delete what an earlier sweep wrote in out_dir (and nothing else; a symbolic link
    among them is removed, not what it points to). A failed delete stops it with an OSError naming what
    could not be deleted; sweep.toml goes last, so until everything else is gone it still refuses a sweep
    with other settings the old runs."""
    for name in (layout.RUNS, layout.PLOTS, layout.JOBS, layout.RESULTS, layout.RESULTS_LAYERS, layout.RESULTS_TRACK,
                 layout.REPORT_MD, layout.REPORT_HTML, layout.SWEEP_CONFIG):
        remove_tree(out_dir / name)
