"""Faults met by real `cratelab` processes: SIGKILL, a full disk, a loss that turns NaN, no network.

Each test runs the command line as a user would, breaks it from outside while it works, then runs the
same command again and compares with an uninterrupted run. In-process versions of some of these live
beside the code they test (tests/test_train.py: resume and NaN; tests/test_checkpoint.py: damaged
files; tests/interp/test_run.py: SIGKILL inside `interpret`); tests/test_bad_input.py feeds damaged
checkpoints to every command.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from cratelab.checkpoint import load_checkpoint
from cratelab.config import load_config
from cratelab.io import read_jsonl
from cratelab.layout import result_columns
from cratelab.train import train

resource = pytest.importorskip("resource")  # POSIX: file-size limits; the process groups below are POSIX too

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")
SWEEP = str(ROOT / "configs" / "seed-ablation.toml")
TRAIN = ["train", TINY, "--set", "train.max_steps=40", "--set", "train.eval_interval=5"]
INTERPRET = ["--neurons", "64", "--tokens", "8192", "--set", "interp.device=cpu"]
# two runs (CRATE and the GPT baseline) of the smoke sweep, checkpointed every 10 of their 30 steps; without the
# declared questions, about effects these two runs do not have
ABLATE = ["ablate", SWEEP, "--smoke", "--set", "sweep.seeds=[0]", "--set", "sweep.factors.model.ista_lambda=[0.1]",
          "--set", 'sweep.factors.model.qkv=["shared"]', "--set", "train.eval_interval=10",
          "--set", "sweep.questions.primary=[]", "--set", "sweep.questions.secondary=[]"]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def command(*args) -> list[str]:
    return [sys.executable, "-m", "cratelab", *map(str, args)]


def environment(cache: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "CRATELAB_CACHE": str(cache), "OMP_NUM_THREADS": "1", **extra}


def cratelab(*args, cache: Path, expect: int = 0, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(*args), capture_output=True, text=True, timeout=600, env=environment(cache),
                          **kwargs)
    assert proc.returncode == expect, f"cratelab {' '.join(map(str, args))} -> {proc.returncode}:\n{proc.stderr}"
    return proc


def final_metrics(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_until(args: list, cache: Path, ready, then, timeout: float = 300) -> tuple[int, str]:
    """Start `cratelab args`, call then(proc) as soon as ready() holds, wait for the process to end, and
    return its exit status and stderr. Fails if it ends first. It leads its own process group (as under
    a job scheduler). stderr is a pipe (a file would count against a file-size limit) read by a thread,
    so that a child process that outlives it (and holds the pipe) cannot make the test hang."""
    proc = subprocess.Popen(command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=environment(cache), start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                reader.join(5)
                pytest.fail(f"cratelab {' '.join(map(str, args))} ended ({proc.returncode}) before the fault:\n"
                            + "".join(lines))
            assert time.monotonic() < deadline, "timed out waiting for the moment of the fault"
            time.sleep(0.005)
        then(proc)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:  # the test failed on the way: leave no process behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(5)
    return proc.returncode, "".join(lines)


def sigkill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the sweep's worker processes too


def lines_of(path: Path) -> list[dict]:
    """The complete JSON lines of a file being written by another process."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):  # may end mid-character
        if line.endswith("\n"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


def steps(out: Path) -> list[int]:
    return [m["step"] for m in lines_of(out / "metrics.jsonl")]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp*"))


# ---------------------------------------------------------------- train

@pytest.fixture(scope="module")
def whole_train(cache, tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("whole") / "run"
    return out, final_metrics(cratelab(*TRAIN, "--out", out, cache=cache))


def assert_same_run(out: Path, whole: tuple[Path, dict], final: dict) -> None:
    reference, expected = whole
    assert {k: final[k] for k in ("step", "tokens", "train_loss", "val_loss")} == \
        {k: expected[k] for k in ("step", "tokens", "train_loss", "val_loss")}
    assert steps(out) == list(range(5, 41, 5))  # every evaluation once
    assert [m["val_loss"] for m in lines_of(out / "metrics.jsonl")] == \
        [m["val_loss"] for m in lines_of(reference / "metrics.jsonl")]
    a, b = load_checkpoint(out).model.state_dict(), load_checkpoint(reference).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert leftovers(out) == []


def test_sigkill_during_train_then_the_same_command_ends_where_an_uninterrupted_run_ends(cache, whole_train,
                                                                                         tmp_path):
    out = tmp_path / "run"
    status, _ = run_until([*TRAIN, "--out", out], cache, ready=lambda: len(steps(out)) >= 2, then=sigkill)
    assert status == -signal.SIGKILL
    assert 5 <= load_checkpoint(out).step < 40  # killed after a checkpoint and before the end

    assert_same_run(out, whole_train, final_metrics(cratelab(*TRAIN, "--out", out, cache=cache)))


def limit_file_size(limit):
    def then(proc: subprocess.Popen) -> None:
        size = limit() if callable(limit) else limit
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (size, size))  # writes beyond it fail with EFBIG
    return then


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
@pytest.mark.parametrize("full", ["checkpoint", "metrics"])
def test_a_full_disk_during_train_is_one_line_and_damages_nothing(cache, whole_train, tmp_path, full):
    out = tmp_path / "run"

    def saved() -> bool:  # a checkpoint, and the config.toml written after it (smaller than the limit below)
        ckpt, config = out / "ckpt.pt", out / "config.toml"
        return ckpt.is_file() and config.is_file() and config.stat().st_mtime_ns >= ckpt.stat().st_mtime_ns

    # the disk fills while the process runs: the next checkpoint, or the next metrics line, no longer fits
    limit = 4096 if full == "checkpoint" else lambda: (out / "metrics.jsonl").stat().st_size + 10
    status, err = run_until([*TRAIN, "--out", out], cache, ready=saved, then=limit_file_size(limit))
    assert status == 2 and "Traceback" not in err, err
    failed = "ckpt.pt" if full == "checkpoint" else "metrics.jsonl"
    assert err.strip().splitlines()[-1] == f"error: {out / failed}: File too large"

    ckpt = load_checkpoint(out)  # the last good checkpoint, whole
    assert 5 <= ckpt.step < 40 and ckpt.step in steps(out)
    raw = (out / "metrics.jsonl").read_text()
    assert raw.endswith("\n") and len(lines_of(out / "metrics.jsonl")) == len(raw.splitlines())  # no cut-off line
    assert leftovers(out) == []

    assert_same_run(out, whole_train, final_metrics(cratelab(*TRAIN, "--out", out, cache=cache)))


def test_a_second_train_on_a_busy_folder_is_refused_and_a_kill_9_leaves_no_lock(cache, tmp_path):
    """Issue 14: two `train` processes on one folder used to both run, every step logged twice."""
    out = tmp_path / "run"
    first = subprocess.Popen(command(*TRAIN, "--out", out, "--set", "train.max_steps=100000"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(cache),
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not steps(out):  # the first process holds the folder and has checkpointed
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = cratelab(*TRAIN, "--out", out, "--set", "train.seed=1", cache=cache, expect=2)
        assert second.stderr.strip() == (f"error: {out} is in use by another cratelab process (PID {first.pid}): "
                                         "wait for it to end, or use another output folder")
    finally:
        sigkill(first)
        first.wait()
    done = steps(out)[-1]
    proc = cratelab(*TRAIN, "--out", out, "--set", f"train.max_steps={done + 5}", cache=cache)  # the stale lock file
    assert final_metrics(proc)["step"] == done + 5 and steps(out) == sorted(set(steps(out)))


def test_nan_loss_stops_with_a_message_and_the_last_good_checkpoint_still_serves(cache, tmp_path):
    out = tmp_path / "run"
    cratelab(*TRAIN, "--out", out, "--set", "train.max_steps=10", cache=cache)
    # diverged optimizer moments (a resume with train.lr=1e30 did this before such resumes were refused):
    # the weights blow up at the first update after the resume, while the saved weights stay good
    state = torch.load(out / "ckpt.pt", weights_only=True)
    for moments in state["train"]["optimizer"]["state"].values():
        moments["exp_avg"].mul_(1e30)
    torch.save(state, out / "ckpt.pt")
    proc = cratelab(*TRAIN, "--out", out, "--set", "train.max_steps=20", cache=cache, expect=2)
    message = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and message.startswith("error: loss became ")
    assert f"; last good checkpoint kept at {out / 'ckpt.pt'}." in message
    assert steps(out) == [5, 10] and load_checkpoint(out).step == 10
    cratelab("eval", out, cache=cache)
    assert json.loads((out / "eval.json").read_text())["step"] == 10
    assert cratelab("generate", out, "--prompt", "The", "--max-new-tokens", "4", cache=cache).stdout.startswith("The")


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
def test_a_full_disk_during_eval_keeps_the_previous_eval_json(cache, whole_train):
    run = whole_train[0]
    cratelab("eval", run, cache=cache)
    before = (run / "eval.json").read_bytes()

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    proc = cratelab("eval", run, "--tokens", "1024", cache=cache, expect=2, preexec_fn=small_files)
    assert proc.stderr.strip().splitlines() == [f"error: {run / 'eval.json'}: File too large"]
    assert (run / "eval.json").read_bytes() == before and leftovers(run) == []


# ---------------------------------------------------------------- interpret

@pytest.fixture(scope="module")
def checkpoint(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    overrides = ["train.max_steps=20", "train.eval_interval=20", f"data.cache_dir={json.dumps(str(cache))}"]
    train(load_config(TINY, overrides), out, progress=False)
    return out


@pytest.fixture(scope="module")
def whole_interpret(cache, checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("interp") / "whole"
    cratelab("interpret", checkpoint, "--out", out, *INTERPRET, cache=cache)
    return out


def assert_same_scores(out: Path, reference: Path) -> None:
    rows = read_jsonl(out / "scores.jsonl")
    keys = [(r["layer"], r["neuron"], r["protocol"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 64 * 3  # nothing lost, nothing scored twice
    assert sorted((out / "scores.jsonl").read_text().splitlines()) == \
        sorted((reference / "scores.jsonl").read_text().splitlines())
    assert json.loads((out / "summary.json").read_text())["layers"] == \
        json.loads((reference / "summary.json").read_text())["layers"]
    assert (out / "scores.csv").read_bytes() == (reference / "scores.csv").read_bytes()


def test_sigkill_during_interpret_then_the_same_command_finishes_the_same_scores(cache, checkpoint,
                                                                                  whole_interpret, tmp_path):
    out = tmp_path / "interp"
    args = ["interpret", checkpoint, "--out", out, *INTERPRET]
    status, _ = run_until(args, cache, ready=lambda: len(lines_of(out / "scores.jsonl")) >= 30, then=sigkill)
    assert status == -signal.SIGKILL and not (out / "summary.json").exists()

    cratelab(*args, cache=cache)
    assert_same_scores(out, whole_interpret)


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
def test_a_full_disk_during_interpret_is_one_line_and_the_rerun_loses_nothing(cache, checkpoint, whole_interpret,
                                                                              tmp_path):
    out = tmp_path / "interp"
    args = ["interpret", checkpoint, "--out", out, *INTERPRET]
    status, err = run_until(args, cache, ready=lambda: len(lines_of(out / "scores.jsonl")) >= 30,
                            then=limit_file_size(lambda: (out / "scores.jsonl").stat().st_size + 50))
    assert status == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}/") and last.endswith(".jsonl: File too large")

    cratelab(*args, cache=cache)
    assert_same_scores(out, whole_interpret)


# ---------------------------------------------------------------- ablate

def results(out: Path, name: str = "results.csv") -> list[dict]:
    with open(out / name, newline="") as f:
        return [{k: v for k, v in row.items() if k != "train_s"} for row in csv.DictReader(f)]


def test_sigkill_during_ablate_then_the_same_command_gives_the_same_results(cache, tmp_path):
    whole, out = tmp_path / "whole", tmp_path / "killed"
    cratelab(*ABLATE, "--out", whole, cache=cache)

    # killed while training (a checkpoint written): the sweep process alone, as `kill -9 PID` or the
    # out-of-memory killer would; its worker processes must not carry on beside the rerun
    def files() -> dict[Path, int]:
        return {p: p.stat().st_size for p in out.rglob("*") if p.is_file()}

    killed = {}

    def kill_the_sweep_process(proc):
        os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.5)  # what was being written when the kill came
        killed.update(group=proc.pid, files=files())

    status, _ = run_until([*ABLATE, "--out", out], cache, then=kill_the_sweep_process,
                          ready=lambda: any(lines_of(p) for p in out.glob("runs/*/metrics.jsonl")))
    assert status == -signal.SIGKILL
    time.sleep(2)
    try:
        assert files() == killed["files"]  # nobody writes any more
    except AssertionError:
        os.killpg(killed["group"], signal.SIGKILL)  # the orphaned workers, before the test fails
        raise
    # then the whole process group, while scoring neurons
    status, _ = run_until([*ABLATE, "--out", out], cache, then=sigkill,
                          ready=lambda: any(lines_of(p) for p in out.glob("runs/*/interp/scores.jsonl")))
    assert status == -signal.SIGKILL and not (out / "results.csv").exists()
    cratelab(*ABLATE, "--out", out, cache=cache)

    assert results(out) == results(whole) and len(results(out)) == 2
    assert (out / "results.csv").read_text().splitlines()[0] == ",".join(result_columns(["model.ista_lambda", "model.qkv", "model.arch"]))
    assert (out / "results_layers.csv").read_bytes() == (whole / "results_layers.csv").read_bytes()
    assert results(out, "results_track.csv") == results(whole, "results_track.csv")  # both points of both runs
    assert len(results(out, "results_track.csv")) == 4
    for run in sorted((whole / "runs").iterdir()):
        mine = out / "runs" / run.name
        assert steps(mine) == [10, 15, 20, 30]  # no evaluation logged twice (15: sweep.track's 0.5)
        keys = [(r["layer"], r["neuron"], r["protocol"]) for r in read_jsonl(mine / "interp" / "scores.jsonl")]
        assert len(keys) == len(set(keys)) == 2 * 16 * 3
        assert sorted((mine / "interp" / "scores.jsonl").read_text().splitlines()) == \
            sorted((run / "interp" / "scores.jsonl").read_text().splitlines())


# ---------------------------------------------------------------- ablate --fresh (issue 27)

def old_sweep(out: Path) -> str:
    """A sweep folder as an earlier sweep left it; returns the name of its one run (finished, scored as no
    real run can be: val_loss 99)."""
    name = "ista_lambda=0.1-qkv=shared-s0"
    out.mkdir(parents=True)
    (out / "sweep.toml").write_text("# the earlier sweep, with other settings\n")
    (out / "results.csv").write_text("name,val_loss\n" + name + ",99\n")
    return name


def fake_result(folder: Path, name: str) -> None:
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "name": name, "condition": name.removesuffix("-s0"), "model.ista_lambda": 0.1, "model.qkv": "shared",
        "seed": 0, "val_loss": 99.0, "layers": [], "tracked": []}))


@pytest.mark.parametrize("link", ["runs", "runs/RUN"])
def test_ablate_fresh_removes_a_linked_folder_never_what_it_points_to(cache, tmp_path, link):
    """runs/ (or a run in it) a symbolic link to a folder elsewhere: deleting it used to fail unnoticed
    (rmtree refuses links, and its errors were ignored) while sweep.toml went, so the old run was reported
    as the new sweep's."""
    out, elsewhere = tmp_path / "sweep", tmp_path / "elsewhere"
    name = old_sweep(out)
    link = out / link.replace("RUN", name)
    fake_result(elsewhere / name, name)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere if link.name == "runs" else elsewhere / name, target_is_directory=True)
    kept = (elsewhere / name / "result.json").read_bytes()

    cratelab(*ABLATE, "--out", out, "--fresh", "--set", "sweep.arms=[]", cache=cache)
    assert not (out / "runs").is_symlink() and not (out / "runs" / name).is_symlink()
    assert (elsewhere / name / "result.json").read_bytes() == kept and os.listdir(elsewhere / name) == ["result.json"]
    assert steps(out / "runs" / name)  # trained here, anew
    (row,) = results(out)
    assert row["name"] == name and float(row["val_loss"]) < 99


def own_mounts(script: str, *args) -> list[str]:
    """`sh -c script args...` as root of a user and mount namespace of its own: what it mounts, it alone sees."""
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", *map(str, args)]


@pytest.fixture
def mountable(tmp_path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare (util-linux) here")
    probe = subprocess.run(own_mounts('mount -t tmpfs tmpfs "$1"', tmp_path), capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a namespace of its own here: {probe.stderr.strip()}")


def test_ablate_fresh_stops_at_a_failed_delete_and_removes_nothing_after_it(cache, tmp_path, mountable):
    """A folder of the earlier sweep that cannot be deleted (a mount point: EBUSY, even for root): one line
    naming it, exit 2, and sweep.toml still there (it used to be deleted and the sweep went on)."""
    out = tmp_path / "sweep"
    old_sweep(out)
    (out / "runs" / "a-s0").mkdir(parents=True)
    (out / "runs" / "a-s0" / "ckpt.pt").write_bytes(b"old")
    busy = out / "runs" / "b-s0" / "mnt"
    busy.mkdir(parents=True)
    proc = subprocess.run(own_mounts('mount -t tmpfs tmpfs "$1" && shift && exec "$@"', busy,
                                     *command(*ABLATE, "--out", out, "--fresh", "--set", "sweep.arms=[]")),
                          capture_output=True, text=True, timeout=600, env=environment(cache))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {busy}: Device or resource busy"
    assert (out / "sweep.toml").is_file() and (out / "results.csv").is_file() and busy.is_dir()


def test_ablate_fresh_with_a_mistake_deletes_nothing(cache, tmp_path):
    """A design that fails its checks (a level no model can have) used to be found only after --fresh had
    deleted the earlier sweep."""
    out = tmp_path / "sweep"
    name = old_sweep(out)
    fake_result(out / "runs" / name, name)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    proc = cratelab(*ABLATE, "--out", out, "--fresh", "--set", "sweep.factors.model.n_head=[3]", cache=cache, expect=2)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model.n_embd: must be divisible by model.n_head")
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.name != ".cratelab.lock") == before


# ---------------------------------------------------------------- a full disk names the destination (issue 27)

@pytest.mark.parametrize("inodes", [4, 5, 6])
def test_a_full_disk_names_the_file_the_user_asked_for_never_a_temporary(cache, tmp_path, mountable, inodes):
    """A tmpfs with few inodes: creating one of the token cache's files fails (ENOSPC) while the cache is
    built in its temporary folder, whose name the message used to give."""
    disk = tmp_path / "disk"
    disk.mkdir()
    prepare = command("prepare", TINY, "--set", f"data.cache_dir={json.dumps(str(disk / 'cache'))}")
    mount = f'mount -t tmpfs -o size=8m,nr_inodes={inodes} tmpfs "$1" && shift && exec "$@"'
    proc = subprocess.run(own_mounts(mount, disk, *prepare), capture_output=True, text=True, timeout=600,
                          env=environment(cache))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: {disk}/") and message.endswith(": No space left on device"), message
    assert ".tmp" not in message


@pytest.mark.parametrize("size", ["24k", "2m"])
def test_a_full_disk_while_sae_saves_its_state_is_one_line(cache, checkpoint, tmp_path, mountable, size):
    """SAELens writes its state through safetensors (24k: the weights do not fit) and torch.save (2m: the
    optimizer's state does not), whose full-disk errors are not OSErrors: both were tracebacks."""
    pytest.importorskip("sae_lens")
    disk = tmp_path / "disk"
    disk.mkdir()
    sae = command("sae", checkpoint, "--out", disk / "sae", "--set", "sae.device=cpu", "--set", "sae.threads=1",
                  "--set", "sae.expansion_factor=2", "--set", "sae.batch_size=64", "--set", "sae.buffer_tokens=256",
                  "--set", "sae.eval_tokens=256", "--set", "sae.tokens=2048")
    proc = subprocess.run(own_mounts(f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"', disk, *sae),
                          capture_output=True, text=True, timeout=600, env=environment(cache))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {disk / 'sae' / 'state'}: No space left on device"


# ---------------------------------------------------------------- no network

SITECUSTOMIZE = textwrap.dedent('''
    """Loaded by every Python process of the test (PYTHONPATH): Internet sockets fail, and say so in a log."""
    import os, socket

    def _deny(what):
        def refuse(*args, **kwargs):
            with open(os.environ["CRATELAB_TEST_NETLOG"], "a") as log:
                log.write(f"{os.getpid()} {what} {args[1:] if what == 'connect' else args}\\n")
            raise OSError(101, "network disabled by the test")
        return refuse

    _connect = socket.socket.connect

    def connect(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            return _deny("connect")(self, address)
        return _connect(self, address, *args)

    socket.socket.connect = connect
    socket.socket.connect_ex = lambda self, address: connect(self, address)
    socket.getaddrinfo = _deny("getaddrinfo")
''')


def test_train_eval_interpret_and_ablate_need_no_network(cache, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "network.log"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           "CRATELAB_TEST_NETLOG": str(log)}

    def offline(*args):
        proc = subprocess.run(command(*args), capture_output=True, text=True, timeout=600,
                              env=environment(cache, **env))
        assert proc.returncode == 0, proc.stderr
        return proc

    check = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), 1)"],
                           capture_output=True, text=True, env=environment(cache, **env))
    assert "network disabled by the test" in check.stderr and log.read_text()  # the trap works
    log.unlink()

    run = tmp_path / "run"
    offline(*TRAIN, "--out", run, "--set", "train.max_steps=10")
    offline("eval", run)
    offline("generate", run, "--prompt", "The", "--max-new-tokens", "4")
    offline("interpret", run, "--out", tmp_path / "interp", "--neurons", "4", "--tokens", "4096")
    offline(*ABLATE, "--out", tmp_path / "sweep", "--set", "sweep.arms=[]")
    assert not log.exists(), log.read_text()


def test_a_second_sae_on_a_busy_folder_is_refused_and_a_kill_9_leaves_no_lock(cache, checkpoint, tmp_path):
    """Issue 27: two `cratelab sae` processes on one --out both trained (metrics.jsonl: 131 lines for 128 steps)."""
    pytest.importorskip("sae_lens")
    out = tmp_path / "sae"
    sae = ["sae", checkpoint, "--hook", "blocks.0.ista.hook_post", "--out", out, "--set", "sae.device=cpu",
           "--set", "sae.threads=1", "--set", "sae.expansion_factor=2", "--set", "sae.batch_size=64",
           "--set", "sae.buffer_tokens=256", "--set", "sae.eval_tokens=256"]
    first = subprocess.Popen(command(*sae, "--set", "sae.tokens=100000000"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=environment(cache), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not steps(out):  # the first process holds the folder and has logged
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # the same settings: without the lock it would train into the folder too (and not end for a long time)
        second = subprocess.run(command(*sae, "--set", "sae.tokens=100000000"), capture_output=True, text=True,
                                timeout=300, env=environment(cache))
        assert second.returncode == 2 and second.stderr.strip() == (
            f"error: {out} is in use by another cratelab process (PID {first.pid}): wait for it to end, or use "
            "another output folder")
    finally:
        sigkill(first)
        first.wait()
    logged = steps(out)
    assert logged == sorted(set(logged))  # one writer
    done = cratelab(*sae, "--set", "sae.tokens=2048", "--fresh", cache=cache)  # the stale lock file blocks nothing
    assert "CE loss recovered" in done.stdout and steps(out)[-1] == 2048 // 64


def test_sigkill_during_sae_then_the_same_command_ends_as_an_uninterrupted_one(cache, checkpoint, tmp_path):
    """Issue 27 (kill -9 at every stage): `cratelab sae` killed after a resumable checkpoint, then run again,
    gives the uninterrupted run's SAE, log and evaluation."""
    pytest.importorskip("sae_lens")
    from safetensors.torch import load_file

    sae = ["sae", checkpoint, "--hook", "blocks.0.ista.hook_post", "--set", "sae.device=cpu", "--set", "sae.threads=1",
           "--set", "sae.expansion_factor=2", "--set", "sae.batch_size=64", "--set", "sae.buffer_tokens=256",
           "--set", "sae.eval_tokens=256", "--set", f"sae.tokens={64 * 600}"]
    cratelab(*sae, "--out", tmp_path / "whole", cache=cache)
    out = tmp_path / "killed"
    status, _ = run_until([*sae, "--out", out], cache, ready=lambda: len(steps(out)) >= 3, then=sigkill)
    assert status == -signal.SIGKILL and not (out / "cfg.json").exists()
    cratelab(*sae, "--out", out, cache=cache)
    whole, resumed = (load_file(folder / "sae_weights.safetensors") for folder in (tmp_path / "whole", out))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert steps(out) == steps(tmp_path / "whole")
    evaluation = [json.loads((folder / "eval.json").read_text()) for folder in (tmp_path / "whole", out)]
    assert evaluation[0] == evaluation[1]
