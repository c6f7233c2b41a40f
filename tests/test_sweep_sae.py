"""The sweep's SAE arms (sweep/sae_arm.py): planning, validation, and a smoke sweep CRATE / GPT / GPT + SAE."""

import csv
import json
import os
import subprocess
import sys

import pytest
import tomli_w

from cratelab.config import ConfigError, load_sweep_config
from cratelab.layout import SAE_COLUMNS, SPARSITY_COLUMNS, result_columns
from cratelab.sweep.design import expand
from cratelab.sweep.execute import print_commands
from cratelab.sweep.results import check_sweep_unchanged, result_row, sweep_values
from cratelab.sweep.sae_arm import SAE_EVAL_KEYS

CONFIG = "configs/seed-ablation-sae.toml"
SMALL = ["sweep.seeds=[0]", "sweep.factors.model.ista_lambda=[0.1]", 'sweep.factors.model.qkv=["shared"]',
         "sweep.questions={}"]  # the seed ablation's questions are about effects these runs do not have
TINY_SAE = ('sweep.arms=[{ name = "gpt-relu", set = { "model.arch" = "gpt" } }, { name = "gpt+sae", of = "gpt-relu", '
            'sae = { expansion_factor = 4, tokens = 4096, batch_size = 256, buffer_tokens = 2048, '
            'l1_coefficient = 1.0 } }]')


def test_the_sae_arm_builds_on_the_gpt_runs_of_its_seed():
    base, sweep = load_sweep_config(CONFIG)
    runs = {r.name: r for r in expand(base, sweep)}
    assert len(runs) == 24
    sae_run = runs["gpt+sae-s1"]
    assert sae_run.base == "gpt-relu-s1" and sae_run.config.model == runs["gpt-relu-s1"].config.model
    assert sae_run.sae.seed == 1 and sae_run.sae.expansion_factor == 16 and sae_run.sae.device == "cpu"
    # evaluated on the held-out tokens its base run's val_loss is
    assert sae_run.sae.eval_tokens == runs["gpt-relu-s1"].config.eval.tokens
    # as many features scored per layer as the GPT run scores neurons (all 512 of them)
    assert runs["gpt-relu-s1"].config.interp.neurons == 0 and sae_run.config.interp.neurons == 512
    assert all(not r.base for name, r in runs.items() if not name.startswith("gpt+sae"))


def test_the_columns_the_sae_arm_fills_are_the_layout_s():
    assert set(SAE_EVAL_KEYS) == set(SAE_COLUMNS)


def test_one_row_builder_for_neurons_and_sae_features():
    """A layer's row holds its measurement and scores; the run's columns are the means over layers (of the
    layers with a finite value), the unscorable units summed; the SAE columns only where a layer has them."""
    columns = {"name": "r-s0", "condition": "r", "seed": 0}
    scores = {(0, "top-and-random"): {"mean": 0.2, "n_unscorable": 1},
              (1, "top-and-random"): {"mean": 0.4, "n_unscorable": 2}}
    layers = [{"layer": 0, "zero_frac": 0.5, "dictionary_norm": 1.0},
              {"layer": 1, "zero_frac": 0.7, "dictionary_norm": 2.0}]
    row = result_row(columns, {"val_loss": 3.0}, layers, scores)
    assert row["zero_frac"] == pytest.approx(0.6) and row["interp_top_and_random"] == pytest.approx(0.3)
    assert row["interp_anthropic"] is None and row["unscorable_scores"] == 3 and "sae_d" not in row
    assert row["layers"][1] == columns | layers[1] | {"interp_top_and_random": 0.4, "unscorable_top_and_random": 2,
                                                       "interp_random_only": None, "unscorable_random_only": None,
                                                       "interp_anthropic": None, "unscorable_anthropic": None}
    sae_layers = [layer | {"sae_d": 64, "sae_fvu": value} for layer, value in zip(layers, (0.1, float("nan")))]
    assert result_row(columns, {}, sae_layers, scores)["sae_fvu"] == pytest.approx(0.1)


def test_a_crate_sae_arm_builds_on_the_reference(tmp_path):
    arms = ('sweep.arms=[{ name = "crate+sae", of = "reference", set = { "interp.neurons" = 8 } }]')
    base, sweep = load_sweep_config(CONFIG, [*SMALL, arms])
    runs = {r.name: r for r in expand(base, sweep)}
    assert runs["crate+sae-s0"].base == "ista_lambda=0.1-qkv=shared-s0"
    assert runs["crate+sae-s0"].config.interp.neurons == 8


@pytest.mark.parametrize("arms,field", [
    ('[{ name = "x", of = "gpt" }]', "sweep.arms[0].of"),
    ('[{ name = "a", of = "reference" }, { name = "b", of = "a" }]', "sweep.arms[1].of"),
    ('[{ name = "x", of = "reference", sae = { widht = 3 } }]', "sweep.arms[0].sae.widht"),
    ('[{ name = "x", of = "reference", sae = { expansion_factor = 0 } }]', "sweep.arms[0].sae.expansion_factor"),
    ('[{ name = "x", of = "reference", sae = { seed = 3 } }]', "sweep.arms[0].sae.seed"),
    ('[{ name = "x", of = "reference", sae = { eval_tokens = 64 } }]', "sweep.arms[0].sae.eval_tokens"),
    ('[{ name = "x", of = "reference", sae = 3 }]', "sweep.arms[0].sae"),
    ('[{ name = "x", of = "reference", set = { "model.n_embd" = 64 } }]', "sweep.arms[0].set.model.n_embd"),
    ('[{ name = "x", set = { "model.arch" = "gpt" }, sae = { tokens = 8 } }]', "sweep.arms[0].sae"),
    ('[{ name = "reference", set = { "model.arch" = "gpt" } }]', "sweep.arms[0].name"),
])
def test_bad_sae_arms_name_the_field(arms, field):
    with pytest.raises(ConfigError) as err:
        expand(*load_sweep_config(CONFIG, [f"sweep.arms={arms}"]))
    assert err.value.field == field


def test_a_sweep_toml_whose_arms_hold_name_and_set_only_resumes(tmp_path):
    """A trained arm written without `of` and `sae` (as sweeps wrote it before SAE arms) is read with their defaults
    (check_sweep_unchanged reads sweep.toml through load_sweep_config), so it is the same sweep."""
    base, sweep = load_sweep_config("configs/seed-ablation.toml")
    values = sweep_values(base, sweep)
    values["sweep"]["arms"] = [{"name": arm.name, "set": arm.set} for arm in sweep.arms]
    (tmp_path / "sweep.toml").write_text(tomli_w.dumps(values))
    check_sweep_unchanged(base, sweep, tmp_path)
    with pytest.raises(Exception, match="sweep.arms"):  # adding an SAE arm is another sweep
        check_sweep_unchanged(*load_sweep_config(CONFIG), tmp_path)


def test_scheduled_commands_say_what_an_sae_run_waits_for(tmp_path, capsys):
    base, sweep = load_sweep_config(CONFIG, SMALL)
    print_commands(CONFIG, tmp_path, [], False, expand(base, sweep))
    line = next(line for line in capsys.readouterr().out.splitlines() if "gpt+sae-s0" in line)
    assert line.endswith("# after gpt-relu-s0")


def cratelab(*args, cache):
    env = {**os.environ, "CRATELAB_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "cratelab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_a_bad_sae_arm_is_one_line_exit_2_before_anything_runs(tmp_path):
    proc = cratelab("ablate", CONFIG, "--out", tmp_path / "out", "--set",
                    'sweep.arms=[{ name = "g", of = "reference", sae = { l1 = 3 } }]', cache=tmp_path / "cache")
    assert proc.returncode == 2 and proc.stderr.startswith("error: sweep.arms[0].sae.l1: unknown key")
    assert "Traceback" not in proc.stderr
    assert not [p for p in (tmp_path / "out").glob("*") if p.name != ".cratelab.lock"]  # nothing written


@pytest.mark.e2e
def test_smoke_sweep_crate_gpt_and_gpt_sae(tmp_path):
    out, cache = tmp_path / "smoke", tmp_path / "cache"
    args = ["ablate", CONFIG, "--out", out, "--smoke", *[part for s in (*SMALL, TINY_SAE) for part in ("--set", s)]]
    # an SAE run alone cannot start before its base run is finished
    proc = cratelab(*args, "--only", "gpt+sae-s0", cache=cache)
    assert proc.returncode == 2 and "builds on the run gpt-relu-s0, which is not finished" in proc.stderr

    proc = cratelab(*args, cache=cache)
    assert proc.returncode == 0, proc.stderr
    with open(out / "results.csv") as f:
        rows = {row["condition"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"ista_lambda=0.1-qkv=shared", "gpt-relu", "gpt+sae"}
    assert list(rows["gpt+sae"]) == result_columns(["model.ista_lambda", "model.qkv", "model.arch"])
    sae, gpt = rows["gpt+sae"], rows["gpt-relu"]
    # the SAE evaluation's clean loss is the GPT run's val_loss (the same held-out windows); spliced >= clean
    assert float(sae["sae_clean_loss"]) == pytest.approx(float(gpt["val_loss"]), rel=1e-4)
    assert float(sae["val_loss"]) == float(sae["sae_spliced_loss"]) >= float(sae["sae_clean_loss"])
    assert float(sae["sae_zero_loss"]) > float(sae["sae_clean_loss"])
    assert float(sae["sae_d"]) == 4 * 128 and sae["params"] == gpt["params"] and sae["tokens"] == gpt["tokens"]
    for key in SPARSITY_COLUMNS:
        assert 0 <= float(sae[key]) <= (float(sae["sae_d"]) if key == "l0" else 1)
    assert sae["interp_top_and_random"] != "" and sae["interp_anthropic"] != "" and int(sae["unscorable_scores"]) >= 0
    assert rows["gpt-relu"]["sae_d"] == ""  # the SAE columns are the SAE arm's alone
    run = out / "runs" / "gpt+sae-s0"
    assert {p.name for p in (run / "sae").iterdir()} == {"layer0", "layer1"}
    scores = [json.loads(line) for line in (run / "interp" / "scores.jsonl").read_text().splitlines()]
    assert {s["layer"] for s in scores} == {0, 1} and all(0 <= s["feature"] < 512 for s in scores)
    assert len({(s["layer"], s["neuron"]) for s in scores}) == 2 * 16  # interp.neurons of the smoke, per layer
    with open(out / "results_layers.csv") as f:
        layers = [row for row in csv.DictReader(f) if row["condition"] == "gpt+sae"]
    assert [row["layer"] for row in layers] == ["0", "1"] and all(row["sae_fvu"] != "" for row in layers)

    report = (out / "report.md").read_text().replace("\\", "")
    assert "gpt+sae − reference" in report
    assert "an SAE on each layer's interpreted neurons of the gpt-relu runs" in report
    assert "ours gpt-relu" in report  # the paper's comparison stays CRATE against the trained GPT

    # a rerun finds every run finished: nothing is trained again, no SAE either
    def stamps():
        return {p: p.stat().st_mtime_ns for p in [*out.glob("runs/*/ckpt.pt"), *out.glob("runs/*/sae/*/cfg.json")]}

    before = stamps()
    assert len(before) == 4
    proc = cratelab(*args, cache=cache)
    assert proc.returncode == 0 and "3 already finished" in proc.stderr
    assert before == stamps()
