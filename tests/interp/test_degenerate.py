"""Degenerate explanations (score.DEGENERATE) are flagged in the score rows, the cards and summary.md: planted
explanations of the kinds local LLMs gave (SmolLM2 copied the prompt's lines, repeated a sentence for 150
tokens; a 1.5B model said "words" for 15 of 16 neurons). No LLM is needed."""

import pytest

from cratelab.config import InterpConfig
import numpy as np

from cratelab.interp import build_records, get_protocol
from cratelab.interp.cards import write_cards
from cratelab.interp.prompts import EXAMPLE_EXPLANATION
from cratelab.interp.run import score_protocols
from cratelab.interp.score import degenerate_reason, flag_degenerate
from cratelab.interp.summary import summarize, summary_markdown

from .synthetic import EOT, planted_stream


@pytest.mark.parametrize("explanation,kind", [
    ("", "empty"),
    ("  . ", "empty"),
    ("no token pattern", ""),  # the token-pattern method's finding for a dead neuron
    (EXAMPLE_EXPLANATION, "prompt"),  # the prompt's worked example, copied
    ("Days of the week.", "prompt"),
    ("the number of days of the week", "prompt"),  # SmolLM2, for a neuron of a tiny CRATE
    ("cat\t10", "prompt"),  # a line of the prompt's token<TAB>activation format
    ("Same behavior, non-zero only:", "prompt"),
    ("<start>", "prompt"),
    ("The animal is a dog. The animal is a dog. The animal is a dog. The animal is", "repetition"),
    ("very very very large numbers", "repetition"),
    ("the main thing this neuron does is find the word cat", "repetition"),  # the prompt's prefix again
    ("the word cat", ""),
    ("words", ""),  # on its own a fine explanation; "generic" when most neurons get it
    ("the word \"cat\" and the word \"dog\"", ""),
    ('" cat" (4.52); " States" after " United" (3.1); otherwise (0.01)', ""),  # a token-pattern explanation
])
def test_each_kind_of_degenerate_explanation_is_named(explanation, kind):
    assert degenerate_reason(explanation) == kind


def row(neuron, explanation, protocol="top-and-random"):
    return {"layer": 0, "neuron": neuron, "protocol": protocol, "explanation": explanation, "score": 0.1}


def test_one_explanation_for_most_neurons_is_generic_per_protocol():
    rows = [row(h, "words" if h != 3 else "the word cat") for h in range(16)]  # "words" for 15 of 16
    rows += [row(h, "words" if h < 2 else f"token {h}", "anthropic") for h in range(16)]  # 2 of 16: not most
    flagged = flag_degenerate(rows)
    assert [r["degenerate"] for r in flagged[:16]] == ["generic"] * 3 + [""] + ["generic"] * 12
    assert {r["degenerate"] for r in flagged[16:]} == {""}
    assert "degenerate" not in rows[0]  # the rows given are not changed
    # a neuron whose explanation is degenerate on its own keeps that kind
    assert flag_degenerate([row(h, "words") for h in range(3)] + [row(3, " .")])[3]["degenerate"] == "empty"
    assert flag_degenerate([row(0, "")])[0]["degenerate"] == ""  # no explanation asked for (or it failed)
    assert {r["degenerate"] for r in flag_degenerate([row(0, "words"), row(1, "words")])} == {""}  # two: too few
    assert {r["degenerate"] for r in flag_degenerate([row(h, "no token pattern") for h in range(5)])} == {""}


class PlantedExplainer:
    """The planted answers in turn, one per neuron (a protocol explains a neuron once), as an LLM might give them."""

    model = "planted"

    def __init__(self, answers):
        self.answers, self.calls = answers, 0

    def explain(self, records):
        self.calls += 1
        return self.answers[(self.calls - 1) % len(self.answers)]


class PlantedSimulator:
    """Predicts the cat neuron whatever the explanation says."""

    simulation, model = "planted", "planted"

    def simulate(self, explanation, sequences):
        return [np.array([float(t == " cat") for t in tokens]) for tokens in sequences]


def test_planted_explanations_are_flagged_in_rows_cards_and_summary(tmp_path):
    tokens, acts = planted_stream(n_rows=16, length=64)
    records = build_records(tokens, acts, eot_token=EOT)
    protocol = get_protocol("top-and-random")
    answers = ["cat\t10", "The animal is a dog. The animal is a dog. The animal is a dog.", "words", "words", "words"]
    explainer, simulator = PlantedExplainer(answers), PlantedSimulator()
    rows = []
    for h in range(records.n_neurons):
        (score, _), = score_protocols(records.neuron(h), [protocol], explainer, simulator)
        rows.append(score.to_row("planted"))
    assert [r["degenerate"] for r in rows] == ["prompt", "repetition", "", "", ""]  # as scored, one at a time
    rows = flag_degenerate(rows)
    assert [r["degenerate"] for r in rows] == ["prompt", "repetition", "generic", "generic", "generic"]

    summary = {"checkpoint": "c", "step": 1, "method": "planted", "protocols": [protocol.name],
               "n_tokens": records.n_tokens, "n_neurons": 5, "neurons_per_layer": 5,
               "settings": {"confidence": 0.95, "seed": 0}, **summarize(rows, [0], [protocol.name],
                                                                          InterpConfig(bootstrap=50))}
    assert summary["layers"][0]["degenerate"] == {"prompt": 1, "repetition": 1, "generic": 3}
    md = summary_markdown(summary)
    assert "## Degenerate explanations" in md and "| 0 | top-and-random | 3 | ⚠ generic:" in md

    run = tmp_path / "run"
    run.mkdir()
    write_cards(run, records={0: records}, rows=rows, summary=summary)
    index = (run / "cards" / "index.html").read_text(encoding="utf-8")
    assert index.count("⚠ degenerate explanation") == 5 and "degenerate explanation: generic" in index
    for h, kind in enumerate(["prompt", "repetition", "generic", "generic", "generic"]):
        card = (run / "cards" / "layer0" / f"neuron{h}.html").read_text(encoding="utf-8")
        assert f"⚠ degenerate explanation: {kind}" in card
