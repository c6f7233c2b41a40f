"""A sweep's SAE arms (`[[sweep.arms]]` with `of`): sparse coding added after training, as the paper's
GPT + SAE arm. An SAE arm trains nothing but SAEs: for each seed it takes the finished run of its base
condition (`of`), trains one SAE per interpreted layer on that layer's interpreted hook (GPT's
`blocks.{l}.mlp.hook_post`, the paper's; CRATE's `blocks.{l}.ista.hook_post`), evaluates it and scores its
features like neurons, with the same functions as `cratelab sae` and `cratelab interpret`.

Its run folder (`runs/<arm>-s<seed>/`)::

    config.toml            the base run's config with the arm's [interp] (what the report reads the model from)
    sae/layer{l}/          the SAE of layer l (SAELens format, sae.json, metrics.jsonl, eval.json)
    interp/layer{l}/       an interpret folder of a sample of that SAE's features (interp.neurons of them,
                           drawn with (seed, layer); unit i is feature i of the sample)
    interp/scores.jsonl    all layers' feature scores, each with its SAE feature index (the report's)
    result.json            the results row, with the columns of every run (layout.py):

- val_loss: the mean over layers of the next-token loss with that layer's SAE spliced in (one SAE at a
  time, the others' hooks untouched), on the eval.tokens held-out tokens every run is evaluated on;
  bpb: the same in bits per byte (the base run's bytes per token on those windows);
- zero_frac, l0, l0_frac, dead_frac, dense_frac: of the SAE features, means over layers;
- interp_*: the mean over layers of each layer's mean feature score;
- params, tokens: the base model's; train_s: the seconds spent training the SAEs;
- sae_*: clean, spliced and zero-ablated loss, FVU, loss recovered and d_sae (layout.SAE_COLUMNS).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .. import layout
from ..config import RunConfig, dump_toml
from ..errors import CratelabError
from ..io import folder_lock, read_jsonl, write_json, write_text
from ..sae.config import SAEConfig
from .results import mean_over_layers, result_row

def run_sae_arm(run_dir: Path, base_dir: Path, base_row: dict[str, Any], cfg: RunConfig, sae_cfg: SAEConfig,
                columns: dict[str, Any], threads: int = 0) -> dict[str, Any]:
    """Train, evaluate and score the SAEs of an SAE arm's run on its finished base run (resuming whatever
    was done), then write its result.json; returns the results row. The run folder is locked, and the base
    run folder shared-locked (no training may change the checkpoint the SAEs are trained on)."""
    with folder_lock(run_dir), folder_lock(base_dir, shared=True):
        row = _run_locked(run_dir, base_dir, base_row, cfg, sae_cfg, columns, threads)
        write_json(run_dir / layout.RUN_RESULT, row)
    return row

def _run_locked(run_dir: Path, base_dir: Path, base_row: dict[str, Any], cfg: RunConfig, sae_cfg: SAEConfig,
                columns: dict[str, Any], threads: int) -> dict[str, Any]:
    from ..checkpoint import load_checkpoint
    from ..interp.run import interpret, neuron_subset
    from ..models import neuron_hook_name
    from ..sae import sae_source, train_and_evaluate_sae

    if threads and not sae_cfg.threads:
        sae_cfg = dataclasses.replace(sae_cfg, threads=threads)
    ckpt = load_checkpoint(base_dir)
    write_text(run_dir / layout.CONFIG, dump_toml(cfg))
    layers = cfg.interp.layer_list(ckpt.model.config.n_layer)
    evals, summaries, train_s, scores = {}, {}, 0.0, []
    for layer in layers:
        hook = neuron_hook_name(ckpt.config.model, layer)
        sae_dir = layout.layer_folder(run_dir / layout.ARM_SAES, layer)
        folder, evals[layer] = train_and_evaluate_sae(ckpt, hook, sae_dir, sae_cfg,
                                                      dense_threshold=cfg.eval.dense_threshold)
        train_s += max((row.get("elapsed_s", 0.0) for row in read_jsonl(sae_dir / layout.METRICS)), default=0.0)
        # the features scored: interp.neurons of the d_sae, drawn as interpret draws neurons ((seed, layer));
        # the interpret folder sees only those (unit i = feature features[i], kept in each score line)
        features = neuron_subset(cfg.interp, layer, folder.sae.cfg.d_sae)
        icfg = dataclasses.replace(cfg.interp, layers=str(layer), neurons=0, threads=cfg.interp.threads or threads)
        interp_dir = layout.layer_folder(run_dir / layout.RUN_INTERP, layer)
        summaries[layer] = interpret(ckpt, interp_dir, icfg, progress=False, source=sae_source(folder, features))
        scores += [row | {"feature": features[int(row["neuron"])]} for row in read_jsonl(interp_dir / layout.SCORES)]
    write_text(run_dir / layout.RUN_INTERP / layout.SCORES, "".join(json.dumps(row) + "\n" for row in scores))
    return _row(columns, base_row, evals, summaries, train_s)

# result.json's SAE columns from the SAE evaluation (evaluate_sae's keys)
SAE_EVAL_KEYS = {"sae_clean_loss": "ce_loss_clean", "sae_spliced_loss": "ce_loss_with_sae",
                 "sae_zero_loss": "ce_loss_zero_ablation", "sae_fvu": "fvu",
                 "sae_loss_recovered": "ce_loss_recovered", "sae_d": "d_sae"}

def _row(columns: dict[str, Any], base_row: dict[str, Any], evals: dict[int, dict[str, Any]],
         summaries: dict[int, dict[str, Any]], train_s: float) -> dict[str, Any]:
    layers = [{"layer": layer, "dictionary_norm": ev.get("dictionary_norm")}
              | {key: ev.get(key) for key in layout.SPARSITY_COLUMNS}
              | {key: ev.get(name) for key, name in SAE_EVAL_KEYS.items()} for layer, ev in evals.items()]
    spliced = mean_over_layers([layer["sae_spliced_loss"] for layer in layers])
    clean = mean_over_layers([layer["sae_clean_loss"] for layer in layers])
    if spliced is None or clean is None:
        raise CratelabError(f"{columns['name']}: the SAE evaluation gave no finite loss")
    base_bpb = base_row.get("bpb")
    metrics = {"params": base_row.get("params"), "tokens": base_row.get("tokens"), "train_s": train_s,
               "val_loss": spliced, "bpb": base_bpb * spliced / clean if base_bpb is not None and clean > 0 else None}
    scores = {(layer, s["protocol"]): s for layer, summary in summaries.items() for s in summary["layers"]}
    return result_row(columns, metrics, layers, scores)
