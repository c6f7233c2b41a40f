import numpy as np
import pytest

from cratelab.interp import (ActivationRecord, TokenPattern, TokenPatternExplainer, TokenPatterns,
                             TokenPatternSimulator, explainer_view, fit_token_patterns)


def rec(text: str, fires) -> ActivationRecord:
    tokens = text.split("|")
    return ActivationRecord(tokens, [fires(tokens, i) for i in range(len(tokens))])


def united_states(tokens, i):
    return 6.0 if tokens[i] == " States" and i > 0 and tokens[i - 1] == " United" else 0.0


RECORDS = [
    rec(" the| United| States| of| the| States", united_states),
    rec(" United| Kingdom| and| the| United| States", united_states),
    rec(" States| said| United| States| are", united_states),
]


def test_context_pattern_is_found_and_reads_well():
    patterns = fit_token_patterns(RECORDS)
    assert patterns.patterns == (TokenPattern(" States", 10.0, after=" United"),)
    assert str(patterns) == '" States" after " United" (10)'


def test_token_pattern_when_context_does_not_matter():
    records = [rec(" a| cat| sat| on| a| mat| cat", lambda t, i: 3.0 * (t[i] == " cat") + 1.0 * (t[i] == " a"))]
    patterns = fit_token_patterns(records)
    assert [(p.token, p.after) for p in patterns.patterns] == [(" cat", None), (" a", None)]
    assert str(patterns) == '" cat" (10); " a" (3.3)'


def test_explainer_view_is_the_protocol_scale():
    view = explainer_view([ActivationRecord(["a", "b"], [2.0, -1.0]), ActivationRecord(["c"], [4.0])])
    np.testing.assert_allclose(np.concatenate(view), [5.0, 0.0, 10.0])


def test_at_most_k_patterns_and_deterministic():
    rng = np.random.default_rng(0)
    words = [f" w{i}" for i in range(30)]
    records = [ActivationRecord(list(rng.choice(words, 64)), rng.random(64)) for _ in range(5)]
    first = TokenPatternExplainer(max_patterns=3).explain(records)
    assert first == TokenPatternExplainer(max_patterns=3).explain(records)
    assert len(TokenPatterns.parse(first).patterns) <= 3


def test_silent_records_give_no_pattern():
    records = [ActivationRecord(["a", "b"], [0.0, 0.0])]
    text = TokenPatternExplainer().explain(records)
    assert text == "no token pattern"
    assert TokenPatternSimulator().simulate(text, [["a", "b", "c"]])[0].tolist() == [0.0, 0.0, 0.0]


def test_text_round_trips_through_parse_even_with_awkward_tokens():
    p = TokenPatterns((TokenPattern('say "hi"; (ok)', 8.5, after="\n"), TokenPattern(" the", 0.012),
                       TokenPattern("é", 1.0, after=" after ")), baseline=0.25)
    text = str(p)
    assert text == '"say \\"hi\\"; (ok)" after "\\n" (8.5); " the" (0.012); "é" after " after " (1); otherwise (0.25)'
    assert TokenPatterns.parse(text) == p
    assert TokenPatterns.parse(str(fit_token_patterns(RECORDS))) == fit_token_patterns(RECORDS)


def test_parse_rejects_free_text():
    with pytest.raises(ValueError, match="token-pattern"):
        TokenPatterns.parse("fires on the word States after United")


def test_simulator_applies_the_most_specific_pattern():
    text = str(TokenPatterns((TokenPattern("B", 8.0, after="A"), TokenPattern("B", 2.0)), baseline=0.5))
    out = TokenPatternSimulator().simulate(text, [["B", "A", "B", "C", "B"], ["B"]])
    assert out[0].tolist() == [2.0, 0.5, 8.0, 0.5, 2.0]
    assert out[1].tolist() == [2.0]  # a sequence's first token has no context


def test_simulation_of_the_fitted_explanation_reproduces_a_context_neuron():
    text = TokenPatternExplainer().explain(RECORDS)
    held_out = [" United| States| and| States| United".split("|")]
    assert TokenPatternSimulator().simulate(text, held_out)[0].tolist() == [0.0, 10.0, 0.0, 0.0, 0.0]
