"""The LLM prompts and answer parsing: pure functions, no model."""

import json
import math

import numpy as np
import pytest

from cratelab.errors import CratelabError
from cratelab.interp import ActivationRecord, make_backend
from cratelab.interp.prompts import (EXPLANATION_PREFIX, UNKNOWN, digit_probabilities, discretize,
                                     expected_activation, explanation_messages, json_simulation_messages,
                                     parse_explanation, parse_json_activations, show_token, simulation_prompt,
                                     slot_positions)


def test_discretize_is_floor_of_ten_relu_over_the_max_of_the_shown_records():
    records = [ActivationRecord(["a", "b", "c"], [2.0, -1.0, 0.99]), ActivationRecord(["d"], [4.0])]
    assert [d.tolist() for d in discretize(records)] == [[5, 0, 2], [10]]
    assert [d.tolist() for d in discretize([ActivationRecord(["a"], [-3.0])])] == [[0]]


def test_explanation_prompt_shows_token_activation_pairs_and_ends_with_the_prefix():
    tokens = [" the", " cat", "\n", "<|endoftext|>"] + [" x"] * 8
    messages = explanation_messages([ActivationRecord(tokens, [0, 4, 0, 1] + [0] * 8)])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    last = messages[-1]["content"]
    assert last.endswith(f"Explanation of neuron 2 behavior: {EXPLANATION_PREFIX}")
    assert "<start>\n the\t0\n cat\t10\n\\n\t0\n<endoftext>\t2\n" in last
    # few tokens fire, so they are repeated alone
    assert "non-zero only:\n<start>\n cat\t10\n<endoftext>\t2\n<end>" in last


def test_dense_records_are_not_repeated():
    messages = explanation_messages([ActivationRecord(["a", "b"], [1.0, 2.0])])
    assert "non-zero only" not in messages[-1]["content"]


def test_show_token_keeps_one_token_a_line():
    assert show_token("a\tb\nc\r") == "a\\tb\\nc\\r"
    assert show_token("<|im_start|>") == "<im_start>"


@pytest.mark.parametrize("answer, expected", [
    (" cats.", "cats"),
    ("the main thing this neuron does is find cats and dogs.\nAnd more text", "cats and dogs"),
    ("\n  the word \"States\" after \"United\"  ", 'the word "States" after "United"'),
])
def test_parse_explanation(answer, expected):
    assert parse_explanation(answer) == expected


@pytest.mark.parametrize("answer", ["", "   \n", f"{EXPLANATION_PREFIX}."])
def test_empty_explanations_are_errors(answer):
    with pytest.raises(ValueError, match="empty explanation"):
        parse_explanation(answer)


def test_simulation_prompt_has_one_slot_per_token_right_after_its_tab():
    tokens = [" the", " cat", "\t", "<|endoftext|>"]
    prompt = simulation_prompt("cats\nand dogs", tokens)
    assert len(prompt.slots) == len(tokens)
    lines = [prompt.text[:s].rsplit("\n", 1)[1] for s in prompt.slots]
    assert lines == [" the\t", " cat\t", "\\t\t", "<endoftext>\t"]
    assert all(prompt.text.startswith(UNKNOWN + "\n", s) for s in prompt.slots)
    assert "find cats and dogs.\nActivations:\n<start>\n the\tunknown\n" in prompt.text
    assert prompt.text.endswith("<endoftext>\tunknown\n<end>\n")


def test_slot_positions_find_the_token_starting_at_each_slot():
    assert slot_positions([0, 0, 3, 4, 11], [4, 11]) == [3, 4]
    with pytest.raises(ValueError, match="slot 5"):
        slot_positions([0, 3, 4, 11], [5])
    with pytest.raises(ValueError):
        slot_positions([0, 3], [7])


def test_expected_value_over_the_digit_tokens_renormalised():
    probs = digit_probabilities({"0": math.log(0.4), "10": math.log(0.4), "unknown": math.log(0.2)})
    assert expected_activation(probs) == pytest.approx(5.0)
    probs = digit_probabilities({"3": math.log(0.1), " 3": math.log(0.1), "11": 0.0, "05": 0.0, "x": 0.0})
    assert probs == pytest.approx({3: 0.2})
    assert expected_activation(probs) == pytest.approx(3.0)
    assert expected_activation(digit_probabilities({"unknown": 0.0})) == 0.0


def test_json_simulation_messages_list_the_tokens():
    messages = json_simulation_messages("cats", [" the", ' "cat"'])
    last = messages[-1]["content"]
    assert json.dumps([" the", ' "cat"']) in last and "exactly 2 integers" in last
    assert "find cats." in last
    assert json.loads(messages[2]["content"]) == [0, 0, 0, 10, 0, 0, 0, 8, 0]


@pytest.mark.parametrize("answer, n, expected", [
    ("[0, 1, 10]", 3, [0, 1, 10]),
    ("Sure:\n```json\n[0, 2.5]\n```", 2, [0, 2.5]),
    ('{"activations": [4, 0]}', 2, [4, 0]),
])
def test_parse_json_activations(answer, n, expected):
    np.testing.assert_array_equal(parse_json_activations(answer, n), expected)


@pytest.mark.parametrize("answer, n, message", [
    ("[0, 1]", 3, "expected 3 activations, got 2"),
    ("[0, 11]", 2, "from 0 to 10"),
    ("[true, 0]", 2, "from 0 to 10"),
    ('["1", 0]', 2, "from 0 to 10"),
    ("no list here", 1, "no JSON list"),
    ("[0, 1", 2, "no JSON list"),
    ("[0, 1,]", 2, "not valid JSON"),
])
def test_invalid_json_activations_are_errors(answer, n, message):
    with pytest.raises(ValueError, match=message):
        parse_json_activations(answer, n)


def test_make_backend_rejects_unknown_methods_and_options():
    with pytest.raises(CratelabError, match="unknown explanation method"):
        make_backend("gpt:4")
    with pytest.raises(CratelabError, match="unknown option"):
        make_backend("openai:some-model", base_url="http://127.0.0.1:9/v1", tempreature=0.5)
    with pytest.raises(CratelabError, match="unknown option"):
        make_backend("token-pattern", cache_dir="x")
