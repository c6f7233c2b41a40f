"""A sweep: a full grid over any run-config fields (`[sweep.factors]`, "section.key" -> levels), named arms
outside the grid, over seeds. Every run is trained, evaluated and scored by the same functions as
`cratelab train`, `eval` and `interpret` (run_one); a finished run leaves
`result.json`, so an interrupted sweep resumes by skipping finished runs while partial runs resume from
their own checkpoints.

The output folder is laid out as layout.py names it: `sweep.toml` (the sweep as run), `runs/<name>/`
(a train run folder, with `eval.json`, `interp/` and `result.json`), `results.csv`, `results_layers.csv`,
`results_track.csv` and the report.

Tracked points (`sweep.track`, fractions of train.max_steps): training keeps the model at each
(`runs/<name>/track/step{N}/`), and run_one evaluates and scores each with the same functions and settings
as the final model, so the report can say whether its answers hold along training.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager, nullcontext, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import tomli_w

from . import layout
from .config import (REFERENCE_ARM, Arm, ConfigError, RunConfig, SweepConfig, changed_settings, config_from_dict,
                     execution_settings, level_text, load_sweep_config, read_toml)
from .errors import CratelabError
from .io import folder_lock, read_json, remove_tree, write_csv, write_json, write_text
from .runtime import (check_threads, cpu_count, end_with, is_main_process, keep_freed_memory, set_threads,
                      spread_over_gpus, visible_gpus)
from .results import result_row
from .sae.config import SAEConfig
from .sweep_sae import arm_interp_neurons, arm_sae_config, run_sae_arm


@dataclass(frozen=True)
class Condition:
    """A condition of the sweep: a cell of the grid (its level of each factor) or a named arm."""

    name: str  # the run names' stem, and results.csv's "condition" column
    levels: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # grid cells: factor -> level
    arm: bool = False


@dataclass
class PlannedRun:
    """One (condition, seed) run of the sweep: the run folder's name, its condition and its run config."""

    name: str
    condition: Condition
    config: RunConfig
    columns: dict[str, Any]  # its condition columns in the results: name, condition, each varied field, seed
    track: tuple[float, ...] = ()  # sweep.track: fractions of train.max_steps also evaluated and scored
    base: str = ""  # an SAE arm's run: the run whose checkpoint its SAEs are trained on (sweep_sae.py)
    sae: SAEConfig | None = None  # and their [sae] settings


def grid_conditions(sweep: SweepConfig) -> list[Condition]:
    """The grid's cells (the last factor varying fastest), then the arms; names from the factor values."""
    keys = list(sweep.factors)
    leaves = [key.split(".")[-1] for key in keys]
    labels = [leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves)]  # short where unique
    cells = [Condition("-".join(_safe(f"{label}={level_text(v)}") for label, v in zip(labels, combo)) or "base",
                       dict(zip(keys, combo)))
             for combo in itertools.product(*sweep.factors.values())]
    conditions = cells + [Condition(arm.name, arm=True) for arm in sweep.arms]
    names = [c.name for c in conditions]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ConfigError("sweep", f"two conditions get the run name {clashes[0]!r}: rename the arm, or use levels "
                                   f"that read differently")
    return conditions


def _safe(text: str) -> str:
    """A folder name: characters that mean something to shells or file systems become '_'."""
    return "".join(c if c.isalnum() or c in "._=+-" else "_" for c in text)


def condition_settings(sweep: SweepConfig, condition: Condition) -> dict[str, Any]:
    """The "section.key" values a condition sets on the sweep's shared config: a cell its levels, an arm the
    reference condition's levels with its own settings on top."""
    if not condition.arm:
        return dict(condition.levels)
    arm = next(a for a in sweep.arms if a.name == condition.name)
    if arm.derived:  # an SAE arm: its base condition's model and training
        if arm.of == REFERENCE_ARM:
            return sweep.reference_levels() | arm.set
        return condition_settings(sweep, Condition(arm.of, arm=True)) | arm.set
    return sweep.reference_levels() | arm.set


def design_keys(sweep: SweepConfig) -> list[str]:
    """The fields the sweep varies (factors, then what arms set): the condition columns of the results."""
    keys = list(sweep.factors)
    for arm in sweep.arms:
        keys += [key for key in arm.set if key not in keys]
    return keys


def expand(base: RunConfig, sweep: SweepConfig) -> list[PlannedRun]:
    """Every (condition, seed) run, seed-major so that a partial sweep holds whole seeds first. Each run's
    config is built and validated here, so a bad key or level fails (naming the field) before anything runs."""
    shared = base.to_dict()
    keys = design_keys(sweep)
    conditions = grid_conditions(sweep)
    configs = {c.name: _condition_config(shared, condition_settings(sweep, c), c.name) for c in conditions}
    arms = {arm.name: (i, arm) for i, arm in enumerate(sweep.arms)}
    _check_conditions(conditions, configs, arms)
    reference = next(c.name for c in conditions if not c.arm and _is_reference(sweep, c))
    runs = []
    for seed in sweep.seeds:
        for condition in conditions:
            cfg = configs[condition.name]
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed),
                                      interp=dataclasses.replace(cfg.interp, seed=seed))
            name = f"{condition.name}-s{seed}"
            index, arm = arms.get(condition.name, (0, None))
            if arm is None or not arm.derived:
                runs.append(PlannedRun(name, condition, cfg, _condition_columns(name, condition, cfg, keys),
                                       tuple(sweep.track)))
                continue
            base = reference if arm.of == REFERENCE_ARM else arm.of
            cfg = dataclasses.replace(cfg, interp=dataclasses.replace(
                cfg.interp, neurons=arm_interp_neurons(arm, configs[base])))
            runs.append(PlannedRun(name, condition, cfg, _condition_columns(name, condition, cfg, keys),
                                   base=f"{base}-s{seed}", sae=arm_sae_config(arm, index, cfg)))
    for run in runs:  # its folder's name
        size = len(os.fsencode(run.name))
        if size > NAME_MAX:
            arm = arms.get(run.condition.name)
            field = (f"sweep.arms[{arm[0]}].name" if arm else "sweep.factors." + max(
                run.condition.levels, key=lambda key: len(level_text(run.condition.levels[key]))))
            raise ConfigError(field, f"makes the run name {run.name[:40]!r}... {size} bytes long, more than the "
                                     f"{NAME_MAX} of a file name: use {'a shorter name' if arm else 'shorter levels'}")
    return runs


NAME_MAX = 255  # bytes of a file name (a run's folder) on Linux, macOS and Windows file systems


def _check_conditions(conditions: list[Condition], configs: dict[str, RunConfig],
                      arms: dict[str, tuple[int, Arm]]) -> None:
    """What would fail only once a condition's runs are trained (their interp settings against their model),
    and trained conditions that are one another (the same runs twice under two names)."""
    seen: dict[str, str] = {}
    for condition in conditions:
        cfg = configs[condition.name]
        with _in_condition(condition.name):
            cfg.interp.check_model(cfg.model.n_layer, cfg.model.block_size)
        index, arm = arms.get(condition.name, (0, None))
        if arm is not None and arm.derived:
            continue
        same = seen.setdefault(repr(cfg), condition.name)
        if same != condition.name:
            raise ConfigError(f"sweep.arms[{index}].set" if arm else "sweep.factors",
                              f"condition {condition.name} has the settings of condition {same}: the same runs "
                              f"would be trained twice")


@contextmanager
def _in_condition(name: str) -> Iterator[None]:
    """Errors about one condition's settings name the condition."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(err.field, f"{str(err).removeprefix(err.field + ': ')} (condition {name})") from None
    except CratelabError as err:
        raise CratelabError(f"{err} (condition {name})") from None


def _is_reference(sweep: SweepConfig, condition: Condition) -> bool:
    levels = {key: level_text(v) for key, v in sweep.reference_levels().items()}
    return {key: level_text(v) for key, v in condition.levels.items()} == levels


def tracked_steps(fractions: tuple[float, ...] | list[float], max_steps: int) -> dict[int, float]:
    """The steps of the tracked points before the end (step -> its fraction of max_steps), from the run's own
    max_steps; fractions that round to the same step are one point (the first), those at the end are the
    run itself."""
    steps: dict[int, float] = {}
    for fraction in sorted(fractions):
        step = max(1, round(fraction * max_steps))
        if step < max_steps:
            steps.setdefault(step, fraction)
    return steps


def _condition_config(shared: dict[str, dict[str, Any]], settings: dict[str, Any], name: str) -> RunConfig:
    values = {section: dict(fields) for section, fields in shared.items()}
    for key, value in settings.items():
        section, leaf = key.split(".")
        if not isinstance(values.get(section), dict):
            raise ConfigError(key, f"unknown section {section!r} (known: {', '.join(shared)}) in condition {name}")
        values[section][leaf] = value
    with _in_condition(name):
        return config_from_dict(values)


def _condition_columns(name: str, condition: Condition, cfg: RunConfig, keys: list[str]) -> dict[str, Any]:
    values = cfg.to_dict()
    row: dict[str, Any] = {"name": name, "condition": condition.name}
    for key in keys:
        section, leaf = key.split(".")
        row[key] = values[section][leaf]
    return row | {"seed": cfg.train.seed}


def run_one(run: PlannedRun, out_dir: Path, threads: int = 0) -> dict[str, Any]:
    """Train, evaluate and score one run and its tracked points (resuming whatever it already did); returns
    its results row, with the rows of its tracked points (the final one last) under "tracked"."""
    from .checkpoint import load_checkpoint
    from .train import train

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
    from .evaluate import evaluate_checkpoint, read_evaluation
    from .interp.run import interpret

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


def print_commands(config_path: str | Path, out_dir: Path, overrides: list[str], smoke: bool,
                   runs: list[PlannedRun]) -> None:
    """One command per run, for a cluster scheduler (a Slurm array line each; prefix torchrun for DDP)."""
    extra = (["--smoke"] if smoke else []) + [part for o in overrides for part in ("--set", o)]
    for run in runs:
        after = f"   # after {run.base}" if run.base else ""
        print(shlex.join(["cratelab", "ablate", str(config_path), "--out", str(out_dir), "--only", run.name, *extra])
              + after)
    print(shlex.join(["cratelab", "report", str(out_dir)]) + "   # after the runs: results.csv and the report")


class RunsFailed(CratelabError):
    """Some runs' jobs failed (each named on stderr as it ended); ``rows`` holds the finished runs' results."""

    def __init__(self, message: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows


def ablate(base: RunConfig, sweep: SweepConfig, out_dir: Path, only: list[str] = (),
           progress: bool | None = None, fresh: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) the sweep (as config.load_sweep_config reads it); returns the result rows of the
    finished runs. ``fresh`` deletes an earlier sweep in out_dir, once the new one has passed its checks.
    With a job launcher (slurm, submitit-local) a failed job leaves its run unfinished and the others carry
    on: then RunsFailed comes once results.csv holds the finished runs.

    The sweep folder is locked for the whole sweep: exclusively, or shared with the other ``--only``
    processes of a scheduled sweep. Each run folder is locked by its own training, wherever it runs: cluster
    jobs take no sweep lock (on other nodes they could not share this process's), the launcher holds it."""
    if fresh and only:
        raise ConfigError("--fresh", "cannot be combined with --only (it would delete the other scheduled runs)")
    with folder_lock(out_dir, shared=bool(only)):
        return _ablate_locked(base, sweep, out_dir, only, progress, fresh)


def _ablate_locked(base: RunConfig, sweep: SweepConfig, out_dir: Path, only: list[str],
                   progress: bool | None, fresh: bool) -> list[dict[str, Any]]:
    from tqdm import tqdm

    runs = selected_runs(expand(base, sweep), only)
    check_launcher(sweep, runs)
    if sweep.launcher == "slurm":
        _launch().require_slurm()
    workers = check_threads(sweep.workers, "sweep.workers")
    check_machine(sweep, runs)
    _prepare_data(runs)
    if fresh:  # only once every check above has passed: a mistake never costs the earlier sweep
        remove_sweep_outputs(out_dir)
    check_sweep_unchanged(base, sweep, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_sweep(base, sweep, out_dir)
    todo = unfinished_runs(runs, out_dir)
    if sweep.launcher == "slurm":
        threads, at_once = sweep.slurm.cpus_per_task, "all submitted"
    else:
        threads, at_once = (max(1, cpu_count() // workers) if workers > 1 else 0), f"{workers} at a time"
    show_bar = sys.stderr.isatty() if progress is None else progress
    t0 = time.perf_counter()
    print(f"sweep: {len(runs)} runs ({len(runs) - len(todo)} already finished), {sweep.launcher} launcher, "
          f"{at_once} -> {out_dir}", file=sys.stderr)
    failures = []
    waves = [[r for r in todo if not r.base], [r for r in todo if r.base]]  # SAE arms after their base runs
    with tqdm(total=len(runs), initial=len(runs) - len(todo), disable=not show_bar, unit="run") as bar:
        for wave in waves:
            for row, failure in _execute(wave, out_dir, sweep, workers, threads):
                bar.update()
                tqdm.write(failure or _row_line(row), file=sys.stderr)
                failures += [failure] if failure else []
    print(f"sweep finished in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rows = collect_results(out_dir, sweep, expand(base, sweep))
    if failures:
        raise RunsFailed(f"{len(failures)} of {len(todo)} runs failed (above, with their logs); rerun the same "
                         "`cratelab ablate` to resubmit them (they resume from their checkpoints)", rows)
    return rows


def selected_runs(runs: list[PlannedRun], only: list[str]) -> list[PlannedRun]:
    """The runs named by ``--only`` (all when none is named)."""
    unknown = sorted(set(only) - {r.name for r in runs})
    if unknown:
        raise ConfigError("--only", f"no run named {', '.join(unknown)} in this sweep "
                                    f"(runs: {', '.join(r.name for r in runs)})")
    return [r for r in runs if r.name in only] if only else runs


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


def check_launcher(sweep: SweepConfig, runs: list[PlannedRun]) -> None:
    """Slurm jobs with GPUs for runs that would train on the CPU are a mistake worth stopping before submitting."""
    cpu = [r.name for r in runs if r.config.train.device == "cpu"]
    if sweep.launcher == "slurm" and sweep.slurm.gpus_per_run and cpu:
        raise ConfigError("sweep.slurm.gpus_per_run", f"asks {sweep.slurm.gpus_per_run} GPU(s) per job but "
                          f"train.device is \"cpu\" (run {cpu[0]}): set train.device=\"auto\", or gpus_per_run=0")


def check_machine(sweep: SweepConfig, runs: list[PlannedRun]) -> None:
    """What every run and arm needs of this machine (its devices, threads, memory for its weights), checked
    before the first run trains: otherwise a run would fail when it starts, after others trained for hours.
    Slurm jobs run on the cluster's machines: only their settings are checked (expand)."""
    from .runtime import resolve_device

    if sweep.launcher == "slurm":
        return
    def device(setting: str, name: str) -> None:
        resolve_device(name, setting=setting)

    def threads(setting: str, count: int) -> None:
        check_threads(count, setting)

    def memory(_: str, model: Any) -> None:
        model.check_fits_in_memory()

    def sae_memory(setting: str, sae_and_model: Any) -> None:  # an SAE arm's SAE on each layer's neurons
        if sae_and_model is not None:
            sae, model = sae_and_model
            sae.check_fits_in_memory(model.n_neurons, model.block_size, prefix=setting)

    arms = {arm.name: i for i, arm in enumerate(sweep.arms)}
    needs = {}  # condition -> its (check, setting, value) list (seeds share their condition's settings)
    for run in runs:
        cfg, sae = run.config, f"sweep.arms[{arms.get(run.condition.name)}].sae."
        needs[run.condition.name] = [
            (device, *((sae + "device", run.sae.device) if run.sae else ("train.device", cfg.train.device))),
            (device, "interp.device", cfg.interp.device),
            (threads, *((sae + "threads", run.sae.threads) if run.sae else ("train.threads", cfg.train.threads))),
            (threads, "interp.threads", cfg.interp.threads), (memory, "model", cfg.model),
            (sae_memory, sae.rstrip("."), (run.sae, cfg.model) if run.sae else None)]
    for i in range(len(next(iter(needs.values()), []))):
        values = {repr(need[i][1:]) for need in needs.values()}
        for name, need in needs.items():
            check, setting, value = need[i]
            with _named(name, values):
                check(setting, value)


def _named(condition: str, values: set[str]) -> AbstractContextManager[None]:
    """_in_condition where the conditions differ in the values checked; a setting every run shares is the
    sweep's, and naming the first condition would say otherwise."""
    return _in_condition(condition) if len(values) > 1 else nullcontext()


def print_job_scripts(base: RunConfig, sweep: SweepConfig, out_dir: Path, only: list[str] = ()) -> None:
    """`ablate --dry-run`: the sbatch script of each unfinished run's job, as submitit would submit it."""
    runs = selected_runs(expand(base, sweep), only)
    check_launcher(sweep, runs)
    todo = unfinished_runs(runs, out_dir)
    job_script = _launch().job_script
    for run in todo:
        print(f"# ---- job of run {run.name} (sbatch script; %j is the job id)")
        print(job_script(sweep.slurm, out_dir / layout.JOBS, run.name))
    print(f"# {len(todo)} jobs to submit ({len(runs) - len(todo)} runs already finished); nothing was submitted",
          file=sys.stderr)


def _launch():
    """launch.py, which needs submitit (the `slurm` extra)."""
    import importlib.util

    if importlib.util.find_spec("submitit") is None:
        raise CratelabError("sweep.launcher slurm and submitit-local run through submitit, which is not installed: "
                            "pip install 'cratelab[slurm]'")
    from . import launch

    return launch


def _execute(runs: list[PlannedRun], out_dir: Path, sweep: SweepConfig, workers: int,
             threads: int) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    """Each run's (results row, None) as it finishes, or (None, one line saying why its job failed)."""
    if sweep.launcher != "local":
        launch = _launch()
        out_dir = out_dir.absolute()  # a job may start in another folder
        tasks = [launch.JobTask(run.name, functools.partial(run_logged, run, out_dir, threads),
                                layout.run_folder(out_dir, run.name) / layout.RUN_LOG) for run in runs]
        at_once = workers if sweep.launcher == "submitit-local" else 0
        for outcome in launch.run_jobs(tasks, sweep.launcher, sweep.slurm, out_dir / layout.JOBS, at_once):
            yield outcome.result, outcome.failure
        return
    for row in _execute_here(runs, out_dir, workers, threads):
        yield row, None


def _execute_here(runs: list[PlannedRun], out_dir: Path, workers: int, threads: int) -> Iterator[dict[str, Any]]:
    if workers == 1:
        for run in runs:
            yield run_logged(run, out_dir, threads)
        return
    gpus = worker_gpus(runs, workers)
    if gpus:
        print(f"workers spread over GPUs {', '.join(dict.fromkeys(gpus))} (CUDA_VISIBLE_DEVICES of each: "
              f"{', '.join(gpus)})", file=sys.stderr)
    with worker_pool(workers, gpus) as pool:
        pending = {pool.submit(run_logged, run, out_dir, threads) for run in runs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def worker_gpus(runs: list[PlannedRun], workers: int) -> list[str]:
    """Each worker's GPU (its CUDA_VISIBLE_DEVICES) on a machine of several: round robin, so that ``workers``
    runs at once share the GPUs evenly (on one GPU they all share it); [] when a run names its GPU
    (cuda:N) or uses none."""
    devices = {d for run in runs for d in (run.config.train.device, run.config.interp.device,
                                             run.sae.device if run.sae else "cpu")}
    if any(d.startswith("cuda:") for d in devices) or not devices & {"auto", "cuda"}:
        return []
    return spread_over_gpus(workers, visible_gpus())


def worker_pool(workers: int, gpus: Sequence[str] = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` fresh interpreters (spawned, not forked: torch's thread pools do not survive a
    fork), the k-th started on ``gpus[k]`` when given (its only visible GPU)."""
    context, gpu_queue = get_context("spawn"), None
    if gpus:
        gpu_queue = context.SimpleQueue()
        for gpu in gpus:
            gpu_queue.put(gpu)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                               initargs=(os.getpid(), gpu_queue))


def _start_worker(parent: int, gpu_queue: Any = None) -> None:
    """In a worker (a fresh interpreter): its GPU (before CUDA starts in it), the CLI's allocator setting, and
    an end when the sweep process ends, even by SIGKILL (runtime.end_with)."""
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()
    keep_freed_memory()
    end_with(parent)


def _prepare_data(runs: list[PlannedRun]) -> None:
    """Tokenize each run's data once before the workers start, so they do not all build the same cache; and check
    every run's context against it, so that a missing or too small corpus stops the sweep before any run trains."""
    from .data.batches import check_split_length
    from .data.shards import prepare_dataset

    datasets: dict[str, Any] = {}
    data_values = {repr(run.config.data) for run in runs}
    context_values = {repr((run.config.data, run.config.model.block_size)) for run in runs}
    for run in runs:
        data, block_size = run.config.data, run.config.model.block_size
        if repr(data) not in datasets:
            with _named(run.condition.name, data_values):
                datasets[repr(data)] = prepare_dataset(data, progress=sys.stderr.isatty())
        with _named(run.condition.name, context_values):
            check_split_length(datasets[repr(data)].train, block_size, "train")
            check_split_length(datasets[repr(data)].val, block_size, "validation")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _row_line(row: dict[str, Any]) -> str:
    return (f"{row['name']}: val_loss {_fmt(row['val_loss'])}, zero_frac {_fmt(row['zero_frac'])}, "
            f"interp top-and-random {_fmt(row['interp_top_and_random'])}, {row['train_s']:.0f} s training")
