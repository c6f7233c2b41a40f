import numpy as np
import pytest

from cratelab.errors import CratelabError
from cratelab.interp import (ANTHROPIC, PROTOCOLS, TOP_AND_RANDOM, ActivationRecord, NeuronRecord, NeuronScore,
                             get_protocol, pooled_correlation, random_only, summarize_layer)


def test_pooled_correlation_is_numpy_corrcoef_of_the_concatenation():
    rng = np.random.default_rng(0)
    real = [rng.random(n) for n in (64, 3, 17)]
    sim = [r * 2 + rng.random(r.size) for r in real]
    score, reason = pooled_correlation(real, sim)
    assert reason is None
    assert score == pytest.approx(np.corrcoef(np.concatenate(real), np.concatenate(sim))[0, 1], abs=1e-12)
    per_record = np.mean([np.corrcoef(r, s)[0, 1] for r, s in zip(real, sim)])
    assert abs(score - per_record) > 1e-3  # pooled, not a mean of per-record correlations


def test_pooled_correlation_is_undefined_when_a_side_is_constant():
    assert pooled_correlation([np.zeros(5), np.zeros(3)], [np.arange(5.0), np.arange(3.0)]) == (
        None, "real activations are constant on the scoring records (dead or silent neuron)")
    score, reason = pooled_correlation([np.arange(4.0)], [np.full(4, 2.0)])
    assert score is None and "simulated activations are constant" in reason


def labelled_neuron(n_top=50, n_random=50, n_bins=11, per_bin=4) -> NeuronRecord:
    """A neuron whose records say which they are: token 'top7', 'rand3s', 'q2.1', 'snip9', ..."""
    r = lambda name: ActivationRecord([name], [0.0])  # noqa: E731
    return NeuronRecord(
        layer=1, neuron=2,
        top=[r(f"top{i}") for i in range(n_top)], random=[r(f"rand{i}") for i in range(n_random)],
        top_short=[r(f"top{i}s") for i in range(n_top)], random_short=[r(f"rand{i}s") for i in range(n_random)],
        quantiles=[[r(f"q{b}.{j}") for j in range(per_bin)] for b in range(n_bins)],
        quantile_boundaries=[0.0] * (n_bins + 1), snippets=[r(f"snip{i}") for i in range(n_top)],
        max_activation=1.0, mean=0.0, firing_rate=0.1)


def names(records):
    return [r.tokens[0] for r in records]


def test_top_and_random_split():
    n = labelled_neuron()
    assert names(TOP_AND_RANDOM.explanation_records(n)) == ["top0", "top2", "top4", "top6", "top8"]
    assert names(TOP_AND_RANDOM.scoring_records(n)) == (
        ["top1", "top3", "top5", "top7", "top9"] + ["rand0", "rand2", "rand4", "rand6", "rand8"])


def test_random_only_split():
    n = labelled_neuron()
    assert names(PROTOCOLS["random-only"].explanation_records(n)) == ["top0", "top2", "top4", "top6", "top8"]
    assert names(PROTOCOLS["random-only"].scoring_records(n)) == [f"rand{i}" for i in range(50)]
    assert names(random_only(20).scoring_records(n)) == [f"rand{i}" for i in range(20)]


def test_anthropic_split():
    n = labelled_neuron()
    explain, score = names(ANTHROPIC.explanation_records(n)), names(ANTHROPIC.scoring_records(n))
    assert explain == ([f"top{i}s" for i in range(15)] + [f"rand{i}s" for i in range(5)]
                       + [f"q{b}.{j}" for b in range(11) for j in (0, 1)])
    assert score == ([f"top{i}s" for i in range(15, 25)] + [f"rand{i}s" for i in range(5, 10)]
                     + [f"q{b}.{j}" for b in range(11) for j in (2, 3)] + [f"snip{i}" for i in range(25, 35)])
    assert (len(explain), len(score)) == (15 + 5 + 22, 10 + 5 + 22 + 10)
    assert not set(explain) & set(score)


def test_protocols_by_name_and_missing_records():
    assert get_protocol("anthropic") is ANTHROPIC and get_protocol(TOP_AND_RANDOM) is TOP_AND_RANDOM
    with pytest.raises(CratelabError, match="unknown protocol"):
        get_protocol("best-of-both")
    with pytest.raises(CratelabError, match="needs 35 top records"):
        ANTHROPIC.scoring_records(labelled_neuron(n_top=30))
    with pytest.raises(CratelabError, match="needs 4 records per quantile bin"):
        ANTHROPIC.scoring_records(labelled_neuron(per_bin=2))


def scores(values, layer=0):
    return [NeuronScore(layer, i, "top-and-random", v, "x", None if v is not None else "dead", 0.1, 1.0)
            for i, v in enumerate(values)]


def test_layer_summary_counts_unscorable_and_bootstraps_a_seeded_interval():
    values = list(np.random.default_rng(0).normal(0.3, 0.1, 200)) + [None] * 7
    s = summarize_layer(scores(values), seed=1)
    assert (s.n_neurons, s.n_scored, s.n_unscorable, s.unscorable_reasons) == (207, 200, 7, {"dead": 7})
    assert s.mean == pytest.approx(np.mean(values[:200]))
    assert s.ci_low < s.mean < s.ci_high and s.ci_high - s.ci_low < 0.05
    assert summarize_layer(scores(values), seed=1) == s
    empty = summarize_layer(scores([None, None]))
    assert (empty.mean, empty.ci_low, empty.n_unscorable) == (None, None, 2)
    with pytest.raises(ValueError, match="one layer"):
        summarize_layer(scores([0.1]) + scores([0.2], layer=1))


def test_the_result_columns_name_every_protocol_in_its_order():
    from cratelab import layout

    assert tuple(PROTOCOLS) == layout.PROTOCOLS


def test_one_count_of_the_records_a_protocol_needs_for_config_scoring_and_interpret():
    from cratelab.config import ConfigError, config_from_dict
    from cratelab.interp import TokenPatternExplainer, TokenPatternSimulator, score_activations, score_neuron

    from .synthetic import EOT, planted_stream

    assert ANTHROPIC.required_records() == {"n_top": 35, "n_random": 10, "per_bin": 4}
    assert TOP_AND_RANDOM.required_records() == {"n_top": 10, "n_random": 9, "per_bin": 0}
    with pytest.raises(ConfigError, match="interp.records.n_random: protocol 'top-and-random' needs at least 9"):
        config_from_dict({"interp": {"protocols": "top-and-random", "records": {"n_random": 8}}})
    # a neuron with fewer records than the protocol reads is unscorable, with the reason, never an error
    for neuron, reason in [(labelled_neuron(n_top=30), "too few top records (30 of the 35 needed)"),
                           (labelled_neuron(per_bin=2), "too few records per quantile bin (2 of the 4 needed)")]:
        s = score_neuron(neuron, ANTHROPIC, TokenPatternExplainer(), TokenPatternSimulator())
        assert s.score is None and s.reason.startswith(reason)
    assert TOP_AND_RANDOM.missing_records(labelled_neuron(per_bin=0)) is None  # it reads no quantile record
    # score_activations agrees with interpret: a stream too short for 10 top windows marks neurons unscorable
    tokens, acts = planted_stream(n_rows=4, length=64)  # >= the 242-token reservoir, < 10 windows
    scores = score_activations(tokens, acts, eot_token=EOT)
    assert len(scores) == acts.shape[2] and all(s.score is None and s.reason.startswith("too few top records")
                                                 for s in scores)
