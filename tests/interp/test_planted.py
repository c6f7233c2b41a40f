"""Planted neurons with known truth, through the whole offline path: records -> explain -> simulate -> score."""

import numpy as np
import pytest

from cratelab.interp import RecordConfig, build_records, score_activations

from .synthetic import EOT, NEURONS, planted_stream, smooth_noise_stream


@pytest.fixture(scope="module")
def planted():
    return planted_stream()


@pytest.fixture(scope="module")
def top_and_random(planted):
    tokens, acts = planted
    return dict(zip(NEURONS, score_activations(tokens, acts, protocol="top-and-random", eot_token=EOT)))


def test_token_and_context_neurons_score_high_with_the_right_explanation(top_and_random):
    cat, us, zebra = top_and_random["cat"], top_and_random["united-states"], top_and_random["zebra"]
    assert cat.score > 0.9 and cat.explanation.startswith('" cat" (')
    assert us.score > 0.9 and us.explanation.startswith('" States" after " United" (')
    assert zebra.score > 0.9 and zebra.explanation.startswith('" zebra" (')


def test_noise_scores_low_and_dead_is_unscorable_with_a_reason(top_and_random):
    assert abs(top_and_random["noise"].score) < 0.3
    dead = top_and_random["dead"]
    assert dead.score is None and "constant" in dead.reason and dead.firing_rate == 0.0
    assert all(r.reason is None for name, r in top_and_random.items() if name != "dead")


@pytest.mark.parametrize("protocol", ["random-only", "anthropic"])
def test_other_protocols_recover_the_planted_neurons(planted, protocol):
    tokens, acts = planted
    results = dict(zip(NEURONS, score_activations(tokens, acts, protocol=protocol, eot_token=EOT)))
    assert results["cat"].score > 0.9 and results["united-states"].score > 0.9
    assert results["noise"].score < 0.3
    assert results["dead"].score is None


def test_results_report_firing_rate_and_max(planted, top_and_random):
    _, acts = planted
    flat = acts.reshape(-1, acts.shape[2])
    for h, name in enumerate(NEURONS):
        assert top_and_random[name].neuron == h
        assert top_and_random[name].firing_rate == pytest.approx((flat[:, h] > 0).mean())
        assert top_and_random[name].max_activation == pytest.approx(flat[:, h].max())


def test_same_seed_same_results_other_seed_other_random_records(planted, top_and_random):
    tokens, acts = planted
    again = score_activations(tokens, acts, protocol="top-and-random", eot_token=EOT)
    assert again == list(top_and_random.values())
    a, b = (build_records(tokens, acts, seed=s, eot_token=EOT) for s in (0, 1))
    np.testing.assert_array_equal(a.top.centre, b.top.centre)
    assert not np.array_equal(a.random.centre, b.random.centre)


def test_smooth_noise_scores_zero_with_distinct_records_and_is_inflated_by_paper_records():
    # neighbouring tokens of a smooth-noise neuron are near-duplicate top records: with the paper's
    # top-50 tokens, explanation and scoring windows share passages and the score leaks (the audit
    # measured 0.267 against -0.014); distinct windows leave nothing to leak
    tokens, acts = smooth_noise_stream(n_neurons=16)
    mean = {}
    for top in ("distinct", "paper"):
        results = score_activations(tokens, acts, protocol="top-and-random", eot_token=EOT,
                                    config=RecordConfig(top=top))
        scores = [r.score for r in results if r.score is not None]  # a constant simulation is unscorable
        assert len(scores) >= 12, results
        mean[top] = np.mean(scores)
    assert abs(mean["distinct"]) < 0.06, mean
    assert mean["paper"] > 0.15, mean
