"""configs/seed-ablation-confirm.toml, the confirmatory study of the seed question: its design and declared
questions, and its whole pipeline with --smoke (every condition, every tracked point, answers.csv)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cratelab.config import load_sweep_config
from cratelab.data.shards import run_data_identity
from cratelab.report.decide import check_questions
from cratelab.sweep.design import expand, tracked_steps
from cratelab.sweep.results import check_sweep_unchanged, read_result

CONFIRM, LONG = "configs/seed-ablation-confirm.toml", "configs/seed-ablation-long.toml"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "confirm"  # the study's committed results


def test_the_confirmatory_study_is_the_long_studys_runs_on_new_seeds_with_declared_questions():
    base, sweep = load_sweep_config(CONFIRM)
    long_base, long_sweep = load_sweep_config(LONG)
    assert base.to_dict() == long_base.to_dict()  # model, data, training and scoring as the long study
    assert not set(sweep.seeds) & set(long_sweep.seeds) and len(sweep.seeds) == 8  # new seeds only
    runs = expand(base, sweep)
    cells = {(r.config.model.arch, r.config.model.qkv, r.config.model.ista_lambda) for r in runs}
    assert cells == {("crate", "shared", 0.05), ("crate", "shared", 0.1), ("crate", "shared", 0.2),
                     ("crate", "separate", 0.1), ("gpt", "shared", 0.1)} and len(runs) == 40
    assert base.train.schedule == "wsd"
    assert tracked_steps(sweep.track, base.train.max_steps) == {500: 0.125, 1000: 0.25, 2000: 0.5}
    check_questions(sweep)
    questions = sweep.questions
    assert len(questions.primary) == 5 and len(questions.secondary) == 5
    assert sum(2 if q.test == "both" else 1 for q in questions.primary) == 8  # the primary family's tests


@pytest.mark.e2e
def test_the_confirmatory_study_runs_with_smoke(tmp_path):
    out = tmp_path / "confirm"
    # one seed of the smoke run: every condition, every tracked point and every declared answer, at half the cost
    proc = subprocess.run([sys.executable, "-m", "cratelab", "ablate", CONFIRM, "--smoke", "--out", str(out),
                           "--workers", "1", "--set", "sweep.seeds=[3]"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "CRATELAB_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    with open(out / "answers.csv") as f:
        answers = list(csv.DictReader(f))
    declared = {(a["family"], a["effect"], a["metric"], a["test"]) for a in answers if a["family"] != "exploratory"}
    assert ("primary", "qkv-separate", "interp_top_and_random", "difference") in declared and len(declared) == 13
    assert all(a["n_seeds"] == "1" and a["decision"] == "no test" for a in answers if a["family"] != "exploratory")
    report = (out / "report.md").read_text().replace("\\", "")
    assert report.index("## Answers") < report.index("## Effects")
    assert "For 10 declared answers" in report  # the verdicts along training
    with open(out / "results_track.csv") as f:
        assert {r["track"] for r in csv.DictReader(f)} == {"0.125", "0.25", "0.5", "1.0"}


def test_the_committed_runs_are_finished_runs_of_the_declared_study(tmp_path):
    """docs/results/confirm/runs/: one archive a finished run (docs/commands.md's exclusions), the study's
    record and what it resumes from on a machine whose folders did not outlive a session. Each unpacks into
    the run folder of that name, finished (a valid result.json with every tracked point), without checkpoints,
    trained on the same data as the others, under the sweep.toml of configs/seed-ablation-confirm.toml."""
    base, sweep = load_sweep_config(CONFIRM)
    assert (RESULTS / "sweep.toml").is_file()
    check_sweep_unchanged(base, sweep, RESULTS)  # the committed sweep.toml is the declared study's
    planned = {run.name for run in expand(base, sweep)}
    archives = sorted((RESULTS / "runs").glob("*.tar.xz"))
    assert archives and len(archives) <= len(planned)
    for archive in archives:
        subprocess.run(["tar", "xJf", archive, "-C", tmp_path], check=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(a.name.removesuffix(".tar.xz") for a in archives) and set(names) <= planned
    hashes = set()
    for name in names:
        row, damage = read_result(tmp_path / name / "result.json")
        assert row is not None and damage is None, (name, damage)
        assert [p["track"] for p in row["tracked"]] == [0.125, 0.25, 0.5, 1.0] and row["tokens"] == 8_192_000
        assert not list((tmp_path / name).rglob("ckpt.pt"))
        hashes.add(run_data_identity(tmp_path / name)["train_sha256"])
    assert len(hashes) == 1
