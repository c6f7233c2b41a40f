"""One run of a sweep: train it, then evaluate and score its final model and each tracked point, with the
functions of `cratelab train`, `eval` and `interpret` (an SAE arm's run: sae_arm.py); its result.json."""

from __future__ import annotations

import dataclasses
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from .. import layout
from ..config import RunConfig
from ..errors import CratelabError
from ..io import write_json
from ..runtime import is_main_process, set_threads
from .design import PlannedRun, tracked_steps
from .results import read_result, result_row
from .sae_arm import run_sae_arm


def run_one(run: PlannedRun, out_dir: Path, threads: int = 0) -> dict[str, Any]:
    """Train, evaluate and score one run and its tracked points (resuming whatever it already did); returns
    its results row, with the rows of its tracked points (the final one last) under "tracked"."""
    from ..checkpoint import load_checkpoint
    from ..train import train

    run_dir = layout.run_folder(out_dir, run.name)
    finished, damage = read_result(run_dir / layout.RUN_RESULT)
    if finished is not None:
        return finished
    if damage:
        print(f"{damage}: redoing the run", file=sys.stderr)
    if run.base:  # an SAE arm trains SAEs in one process: under torchrun, rank 0 alone
        return _run_sae_arm(run, out_dir, threads) if is_main_process() else {}
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run.config
    if threads and not cfg.train.threads:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    if threads and not cfg.interp.threads:  # each stage sets its threads (0: torch's default, not the worker's)
        cfg = dataclasses.replace(cfg, interp=dataclasses.replace(cfg.interp, threads=threads))
    track = tracked_steps(run.track, cfg.train.max_steps)
    final = train(cfg, run_dir, progress=False, keep_steps=track)
    if not is_main_process():  # under torchrun, rank 0 alone evaluates and scores
        return {}
    points = []
    for step, fraction in track.items():
        folder = layout.track_folder(run_dir, step)
        point, damage = read_result(folder / layout.RUN_RESULT)
        if point is None:  # not scored yet (or damaged: scored again, interpret resuming what it had)
            if not (folder / layout.CHECKPOINT).is_file():
                raise CratelabError(f"{folder}: the checkpoint kept at step {step} is missing (was the run trained "
                                    f"without sweep.track?); rerun with --fresh")
            ckpt = load_checkpoint(folder)
            point = score_checkpoint(run, ckpt, cfg, folder, ckpt.tokens, ckpt.metrics.get("elapsed_s"))
            point |= {"track": fraction, "step": step}
            write_json(folder / layout.RUN_RESULT, point)
        points.append({k: v for k, v in point.items() if k != "layers"})
    ckpt = load_checkpoint(run_dir)
    row = score_checkpoint(run, ckpt, cfg, run_dir, final["tokens"], final["elapsed_s"])
    row["tracked"] = points + [{k: v for k, v in row.items() if k != "layers"} | {"track": 1.0, "step": ckpt.step}]
    write_json(run_dir / layout.RUN_RESULT, row)
    return row

def score_checkpoint(run: PlannedRun, ckpt: Any, cfg: RunConfig, folder: Path, tokens: int,
                     train_s: float | None) -> dict[str, Any]:
    """Evaluate and score one checkpoint of a run (its final one or a tracked one) into ``folder``
    (eval.json, interp/); its results row with the per-layer rows under "layers"."""
    from ..evaluate import evaluate_checkpoint, read_evaluation
    from ..interp.run import interpret

    # training evaluated the checkpoint on these windows already (in float32; under autocast it wrote none)
    evaluation = (read_evaluation(folder, ckpt.step, cfg.eval.tokens)
                  or evaluate_checkpoint(ckpt, device=cfg.train.device))
    summary = interpret(ckpt, folder / layout.RUN_INTERP, cfg.interp, progress=False)
    metrics = {"params": ckpt.model.num_params(), "tokens": tokens, "train_s": train_s,
               "val_loss": evaluation.val_loss, "bpb": evaluation.bpb}
    layers = [{"layer": s.layer} | {key: getattr(s, key) for key in (*layout.SPARSITY_COLUMNS, "dictionary_norm")}
              for s in evaluation.layers]
    return result_row(run.columns, metrics, layers, {(s["layer"], s["protocol"]): s for s in summary["layers"]})

def _run_sae_arm(run: PlannedRun, out_dir: Path, threads: int) -> dict[str, Any]:
    """An SAE arm's run: SAEs on its base run, which must be finished (the sweep runs the bases first)."""
    base_dir = layout.run_folder(out_dir, run.base)
    base_row, damage = read_result(base_dir / layout.RUN_RESULT)
    if base_row is None:
        raise CratelabError(f"{run.name} builds on the run {run.base}, which is not finished"
                            f"{f' ({damage})' if damage else ''}: run {run.base} first")
    return run_sae_arm(layout.run_folder(out_dir, run.name), base_dir, base_row, run.config, run.sae, run.columns,
                       threads)

def run_logged(run: PlannedRun, out_dir: Path, threads: int) -> dict[str, Any]:
    """run_one in a worker process or a cluster job, its log lines going to the run's own log file."""
    set_threads(threads)
    log_path = layout.run_folder(out_dir, run.name) / layout.RUN_LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # line-buffered: `tail -f log.txt` follows a long run as it goes
    with open(log_path, "a", encoding="utf-8", buffering=1) as log, redirect_stderr(log), redirect_stdout(log):
        return run_one(run, out_dir, threads)
