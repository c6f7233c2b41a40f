"""Reading a sweep output folder into runs grouped by condition.

The folder (written by the sweep): results.csv (one row per finished run), results_layers.csv (one row per
run and layer), and per run `runs/<name>/`: eval.json (firing-density histograms), metrics.jsonl (training
curve), interp/scores.jsonl (neuron scores), interp/cards/index.html, config.toml. Everything but
results.csv may be missing: a partial sweep still gets a report, with the gaps stated.

results_track.csv (one row per run and tracked point) with each tracked point's folder
(runs/<name>/track/step{N}/: eval.json, interp/scores.jsonl) is read into one Sweep per tracked point
(read_track_points), so every point is estimated by the same code as the final one.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SweepConfig, level_text, read_toml
from ..data.shards import run_data_identity
from ..errors import CratelabError
from ..io import read_json_object, read_jsonl
from ..layout import (CARDS, CARDS_INDEX, CONFIG, COOLDOWN_START, EVAL, METRICS, RESULTS, RESULTS_LAYERS,
                      RESULTS_TRACK, RUN_INTERP, SCORES, condition_columns, run_folder, track_folder)
from ..sweep.design import Condition, design_keys, grid_conditions


@dataclass
class RunResult:
    """A finished run of a sweep as its folder records it: results.csv row, layers, scores, curve."""

    name: str
    condition: Condition
    seed: int
    values: dict[str, float | None]  # the numeric columns of results.csv
    layers: list[dict[str, float | None]] = field(default_factory=list)  # results_layers.csv rows, by layer
    # per protocol, the scored neurons' scores of each interpreted layer (absent without scores.jsonl)
    neuron_scores: dict[str, list[np.ndarray]] = field(default_factory=dict)
    unscorable: dict[str, Counter] = field(default_factory=dict)  # per protocol: reason -> neurons
    method: str | None = None  # the explainer/simulator that scored the neurons
    density: list[dict[str, Any]] = field(default_factory=list)  # eval.json layers: layer, n_neurons, hist
    curve: list[tuple[float, float]] = field(default_factory=list)  # (tokens, val_loss)
    # per statistic (zero_frac, l0, dead_frac): (tokens, mean over the interpreted layers) at each evaluation
    sparsity_curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    cards: Path | None = None
    model: dict[str, Any] | None = None  # config.toml's [model] section
    train: dict[str, Any] | None = None  # config.toml's [train] section
    train_data_sha256: str | None = None  # data.json's: the tokenized training data it was trained on


@dataclass
class TrackPoint:
    """The sweep as it was at one tracked point of training: the runs' checkpoints at that fraction of
    train.max_steps (1.0: the finished runs)."""

    fraction: float
    tokens: float  # training tokens at the point (the mean over its runs)
    sweep: Sweep


@dataclass
class Sweep:
    out_dir: Path
    runs: list[RunResult]
    design: SweepConfig  # the [sweep] section the runs were planned from

    @property
    def conditions(self) -> list[Condition]:
        """The conditions that have runs, in the sweep's order (grid cells, then arms)."""
        present = {r.condition.name for r in self.runs}
        return [c for c in grid_conditions(self.design) if c.name in present]

    @property
    def reference(self) -> Condition:
        """The grid cell at the reference level of every factor."""
        levels = {key: level_text(v) for key, v in self.design.reference_levels().items()}
        return next(c for c in grid_conditions(self.design)
                    if not c.arm and {key: level_text(v) for key, v in c.levels.items()} == levels)

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    def by_seed(self, condition: Condition) -> dict[int, RunResult]:
        return {r.seed: r for r in self.runs if r.condition == condition}


def _number(text: str | None) -> float | None:
    """A CSV cell as a float; empty, unparsable or non-finite cells are missing values."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _numeric(row: dict[str, str], skip: list[str]) -> dict[str, float | None]:
    return {k: _number(v) for k, v in row.items() if k is not None and k not in skip}


def _neuron_scores(rows: list[dict[str, Any]]) -> tuple[dict[str, list[np.ndarray]], dict[str, Counter]]:
    scored: dict[str, dict[int, list[float]]] = {}
    unscorable: dict[str, Counter] = {}
    for row in rows:
        protocol, layer, score = str(row["protocol"]), int(row["layer"]), row.get("score")
        scored.setdefault(protocol, {}).setdefault(layer, [])
        if score is None or not math.isfinite(float(score)):
            unscorable.setdefault(protocol, Counter())[str(row.get("reason") or "no reason given")] += 1
        else:
            scored[protocol][layer].append(float(score))
    arrays = {p: [np.asarray(layers[k]) for k in sorted(layers)] for p, layers in scored.items()}
    return arrays, unscorable


def _trunk_rows(path: Path) -> list[dict[str, Any]]:
    """The run's own evaluations in metrics.jsonl (not those of the cooldown branches of tracked points)."""
    return [row for row in read_jsonl(path) if COOLDOWN_START not in row]


def _curve(path: Path) -> list[tuple[float, float]]:
    points = []
    for row in _trunk_rows(path):
        tokens, loss = row.get("tokens"), row.get("val_loss")
        if tokens is not None and loss is not None and math.isfinite(float(loss)):
            points.append((float(tokens), float(loss)))
    return sorted(points)


SPARSITY_KEY = re.compile(r"^sparsity/layer(\d+)/(\w+)$")  # train.py's sparsity/layer{l}/{stat}


def _sparsity_curves(path: Path) -> dict[str, list[tuple[float, float]]]:
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in _trunk_rows(path):
        per_stat: dict[str, list[float]] = {}
        for key, value in row.items():
            if (match := SPARSITY_KEY.match(key)) and isinstance(value, (int, float)) and math.isfinite(value):
                per_stat.setdefault(match[2], []).append(float(value))
        if row.get("tokens") is not None:
            for stat, values in per_stat.items():
                curves.setdefault(stat, []).append((float(row["tokens"]), float(np.mean(values))))
    return {stat: sorted(points) for stat, points in curves.items()}


def _attach_files(run: RunResult, folder: Path) -> None:
    """Add what the run folder holds; a missing file leaves its field empty, a damaged one is a CratelabError
    naming it."""
    if (folder / EVAL).is_file():
        with _reading(folder / EVAL, "evaluation (expected an object whose 'layers' list holds objects)"):
            run.density = read_json_object(folder / EVAL, what="evaluation").get("layers", [])
            if not all(isinstance(layer, dict) for layer in run.density):
                raise TypeError
    with _reading(folder / METRICS, "training log (expected numeric 'tokens' and 'val_loss')"):
        run.curve = _curve(folder / METRICS)
        run.sparsity_curves = _sparsity_curves(folder / METRICS)
    scores = read_jsonl(folder / RUN_INTERP / SCORES)
    if scores:
        with _reading(folder / RUN_INTERP / SCORES, "score file (expected integer 'layer', a 'protocol' and a "
                                                    "numeric or null 'score' per line)"):
            run.neuron_scores, run.unscorable = _neuron_scores(scores)
        run.method = next((str(r["method"]) for r in scores if r.get("method")), None)
    cards = folder / RUN_INTERP / CARDS / CARDS_INDEX
    run.cards = cards if cards.is_file() else None
    identity = run_data_identity(folder)
    run.train_data_sha256 = str(identity["train_sha256"]) if identity else None
    if (folder / CONFIG).is_file():
        config = read_toml(folder / CONFIG)
        run.model, run.train = config.get("model"), config.get("train")


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn the error of a file whose values are not what they should be into one line naming it."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CratelabError(f"{path}: not a valid {what}; delete it, or rerun the command that writes it") from None


def _runs_of_rows(rows: list[dict[str, str]], conditions: dict[str, Condition], skip: list[str],
                  path: Path) -> list[RunResult]:
    runs = []
    for row in rows:
        seed = _number(row.get("seed"))
        if seed is None:
            raise CratelabError(f"{path}: run {row.get('name')!r} has no seed")
        if row.get("condition") in conditions:
            runs.append(RunResult(name=row["name"], condition=conditions[row["condition"]], seed=int(seed),
                                  values=_numeric(row, skip)))
    return runs


def read_sweep_results(out_dir: Path, design: SweepConfig) -> Sweep:
    """The finished runs of a sweep folder, grouped by the conditions of `design` (for the report). Runs of
    a condition the design does not have (results of an edited sweep file) are left out."""
    out_dir = Path(out_dir)
    if not (out_dir / RESULTS).is_file():
        raise CratelabError(f"{out_dir / RESULTS} not found: is {out_dir} a sweep output folder?")
    conditions = {c.name: c for c in grid_conditions(design)}
    skip = condition_columns(design_keys(design))
    runs = _runs_of_rows(_read_csv(out_dir / RESULTS), conditions, skip, out_dir / RESULTS)
    if (out_dir / RESULTS_LAYERS).is_file():
        layer_rows: dict[str, list[dict[str, float | None]]] = {}
        for row in _read_csv(out_dir / RESULTS_LAYERS):
            layer_rows.setdefault(row["name"], []).append(_numeric(row, skip))
        for run in runs:
            run.layers = sorted(layer_rows.get(run.name, []), key=lambda r: r.get("layer") or 0.0)
    for run in runs:
        _attach_files(run, run_folder(out_dir, run.name))
    return Sweep(out_dir, runs, design)


def read_track_points(out_dir: Path, design: SweepConfig) -> list[TrackPoint]:
    """results_track.csv as one Sweep per tracked point, in training order (none without the file). A tracked
    run's files (eval.json, scores) are read from its track/step{N}/ folder, the final point's from the run's."""
    out_dir = Path(out_dir)
    path = out_dir / RESULTS_TRACK
    if not path.is_file():
        return []
    conditions = {c.name: c for c in grid_conditions(design)}
    skip = condition_columns(design_keys(design)) + ["track"]
    by_fraction: dict[float, list[dict[str, str]]] = {}
    for row in _read_csv(path):
        fraction = _number(row.get("track"))
        if fraction is None or _number(row.get("step")) is None:
            raise CratelabError(f"{path}: run {row.get('name')!r} has a row without its track fraction or step")
        by_fraction.setdefault(fraction, []).append(row)
    points = []
    for fraction, rows in sorted(by_fraction.items()):
        runs = _runs_of_rows(rows, conditions, skip, path)
        for run in runs:
            folder = run_folder(out_dir, run.name)
            _attach_files(run, folder if fraction == 1.0 else track_folder(folder, int(run.values["step"])))
        tokens = [r.values["tokens"] for r in runs if r.values.get("tokens") is not None]
        points.append(TrackPoint(fraction, float(np.mean(tokens)) if tokens else math.nan, Sweep(out_dir, runs, design)))
    return points
