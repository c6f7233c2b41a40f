"""Sweeps as cluster jobs through submitit: [sweep.slurm] validation, `ablate --dry-run` (the sbatch
scripts, without Slurm), and the submitit-local launcher end to end in real job processes: it trains,
a job killed mid-training leaves its run unfinished, and the rerun resumes it from its checkpoint."""

import contextlib
import csv
import functools
import json
import operator
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cratelab.checkpoint import read_checkpoint
from cratelab.cli import main
from cratelab.config import load_sweep_config
from cratelab.io import LOCK_FILE
from cratelab.layout import COOLDOWN_START
from cratelab.sweep.results import check_sweep_unchanged, save_sweep

pytest.importorskip("submitit")

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(ROOT / "configs" / "seed-ablation.toml")
CRATE, GPT = "ista_lambda=0.1-qkv=shared-s0", "gpt-relu-s0"
# two runs of the smoke sweep (CRATE and the GPT baseline), checkpointed every 10 of their 60 steps; without the
# declared questions, about effects these two runs do not have
TWO_RUNS = ["--smoke", "--set", "sweep.seeds=[0]", "--set", "sweep.factors.model.ista_lambda=[0.1]",
            "--set", 'sweep.factors.model.qkv=["shared"]', "--set", "train.max_steps=60",
            "--set", "train.eval_interval=10", "--set", "sweep.questions.primary=[]",
            "--set", "sweep.questions.secondary=[]"]
SLURM = ["--set", 'sweep.slurm.partition="gpu"', "--set", 'sweep.slurm.account="crate-lab"',
         "--set", "sweep.slurm.gpus_per_run=2", "--set", "sweep.slurm.cpus_per_task=6",
         "--set", "sweep.slurm.time_min=90", "--set", 'sweep.slurm.extra=["--qos=high", "--exclusive"]',
         "--set", 'sweep.slurm.setup=["module load cuda/12.4"]', "--set", 'train.device="auto"']


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("override, field", [
    ("sweep.launcher='pbs'", "sweep.launcher"),
    ("sweep.slurm.gpus_per_run=-1", "sweep.slurm.gpus_per_run"),
    ("sweep.slurm.gpus_per_run=1.5", "sweep.slurm.gpus_per_run"),
    ("sweep.slurm.cpus_per_task=0", "sweep.slurm.cpus_per_task"),
    ("sweep.slurm.time_min=0", "sweep.slurm.time_min"),
    ("sweep.slurm.mem_gb=-4", "sweep.slurm.mem_gb"),
    ("sweep.slurm.max_requeues=-1", "sweep.slurm.max_requeues"),
    ("sweep.slurm.partition='gpu a100'", "sweep.slurm.partition"),
    ("sweep.slurm.extra=['qos=high']", "sweep.slurm.extra[0]"),
    ("sweep.slurm.extra='--qos=high'", "sweep.slurm.extra"),
    (r'sweep.slurm.setup=["module load a\nmodule load b"]', "sweep.slurm.setup[0]"),
    ("sweep.slurm.gpus=2", "sweep.slurm.gpus"),
    ("sweep.slurm=3", "sweep.slurm"),
])
def test_bad_slurm_settings_name_the_field_with_exit_code_2(tmp_path, capsys, override, field):
    code, out, err = run_cli(["ablate", SWEEP, "--out", tmp_path / "s", "--dry-run", "--set", "sweep.launcher='slurm'",
                              "--set", "train.device='auto'", "--set", override], capsys)
    assert code == 2 and not out and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {field}")
    assert not (tmp_path / "s").exists()


def test_dry_run_prints_the_sbatch_script_of_each_unfinished_run_without_slurm(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # no sbatch, no srun
    out_dir = tmp_path / "sweep"
    base, sweep = load_sweep_config(SWEEP, [o for o in SLURM if o != "--set"], smoke=True)
    finished = out_dir / "runs" / GPT
    finished.mkdir(parents=True)
    (finished / "result.json").write_text(json.dumps({"name": GPT, "condition": "gpt-relu", "model.ista_lambda": 0.1,
                                                      "model.qkv": "shared", "model.arch": "gpt", "seed": 0,
                                                      "layers": []}))
    code, out, err = run_cli(["ablate", SWEEP, "--out", out_dir, "--smoke", "--launcher", "slurm", "--dry-run",
                              *SLURM], capsys)
    assert code == 0, err
    scripts = out.split("#!/bin/bash")[1:]
    assert len(scripts) == 2 * 7 - 1  # the smoke sweep's 2 seeds x 7 conditions, less the finished run
    assert f"cratelab-{GPT}\n" not in out and "nothing was submitted" in err
    for script in scripts:
        for line in ("#SBATCH --partition=gpu", "#SBATCH --account=crate-lab", "#SBATCH --gpus-per-node=2",
                     "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=6", "#SBATCH --time=90",
                     "#SBATCH --qos=high", "#SBATCH --exclusive", "module load cuda/12.4"):
            assert line in script.splitlines(), (line, script)
        assert "\nsrun --unbuffered " in script and f"-m submitit.core._submit {out_dir / 'jobs'}/%j" in script
    assert f"#SBATCH --job-name=cratelab-{CRATE}" in out
    assert os.listdir(out_dir) == ["runs"]  # nothing written: no sweep.toml, no jobs/
    # the launcher and its job settings are how runs execute: a sweep folder resumes under other ones
    save_sweep(base, sweep, out_dir)
    check_sweep_unchanged(*load_sweep_config(SWEEP, ["sweep.launcher='submitit-local'", "sweep.slurm.time_min=5"],
                                             smoke=True), out_dir)


@pytest.mark.parametrize("args, message", [
    (["--launcher", "local", "--dry-run"], "--dry-run: prints the Slurm job scripts"),
    (["--launcher", "slurm", "--dry-run", "--set", "sweep.slurm.gpus_per_run=1"], "sweep.slurm.gpus_per_run:"),
    (["--launcher", "slurm", "--set", "sweep.slurm.gpus_per_run=0"], "no Slurm here"),
])
def test_launcher_mistakes_are_one_line_before_anything_runs(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    code, out, err = run_cli(["ablate", SWEEP, "--out", tmp_path / "s", "--smoke", *args], capsys)
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "s" / "runs").exists() and not (tmp_path / "s" / "sweep.toml").exists()


def test_a_job_that_sbatch_refuses_is_a_failed_run_with_sbatch_s_message(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"  # a cluster whose sbatch refuses the partition
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CRATELAB_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(["ablate", SWEEP, *TWO_RUNS, "--out", tmp_path / "s", "--launcher", "slurm",
                              "--set", "sweep.slurm.gpus_per_run=0", "--set", "sweep.slurm.partition='nope'"], capsys)
    assert code == 2 and not out, err
    refused = [line for line in err.splitlines() if ": not submitted (" in line]
    assert sorted(line.split(":")[0] for line in refused) == sorted([CRATE, GPT])
    assert all(line.endswith("(sbatch: error: invalid partition specified: nope)") for line in refused)
    assert err.strip().splitlines()[-1].startswith("error: 2 of 2 runs failed")
    assert not (tmp_path / "s" / "report.md").exists()  # nothing finished, nothing to report


# ---------------------------------------------------------------- submitit's LocalExecutor: real job processes

def test_run_jobs_yields_each_result_and_one_line_per_failed_job(tmp_path):
    from cratelab.config import SlurmConfig
    from cratelab.sweep.launch import JobTask, run_jobs

    tasks = [JobTask("adds", functools.partial(operator.add, 2, 3), tmp_path / "adds.log"),
             JobTask("divides", functools.partial(operator.truediv, 1, 0), tmp_path / "divides.log")]
    outcomes = {o.name: o for o in run_jobs(tasks, "submitit-local", SlurmConfig(), tmp_path / "jobs", at_once=2)}
    assert outcomes["adds"].result == 5 and outcomes["adds"].failure is None
    failure = outcomes["divides"].failure
    assert outcomes["divides"].result is None and "\n" not in failure
    assert failure.startswith("divides: job ") and "failed (ZeroDivisionError: division by zero)" in failure
    assert f"logs: {tmp_path / 'divides.log'}, {tmp_path / 'jobs'}/" in failure and failure.endswith("_0_log.err")


def ablate(out: Path, cache: Path, ready=None, then=None) -> tuple[int, str]:
    """`cratelab ablate` on the two runs with the submitit-local launcher, both jobs at once; then(proc) is
    called once ready() holds (the test fails if the sweep ends first). The sweep leads a process group of
    its own, which its jobs join."""
    args = [sys.executable, "-m", "cratelab", "ablate", SWEEP, *TWO_RUNS, "--launcher", "submitit-local",
            "--workers", "2", "--out", str(out)]
    env = {**os.environ, "CRATELAB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while ready is not None and not ready():
            assert proc.poll() is None, "the sweep ended before the fault:\n" + "".join(output)
            assert time.monotonic() < deadline, "timed out waiting for the moment of the fault"
            time.sleep(0.005)
        if then is not None:
            then(proc)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(5)
    return proc.returncode, "".join(output)


def training_pid(run: Path) -> int | None:
    """The PID of the job process training in a run folder (train's folder lock names its holder)."""
    text = (run / LOCK_FILE).read_text().strip() if (run / LOCK_FILE).is_file() else ""
    return int(text) if text else None


def metric_steps(run: Path) -> list[int]:
    """The steps of the run's own evaluations (the lines of a wsd cooldown branch, which say where it
    started, apart)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if COOLDOWN_START not in row]


def _stat(pid: int) -> list[str] | None:
    """A process's fields in /proc/PID/stat after its name: state, parent PID, ... (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None


def running(pid: int) -> bool:
    """Whether a process runs (one that has ended but is not yet reaped, a zombie, does not)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def parent_pid(pid: int) -> int:
    return int(_stat(pid)[1])


def ended(pid: int) -> bool:
    """Whether the process has ended, waiting for it a while (a killed process needs a moment to go)."""
    deadline = time.monotonic() + 300
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc (Linux)")
@pytest.mark.parametrize("kill", ["task", "controller"])
def test_submitit_local_trains_a_killed_job_resumes_and_the_report_is_written(tmp_path, kill):
    """kill: the job's task, the process that trains, as the out-of-memory killer or a node failure would; or
    submitit's controller process above it (issue 27: the task went on training, its run folder locked,
    while the sweep counted the job as ended)."""
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    crate, gpt = out / "runs" / CRATE, out / "runs" / GPT
    killed = {}

    def kill_crate_job(_):
        killed["pid"] = training_pid(crate)
        os.kill(killed["pid"] if kill == "task" else parent_pid(killed["pid"]), signal.SIGKILL)

    code, err = ablate(out, cache, ready=lambda: (crate / "ckpt.pt").is_file() and training_pid(crate),
                       then=kill_crate_job)
    assert code == 2, err
    failed = [line for line in err.splitlines() if line.startswith(f"{CRATE}: job ")]
    assert len(failed) == 1 and "ended without a result" in failed[0], err
    assert f"{crate / 'log.txt'}" in failed[0] and "_0_log.err" in failed[0]  # where to look
    assert err.strip().splitlines()[-1].startswith("error: 1 of 2 runs failed") and "Traceback" not in err
    assert (gpt / "result.json").is_file() and not (crate / "result.json").exists()
    assert ended(killed["pid"])  # no task trains on behind the sweep's back
    with open(out / "results.csv") as f:
        assert [row["name"] for row in csv.DictReader(f)] == [GPT]  # what finished, reported
    assert (out / "report.md").is_file()
    steps_at_kill = metric_steps(crate)
    assert steps_at_kill and steps_at_kill[-1] < 60
    step_at_kill = read_checkpoint(crate / "ckpt.pt")["step"]  # a kill after a metrics line, before its checkpoint
    gpt_ckpt = (gpt / "ckpt.pt").stat().st_mtime_ns

    code, err = ablate(out, cache)
    assert code == 0, err
    assert "2 runs (1 already finished)" in err
    log = (crate / "log.txt").read_text()
    resumed = [line for line in log.splitlines() if line.startswith("resuming")]
    assert len(resumed) == 1 and f"at step {step_at_kill}" in resumed[0], log
    assert metric_steps(crate) == list(range(10, 61, 10))  # each evaluation once: no step trained twice
    assert (gpt / "ckpt.pt").stat().st_mtime_ns == gpt_ckpt  # the finished run was not retrained
    with open(out / "results.csv") as f:
        assert sorted(row["name"] for row in csv.DictReader(f)) == sorted([CRATE, GPT])
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert training_pid(crate) != killed["pid"]  # the resumed run was trained by a new job process


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc (Linux)")
def test_a_kill_9_of_the_sweep_takes_its_jobs_with_it_and_the_rerun_resumes_them(tmp_path):
    """Issue 27: `kill -9` of the sweep process alone left its submitit-local jobs training, each holding
    its run folder's lock; the rerun then failed those runs as "in use"."""
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    crate = out / "runs" / CRATE
    job = {}

    def kill_the_sweep_process(proc):  # alone, as `kill -9 PID` or the out-of-memory killer would
        job.update(pid=training_pid(crate), group=proc.pid)
        os.kill(proc.pid, signal.SIGKILL)

    code, _ = ablate(out, cache, ready=lambda: (crate / "ckpt.pt").is_file() and training_pid(crate),
                     then=kill_the_sweep_process)
    try:
        assert code == -signal.SIGKILL
        assert ended(job["pid"]), "the job of the killed sweep is still running"  # it used to finish its run
        assert not (crate / "result.json").exists()  # it ended with the sweep, not by finishing its run
    finally:
        with contextlib.suppress(ProcessLookupError):  # what the killed sweep left in its process group
            os.killpg(job["group"], signal.SIGKILL)
    # the step it resumes from: its last checkpoint (a kill between an evaluation's metrics line and its checkpoint
    # leaves the line one evaluation ahead; the resume drops it and trains that step again)
    step_at_kill = read_checkpoint(crate / "ckpt.pt")["step"]

    code, err = ablate(out, cache)
    assert code == 0 and "in use" not in err, err
    resumed = [line for line in (crate / "log.txt").read_text().splitlines() if line.startswith("resuming")]
    assert resumed and f"at step {step_at_kill}" in resumed[-1]
    assert metric_steps(crate) == list(range(10, 61, 10))  # each evaluation once: no step trained twice
    with open(out / "results.csv") as f:
        assert sorted(row["name"] for row in csv.DictReader(f)) == sorted([CRATE, GPT])


@pytest.mark.e2e
def test_a_run_of_two_gpus_is_one_job_of_two_ddp_tasks(tmp_path):
    """gpus_per_run = 2: submitit starts two tasks, each exports torch.distributed's environment from the
    job's, and train() runs DDP over them (here on the CPU, under gloo) as under torchrun."""
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "cratelab", "ablate", SWEEP, *TWO_RUNS, "--set", "train.max_steps=20",
                           "--set", "interp.neurons=8", "--set", "sweep.slurm.gpus_per_run=2",
                           "--launcher", "submitit-local", "--only", GPT, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "CRATELAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    log = (out / "runs" / GPT / "log.txt").read_text()
    assert "on cpu x 2," in log  # one model replica per task
    (job,) = [p for p in (out / "jobs").iterdir() if p.name != "%j"]
    assert sorted(p.name.split("_", 1)[1] for p in job.glob("*_result.pkl")) == ["0_result.pkl", "1_result.pkl"]
    assert json.loads((out / "runs" / GPT / "result.json").read_text())["name"] == GPT
