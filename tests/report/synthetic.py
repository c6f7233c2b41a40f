"""Synthetic sweep output folders with planted effects, laid out as the sweep writes them.

Planted truth (per doubling of lambda): zero fraction +0.03 and val loss +0.04; separate Q,K,V lowers the
loss by 0.05; the dead fraction and every interpretability score have no effect at all (neuron scores are
drawn from one distribution for every condition, GPT included).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cratelab import layout
from cratelab.evaluate import DENSITY_BIN_EDGES
from cratelab.config import load_sweep_config
from cratelab.layout import PROTOCOLS, interp_column, layer_columns, unscorable_column, result_columns
from cratelab.sweep.design import design_keys

DESIGN = load_sweep_config("configs/seed-ablation.toml")[1]  # the seed ablation's factors, reference and arm

LAMBDAS = (0.05, 0.1, 0.2)
N_LAYERS, WIDTH = 2, 64  # interpreted neurons per layer


@dataclass(frozen=True)
class Spec:
    arch: str
    qkv: str
    ista_lambda: float | None
    seed: int
    name: str = ""

    @property
    def condition(self) -> str:
        """The seed ablation's condition name (sweep.grid_conditions) of this run."""
        return "gpt-relu" if self.arch == "gpt" else f"ista_lambda={self.ista_lambda!r}-qkv={self.qkv}"

    @property
    def run_name(self) -> str:
        return self.name or f"{self.condition}-s{self.seed}"


def full_grid(seeds=(0, 1, 2)) -> list[Spec]:
    specs = [Spec("crate", qkv, lam, s) for qkv in ("shared", "separate") for lam in LAMBDAS for s in seeds]
    return specs + [Spec("gpt", "separate", None, s) for s in seeds]


def _truth(spec: Spec, rng: np.random.Generator) -> dict[str, float]:
    seed_shift = [0.0, 0.012, -0.01, 0.005, -0.004][spec.seed % 5]  # shared by all conditions of a seed
    if spec.arch == "gpt":
        zero, loss = 0.6, 3.8
    else:
        doublings = math.log2(max(spec.ista_lambda, 0.025) / 0.1)  # lambda = 0 acts like 0.025 here
        zero = 0.85 + 0.03 * doublings
        loss = 4.0 + 0.04 * doublings - (0.05 if spec.qkv == "separate" else 0.0)
    return {"zero_frac": zero + seed_shift / 4 + rng.normal(0, 0.002),
            "val_loss": loss + seed_shift + rng.normal(0, 0.004),
            "dead_frac": 0.05 + rng.normal(0, 0.01)}


def _neuron_rows(rng: np.random.Generator) -> list[dict]:
    rows = []
    for layer in range(N_LAYERS):
        for neuron in range(WIDTH):
            for protocol in PROTOCOLS:
                if neuron < 2:  # two unscorable neurons per layer and protocol
                    rows.append({"layer": layer, "neuron": neuron, "protocol": protocol, "method": "token-pattern",
                                 "score": None, "reason": "real activations are constant"})
                else:
                    rows.append({"layer": layer, "neuron": neuron, "protocol": protocol, "method": "token-pattern",
                                 "score": float(rng.normal(0.05, 0.15)), "reason": None})
    return rows


def _layer_means(rows: list[dict], protocol: str) -> list[float]:
    return [float(np.mean([r["score"] for r in rows if r["layer"] == layer and r["protocol"] == protocol
                           and r["score"] is not None])) for layer in range(N_LAYERS)]


def training_sparsity(layers: list[dict], step: int) -> dict[str, float]:
    """metrics.jsonl's sparsity keys at a step: each layer's final values, zero fraction rising to them as 1 - 5/step."""
    return {key: value for row in layers for key, value in (
        (f"sparsity/layer{row['layer']}/zero_frac", row["zero_frac"] - 5 / step),
        (f"sparsity/layer{row['layer']}/l0", (1 - row["zero_frac"] + 5 / step) * WIDTH),
        (f"sparsity/layer{row['layer']}/dead_frac", row["dead_frac"]))}


def write_run(out: Path, spec: Spec, interp: bool, rng: np.random.Generator) -> tuple[dict, list[dict]]:
    truth = _truth(spec, rng)
    folder = layout.run_folder(out, spec.run_name)
    folder.mkdir(parents=True, exist_ok=True)
    lam = 0.1 if spec.arch == "gpt" else spec.ista_lambda
    base = {"name": spec.run_name, "condition": spec.condition, "model.ista_lambda": lam, "model.qkv": spec.qkv,
            "model.arch": spec.arch, "seed": spec.seed}
    neuron_rows = _neuron_rows(rng) if interp else []
    layers = []
    for layer in range(N_LAYERS):
        zero = truth["zero_frac"] + (0.02 if layer else -0.02)
        row = {**base, "layer": layer, "zero_frac": zero, "l0": (1 - zero) * WIDTH, "l0_frac": 1 - zero,
               "dead_frac": truth["dead_frac"], "dense_frac": 0.01, "dictionary_norm": 1.0 + 0.1 * layer}
        for protocol in PROTOCOLS:
            row[interp_column(protocol)] = _layer_means(neuron_rows, protocol)[layer] if interp else ""
            row[unscorable_column(protocol)] = 2 if interp else ""
        layers.append(row)
    result = {**base, "params": 250_000 if spec.qkv == "shared" else 280_000, "tokens": 524_288,
              "train_s": 60.0 + spec.seed, "val_loss": truth["val_loss"], "bpb": truth["val_loss"] / math.log(2) / 4,
              "zero_frac": np.mean([r["zero_frac"] for r in layers]), "l0": np.mean([r["l0"] for r in layers]),
              "l0_frac": np.mean([r["l0_frac"] for r in layers]), "dead_frac": truth["dead_frac"], "dense_frac": 0.01,
              "unscorable_scores": 2 * N_LAYERS * len(PROTOCOLS) if interp else 0}
    for protocol in PROTOCOLS:
        result[interp_column(protocol)] = float(np.mean(_layer_means(neuron_rows, protocol))) if interp else ""
    if interp:
        interp_dir = folder / layout.RUN_INTERP
        interp_dir.mkdir(exist_ok=True)
        (interp_dir / layout.SCORES).write_text("".join(json.dumps(r) + "\n" for r in neuron_rows))
        (interp_dir / layout.CARDS).mkdir(exist_ok=True)
        (interp_dir / layout.CARDS / layout.CARDS_INDEX).write_text("<html></html>")
    hist = np.histogram(rng.normal(-1.0 - 2 * truth["zero_frac"], 0.5, WIDTH - 3), bins=DENSITY_BIN_EDGES)[0]
    (folder / layout.EVAL).write_text(json.dumps(
        {"val_loss": truth["val_loss"], "layers": [{"layer": l, "n_neurons": WIDTH, "density_hist": hist.tolist()}
                                                   for l in range(N_LAYERS)]}))
    (folder / layout.METRICS).write_text("".join(
        json.dumps({"step": s, "tokens": s * 1024, "train_loss": 6.0 - s / 100, "val_loss": truth["val_loss"] + 2 / s,
                    **training_sparsity(layers, s)}) + "\n" for s in (50, 100, 200, 400, 512)))
    (folder / layout.CONFIG).write_text(
        f'[model]\narch = "{spec.arch}"\nn_layer = {N_LAYERS}\nn_head = 4\nn_embd = {WIDTH // 4}\n'
        f'block_size = 128\nvocab_size = 4096\nqkv = "{spec.qkv}"\n')
    return result, layers


def make_sweep(out: Path, specs: list[Spec] | None = None, interp: bool = True, seed: int = 0) -> Path:
    """Write a sweep folder for `specs` (default: the full grid over 3 seeds) and return it."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    results, layers = [], []
    for spec in specs or full_grid():
        result, layer_rows = write_run(out, spec, interp, rng)
        results.append(result)
        layers += layer_rows
    varied = design_keys(DESIGN)
    for name, columns, rows in ((layout.RESULTS, result_columns(varied), results),
                                (layout.RESULTS_LAYERS, layer_columns(varied), layers)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    (out / layout.SWEEP_CONFIG).write_text("[sweep]\nseeds = [0, 1, 2]\n")
    return out


def add_track(out: Path, fractions=(0.5, 1.0), shift=lambda row, fraction: 0.0) -> Path:
    """results_track.csv for a folder of make_sweep: each run at each fraction of its 512 steps, its
    results.csv row with val_loss + shift(row, fraction) (the final point, 1.0, needs shift 0 to match the
    run's own row). Tracked points have no neuron scores: their interpretability intervals are over seeds."""
    with open(out / layout.RESULTS, newline="") as f:
        rows = list(csv.DictReader(f))
    varied = design_keys(DESIGN)
    tracked = []
    for row in rows:
        for fraction in fractions:
            point = dict(row) | {"track": fraction, "step": round(512 * fraction),
                                 "tokens": round(524_288 * fraction)}
            point["val_loss"] = float(row["val_loss"]) + shift(row, fraction)
            tracked.append(point)
    with open(out / layout.RESULTS_TRACK, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=layout.track_columns(varied))
        writer.writeheader()
        writer.writerows(tracked)
    return out
