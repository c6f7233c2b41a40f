"""summary.py: the paper's mean, the mean that counts unscorable neurons as 0, and layers that have no score."""

import pytest

from cratelab.config import InterpConfig
from cratelab.interp import NeuronScore
from cratelab.interp.summary import summarize, summary_markdown


def rows(layer, values, protocol="top-and-random"):
    return [NeuronScore(layer, i, protocol, v, "x", None if v is not None else "simulated activations are constant",
                        0.1, 1.0, "token-pattern", "token-pattern", "token-pattern").to_row("token-pattern")
            for i, v in enumerate(values)]


def test_unscorable_neurons_count_as_zero_and_an_unscorable_layer_is_shown():
    scored = rows(0, [0.4, 0.2, None, None])  # half the neurons predict nothing
    silent = rows(1, [None, None, None, None])  # no scorable neuron at all
    summary = summarize(scored + silent, [0, 1], ["top-and-random"], InterpConfig(bootstrap=50))
    layer0, layer1 = summary["layers"]
    assert layer0["mean"] == pytest.approx(0.3) and layer0["mean_all_neurons"] == pytest.approx(0.15)
    assert (layer1["layer"], layer1["mean"], layer1["mean_all_neurons"], layer1["n_unscorable"]) == (1, None, 0.0, 4)
    model = summary["model"]["top-and-random"]
    assert model["mean"] == pytest.approx(0.3) and model["n_layers"] == 1  # the paper's mean cannot use layer 1
    assert model["mean_all_neurons"] == pytest.approx(0.075) and model["n_layers_total"] == 2
    assert model["layers_without_score"] == [1]

    md = summary_markdown({**summary, "checkpoint": "c", "step": 1, "method": "token-pattern", "n_tokens": 10,
                           "neurons_per_layer": 4, "n_neurons": 4, "settings": {"confidence": 0.95, "seed": 0}})
    assert "| 1 | n/a | n/a | 0.000 | 0 | 4 |" in md
    assert ("Model mean over 1 of 2 layers: 0.300; counting unscorable neurons as 0: 0.075 "
            "(no scorable neuron in layer 1)") in md


def test_rows_round_trip_through_the_one_row_schema():
    score = NeuronScore(2, 7, "anthropic", 0.5, "cat", None, 0.25, 3.0, "json", "explainer", "simulator")
    row = score.to_row("openai:m")
    assert row["method"] == "openai:m" and NeuronScore.from_row(row) == score
    with pytest.raises(KeyError):  # a row of another format is not read as a score with defaults
        NeuronScore.from_row({k: v for k, v in row.items() if k != "simulation"})


def test_summary_markdown_shows_the_checkpoint_path_literally():
    from cratelab.interp.summary import summary_markdown

    summary = {"checkpoint": "runs/<script>x</script>/*a*_`b`", "settings": {"confidence": 0.95, "seed": 0},
               "step": 1, "method": "token-pattern", "n_tokens": 10, "neurons_per_layer": 1, "n_neurons": 2,
               "model": {}, "layers": []}
    title = summary_markdown(summary).splitlines()[0]
    assert title == "# Neuron interpretability: `` runs/<script>x</script>/*a*_`b` ``"
