"""`interpret`: the run folder, its resume after a real SIGKILL, the summary, and the CLI's errors."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from cratelab.checkpoint import load_checkpoint
from cratelab.config import ConfigError, config_from_dict
from cratelab.interp.config import InterpConfig, RecordConfig
from cratelab.errors import CratelabError
from cratelab.interp import PROTOCOLS
from cratelab.interp.run import interpret, neuron_subset
from cratelab.io import read_jsonl

from .conftest import DEAD

ICFG = InterpConfig(tokens=3072, records=RecordConfig(window=16), batch_size=8, device="cpu", bootstrap=200)


def lines(out):
    return sorted((out / "scores.jsonl").read_text().splitlines())


@pytest.fixture(scope="session")
def reference(checkpoint, tmp_path_factory):
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    summary = interpret(checkpoint, out, ICFG, progress=False)
    return out, summary


def test_run_folder_layout_and_contents(reference):
    out, summary = reference
    for name in ("run.json", "config.toml", "scores.jsonl", "simulations.jsonl", "scores.csv", "summary.json",
                 "summary.md", "cards/index.html", "records/layer0/records.json", "records/layer1/meta.json"):
        assert (out / name).is_file(), name
    rows = read_jsonl(out / "scores.jsonl")
    assert len(rows) == 2 * 32 * 3  # every (layer, neuron, protocol) once
    assert len({(r["layer"], r["neuron"], r["protocol"]) for r in rows}) == len(rows)
    assert set(rows[0]) == {"layer", "neuron", "protocol", "method", "score", "explanation", "firing_rate",
                            "max_activation", "reason", "simulation", "explainer_model", "simulator_model", "failure",
                            "degenerate"}
    assert {(r["simulation"], r["explainer_model"], r["simulator_model"]) for r in rows} == {("token-pattern",) * 3}
    meta = json.loads((out / "records/layer1/meta.json").read_text())
    assert meta["seed"] == 0 and len(meta["checkpoint_sha256"]) == 64 and len(meta["data_sha256"]) == 64
    cfg = config_from_dict(__import__("tomllib").loads((out / "config.toml").read_text()))
    assert cfg.interp == ICFG and cfg.model.n_embd == 8
    csv_lines = (out / "scores.csv").read_text().splitlines()
    assert csv_lines[0].startswith("layer,neuron,protocol,method,score") and len(csv_lines) == len(rows) + 1
    assert summary["n_tokens"] == 3072 and summary["step"] == 7 and json.loads((out / "summary.json").read_text())


def test_summary_counts_unscorable_neurons_per_layer(reference):
    out, summary = reference
    rows = read_jsonl(out / "scores.jsonl")
    dead = [r for r in rows if r["layer"] == 1 and r["neuron"] in DEAD]
    assert len(dead) == 6 and all(r["score"] is None and "constant" in r["reason"] for r in dead)
    assert all(r["firing_rate"] == 0 and r["failure"] == "unscorable" for r in dead)
    assert len(summary["layers"]) == 6  # 2 layers x 3 protocols
    for s in summary["layers"]:
        mine = [r for r in rows if r["layer"] == s["layer"] and r["protocol"] == s["protocol"]]
        assert s["n_neurons"] == 32 and s["n_unscorable"] == sum(r["score"] is None for r in mine)
        assert sum(s["unscorable_reasons"].values()) == s["n_unscorable"]
        assert s["ci_low"] <= s["mean"] <= s["ci_high"]
        if s["layer"] == 1:
            dead_reason = next(r["reason"] for r in dead if r["protocol"] == s["protocol"])
            assert s["unscorable_reasons"][dead_reason] >= len(DEAD)
    for protocol, model in summary["model"].items():
        means = [s["mean"] for s in summary["layers"] if s["protocol"] == protocol]
        assert model["mean"] == pytest.approx(sum(means) / 2) and model["n_layers"] == 2
    md = (out / "summary.md").read_text()
    assert "## Unscorable neurons" in md and "| 1 | random-only |" in md


KILLER = textwrap.dedent("""
    import os, signal, sys
    from cratelab.config import config_from_dict
    from cratelab.interp import TokenPatternExplainer, TokenPatternSimulator
    from cratelab.interp import run

    calls = 0

    class Killer(TokenPatternExplainer):
        def explain(self, records):
            global calls
            calls += 1
            if calls == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)  # a hard kill in the middle of a neuron
            return super().explain(records)

    run.make_backend = lambda method, *args, **options: (Killer(), TokenPatternSimulator())
    run.interpret(sys.argv[1], sys.argv[2], config_from_dict({"interp": eval(sys.argv[4])}).interp, progress=False)
""")


def test_a_killed_run_resumes_with_no_neuron_lost_or_scored_twice(checkpoint, reference, tmp_path):
    out = tmp_path / "run"
    settings = repr(dataclasses.asdict(ICFG))
    proc = subprocess.run([sys.executable, "-c", KILLER, str(checkpoint), str(out), "28", settings],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (out / "summary.json").exists()
    done = read_jsonl(out / "scores.jsonl")
    # 13 neurons x 3 protocols, explained twice each (top-and-random and random-only share an explanation);
    # the 14th was cut off in its second explanation
    assert len(done) == 39
    for name in ("scores.jsonl", "simulations.jsonl"):  # and a crash in the middle of writing a line
        with open(out / name, "a") as f:
            f.write('{"layer": 0, "neuron": 13, "protocol": "top-and-ra')

    interpret(checkpoint, out, ICFG, progress=False)
    assert lines(out) == lines(reference[0])  # the same scores as the uninterrupted run, each once
    assert json.loads((out / "summary.json").read_text())["layers"] == reference[1]["layers"]
    before = (out / "scores.jsonl").read_bytes()
    interpret(checkpoint, out, ICFG, progress=False)  # a finished run: nothing is redone
    assert (out / "scores.jsonl").read_bytes() == before


def test_threads_give_the_same_scores(checkpoint, reference, tmp_path):
    out = tmp_path / "run"
    interpret(checkpoint, out, dataclasses.replace(ICFG, workers=3, cards=False), progress=False)
    assert lines(out) == lines(reference[0])


def test_a_rerun_with_other_settings_is_refused(checkpoint, reference):
    out, _ = reference
    with pytest.raises(CratelabError, match="interp.seed = 0, this one has 1"):
        interpret(checkpoint, out, dataclasses.replace(ICFG, seed=1), progress=False)
    interpret(checkpoint, out, dataclasses.replace(ICFG, workers=2, batch_size=3), progress=False)  # speed only


def test_neuron_subset_is_seeded_and_per_layer():
    cfg = InterpConfig(neurons=5, seed=1)
    assert neuron_subset(cfg, 0, 32) == neuron_subset(cfg, 0, 32) != neuron_subset(cfg, 1, 32)
    assert len(neuron_subset(cfg, 0, 32)) == 5 and neuron_subset(InterpConfig(), 0, 32) == list(range(32))
    assert neuron_subset(InterpConfig(neurons=40), 0, 32) == list(range(32))


@pytest.mark.parametrize("field,value,message", [
    ("protocols", "top-and-random,bogus", "interp.protocols"),
    ("method", "gpt9", "interp.method"),
    ("layers", "0,x", "interp.layers"),
    ("neurons", -1, "interp.neurons"),
    ("tokens", 0, "interp.tokens"),
    ("records", {"n_top": 20}, "interp.records.n_top: protocol 'anthropic' needs at least 35"),
    ("records", {"snippet": 9}, "interp.records.snippet"),
    ("confidence", 1.0, "interp.confidence"),
])
def test_bad_interp_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"interp": {field: value}})


def test_config_protocol_names_are_the_scoring_protocols():
    assert InterpConfig().protocol_list() == list(PROTOCOLS)
    assert InterpConfig(layers="2, 0").layer_list(3) == [0, 2]
    with pytest.raises(ConfigError, match="layer 3 out of range"):
        InterpConfig(layers="3").layer_list(2)


def cratelab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cratelab", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CRATELAB_CACHE": "/nonexistent"}, cwd=cwd)


# the other bad inputs of `interpret` are in tests/test_bad_input.py's table (one driver process)
@pytest.mark.parametrize("args,message", [
    (["--method", "openai:"], "interp.method"),
    # refused before the records are built, so nothing is left that blocks the corrected command
    (["--method", "local:model.gguf", "--set", "interp.backend.simulation=json"],
     "interp.backend.simulation: 'json' needs an endpoint (openai:MODEL); a local model (local:model.gguf)"),
    (["--method", "local:nothing/model.gguf", "--set", "interp.records.window=16"],
     "no model directory or .gguf file at nothing/model.gguf"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(checkpoint, tmp_path, args, message):
    proc = cratelab("interpret", checkpoint, "--out", tmp_path / "out", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_missing_checkpoint(tmp_path):
    proc = cratelab("interpret", tmp_path / "nothing", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: no checkpoint at {tmp_path / 'nothing' / 'ckpt.pt'}: expected a run folder holding ckpt.pt, "
        "or that file"]


@pytest.mark.e2e
def test_cli_interpret_end_to_end(checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = cratelab("interpret", checkpoint, "--out", out, "--neurons", "4", "--layers", "1", "--protocol",
                    "anthropic", "--tokens", "2048", "--set", "interp.records.window=16", "--set", "interp.device=cpu",
                    # the local model's settings are config fields (ignored by token-pattern)
                    "--set", "interp.backend.dtype=bfloat16", "--set", "interp.backend.device=cpu",
                    "--set", "interp.backend.max_explanation_tokens=80")
    assert proc.returncode == 0, proc.stderr
    assert "anthropic" in proc.stdout and "written:" in proc.stdout
    # stderr is no terminal here: plain progress lines instead of a bar, for a log file
    assert "scoring 4 neurons (anthropic; token-pattern)" in proc.stderr
    assert re.search(r"^scoring: 4/4 neurons, \d+s elapsed, [\d.]+ (neurons/s|s/neuron)$", proc.stderr, re.M)
    rows = read_jsonl(out / "scores.jsonl")
    assert len(rows) == 4 and {r["layer"] for r in rows} == {1} and {r["protocol"] for r in rows} == {"anthropic"}
    assert len(list((out / "cards" / "layer1").glob("neuron*.html"))) == 4


def test_an_llm_run_records_how_each_row_was_simulated_and_by_which_models(checkpoint, tmp_path, monkeypatch):
    from cratelab.interp.config import BackendConfig

    from .llm_server import FakeLLM

    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CRATELAB_LLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TEST_LLM_KEY", "not-a-real-key")
    with FakeLLM(logprobs=False) as server:
        backend = BackendConfig(base_url=server.url, api_key_env="TEST_LLM_KEY", simulator_model="simulator-7b")
        icfg = dataclasses.replace(ICFG, method="openai:explainer-7b", layers="0", neurons=3,
                                   protocols="top-and-random", cards=False, backend=backend)
        summary = interpret(checkpoint, tmp_path / "run", icfg, progress=False)
        assert server.paths().count("/completions") == 1  # the probe: JSON answers for the whole run
        sent = len(server.requests)
        interpret(checkpoint, tmp_path / "run", dataclasses.replace(icfg, backend=dataclasses.replace(
            backend, concurrency=2, retries=0)), progress=False)  # endpoint options do not change results
        assert len(server.requests) == sent
    rows = read_jsonl(tmp_path / "run" / "scores.jsonl")
    assert len(rows) == 3 and {(r["simulation"], r["explainer_model"], r["simulator_model"]) for r in rows} == {
        ("json", "explainer-7b", "simulator-7b")}
    assert summary["layers"][0]["n_neurons"] == 3
    with pytest.raises(CratelabError, match="interp.backend.simulator_model"):  # a result-changing setting
        interpret(checkpoint, tmp_path / "run", dataclasses.replace(icfg, backend=dataclasses.replace(
            backend, simulator_model="other")), progress=False)


def test_protocols_that_explain_from_the_same_records_share_one_explanation():
    """top-and-random and random-only explain from the same top records: the explainer is asked once for
    both (as OpenAI's method scores one explanation twice) and the scores are those of asking it each time."""
    from cratelab.interp import build_records, get_protocol, make_backend
    from cratelab.interp.run import score_protocols
    from cratelab.interp.score import score_neuron

    from .synthetic import EOT, planted_stream

    tokens, acts = planted_stream(n_rows=48)
    records = build_records(tokens, acts, eot_token=EOT)
    explainer, simulator = make_backend("token-pattern")

    class Counting:
        model = explainer.model

        def __init__(self):
            self.calls = 0

        def explain(self, records):
            self.calls += 1
            return explainer.explain(records)

    protocols = [get_protocol(p) for p in ("top-and-random", "random-only", "anthropic")]
    for h in range(records.n_neurons):
        neuron, counting = records.neuron(h), Counting()
        shared = [score for score, _ in score_protocols(neuron, protocols, counting, simulator)]
        assert counting.calls == 2, h
        each = [score_neuron(neuron, p, explainer, simulator) for p in protocols]
        assert shared == each


def test_a_folder_made_before_a_setting_existed_is_refused_naming_it(checkpoint, reference, tmp_path):
    """run.json of an interpret folder made before interp.records.quantiles existed: no format of an
    unreleased version is read; the refusal names the setting (and nothing in the folder changes)."""
    out = tmp_path / "old"
    shutil.copytree(reference[0], out)
    identity = json.loads((out / "run.json").read_text())
    del identity["interp"]["records.quantiles"]
    (out / "run.json").write_text(json.dumps(identity))
    before = lines(out)
    with pytest.raises(CratelabError, match=r"made with no interp.records.quantiles \(a folder of an earlier "
                                            r"cratelab\), this one has 'exact'"):
        interpret(checkpoint, out, ICFG, progress=False)
    assert lines(out) == before


def test_a_score_row_of_another_format_is_refused_naming_the_line(checkpoint, reference, tmp_path):
    """A scores.jsonl row without a field of the schema (ROW_FIELDS: here 'failure', which rows once lacked) is
    refused with the file and the line, before anything is scored."""
    out = tmp_path / "old"
    shutil.copytree(reference[0], out)
    rows = read_jsonl(out / "scores.jsonl")
    rows[1].pop("failure")
    (out / "scores.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(CratelabError, match=r"scores.jsonl: line 2 has no 'failure' \(a score row of another format"):
        interpret(checkpoint, out, ICFG, progress=False)


@pytest.mark.parametrize("backend,message", [
    ({"dtype": "int4"}, "interp.backend.dtype: must be one of 'float32', 'bfloat16', 'float16', got 'int4'"),
    ({"device": "tpu"}, "interp.backend.device: must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'tpu'"),
    ({"max_explanation_tokens": 0}, "interp.backend.max_explanation_tokens: must be >= 1, got 0"),
    ({"simulation": "json"}, "interp.backend.simulation: 'json' needs an endpoint"),  # with a local model
])
def test_local_model_settings_are_config_fields_checked_by_name(backend, message):
    cfg = config_from_dict({"interp": {"method": "local:m.gguf", "backend": {
        "dtype": "float16", "device": "cpu", "max_explanation_tokens": 100, "simulation": "logprobs"}}})
    assert (cfg.interp.backend.dtype, cfg.interp.backend.device, cfg.interp.backend.max_explanation_tokens) == (
        "float16", "cpu", 100)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({"interp": {"method": "local:m.gguf", "backend": backend}})


def test_a_start_that_ends_before_any_score_does_not_block_another_setting(checkpoint, reference, tmp_path):
    """A run killed (or refused) after its records were built and before a neuron was scored: a rerun with other
    scoring settings keeps the records and scores; once neurons are scored, the settings are the folder's."""
    out = tmp_path / "run"
    killed = dataclasses.replace(ICFG, protocols="anthropic", neurons=4)
    proc = subprocess.run([sys.executable, "-c", KILLER, str(checkpoint), str(out), "1",
                           repr(dataclasses.asdict(killed))], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / "records" / "layer1" / "meta.json").is_file() and not read_jsonl(out / "scores.jsonl")
    summary = interpret(checkpoint, out, ICFG, progress=False)
    assert "records_s" not in summary["timing"]  # the records were kept, not built again
    assert lines(out) == lines(reference[0])
    with pytest.raises(CratelabError, match="interp.neurons = 0, this one has 4"):
        interpret(checkpoint, out, dataclasses.replace(ICFG, neurons=4), progress=False)


def test_an_endpoint_without_a_key_is_refused_before_the_records(checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(CratelabError, match="OpenAI's API needs a key"):
        interpret(checkpoint, tmp_path / "run", dataclasses.replace(ICFG, method="openai:gpt-x"), progress=False)
    assert not (tmp_path / "run" / "records").exists()


def test_a_subset_of_the_folders_protocols_keeps_what_is_done(checkpoint, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    rows = (out / "scores.jsonl").read_text().splitlines()
    cut = [i for i, line in enumerate(rows) if '"protocol": "anthropic"' in line][-5:]  # not scored yet
    (out / "scores.jsonl").write_text("".join(line + "\n" for i, line in enumerate(rows) if i not in cut))
    summary = interpret(checkpoint, out, dataclasses.replace(ICFG, protocols="anthropic"), progress=False)
    assert summary["protocols"] == ["anthropic"] and {s["protocol"] for s in summary["layers"]} == {"anthropic"}
    assert lines(out) == lines(reference[0])  # the 5 missing neurons scored, the other protocols' rows kept
    interpret(checkpoint, out, ICFG, progress=False)  # and all three again: nothing to do
    assert lines(out) == lines(reference[0])

    narrow = tmp_path / "narrow"  # protocols the folder has not: still another setting
    interpret(checkpoint, narrow, dataclasses.replace(ICFG, protocols="anthropic", cards=False), progress=False)
    with pytest.raises(CratelabError, match=re.escape(
            "holds a run made with interp.protocols = 'anthropic', this one has "
            "'top-and-random,random-only,anthropic': use another --out (or delete that folder) to start afresh "
            "(a subset of its protocols is accepted)")):
        interpret(checkpoint, narrow, ICFG, progress=False)


def test_a_run_trained_under_another_cache_finds_its_data(tmp_path, monkeypatch):
    """data.cache_dir = "" follows $CRATELAB_CACHE: interpret reads the data where the run's data.json says the run
    was trained, not in the cache of the moment; when that cache is gone, the error names both and the fix."""
    from cratelab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from cratelab.train import train

    trained_cache, now_cache = tmp_path / "trained-cache", tmp_path / "now-cache"
    monkeypatch.setenv("CRATELAB_CACHE", str(trained_cache))
    cfg = RunConfig(model=ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=32),
                    data=DataConfig(corpus="fixture", bpe_vocab_size=300),
                    train=TrainConfig(max_steps=2, batch_size=2, eval_interval=2, warmup_steps=1, device="cpu"))
    cfg.eval.tokens = 256
    train(cfg, tmp_path / "run", progress=False)
    trained = json.loads((tmp_path / "run" / "data.json").read_text())

    monkeypatch.setenv("CRATELAB_CACHE", str(now_cache))
    icfg = dataclasses.replace(ICFG, tokens=1024, cards=False, protocols="anthropic")
    interpret(tmp_path / "run", tmp_path / "interp", icfg, progress=False)
    assert not now_cache.exists()  # nothing built again in the cache of the moment
    meta = json.loads((tmp_path / "interp" / "records" / "layer0" / "meta.json").read_text())
    assert meta["data_sha256"] == trained["val_sha256"]

    trained_cache.rename(tmp_path / "moved")  # the cache the run was trained with is gone
    ckpt = load_checkpoint(tmp_path / "run")
    ckpt.config.data.corpus = "default"  # a corpus that lives in the cache (`cratelab prepare`)
    with pytest.raises(CratelabError, match=re.escape(
            f"(the run was trained with the data cache {trained_cache}, which is not there; this looked in "
            f"{now_cache}: set CRATELAB_CACHE or --set data.cache_dir=PATH to the cache the run was trained with)")):
        interpret(ckpt, tmp_path / "interp2", icfg, progress=False)


def test_a_finished_folder_reruns_without_its_backend(checkpoint, tmp_path):
    """Rewriting the summary and cards of a finished LLM run needs neither its model nor its key."""
    out = tmp_path / "run"
    icfg = dataclasses.replace(ICFG, neurons=2, protocols="anthropic", cards=False)
    interpret(checkpoint, out, icfg, progress=False)
    identity = json.loads((out / "run.json").read_text())
    identity["interp"]["method"] = "local:gone/model.gguf"  # as if it was scored by a model since moved
    (out / "run.json").write_text(json.dumps(identity))
    interpret(checkpoint, out, dataclasses.replace(icfg, method="local:gone/model.gguf"), progress=False)
