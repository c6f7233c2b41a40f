"""`interpret` with an LLM endpoint (real `cratelab interpret` processes against loopback servers): the API key
reaches no file, two servers' answers never mix in one cache, a hung server fails neurons within their deadline,
and --retry-failed rescores exactly the neurons that failed for transport reasons."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from cratelab.interp import make_backend
from cratelab.io import read_jsonl

from .llm_server import FakeLLM
from .test_llm_endpoint import RECORDS

KEY = "sk-live-7d2a91c4e8b0-secret"
# a small run: layer 0, a handful of neurons, one protocol, JSON simulation (no probe request)
RUN = ["--layers", "0", "--protocol", "top-and-random", "--tokens", "3072", "--method", "openai:fake-model",
       "--set", "interp.records.window=16", "--set", "interp.device=cpu", "--set", "interp.bootstrap=100",
       "--set", "interp.backend.api_key_env=TEST_LLM_KEY", "--set", "interp.backend.simulation=json"]


@pytest.fixture
def env(monkeypatch, tmp_path):
    """The environment of the cratelab processes (and of this one, for in-process backends)."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # loopback requests must not go through a proxy
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    monkeypatch.setenv("CRATELAB_LLM_CACHE", str(tmp_path / "llm-cache"))
    return {**os.environ, "CRATELAB_CACHE": "/nonexistent"}


def interpret(env, checkpoint, out, server, *args):
    return subprocess.run([sys.executable, "-m", "cratelab", "interpret", str(checkpoint), "--out", str(out), *RUN,
                           "--set", f"interp.backend.base_url={server.url}", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def explanations(server):
    """The explanation requests the server got (not the JSON simulations)."""
    return [body for path, body, _ in server.requests if "Tokens (" not in body["messages"][-1]["content"]]


def test_a_server_that_quotes_the_key_gets_it_into_no_file(env, checkpoint, tmp_path):
    out = tmp_path / "run"
    with FakeLLM(echo_key=True) as server:
        # one neuron's explanation is refused with an error that quotes the key (into its row's reason)
        server.fault = lambda path, body: 404 if len(explanations(server)) == 2 else None
        proc = interpret(env, checkpoint, out, server, "--neurons", "3")
    assert proc.returncode == 0, proc.stderr
    assert all(headers["Authorization"] == f"Bearer {KEY}" for _, _, headers in server.requests)
    rows = read_jsonl(out / "scores.jsonl")
    assert [r["failure"] for r in rows].count("answer") == 1
    assert sum(r["explanation"].endswith("(sent with [api key removed])") for r in rows) == 2  # the echo arrived
    assert any(r["reason"] and "[api key removed]" in r["reason"] for r in rows)
    files = [p for p in [*out.rglob("*"), *(tmp_path / "llm-cache").rglob("*")] if p.is_file()]
    assert len(files) > 10 and any(p.suffix == ".html" for p in files)
    assert [str(p) for p in files if KEY.encode() in p.read_bytes()] == []
    assert KEY not in proc.stdout + proc.stderr


def test_two_servers_sharing_a_cache_each_get_their_own_answers(env, tmp_path):
    with FakeLLM(tag=" (server a)") as a, FakeLLM(tag=" (server b)") as b:
        def explain(server):
            explainer, _ = make_backend("openai:fake-model", base_url=server.url, api_key_env="TEST_LLM_KEY",
                                        cache_dir=tmp_path / "shared")
            return explainer.explain(RECORDS)

        assert explain(a) == 'the token "cat" (server a)' and explain(b) == 'the token "cat" (server b)'
        assert explain(a) == 'the token "cat" (server a)' and explain(b) == 'the token "cat" (server b)'
        assert (len(a.requests), len(b.requests)) == (1, 1)  # the second round came from the cache
    assert len(list((tmp_path / "shared").rglob("*.json"))) == 2


def test_a_hung_server_fails_each_neuron_at_its_deadline_and_the_run_goes_on(env, checkpoint, tmp_path):
    out = tmp_path / "run"
    with FakeLLM() as server:
        server.fault = lambda path, body: "hang"
        t0 = time.perf_counter()
        proc = interpret(env, checkpoint, out, server, "--neurons", "2", "--timeout-s", "0.4", "--retries", "5",
                         "--neuron-deadline-s", "1")
        wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(out / "scores.jsonl")
    assert len(rows) == 2 and {r["failure"] for r in rows} == {"transport"}
    assert {r["reason"] for r in rows} <= {"llm failed: the neuron's deadline of 1 s passed (last attempt: timed out)"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timing"]["scoring_s"] < 2 * 1.0 + 1.0, summary["timing"]  # each neuron stopped at 1 s
    assert summary["n_transport_failures"] == 2 and summary["settings"]["backend"]["neuron_deadline_s"] == 1.0
    message = ("2 neurons failed for transport reasons (timeouts, connection or server errors, the neuron deadline); "
               "rerun with --retry-failed to score them again")
    assert message in proc.stdout and message in (out / "summary.md").read_text()
    assert wall < 60


def test_retry_failed_rescores_the_transport_failures_and_nothing_else(env, checkpoint, tmp_path):
    out = tmp_path / "run"
    with FakeLLM() as failing:  # the 2nd and 4th neuron's explanations get HTTP 500
        failing.fault = lambda path, body: 500 if len(explanations(failing)) in (2, 4) else None
        first = interpret(env, checkpoint, out, failing, "--neurons", "5", "--retries", "0")
    assert first.returncode == 0, first.stderr
    rows = read_jsonl(out / "scores.jsonl")
    failed = [r for r in rows if r["failure"] == "transport"]
    assert len(failed) == 2 and {r["reason"] for r in failed} == {"llm failed: HTTP 500 after 1 attempt"}
    assert "2 neurons failed for transport reasons" in first.stdout
    with FakeLLM() as healthy:  # another server: the cache has nothing of it
        resumed = interpret(env, checkpoint, out, healthy, "--neurons", "5")  # today's resume: nothing to do
        assert resumed.returncode == 0 and healthy.requests == []
        assert "2 neurons failed for transport reasons" in resumed.stdout
        retried = interpret(env, checkpoint, out, healthy, "--neurons", "5", "--retry-failed")
        assert retried.returncode == 0, retried.stderr
        # only the two failed neurons were sent: an explanation and 10 simulations each
        assert len(explanations(healthy)) == 2 and len(healthy.requests) == 2 * (1 + 10)
    after = read_jsonl(out / "scores.jsonl")
    key = lambda r: (r["layer"], r["neuron"], r["protocol"])  # noqa: E731
    assert sorted(map(key, after)) == sorted(map(key, rows))  # each key once
    by_key = {key(r): r for r in after}
    assert all(by_key[key(r)]["score"] is not None and by_key[key(r)]["failure"] == "" for r in failed)
    assert all(by_key[key(r)] == r for r in rows if r not in failed)  # the others untouched
    assert "failed for transport reasons" not in retried.stdout
    assert json.loads((out / "summary.json").read_text())["n_transport_failures"] == 0
    card = (out / "cards" / "layer0" / f"neuron{failed[0]['neuron']}.html").read_text()
    assert "unscorable" not in card and (out / "cards" / "index.html").is_file()


def test_a_bad_endpoint_flag_is_one_line(env, checkpoint, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cratelab", "interpret", str(checkpoint), "--out",
                           str(tmp_path / "run"), "--retries", "2", "--neuron-deadline-s", "-5"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: interp.backend.neuron_deadline_s: must be >= 0 (0 = no deadline), got -5.0")


@pytest.mark.parametrize("name, value, message", [
    ("timeout_s", 0.0, "must be > 0, got 0.0"), ("retries", -1, "must be >= 0, got -1"),
    ("neuron_deadline_s", -1.0, "must be >= 0 (0 = no deadline), got -1.0")])
def test_bad_backend_values_name_the_field(name, value, message):
    from cratelab.errors import ConfigError
    from cratelab.interp.config import BackendConfig

    with pytest.raises(ConfigError, match=re.escape(f"interp.backend.{name}: {message}")):
        BackendConfig(**{name: value}).validate()
