"""Runs of a sweep as cluster jobs, through submitit: one Slurm job per run (`sweep.launcher = "slurm"`),
or the same jobs as processes of this machine (`"submitit-local"`, submitit's LocalExecutor: the way to
try the Slurm path without a cluster, and how the tests run it).

A job calls the task it was given (run.run_logged: the run_one that the local launcher calls too). A
run of more than one GPU is one job of one task per GPU (submitit's multi-task jobs, `srun` starting
them): each task exports torch.distributed's environment from the job's (RANK, WORLD_SIZE, MASTER_ADDR,
...), so train() runs its DDP exactly as under torchrun. A job that is preempted or runs out of time
requeues itself (submitit's Checkpointable) and, called again, resumes the run from its checkpoint.

Job scripts, pickled tasks and submitit's logs go to the sweep folder's `jobs/<job id>/`, which must be
on a file system the compute nodes share (as must the sweep folder and data.cache_dir).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError
from submitit.helpers import Checkpointable, TorchDistributedEnvironment

from ..config import SlurmConfig
from ..runtime import end_with, keep_freed_memory

POLL_S = 1.0  # how often job states are read (submitit's Slurm watcher calls sacct at most once a minute)


@dataclass
class JobTask:
    """One run to execute as a job: its name, the picklable call that does it, and the run's own log."""

    name: str
    call: Callable[[], Any]
    log: Path


@dataclass
class JobOutcome:
    """A finished job: the task's return value, or (``result`` None) one line saying why it failed."""

    name: str
    result: Any = None
    failure: str | None = None


class RunJob(Checkpointable):
    """What a job runs: the task, under DDP when the job has several tasks. Checkpointable: on preemption
    or timeout submitit requeues the job with this same object, and the run resumes from its checkpoint.
    ``launcher``: the PID of the sweep process that submitted a job of this machine (submitit-local). Such a
    job ends with it, and with submitit's controller process above the job's task, whose end the sweep
    reads as the job's: either killed would leave the task training, its run folder locked."""

    def __init__(self, task: Callable[[], Any], launcher: int | None = None) -> None:
        self.task, self.launcher = task, launcher

    def __call__(self) -> Any:
        keep_freed_memory()  # a job is a fresh interpreter, not the CLI
        if self.launcher is not None:
            end_with(self.launcher)
            end_with(os.getppid())  # the controller
        if submitit.JobEnvironment().num_tasks > 1:
            # every GPU stays visible: train() picks cuda:LOCAL_RANK, as under torchrun
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return self.task()


def job_parameters(cfg: SlurmConfig, name: str) -> dict[str, Any]:
    """The sbatch settings of a run's job, in SlurmExecutor's parameter names."""
    tasks = max(1, cfg.gpus_per_run)
    params: dict[str, Any] = {"job_name": f"cratelab-{name}", "time": cfg.time_min, "nodes": 1,
                              "ntasks_per_node": tasks, "cpus_per_task": cfg.cpus_per_task}
    if cfg.gpus_per_run:
        params["gpus_per_node"] = cfg.gpus_per_run
    if cfg.partition:
        params["partition"] = cfg.partition
    if cfg.account:
        params["account"] = cfg.account
    if cfg.mem_gb:
        params["mem"] = f"{cfg.mem_gb}GB"
    if cfg.setup:
        params["setup"] = list(cfg.setup)
    if cfg.extra:
        params["additional_parameters"] = cfg.sbatch_options()
    return params


def _executor(launcher: str, cfg: SlurmConfig, folder: Path, name: str) -> submitit.Executor:
    if launcher == "slurm":
        executor = submitit.SlurmExecutor(folder, max_num_timeout=cfg.max_requeues)
        executor.update_parameters(**job_parameters(cfg, name))
        return executor
    executor = submitit.LocalExecutor(folder, max_num_timeout=cfg.max_requeues)
    # one task per GPU as on Slurm (on a machine without GPUs they are CPU processes under gloo)
    executor.update_parameters(timeout_min=cfg.time_min, tasks_per_node=max(1, cfg.gpus_per_run),
                               gpus_per_node=cfg.gpus_per_run)
    return executor


def run_jobs(tasks: list[JobTask], launcher: str, cfg: SlurmConfig, folder: Path,
             at_once: int = 0) -> Iterator[JobOutcome]:
    """Submit a job per task (at most ``at_once`` in flight when > 0; Slurm queues the rest itself when 0)
    and yield each outcome as its job ends. If this process is interrupted, jobs of "submitit-local" are
    cancelled (they run here), and if it is killed they kill themselves (RunJob); Slurm jobs carry on, and
    rerunning the sweep waits for none of them."""
    if launcher == "slurm":
        require_slurm()
    job_folder = folder / "%j"
    local_pid = None if launcher == "slurm" else os.getpid()  # local jobs end with this process
    waiting, running = list(tasks), {}
    try:
        while waiting or running:
            while waiting and (at_once <= 0 or len(running) < at_once):
                task = waiting.pop(0)
                try:
                    job = _executor(launcher, cfg, job_folder, task.name).submit(RunJob(task.call, local_pid))
                except (FailedJobError, FailedSubmissionError) as err:  # sbatch refused it (a bad partition...)
                    yield JobOutcome(task.name, failure=f"{task.name}: not submitted ({_last_error_line(str(err))})")
                    continue
                running[task.name] = (task, job)
            finished = [name for name, (_, job) in running.items() if job.done()]
            for name in finished:
                task, job = running.pop(name)
                yield _outcome(task, job, launcher)
            if not finished:
                time.sleep(POLL_S)
    except BaseException:
        if launcher != "slurm":
            for _, job in running.values():
                job.cancel(check=False)
        raise


def _outcome(task: JobTask, job: submitit.Job, launcher: str) -> JobOutcome:
    logs = f"logs: {task.log}, {job.paths.stderr}"  # the run's own log, and task 0's stderr (tracebacks)
    if launcher != "slurm" and not job.paths.result_pickle.exists():  # a local job ended without a result
        return JobOutcome(task.name, failure=f"{task.name}: job {job.job_id} ended without a result (killed?); {logs}")
    error = job.exception()  # on Slurm it waits a little for a result that a shared file system shows late
    if error is None:
        return JobOutcome(task.name, result=job.results()[0])  # task 0 (rank 0) returns the run's row
    return JobOutcome(task.name, failure=f"{task.name}: job {job.job_id} failed ({_last_error_line(str(error))}); "
                                         f"{logs}")


def _last_error_line(text: str) -> str:
    """The exception line of a job's traceback (e.g. 'CratelabError: ...'), else the first line (sbatch's)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("-----")]
    errors = [line for line in lines if not line.startswith(("File ", "Traceback", "You can", "or at", "- "))
              and ("Error" in line.split(":")[0] or "Exception" in line.split(":")[0])]
    return (errors[-1] if errors else lines[0] if lines else "no error message")[:300]


def require_slurm() -> None:
    from ..errors import CratelabError

    if submitit.SlurmExecutor.affinity() < 0:
        raise CratelabError("sweep.launcher is \"slurm\" but there is no Slurm here (no srun on PATH): run on a "
                            "cluster's login node, or use --dry-run to see the job scripts, or --launcher "
                            "submitit-local to run the same jobs on this machine")


class _ScriptOnlySlurmExecutor(submitit.SlurmExecutor):
    """A SlurmExecutor that renders job scripts where Slurm is absent (it never submits)."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def job_script(cfg: SlurmConfig, folder: Path, name: str) -> str:
    """The sbatch script submitit writes for a run's job (its `%j` becomes the job id once submitted).
    Rendered by submitit's SlurmExecutor itself; nothing is written and Slurm is not contacted."""
    executor = _ScriptOnlySlurmExecutor(folder / "%j", max_num_timeout=cfg.max_requeues)
    executor.update_parameters(**job_parameters(cfg, name))  # validated by submitit, as when submitting
    # SlurmExecutor has no public renderer: these two are what its submit() calls to write the script
    return executor._make_submission_file_text(executor._submitit_command_str, name)
