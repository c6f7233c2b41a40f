import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cratelab.config import ConfigError, load_sweep_config
from cratelab.errors import CratelabError
from cratelab.layout import result_columns, track_columns
from cratelab.sweep import execute as sweep_execute
from cratelab.sweep.design import design_keys, expand, tracked_steps
from cratelab.sweep.execute import check_machine, worker_gpus, worker_pool
from cratelab.sweep.results import check_sweep_unchanged, read_result, save_sweep

CONFIG = "configs/seed-ablation.toml"
ROOT = Path(__file__).resolve().parents[1]


def test_the_default_grid_is_21_runs_with_the_baseline():
    base, sweep = load_sweep_config(CONFIG)
    runs = expand(base, sweep)
    assert len(runs) == 21 and len({r.name for r in runs}) == 21
    crate = [r for r in runs if r.config.model.arch == "crate"]
    assert {(r.config.model.qkv, r.config.model.ista_lambda) for r in crate} == {
        (q, lam) for q in ("shared", "separate") for lam in (0.05, 0.1, 0.2)}
    gpt = [r for r in runs if r.config.model.arch == "gpt"]
    assert [r.config.train.seed for r in gpt] == [0, 1, 2] and gpt[0].config.model.mlp_act == "relu"
    # seeds reach both the training and the record sampling; the shape is shared by all runs
    assert all(r.config.interp.seed == r.config.train.seed for r in runs)
    assert len({(r.config.model.n_layer, r.config.model.n_embd, r.config.model.n_head) for r in runs}) == 1


def test_every_model_sees_at_least_half_a_million_tokens():
    base, _ = load_sweep_config(CONFIG)
    t = base.train
    assert t.max_steps * t.batch_size * t.grad_accum * base.model.block_size >= 500_000


def test_the_long_ablation_is_the_same_grid_trained_past_six_million_tokens_with_four_points():
    base, sweep = load_sweep_config(CONFIG)
    long_base, long_sweep = load_sweep_config("configs/seed-ablation-long.toml")
    long_runs = expand(long_base, long_sweep)
    assert [r.name for r in long_runs if not r.base] == [r.name for r in expand(base, sweep)]
    assert [r.base for r in long_runs if r.base] == [f"gpt-relu-s{s}" for s in sweep.seeds]  # + the GPT+SAE arm
    t = long_base.train
    assert t.max_steps * t.batch_size * t.grad_accum * long_base.model.block_size >= 6_000_000
    assert tracked_steps(long_sweep.track, t.max_steps) == {500: 0.125, 1000: 0.25, 2000: 0.5}
    assert 0.75 * t.max_steps % t.eval_interval == 0  # the convergence line needs no interpolation
    # everything but the schedule, and the exact quantile bins that make ablation leaves out to fit 30 min
    same = lambda cfg: cfg.to_dict() | {"train": {}, "interp": cfg.to_dict()["interp"] | {"records": {}}}
    assert same(long_base) == same(base)
    assert (base.interp.records.quantiles, long_base.interp.records.quantiles) == ("sample", "exact")
    assert dataclasses.replace(base.interp.records, quantiles="exact") == long_base.interp.records
    assert sweep.track == [0.5, 1.0]  # make ablation tracks its half-way point by default


def test_tracked_points_are_steps_of_the_run_own_max_steps():
    assert tracked_steps([0.5, 1.0], 400) == {200: 0.5}  # the end is the run itself
    assert tracked_steps([0.25, 0.26, 0.001], 30) == {8: 0.25, 1: 0.001}  # one point per step, at least step 1
    assert tracked_steps([], 30) == {}


def test_a_sweep_folder_from_before_sweep_track_resumes_only_without_it(tmp_path):
    base, sweep = load_sweep_config(CONFIG, ["sweep.track=[]"], smoke=True)
    save_sweep(base, sweep, tmp_path)
    text = (tmp_path / "sweep.toml").read_text()
    (tmp_path / "sweep.toml").write_text(text.replace("track = []\n", ""))
    assert "track" not in (tmp_path / "sweep.toml").read_text()
    check_sweep_unchanged(base, sweep, tmp_path)
    with pytest.raises(CratelabError, match=r"sweep.track \[\] -> \[0.5, 1.0\]"):
        check_sweep_unchanged(*load_sweep_config(CONFIG, smoke=True), tmp_path)


def test_a_sweep_folder_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
    """model.bias and train.schedule were added after sweep folders existed: a sweep.toml without them means
    their defaults (the behaviour then), so it resumes with them and refuses another value, naming it."""
    base, sweep = load_sweep_config(CONFIG, ["sweep.track=[]", "train.schedule=\"cosine\""], smoke=True)
    save_sweep(base, sweep, tmp_path)
    text = (tmp_path / "sweep.toml").read_text()
    older = text.replace("bias = true\n", "").replace('schedule = "cosine"\n', "").replace("cooldown = 0.2\n", "")
    assert "bias" not in older and "schedule" not in older
    (tmp_path / "sweep.toml").write_text(older)
    check_sweep_unchanged(base, sweep, tmp_path)
    with pytest.raises(CratelabError, match="train.schedule 'cosine' -> 'wsd'"):
        check_sweep_unchanged(*load_sweep_config(CONFIG, ["sweep.track=[]"], smoke=True), tmp_path)


def test_declared_questions_may_change_on_a_rerun(tmp_path):
    """[sweep.questions] is read by the report alone: changing it computes nothing new."""
    base, sweep = load_sweep_config(CONFIG, smoke=True)
    save_sweep(base, sweep, tmp_path)
    check_sweep_unchanged(*load_sweep_config(CONFIG, ["sweep.questions.alpha=0.01", "sweep.questions.secondary=[]"],
                                             smoke=True), tmp_path)


def test_smoke_shrinks_but_keeps_every_condition():
    base, sweep = load_sweep_config(CONFIG, smoke=True)
    runs = expand(base, sweep)
    assert len(runs) == 14 and base.data.corpus == "fixture"
    assert len({(r.config.model.arch, r.config.model.qkv, r.config.model.ista_lambda) for r in runs}) == 7


def test_a_factor_the_engine_has_never_heard_of(tmp_path):
    """Any run-config field is a factor: names, configs and result columns follow from the sweep file."""
    base, sweep = load_sweep_config(CONFIG, ["sweep.factors={ \"train.lr\" = [0.001, 0.002] }", "sweep.arms=[]",
                                             "sweep.reference={}", "sweep.seeds=[3]"])
    runs = expand(base, sweep)
    assert [r.name for r in runs] == ["lr=0.001-s3", "lr=0.002-s3"]
    assert [r.config.train.lr for r in runs] == [0.001, 0.002] and runs[0].config.train.seed == 3
    assert result_columns(design_keys(sweep))[:4] == ["name", "condition", "train.lr", "seed"]


@pytest.mark.parametrize("override,field", [
    ("sweep.factors.model.ista_lambda=[0.1, -1.0]", "model.ista_lambda"),
    ("sweep.factors.model.nope=[1, 2]", "model.nope"),
    ("sweep.factors.nope.lr=[1, 2]", "nope.lr"),
    ("sweep.factors.model.qkv=['shared', 'tied']", "model.qkv"),
    ("sweep.factors.model.n_layer=[1.5]", "model.n_layer"),
    ("sweep.factors.train.seed=[1]", "sweep.factors.train.seed"),
    ("sweep.reference.model.ista_lambda=0.3", "sweep.reference.model.ista_lambda"),
    ("sweep.reference.model.n_layer=3", "sweep.reference.model.n_layer"),
    ("sweep.arms=[{ name = 'x', set = { 'model.arch' = 'rnn' } }]", "model.arch"),
    ("sweep.arms=[{ name = 'a b', set = { 'model.arch' = 'gpt' } }]", "sweep.arms[0].name"),
    ("sweep.seeds=[1, 1]", "sweep.seeds"),
    ("sweep.seeds=3", "sweep.seeds"),
    ("sweep.workers=0", "sweep.workers"),
    ("sweep.track=[0.5, 1.5]", "sweep.track[1]"),
    ("sweep.track=[0.0]", "sweep.track[0]"),
    ("sweep.track=[0.5, 0.5]", "sweep.track"),
    ("sweep.nope=1", "sweep.nope"),
    ("model.n_embd=130", "model.n_embd"),
    # issue 27: settings that were silently ignored or aliased
    ("sweep.arms=[{ name = 'x', set = { 'model.arch' = 'gpt', 'train.seed' = 7 } }]", "sweep.arms[0].set.train.seed"),
    ("sweep.arms=[{ name = 'x', set = { 'model.arch' = 'gpt', 'interp.seed' = 7 } }]", "sweep.arms[0].set.interp.seed"),
    ("sweep.factors.model.ista_lambda=[1, 1.0]", "sweep.factors.model.ista_lambda"),
    ("sweep.factors.model.ista_lambda=[0.5, 0.1, 0.10]", "sweep.factors.model.ista_lambda"),
    ("sweep.arms=[{ name = 'same', set = { 'model.qkv' = 'shared' } }]", "sweep.arms[0].set"),
    ("sweep.seeds=[0, 4294967296]", "sweep.seeds"),
    # issue 27: a wrong reference level was blamed on the gpt-relu arm
    ("sweep.reference.model.ista_lambda='0.1'", "sweep.reference.model.ista_lambda"),
    # issue 27: what failed only when the condition's runs were scored, after other runs trained
    ("sweep.factors.model.block_size=[128, 32]", "interp.records.window"),
    ("sweep.factors.interp.layers=['0', '5']", "interp.layers"),
    ("sweep.factors.data.hf_split=['train', '" + "x" * 250 + "']", "sweep.factors.data.hf_split"),
    ("sweep.arms=[{ name = '" + "a" * 260 + "', set = { 'model.arch' = 'gpt' } }]", "sweep.arms[0].name"),
])
def test_bad_sweep_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:  # every cell is built and validated before anything runs
        expand(*load_sweep_config(CONFIG, [override]))
    assert err.value.field.startswith(field)


@pytest.mark.parametrize("override, message", [
    ("sweep.arms=[{ name = 'x', set = { 'model.arch' = 'gpt', 'train.seed' = 7 } }]",
     "sweep.arms[0].set.train.seed: arm 'x' sets a seed, but seeds are set by sweep.seeds"),
    ("sweep.factors.model.ista_lambda=[1, 1.0]",
     "sweep.factors.model.ista_lambda: levels 1 and 1.0 are the same value for model.ista_lambda"),
    ("sweep.arms=[{ name = 'same', set = { 'model.qkv' = 'shared' } }]",
     "sweep.arms[0].set: condition same has the settings of condition ista_lambda=0.1-qkv=shared"),
    ("sweep.reference.model.ista_lambda='0.1'",
     "sweep.reference.model.ista_lambda: must be one of the factor's levels [0.05, 0.1, 0.2], got '0.1'"),
    ("sweep.factors.model.block_size=[128, 32]",
     "interp.records.window: must be <= model.block_size (32), got 64 (condition ista_lambda=0.05-qkv=shared-"
     "block_size=32)"),
    ("sweep.factors.data.hf_split=['train', '" + "x" * 250 + "']",
     "sweep.factors.data.hf_split: makes the run name 'ista_lambda=0.05-qkv=shared-hf_split=xxx'... 290 bytes long"),
])
def test_sweep_refusals_name_the_field_and_the_values(override, message):
    with pytest.raises(ConfigError) as err:
        expand(*load_sweep_config(CONFIG, [override]))
    assert str(err.value).startswith(message), str(err.value)


def test_a_level_spelled_two_ways_and_the_reference_as_an_int_are_one_level():
    """Levels are compared as their field holds them: a reference of 1 names the level 1.0 of a float field."""
    base, sweep = load_sweep_config(CONFIG, ["sweep.factors.model.ista_lambda=[1.0, 2.0]",
                                             "sweep.reference.model.ista_lambda=1"])
    runs = expand(base, sweep)
    assert sweep.reference_levels()["model.ista_lambda"] == 1.0
    gpt = next(r for r in runs if r.condition.name == "gpt-relu")
    assert gpt.config.model.ista_lambda == 1.0  # the arm is the reference with its own settings on top


def test_set_replaces_a_factor_written_as_a_quoted_key():
    """`--set sweep.factors.model.ista_lambda=...` on a file that writes "model.ista_lambda" replaces that entry
    (in its place: the run names keep their order) instead of adding a second spelling of the factor."""
    base, sweep = load_sweep_config(CONFIG, ["sweep.factors.model.ista_lambda=[0.3]",
                                             "sweep.reference.model.ista_lambda=0.3"])
    assert list(sweep.factors) == ["model.ista_lambda", "model.qkv"] and sweep.factors["model.ista_lambda"] == [0.3]
    assert [r.name for r in expand(base, sweep)][:2] == ["ista_lambda=0.3-qkv=shared-s0", "ista_lambda=0.3-qkv=separate-s0"]


def test_the_order_of_the_tracked_fractions_is_not_a_change(tmp_path):
    import tomli_w
    import tomllib

    base, sweep = load_sweep_config(CONFIG, smoke=True)
    assert load_sweep_config(CONFIG, ["sweep.track=[1.0, 0.5]"], smoke=True)[1].track == sweep.track == [0.5, 1.0]
    save_sweep(base, sweep, tmp_path)
    check_sweep_unchanged(*load_sweep_config(CONFIG, ["sweep.track=[1.0, 0.5]"], smoke=True), tmp_path)
    # a sweep.toml written before the fractions were sorted holds them as the file gave them
    values = tomllib.loads((tmp_path / "sweep.toml").read_text())
    values["sweep"]["track"] = [1.0, 0.5]
    (tmp_path / "sweep.toml").write_text(tomli_w.dumps(values))
    check_sweep_unchanged(base, sweep, tmp_path)
    with pytest.raises(CratelabError, match=r"sweep.track \[0.5, 1.0\] -> \[0.25, 0.5, 1.0\]"):
        check_sweep_unchanged(*load_sweep_config(CONFIG, ["sweep.track=[1.0, 0.25, 0.5]"], smoke=True), tmp_path)


GPT_SAE = ('sweep.arms=[{ name = "gpt-relu", set = { "model.arch" = "gpt" } }, '
           '{ name = "gpt-sae", of = "gpt-relu", sae = { %s } }]')


@pytest.mark.parametrize("overrides, message", [
    (['sweep.arms=[{ name = "gpu", set = { "train.device" = "cuda:99" } }]'],
     "train.device = 'cuda:99' but .* \\(condition gpu\\)"),
    (['sweep.arms=[{ name = "gpu", set = { "interp.device" = "cuda:99" } }]'],
     "interp.device = 'cuda:99' but .* \\(condition gpu\\)"),
    ([GPT_SAE % 'device = "cuda:99"'], "sweep.arms\\[1\\].sae.device = 'cuda:99' but .* \\(condition gpt-sae\\)"),
    ([GPT_SAE % 'threads = 100000'], "sweep.arms\\[1\\].sae.threads: must be at most .* \\(condition gpt-sae\\)"),
    (['sweep.arms=[{ name = "busy", set = { "train.threads" = 100000 } }]'],
     "train.threads: must be at most .* \\(condition busy\\)"),
    (['sweep.arms=[{ name = "huge", set = { "model.n_layer" = 999999999 } }]'],
     "model: n_layer 999999999, .* GiB for the weights alone.* \\(condition huge\\)"),
    (['train.device="cuda:99"'], "^train.device = 'cuda:99' but [^(]*$"),  # every run's: no condition named
    ([GPT_SAE % 'expansion_factor = 1000000'], "sweep.arms\\[1\\].sae.expansion_factor: .* \\(condition gpt-sae\\)"),
    ([GPT_SAE % 'buffer_tokens = 100000000000'], "sweep.arms\\[1\\].sae.buffer_tokens: .* \\(condition gpt-sae\\)"),
])
def test_what_each_run_needs_of_the_machine_is_checked_before_any_run(overrides, message):
    """Every condition's devices, threads and memory, the last arm's too (they failed when that run started)."""
    base, sweep = load_sweep_config(CONFIG, overrides, smoke=True)
    with pytest.raises(CratelabError, match=message):
        check_machine(sweep, expand(base, sweep))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_sae_arm_on_cuda_is_refused_on_a_machine_without_it():
    base, sweep = load_sweep_config(CONFIG, [GPT_SAE % 'device = "cuda"'], smoke=True)
    with pytest.raises(CratelabError, match=r"sweep.arms\[1\].sae.device = 'cuda:0' but no CUDA GPU is available"):
        check_machine(sweep, expand(base, sweep))
    check_machine(dataclasses.replace(sweep, launcher="slurm"), expand(base, sweep))  # the cluster's GPUs


def cratelab(*args, cache):
    env = {**os.environ, "CRATELAB_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "cratelab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_print_commands_lists_one_command_per_run(tmp_path):
    proc = cratelab("ablate", CONFIG, "--out", tmp_path / "sweep", "--print-commands", cache=tmp_path)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 22
    assert lines[0].startswith(f"cratelab ablate {CONFIG} --out ") and "--only ista_lambda=0.05-qkv=shared-s0" in lines[0]
    assert lines[-1].startswith("cratelab report ")


def _without_train_s_text(text: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "train_s"} for row in csv.DictReader(text.splitlines())]


def _without_train_s(path) -> list[dict]:
    return _without_train_s_text(path.read_text())


def _kept(out) -> dict:
    """The modification times of the checkpoints and tracked points' files: what a resume must not redo."""
    return {p: p.stat().st_mtime_ns for p in [*out.glob("runs/*/ckpt.pt"), *out.glob("runs/*/track/*/*")]}


@pytest.mark.e2e
def test_smoke_sweep_end_to_end_and_resume(tmp_path):
    out = tmp_path / "smoke"
    proc = cratelab("ablate", CONFIG, "--out", out, "--smoke", "--set", "sweep.seeds=[0]", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    # a line a finished run, with how many of the 7 have ended and, until the last, the time left at this pace
    ended = re.findall(r"^\S+-s0: val_loss .* s training \[(\d)/7(, about (\d+m )?\d+s left)?\]$", proc.stderr, re.M)
    assert [int(n) for n, *_ in ended] == list(range(1, 8)) and all(left for _, left, _ in ended[:-1])
    assert not ended[-1][1]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and list(rows[0]) == result_columns(["model.ista_lambda", "model.qkv", "model.arch"])
    for row in rows:
        assert float(row["val_loss"]) > 0 and 0 <= float(row["zero_frac"]) <= 1
        assert row["interp_top_and_random"] != "" and int(row["unscorable_scores"]) >= 0
    assert {row["model.arch"] for row in rows} == {"crate", "gpt"}
    report = (out / "report.md").read_text().replace("\\", "")
    assert "model.qkv: separate − shared" in report and "model.ista_lambda: per doubling" in report
    assert (out / "report.html").is_file()
    assert any((out / "plots").glob("*.png"))
    assert (out / "runs" / "ista_lambda=0.1-qkv=shared-s0" / "interp" / "cards" / "index.html").is_file()

    # sweep.track = [0.5, 1.0]: each run kept, evaluated and scored its model at step 15 of 30 as well
    with open(out / "results_track.csv") as f:
        tracked = list(csv.DictReader(f))
    assert list(tracked[0]) == track_columns(["model.ista_lambda", "model.qkv", "model.arch"])
    assert sorted((r["name"], r["track"], r["step"]) for r in tracked) == sorted(
        (row["name"], fraction, step) for row in rows for fraction, step in (("0.5", "15"), ("1.0", "30")))
    final = {r["name"]: r for r in tracked if r["track"] == "1.0"}
    assert all({k: final[row["name"]][k] for k in row} == row for row in rows)  # the final point is the run
    half = {r["name"]: r for r in tracked if r["track"] == "0.5"}
    assert all(int(half[n]["tokens"]) * 2 == int(final[n]["tokens"]) and half[n]["interp_top_and_random"] != ""
               and half[n]["val_loss"] != final[n]["val_loss"] for n in final)
    point = out / "runs" / "gpt-relu-s0" / "track" / "step15"
    assert all((point / name).exists() for name in ("ckpt.pt", "eval.json", "interp/scores.jsonl", "result.json"))
    # train.schedule = "wsd": the tracked point is an annealed model, its cooldown (steps 12-15) in metrics.jsonl
    lines = [json.loads(line) for line in (out / "runs" / "gpt-relu-s0" / "metrics.jsonl").read_text().splitlines()]
    branch = [line for line in lines if "cooldown_start" in line]
    assert [(b["step"], b["cooldown_start"], b["lr"]) for b in branch] == [(15, 12, pytest.approx(2e-4))]
    assert json.loads((point / "result.json").read_text())["val_loss"] == pytest.approx(branch[0]["val_loss"])
    # the report opens with the declared answers (answers.csv); one seed decides nothing
    assert report.index("## Answers") < report.index("## What was run") < report.index("## Effects")
    with open(out / "answers.csv") as f:
        answers = list(csv.DictReader(f))
    declared = [a for a in answers if a["family"] != "exploratory"]
    assert len(declared) == 8 + 5 and {a["decision"] for a in declared} == {"no test"}
    assert not {a["metric"] for a in answers} & {"bpb", "l0"}
    along = report[report.index("## Do the answers hold along training?"):report.index("## Effects")]
    assert "For 10 declared answers" in along and "10 undetermined" in along  # one seed: no test of change
    assert (out / "plots" / "track_loss.png").is_file()

    # a rerun finds every run finished: nothing is trained or scored again
    before = _kept(out)
    proc = cratelab("ablate", CONFIG, "--out", out, "--smoke", "--set", "sweep.seeds=[0]", cache=tmp_path / "cache")
    assert proc.returncode == 0 and "7 already finished" in proc.stderr
    assert before == _kept(out)
    assert json.loads((out / "runs" / "gpt-relu-s0" / "result.json").read_text())["model.arch"] == "gpt"

    proc = cratelab("report", out, cache=tmp_path / "cache")
    assert proc.returncode == 0 and "report.md" in proc.stdout

    # issue 14: other settings are refused before anything runs; a damaged result.json is a run to redo
    results_before = (out / "results.csv").read_text()
    proc = cratelab("ablate", CONFIG, "--out", out, "--smoke", "--set", "sweep.seeds=[0]", "--set", "model.n_embd=64",
                    cache=tmp_path / "cache")
    assert proc.returncode == 2 and "model.n_embd 32 -> 64" in proc.stderr
    assert before == _kept(out)
    result = out / "runs" / "gpt-relu-s0" / "result.json"
    result.write_text(result.read_text()[:40])
    proc = cratelab("report", out, cache=tmp_path / "cache")
    assert proc.returncode == 2 and f"error: {result}: damaged (not valid JSON)" in proc.stderr
    proc = cratelab("ablate", CONFIG, "--out", out, "--smoke", "--set", "sweep.seeds=[0]", cache=tmp_path / "cache")
    assert proc.returncode == 0 and "6 already finished" in proc.stderr, proc.stderr
    assert f"{result}: damaged (not valid JSON): the run is redone" in proc.stderr
    assert before == _kept(out)  # resumed at its end
    assert json.loads(result.read_text())["model.arch"] == "gpt"
    assert _without_train_s(out / "results.csv") == _without_train_s_text(results_before)
    _the_documented_archive_reports_and_resumes(out, tmp_path)


def documented_archive_command() -> str:
    """docs/commands.md's `tar` line that archives a sweep folder without its checkpoints, records and cards."""
    text = (ROOT / "docs" / "commands.md").read_text().replace("\\\n", " ")
    return next(line.strip() for line in text.splitlines() if line.startswith("tar c"))


def _the_documented_archive_reports_and_resumes(out, tmp_path):
    """The documented archive of a finished sweep: no checkpoint, records or cards in it; unpacked elsewhere,
    `cratelab report` writes the same answers and results, and `cratelab ablate` resumes a run taken out of it."""
    work = tmp_path / "archive"
    (work / "runs").mkdir(parents=True)
    out.rename(work / "runs" / "seed-ablation")
    out = work / "runs" / "seed-ablation"
    subprocess.run(documented_archive_command(), shell=True, cwd=work, check=True)
    archive = next(work.glob("*.tar.xz"))
    listed = subprocess.run(["tar", "tJf", archive], capture_output=True, text=True, check=True).stdout.split()
    left_out = r"(^|/)(ckpt\.pt|records|cards|simulations\.jsonl|scores\.csv)(/|$)"
    assert not [name for name in listed if re.search(left_out, name)]
    assert "seed-ablation/runs/gpt-relu-s0/track/step15/interp/scores.jsonl" in listed
    unpacked = tmp_path / "elsewhere"
    unpacked.mkdir()
    subprocess.run(["tar", "xJf", archive, "-C", unpacked], check=True)
    copy = unpacked / "seed-ablation"
    proc = cratelab("report", copy, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    for name in ("answers.csv", "results.csv", "results_layers.csv", "results_track.csv"):
        assert (copy / name).read_text() == (out / name).read_text(), name
    shutil.rmtree(copy / "runs" / "gpt-relu-s0")
    proc = cratelab("ablate", CONFIG, "--out", copy, "--smoke", "--set", "sweep.seeds=[0]", cache=tmp_path / "cache")
    assert proc.returncode == 0 and "6 already finished" in proc.stderr, proc.stderr
    assert _without_train_s(copy / "results.csv") == _without_train_s(out / "results.csv")


def test_a_sweep_folder_may_grow_its_grid_but_not_change_its_runs(tmp_path):
    base, sweep = load_sweep_config(CONFIG, smoke=True)
    save_sweep(base, sweep, tmp_path)
    check_sweep_unchanged(*load_sweep_config(CONFIG, ["sweep.seeds=[0, 1, 2]", "sweep.workers=2", "train.threads=1"],
                                             smoke=True), tmp_path)
    # levels may be added or dropped: each run's config and name depend on its own cell alone
    check_sweep_unchanged(*load_sweep_config(CONFIG, ["sweep.factors.model.ista_lambda=[0.1, 0.4]"], smoke=True),
                          tmp_path)
    changed, changed_sweep = load_sweep_config(CONFIG, ["train.lr=0.01", "interp.neurons=8"], smoke=True)
    with pytest.raises(CratelabError, match=r"interp.neurons 16 -> 8; train.lr 0.002 -> 0.01\)"):
        check_sweep_unchanged(changed, changed_sweep, tmp_path)
    for overrides, change in ((["sweep.factors.train.lr=[0.001, 0.002]"], "sweep.factors \\['model.ista_lambda'"),
                              (['sweep.reference.model.qkv="separate"'], "sweep.reference.model.qkv"),
                              (['sweep.arms=[{name = "gpt-relu", set = {"model.arch" = "gpt", "model.mlp_act" = '
                                '"gelu"}}]'], "sweep.arms")):
        with pytest.raises(CratelabError, match=change):
            check_sweep_unchanged(*load_sweep_config(CONFIG, overrides, smoke=True), tmp_path)


@pytest.mark.parametrize("text, problem", [("", "not valid JSON"), ("[1]", "a JSON list"),
                                           ('{"name": "x"}', "no 'condition', 'seed', 'layers'"),
                                           ('{"name": "x", "condition": "gpt-relu", "seed": 0, "layers": 3}',
                                            "'layers' is not a list")])
def test_a_damaged_result_json_is_an_unfinished_run(tmp_path, text, problem):
    (tmp_path / "result.json").write_text(text)
    row, damage = read_result(tmp_path / "result.json")
    assert row is None and damage.startswith(f"{tmp_path / 'result.json'}: damaged") and problem in damage
    assert read_result(tmp_path / "missing.json") == (None, None)


def test_a_runs_log_is_written_line_by_line_while_it_runs(tmp_path, monkeypatch):
    """`tail -f runs/NAME/log.txt` follows a run: each line reaches the file when it is printed."""
    from cratelab import layout
    from cratelab.sweep import run as sweep_run
    from cratelab.sweep.design import Condition, PlannedRun

    log = layout.run_folder(tmp_path, "r") / layout.RUN_LOG
    seen = []

    def printing_run(run, out_dir, threads):
        print("step 250/4,000 | val_loss 5.2")
        seen.append(log.read_text())
        return {}

    monkeypatch.setattr(sweep_run, "run_one", printing_run)
    sweep_run.run_logged(PlannedRun("r", Condition("r"), None, {}), tmp_path, 1)
    assert seen == ["step 250/4,000 | val_loss 5.2\n"]


def _gpu_of_this_worker() -> tuple[int, str | None]:
    time.sleep(0.3)  # long enough for the other worker to take a task too
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_sweep_workers_are_spread_over_the_gpus(monkeypatch):
    """On a machine of several GPUs, worker k of the sweep sees only GPU k mod G (the runs' "cuda" is then that
    GPU); a run that names its GPU (cuda:N), or runs on the CPU, keeps every worker on what it names."""
    base, sweep = load_sweep_config(CONFIG, ["train.device=\"cuda\"", "interp.device=\"cpu\""], smoke=True)
    runs = expand(base, sweep)
    monkeypatch.setattr(sweep_execute, "visible_gpus", lambda: ["0", "1"])
    assert worker_gpus(runs, 3) == ["0", "1", "0"]
    pinned = [dataclasses.replace(r, config=dataclasses.replace(
        r.config, train=dataclasses.replace(r.config.train, device="cuda:1"))) for r in runs]
    cpu = [dataclasses.replace(r, config=dataclasses.replace(
        r.config, train=dataclasses.replace(r.config.train, device="cpu"))) for r in runs]
    assert worker_gpus(pinned, 3) == [] and worker_gpus(cpu, 3) == []

    with worker_pool(2, ["3", "5"]) as pool:
        seen = dict(f.result() for f in [pool.submit(_gpu_of_this_worker) for _ in range(4)])
    assert set(seen.values()) <= {"3", "5"} and len(set(seen.values())) == len(seen)  # one GPU a worker
