"""The OpenAI-compatible endpoint backend against a loopback server started by the tests."""

import json
import logging
import time

import pytest

from cratelab.errors import CratelabError
from cratelab.interp import (ActivationRecord, NeuronFailure, RecordConfig, build_records, make_backend,
                             score_records, summarize_layer)

from .llm_server import FakeLLM, strongest_token
from .synthetic import EOT, NEURONS, planted_stream

KEY = "sk-test-4f1c9e0b-never-in-files"
CAT, US, NOISE, DEAD = (NEURONS.index(n) for n in ("cat", "united-states", "noise", "dead"))
RECORDS = [ActivationRecord([" a", " cat", " sat"], [0.0, 5.0, 0.0])]


@pytest.fixture(scope="module")
def records():
    tokens, acts = planted_stream(n_rows=16, length=128)
    return build_records(tokens, acts, eot_token=EOT, config=RecordConfig(window=16))


@pytest.fixture
def serve(monkeypatch):
    """Start loopback servers: serve(**FakeLLM options) -> a running FakeLLM, stopped after the test."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # loopback requests must not go through a proxy
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    servers = []

    def start(**options):
        servers.append(FakeLLM(**options).__enter__())
        return servers[-1]

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def backend(server, cache_dir, **options):
    settings = dict(base_url=server.url, api_key_env="TEST_LLM_KEY", cache_dir=cache_dir, timeout_s=10.0,
                    backoff_s=0.001, max_backoff_s=0.01)
    return make_backend("openai:fake-model", **{**settings, **options})


def run(records, server, cache_dir, neurons, **options):
    explainer, simulator = backend(server, cache_dir, **options)
    return score_records(records, "top-and-random", explainer=explainer, simulator=simulator, neurons=neurons)


def test_logprob_simulation_explains_and_scores_planted_neurons(records, serve, tmp_path):
    server = serve()
    cat, us, dead = run(records, server, tmp_path, [CAT, US, DEAD])
    assert cat.explanation == 'the token "cat"' and cat.score > 0.9
    assert us.explanation == 'the token "States"' and us.score > 0.3  # " States" fires only after " United"
    assert dead.score is None and "constant" in dead.reason
    explains = [body for path, body, _ in server.requests if path == "/chat/completions"]
    assert len(explains) == 3 and all("Tokens (" not in b["messages"][-1]["content"] for b in explains)
    assert server.paths().count("/completions") == 1 + 30  # the auto probe, then 10 scoring records a neuron
    assert all(headers["Authorization"] == f"Bearer {KEY}" for _, _, headers in server.requests)


@pytest.mark.parametrize("server_options, options", [
    (dict(logprobs=False), {}),  # completions without logprobs
    (dict(completions=False), {}),  # no completions endpoint (HTTP 404)
    ({}, dict(simulation="json")),
])
def test_json_simulation_when_logprobs_are_unavailable_or_not_wanted(records, serve, tmp_path, server_options,
                                                                    options):
    server = serve(**server_options)
    # one request at a time, so exactly one logprob request shows the server cannot give them
    cat, = run(records, server, tmp_path, [CAT], concurrency=1, **options)
    assert cat.score > 0.9
    assert server.paths().count("/completions") == (0 if options else 1)
    assert server.paths().count("/chat/completions") == 1 + 10


def test_strict_logprob_simulation_fails_the_neuron_without_logprobs(records, serve, tmp_path):
    server = serve(logprobs=False)
    cat, = run(records, server, tmp_path, [CAT], simulation="logprobs")
    assert cat.score is None and cat.reason == "llm failed: the server gave no prompt logprobs"
    assert cat.explanation == 'the token "cat"'


@pytest.mark.parametrize("faults", [[429, 500], [503, 429, 502], ["garbage", "unparseable"]])
def test_transient_faults_are_retried(serve, tmp_path, faults):
    server = serve()
    server.queue += faults
    explainer, _ = backend(server, tmp_path)
    assert explainer.explain(RECORDS) == 'the token "cat"'
    assert len(server.requests) == len(faults) + 1


def test_timeouts_are_retried(serve, tmp_path):
    server = serve()
    server.queue += ["timeout", "timeout"]
    explainer, _ = backend(server, tmp_path, timeout_s=0.3)
    assert explainer.explain(RECORDS) == 'the token "cat"'
    assert len(server.requests) >= 3


def test_a_neuron_whose_requests_keep_failing_is_unscorable_and_the_run_goes_on(records, serve, tmp_path):
    def fail_cat(path, body):
        last = body.get("messages", [{}])[-1].get("content", "")
        return 500 if "Neuron 2" in last and strongest_token(last) == "cat" else None

    server = serve()
    server.fault = fail_cat
    cat, us = run(records, server, tmp_path, [CAT, US])
    assert cat.score is None and cat.reason == "llm failed: HTTP 500 after 4 attempts" and cat.explanation == ""
    assert (cat.simulation, us.simulation) == ("", "logprobs")  # the failed neuron never reached the simulator
    assert us.score is not None
    summary = summarize_layer([cat, us])
    assert summary.n_unscorable == 1 and summary.unscorable_reasons == {"llm failed: HTTP 500 after 4 attempts": 1}

    # resume: the failed neuron is asked again, the scored one comes from the cache
    server.fault = lambda path, body: None
    before = len(server.requests)
    cat, us_again = run(records, server, tmp_path, [CAT, US])
    assert cat.score > 0.9 and us_again == us
    assert len(server.requests) - before == 1 + 10


@pytest.mark.parametrize("fault, reason", [
    ("unparseable", "llm failed: malformed answer (empty explanation) after 4 attempts"),
    ("garbage", "llm failed: malformed answer (not JSON) after 4 attempts"),
    (404, "llm failed: HTTP 404 (fault 404; key was [api key removed])"),
])
def test_failed_explanations_raise_with_a_reason(serve, tmp_path, fault, reason):
    server = serve()
    server.fault = lambda path, body: fault
    explainer, _ = backend(server, tmp_path)
    with pytest.raises(NeuronFailure) as failure:
        explainer.explain(RECORDS)
    assert str(failure.value) == reason
    assert len(server.requests) == (1 if isinstance(fault, int) else 4)  # client errors are not retried


def test_a_wrong_number_of_simulated_tokens_is_retried_then_fails(serve, tmp_path):
    server = serve()
    server.fault = lambda path, body: "short"
    _, simulator = backend(server, tmp_path, simulation="json", retries=2)
    with pytest.raises(NeuronFailure, match=r"^llm failed: malformed answer \(expected 3 activations, got 2\) "
                                            r"after 3 attempts$"):
        simulator.simulate('the token "cat"', [[" a", " cat", " sat"]])
    server.queue.append("short")
    server.fault = lambda path, body: None
    simulated, = simulator.simulate('the token "cat"', [[" a", " cat", " sat"]])
    assert simulated.tolist() == [0, 10, 0]


def test_the_cache_makes_a_rerun_send_nothing_and_never_holds_the_key(records, serve, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cratelab.interp.backends.endpoint")
    server = serve()
    server.queue += [500, "timeout"]  # retries get logged: the key must not be in the logs either
    first = run(records, server, tmp_path, [CAT, NOISE], timeout_s=0.5)
    sent = len(server.requests)
    assert sent >= 2 * (1 + 10)
    assert run(records, server, tmp_path, [CAT, NOISE]) == first
    assert len(server.requests) == sent

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2 * (1 + 10) + 1 and all(p.suffix == ".json" for p in files)  # + the auto probe
    assert not any(KEY in p.read_text() or "Bearer" in p.read_text() for p in files)
    assert "retrying" in caplog.text and KEY not in caplog.text


def test_no_cache_when_disabled(serve, tmp_path):
    server = serve()
    explainer, _ = backend(server, None)
    explainer.explain(RECORDS)
    explainer.explain(RECORDS)
    assert len(server.requests) == 2 and not any(tmp_path.iterdir())


def test_concurrency_is_bounded(serve, tmp_path):
    server = serve(delay_s=0.1)
    _, simulator = backend(server, tmp_path, concurrency=2)
    sequences = [[" a", f" w{i}", " cat"] for i in range(6)]
    simulated = simulator.simulate('the token "cat"', sequences)
    assert [s.round(1).tolist() for s in simulated] == [[0.1, 0.1, 9.0]] * 6
    assert server.max_in_flight == 2


def test_endpoint_settings_are_checked(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(CratelabError, match="set OPENAI_API_KEY"):
        make_backend("openai:gpt-4o-mini", cache_dir=tmp_path)
    with pytest.raises(CratelabError, match="http"):
        make_backend("openai:m", base_url="file:///etc", cache_dir=tmp_path)
    with pytest.raises(CratelabError, match="interp.backend.simulation: must be one of"):
        make_backend("openai:m", base_url="http://127.0.0.1:9/v1", simulation="guess", cache_dir=tmp_path)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    explainer, _ = make_backend("openai:m", cache_dir=tmp_path)
    assert explainer.endpoint.base_url == "http://127.0.0.1:9/v1"


def test_a_corrupt_cache_file_is_asked_again(serve, tmp_path):
    server = serve()
    explainer, _ = backend(server, tmp_path)
    explainer.explain(RECORDS)
    file, = [p for p in tmp_path.rglob("*.json")]
    file.write_text("{truncated")
    assert explainer.explain(RECORDS) == 'the token "cat"' and len(server.requests) == 2
    explainer.explain(RECORDS)
    assert len(server.requests) == 2


# ---------------------------------------------------------------- one simulation method a run, recorded

@pytest.mark.parametrize("server_options, method", [({}, "logprobs"), (dict(logprobs=False), "json"),
                                                    (dict(completions=False), "json")])
def test_auto_decides_once_from_a_probe_and_every_row_records_it(records, serve, tmp_path, server_options, method):
    server = serve(**server_options)
    rows = run(records, server, tmp_path, [CAT, US])
    assert [r.simulation for r in rows] == [method, method]
    assert all((r.explainer_model, r.simulator_model) == ("fake-model", "fake-model") for r in rows)
    assert rows[0].score > 0.9
    # the probe is the one logprob request of a JSON run; a logprob run asks no JSON answers at all
    json_asks = sum("Tokens (" in body["messages"][-1]["content"] for path, body, _ in server.requests
                    if path == "/chat/completions")
    assert (server.paths().count("/completions"), json_asks) == ((1 + 20, 0) if method == "logprobs" else (1, 20))


def test_a_400_mid_run_fails_that_neuron_and_never_switches_the_method(records, serve, tmp_path):
    server = serve()
    completions = []

    def one_bad_request(path, body):  # the 3rd logprob request (the probe is the 1st): a prompt the server refuses
        if path == "/completions":
            completions.append(body)
            return 400 if len(completions) == 3 else None
        return None

    server.fault = one_bad_request
    cat, us = run(records, server, tmp_path, [CAT, US], concurrency=1)
    assert cat.score is None and cat.reason.startswith("llm failed: HTTP 400") and cat.simulation == "logprobs"
    assert us.score > 0.3 and us.simulation == "logprobs"
    assert not any("Tokens (" in body["messages"][-1]["content"] for path, body, _ in server.requests
                   if path == "/chat/completions")  # no JSON answer was ever asked for


def test_a_probe_that_gets_no_answer_stops_the_run_with_one_line(records, serve, tmp_path):
    server = serve()
    server.fault = lambda path, body: 500 if path == "/completions" else None
    with pytest.raises(CratelabError, match=r"probe that chooses the simulation method failed \(llm failed: HTTP 500 "
                                            r"after 4 attempts\); set interp.backend.simulation"):
        run(records, server, tmp_path, [CAT])


def test_explainer_and_simulator_models_are_set_separately_from_the_backend_section(records, serve, tmp_path):
    from cratelab.interp.config import BackendConfig

    server = serve()
    settings = BackendConfig(explainer_model="mistral-7b-instruct", simulator_model="llama-2-7b", base_url=server.url,
                             api_key_env="TEST_LLM_KEY", simulation="logprobs", retries=0, timeout_s=10.0)
    explainer, simulator = make_backend("openai:fake-model", settings, cache_dir=tmp_path)
    assert simulator.endpoint.settings.retries == 0 and simulator.endpoint.settings.timeout_s == 10.0
    cat, = score_records(records, "top-and-random", explainer=explainer, simulator=simulator, neurons=[CAT])
    assert (cat.explainer_model, cat.simulator_model, cat.simulation) == ("mistral-7b-instruct", "llama-2-7b",
                                                                         "logprobs")
    assert cat.to_row("openai:fake-model")["simulator_model"] == "llama-2-7b"
    models = {(path, body["model"]) for path, body, _ in server.requests}
    assert models == {("/chat/completions", "mistral-7b-instruct"), ("/completions", "llama-2-7b")}


def test_prompt_templates_from_files_are_what_the_server_gets(records, serve, tmp_path):
    from cratelab.interp.config import BackendConfig

    explainer_file, simulator_file = tmp_path / "explain.json", tmp_path / "simulate.txt"
    explainer_file.write_text(json.dumps([
        {"role": "system", "content": "REFERENCE EXPLAINER: costs $$0"},
        {"role": "user", "content": "Neuron 2\nActivations:\n$records\n"
                                    "Explanation of neuron 2 behavior: the main thing this neuron does is find"}]))
    simulator_file.write_text("REFERENCE SIMULATOR\n\nNeuron 2\nExplanation of neuron 2 behavior: the main thing "
                              "this neuron does is find $explanation.\nActivations:\n<start>\n$records<end>\n")
    server = serve()
    settings = BackendConfig(explainer_prompt=str(explainer_file), simulator_prompt=str(simulator_file),
                             base_url=server.url, api_key_env="TEST_LLM_KEY")
    explainer, simulator = make_backend("openai:fake-model", settings, cache_dir=tmp_path / "cache")
    cat, = score_records(records, "top-and-random", explainer=explainer, simulator=simulator, neurons=[CAT])
    assert cat.explanation == 'the token "cat"' and cat.score > 0.9 and cat.simulation == "logprobs"
    explains = [body["messages"] for path, body, _ in server.requests if path == "/chat/completions"]
    assert explains[0][0] == {"role": "system", "content": "REFERENCE EXPLAINER: costs $0"} and len(explains[0]) == 2
    assert "<start>\n" in explains[0][1]["content"] and "\t10\n" in explains[0][1]["content"]
    prompts = [body["prompt"] for path, body, _ in server.requests if path == "/completions"]
    assert len(prompts) == 1 + 10 and all(p.startswith("REFERENCE SIMULATOR\n") for p in prompts)
    assert 'find the token "cat".\nActivations:\n<start>\n' in prompts[-1]


@pytest.mark.parametrize("name, content, message", [
    ("explainer_prompt", "not json", "is not a readable JSON list"),
    ("explainer_prompt", '[{"role": "user", "content": "no records here"}]', r"must contain \$records"),
    ("simulator_prompt", "$explanation only", r"must contain \$records"),
    ("simulator_prompt", "$explanation $records $tokens", "unknown placeholder"),
])
def test_bad_prompt_templates_name_the_setting(tmp_path, name, content, message):
    from cratelab.interp.config import BackendConfig

    path = tmp_path / "template"
    path.write_text(content)
    with pytest.raises(CratelabError, match=f"interp.backend.{name}: .*{message}"):
        make_backend("openai:m", BackendConfig(base_url="http://127.0.0.1:9/v1", **{name: str(path)}),
                     cache_dir=tmp_path)


# ---------------------------------------------------------------- the neuron's deadline, the key

def test_the_deadline_reaches_the_simulators_threads_and_cached_answers_still_come(serve, tmp_path):
    from cratelab.interp.failure import neuron_deadline

    server = serve()
    explainer, simulator = backend(server, tmp_path, simulation="json", timeout_s=5.0, backoff_s=0.05)
    explanation = explainer.explain(RECORDS)  # cached now
    server.fault = lambda path, body: "hang"
    t0 = time.perf_counter()
    with neuron_deadline(0.5), pytest.raises(NeuronFailure) as failure:
        simulator.simulate(explanation, [[" a", f" w{i}", " cat"] for i in range(4)])
    assert time.perf_counter() - t0 < 2.0 and failure.value.transport
    assert str(failure.value) == "llm failed: the neuron's deadline of 0.5 s passed (last attempt: timed out)"
    with neuron_deadline(0.001):
        time.sleep(0.01)
        assert explainer.explain(RECORDS) == explanation  # past the deadline, from the cache
        with pytest.raises(NeuronFailure, match=r"^llm failed: the neuron's deadline of 0.001 s passed$"):
            explainer.explain([ActivationRecord([" a", " dog"], [0.0, 5.0])])  # not sent


@pytest.mark.parametrize("key, text, scrubbed", [
    ("sk-0123456789", "Bearer sk-0123456789 and sk-0123456789", "[api key removed] and [api key removed]"),
    ("EMPTY", "Bearer EMPTY, an EMPTY token", "[api key removed], an EMPTY token"),  # a placeholder, no secret
    (None, "Bearer x", "Bearer x"),
])
def test_scrub_key(key, text, scrubbed):
    from cratelab.interp.backends.endpoint import scrub_answer, scrub_key

    assert scrub_key(text, key) == scrubbed
    assert scrub_answer({text: [text, 1, None]}, key) == {scrubbed: [scrubbed, 1, None]}
