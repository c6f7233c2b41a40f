"""The decision procedure on planted synthetic sweep folders, through the real report code: answers.csv and the
report's opening table (docs/statistics.md)."""

import csv
import dataclasses
import math
import re

import numpy as np
import pytest

from cratelab import layout
from cratelab.config import load_sweep_config
from cratelab.errors import ConfigError
from cratelab.report import write_report
from cratelab.report.decide import check_questions

from .synthetic import DESIGN, full_grid, make_sweep
from .test_report import N_BOOT, section

LAMBDA_SLOPE, QKV, GPT = "model.ista_lambda per doubling", "model.qkv = separate", "gpt-relu"


def plant(out, column, value, seed=0):
    """Rewrite one results.csv column: value(row, rng) for each run."""
    rng = np.random.default_rng(seed)
    with open(out / layout.RESULTS, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row[column] = repr(float(value(row, rng)))
    with open(out / layout.RESULTS, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def answers(out, n_seeds):
    design = dataclasses.replace(DESIGN, seeds=list(range(n_seeds)))
    write_report(out, design, n_boot=N_BOOT)
    with open(out / layout.ANSWERS, newline="") as f:
        return {(r["family"], r["effect"], r["metric"], r["test"]): r for r in csv.DictReader(f)}


def sweep_of(tmp_path, n_seeds):
    return make_sweep(tmp_path / "sweep", full_grid(seeds=range(n_seeds)), interp=False)


def separate(row):
    return row["model.qkv"] == "separate" and row["model.arch"] == "crate"


def test_a_planted_null_with_small_variance_is_equivalent_and_not_a_difference(tmp_path):
    out = plant(sweep_of(tmp_path, 3), "val_loss", lambda row, rng: 4.0 + rng.normal(0, 0.0005))
    rows = answers(out, 3)
    equivalence = rows[("primary", LAMBDA_SLOPE, "val_loss", "equivalence")]
    assert equivalence["decision"] == "equivalent" and equivalence["margin"] == "0.01"
    assert -0.01 < float(equivalence["ci_low"]) < float(equivalence["ci_high"]) < 0.01  # the interval agrees
    assert rows[("primary", LAMBDA_SLOPE, "val_loss", "difference")]["decision"] == "inconclusive"


def test_a_planted_effect_of_10_sd_at_5_seeds_differs(tmp_path):
    sd = 0.002  # of the paired difference: each run's noise is sd / sqrt(2)
    out = plant(sweep_of(tmp_path, 5), "val_loss",
                lambda row, rng: 4.0 - 10 * sd * separate(row) + rng.normal(0, sd / math.sqrt(2)))
    row = answers(out, 5)[("primary", QKV, "val_loss", "difference")]
    assert row["decision"] == "differs" and float(row["estimate"]) < 0 and float(row["ci_high"]) < 0
    assert row["n_seeds"] == "5" and row["seeds_needed"] == "" and float(row["p_adjusted"]) <= 0.05
    assert float(row["ci_level"]) == pytest.approx(1 - 0.05 / 8, abs=0.03)  # Holm's levels: at most alpha / 8 ... 1


def test_a_planted_effect_at_2_seeds_is_inconclusive_with_the_seeds_it_needs(tmp_path):
    sd = 0.002
    out = plant(sweep_of(tmp_path, 2), "val_loss",
                lambda row, rng: 4.0 - 3 * sd * separate(row) + rng.normal(0, sd / math.sqrt(2)), seed=1)
    row = answers(out, 2)[("primary", QKV, "val_loss", "difference")]
    assert row["decision"] == "inconclusive" and row["n_seeds"] == "2"
    needed, upper = int(row["seeds_needed"]), int(row["seeds_needed_sd_upper"])
    assert 3 <= needed <= upper < 10_000  # finite, and more at the SD's upper bound
    assert "seeds needed for 80% power" in (out / layout.REPORT_MD).read_text()


def test_zero_variance_is_no_test_never_a_decision(tmp_path):
    out = plant(sweep_of(tmp_path, 3), "val_loss", lambda row, rng: 4.0 - 0.05 * separate(row))
    row = answers(out, 3)[("primary", QKV, "val_loss", "difference")]
    assert row["decision"] == "no test" and row["p_adjusted"] == "" and "identical values" in row["note"]


def test_derived_metrics_are_never_tested_and_exploratory_rows_never_decide(tmp_path):
    rows = answers(plant(sweep_of(tmp_path, 3), "val_loss", lambda row, rng: 4.0 + rng.normal(0, 0.01)), 3)
    metrics = {metric for _, _, metric, _ in rows}
    assert not metrics & {"bpb", "l0", "l0_frac"} and {"val_loss", "zero_frac", "dead_frac"} <= metrics
    exploratory = [r for (family, *_), r in rows.items() if family == "exploratory"]
    assert exploratory and {r["decision"] for r in exploratory} == {"no test"}
    assert ("exploratory", "model.ista_lambda curvature", "val_loss", "difference") in rows
    families = [family for family, *_ in rows]
    assert families.count("primary") == 8 and families.count("secondary") == 5  # declared: always answered
    unscored = rows[("secondary", GPT, "interp_anthropic", "difference")]  # this sweep scored no neuron
    assert unscored["decision"] == "no test" and "no seed has a run" in unscored["note"]
    with open(tmp_path / "sweep" / layout.ANSWERS) as f:
        assert next(csv.reader(f))[:13] == ["family", "effect", "metric", "test", "margin", "estimate", "ci_low",
                                             "ci_high", "p_adjusted", "decision", "seeds_needed", "n_seeds", "tokens"]


def test_the_report_opens_with_the_answers(tmp_path):
    out = plant(sweep_of(tmp_path, 3), "val_loss", lambda row, rng: 4.0 + rng.normal(0, 0.01))
    answers(out, 3)
    md = (out / layout.REPORT_MD).read_text().replace("\\", "")
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Answers"
    opening = section(md, "Answers")
    assert "| primary | model.qkv: separate − shared on val loss (nats/token): differs from 0? |" in opening
    assert "Primary family:" in opening and "Secondary family:" in opening


@pytest.mark.parametrize("override, field, message", [
    ('sweep.questions.primary=[{effect = "model.qkv = shared", metric = "val_loss"}]', "primary[0].effect",
     "is not an effect of this sweep"),
    ('sweep.questions.primary=[{effect = "gpt-relu", metric = "bpb", margin = 0.1}]', "primary[0].metric",
     "bpb is an exact function of val_loss"),
    ('sweep.questions.primary=[{effect = "gpt-relu", metric = "loss", margin = 0.1}]', "primary[0].metric", "unknown metric"),
    ('sweep.questions.margins.loss=0.1', "margins.loss", "unknown metric"),
])
def test_questions_that_the_design_cannot_answer_are_refused_naming_the_field(override, field, message):
    _, design = load_sweep_config("configs/seed-ablation.toml", [override])
    with pytest.raises(ConfigError, match=message) as err:
        check_questions(design)
    assert err.value.field == f"sweep.questions.{field}"


@pytest.mark.parametrize("override, message", [
    ('sweep.questions.alpha=0.6', "must be in (0, 0.5)"),
    ('sweep.questions.margins.val_loss=-1', "must be > 0"),
    ('sweep.questions.primary=[{effect = "gpt-relu", metric = "val_loss", test = "maybe"}]', "must be one of"),
    ('sweep.questions.primary=[{effect = "gpt-relu", metric = "dead_frac", test = "both"}]', "no margin for dead_frac"),
    ('sweep.questions.primary=[{effect = "gpt-relu", metric = "val_loss"}, {effect = "gpt-relu", metric = "val_loss"}]',
     "twice"),
    ('sweep.questions.primary=[{effect = "gpt-relu", metric = "val_loss", colour = 1}]', "unknown key"),
    ('sweep.questions.margins="small"', "must be a table"),
])
def test_bad_question_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_sweep_config("configs/seed-ablation.toml", [override])
