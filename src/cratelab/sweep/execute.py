"""`cratelab ablate`: run (or resume) a sweep's planned runs: what they need of this machine checked first,
each run's data prepared once, then the runs on a pool of local worker processes or as submitit jobs
(launch.py), a results line each as it finishes, and the results tables at the end."""

from __future__ import annotations

import functools
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .. import layout
from ..config import ConfigError, RunConfig, SweepConfig
from ..errors import CratelabError
from ..io import folder_lock
from ..progress import duration, time_left
from ..runtime import check_threads, cpu_count, end_with, keep_freed_memory, spread_over_gpus, visible_gpus
from .design import PlannedRun, expand, in_condition, selected_runs
from .results import check_sweep_unchanged, collect_results, remove_sweep_outputs, save_sweep, unfinished_runs
from .run import run_logged


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
    if sweep.launcher == "slurm":  # the cluster's queue decides how many run at once
        threads, at_once, running = sweep.slurm.cpus_per_task, "all submitted", 1
    else:
        threads, running = max(1, cpu_count() // workers) if workers > 1 else 0, workers
        at_once = f"{workers} at a time"
    show_bar = sys.stderr.isatty() if progress is None else progress
    t0 = time.perf_counter()
    print(f"sweep: {len(runs)} runs ({len(runs) - len(todo)} already finished), {sweep.launcher} launcher, "
          f"{at_once} -> {out_dir}", file=sys.stderr)
    failures, ended = [], 0
    waves = [[r for r in todo if not r.base], [r for r in todo if r.base]]  # SAE arms after their base runs
    with tqdm(total=len(runs), initial=len(runs) - len(todo), disable=not show_bar, unit="run") as bar:
        for wave in waves:
            for row, failure in _execute(wave, out_dir, sweep, workers, threads):
                bar.update()
                ended += 1  # a finished run's line says the pace so far: a log shows how far a long sweep got
                pace = f" [{ended}/{len(todo)}{time_left(ended, len(todo), time.perf_counter() - t0, running)}]"
                tqdm.write(failure or _row_line(row) + pace, file=sys.stderr)
                failures += [failure] if failure else []
    print(f"sweep finished in {duration(time.perf_counter() - t0)}", file=sys.stderr)
    rows = collect_results(out_dir, sweep, expand(base, sweep))
    if failures:
        raise RunsFailed(f"{len(failures)} of {len(todo)} runs failed (above, with their logs); rerun the same "
                         "`cratelab ablate` to resubmit them (they resume from their checkpoints)", rows)
    return rows

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
    from ..runtime import resolve_device

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
    """in_condition where the conditions differ in the values checked; a setting every run shares is the
    sweep's, and naming the first condition would say otherwise."""
    return in_condition(condition) if len(values) > 1 else nullcontext()

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
    from ..data.batches import check_split_length
    from ..data.shards import prepare_dataset

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
