import itertools
import math
from collections import Counter

import numpy as np
import pytest

from scipy import stats as scipy_stats

from cratelab.report.stats import (Interval, benjamini_hochberg, contrast_by_seed, curvature_weights,
                                   difference_power, equivalence_p_value, equivalence_power, hierarchical_bootstrap,
                                   holm_bonferroni, holm_levels, mean_ci, percentile_interval, resample_run_scores,
                                   run_score, sd_upper_bound, seeds_needed, slope_weights, t_cdf, t_critical,
                                   t_p_value)

# two-sided critical values from the standard t table
T_TABLE = {(0.95, 1): 12.706, (0.95, 2): 4.303, (0.95, 3): 3.182, (0.95, 4): 2.776, (0.95, 5): 2.571,
           (0.95, 10): 2.228, (0.95, 20): 2.086, (0.95, 30): 2.042, (0.99, 1): 63.657, (0.99, 2): 9.925,
           (0.99, 10): 3.169, (0.90, 1): 6.314, (0.90, 3): 2.353, (0.90, 30): 1.697}


@pytest.mark.parametrize("key", sorted(T_TABLE))
def test_t_critical_matches_the_table(key):
    confidence, df = key
    assert t_critical(confidence, df) == pytest.approx(T_TABLE[key], abs=1e-3)


def test_t_quantile_closed_forms_for_df_1_and_2():
    for p in (0.6, 0.9, 0.975, 0.995):
        confidence = 2 * p - 1
        assert t_critical(confidence, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_critical(confidence, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)  # Cauchy
    assert t_cdf(-2.0, 7) == pytest.approx(1 - t_cdf(2.0, 7), abs=1e-12)


def test_t_critical_tends_to_the_normal_quantile():
    assert t_critical(0.95, 10**7) == pytest.approx(1.959964, abs=1e-5)
    assert t_critical(0.95, 999) == pytest.approx(1.962341, abs=1e-5)
    with pytest.raises(ValueError):
        t_critical(0.95, 0)


def test_mean_ci_is_the_t_interval_of_numpy_mean_and_std():
    x = np.array([3.1, 2.9, 3.4, 3.0])
    iv = mean_ci(x, 0.95)
    half = 3.182446 * x.std(ddof=1) / 2
    assert iv.estimate == pytest.approx(x.mean())
    assert (iv.low, iv.high) == pytest.approx((x.mean() - half, x.mean() + half), abs=1e-6)
    assert iv.n == 4 and "t over 4 seeds" in iv.method


def test_mean_ci_without_enough_seeds_has_no_interval():
    one = mean_ci([2.5])
    assert one.estimate == 2.5 and not one.has_ci and one.significant is None and "1 seed" in one.method
    assert mean_ci([]).estimate is None


def test_significance_means_the_interval_excludes_zero():
    assert Interval(1.0, 0.5, 1.5, 3, "").significant is True
    assert Interval(-1.0, -1.5, -0.5, 3, "").significant is True
    assert Interval(0.2, -0.1, 0.5, 3, "").significant is False


def test_contrast_by_seed_pairs_by_seed():
    reference = {0: 1.0, 1: 2.0, 2: 3.0}
    other = {0: 1.5, 2: 2.0, 5: 9.0}
    assert contrast_by_seed([other, reference], [1.0, -1.0]) == {0: 0.5, 2: -1.0}
    assert contrast_by_seed([reference], [1.0]) == reference


def test_slope_weights_give_the_least_squares_slope():
    x = np.log2([0.05, 0.1, 0.2])
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.normal(size=3)
        assert slope_weights(x) @ y == pytest.approx(np.polyfit(x, y, 1)[0], abs=1e-12)


def test_run_score_is_the_mean_of_layer_means_without_empty_layers():
    layers = [np.array([0.1, 0.3]), np.array([]), np.array([0.5, 0.5, 0.8])]
    assert run_score(layers) == pytest.approx((0.2 + 0.6) / 2)
    with pytest.raises(ValueError):
        run_score([np.array([])])


def test_neuron_resamples_centre_on_the_run_score_with_the_bootstrap_spread():
    scores = np.random.default_rng(0).normal(0.1, 0.2, 50)
    resampled = resample_run_scores([scores], (4000, 2), np.random.default_rng(1))
    assert resampled.shape == (4000, 2)
    assert resampled.mean() == pytest.approx(scores.mean(), abs=0.003)
    assert resampled.std() == pytest.approx(scores.std() / math.sqrt(50), rel=0.05)  # plug-in SE


def exact_distribution(seeds: list[list[np.ndarray]], weights: list[float]) -> Counter:
    """Every outcome of the two-stage bootstrap, enumerated: draw the seeds, then for each drawn seed and
    each condition draw its neurons; one-layer runs."""
    n = len(seeds)
    probs: Counter = Counter()
    for picks in itertools.product(range(n), repeat=n):
        per_draw = []
        for s in picks:  # each draw: all neuron resamples of each condition's run, equally likely
            options = [[float(np.mean(run[list(idx)])) for idx in itertools.product(range(len(run)), repeat=len(run))]
                       for run in seeds[s]]
            per_draw.append([sum(w * v for w, v in zip(weights, combo)) for combo in itertools.product(*options)])
        total = math.prod(len(d) for d in per_draw) * n ** n
        for combo in itertools.product(*per_draw):
            probs[round(float(np.mean(combo)), 9)] += 1 / total
    return probs


def test_hierarchical_bootstrap_matches_brute_force_enumeration():
    seeds = [[np.array([0.0, 1.0]), np.array([0.5, 0.25])],   # seed 0: condition a, condition b
             [np.array([10.0, 30.0]), np.array([4.0, 8.0])]]  # seed 1
    weights = [1.0, -1.0]
    exact = exact_distribution(seeds, weights)
    rng = np.random.default_rng(3)
    n_boot = 40_000
    resampled = [[resample_run_scores([run], (n_boot, 2), rng) for run in runs] for runs in seeds]
    replicates = hierarchical_bootstrap(resampled, weights, rng)
    seen = Counter(round(float(v), 9) for v in replicates)
    assert set(seen) <= set(exact)
    for value, p in exact.items():
        assert seen[value] / n_boot == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n_boot) + 1e-4)


def test_hierarchical_bootstrap_is_deterministic_given_the_rng():
    seeds = [[np.random.default_rng(s).normal(size=20)] for s in range(3)]

    def run(seed):
        rng = np.random.default_rng(seed)
        resampled = [[resample_run_scores([layer], (500, 3), rng) for layer in runs] for runs in seeds]
        return hierarchical_bootstrap(resampled, [1.0], rng)

    assert np.array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


def test_hierarchical_bootstrap_needs_a_neuron_resample_per_drawn_seed():
    resampled = [[np.zeros((10, 1))], [np.zeros((10, 1))]]
    with pytest.raises(ValueError):
        hierarchical_bootstrap(resampled, [1.0], np.random.default_rng(0))


def test_percentile_interval_is_numpy_quantile():
    x = np.random.default_rng(0).normal(size=1001)
    assert percentile_interval(x, 0.9) == pytest.approx(tuple(np.quantile(x, [0.05, 0.95])))


# ---------------------------------------------------------------- p-values and Holm-Bonferroni

@pytest.mark.parametrize("key", sorted(T_TABLE))
def test_t_p_value_at_the_tables_critical_value_is_one_minus_the_confidence(key):
    confidence, df = key
    assert t_p_value(T_TABLE[key], 1.0, df) == pytest.approx(1 - confidence, abs=2e-4)
    assert t_p_value(-T_TABLE[key], 1.0, df) == pytest.approx(1 - confidence, abs=2e-4)  # two-sided


def test_t_p_value_closed_forms():
    assert t_p_value(1.0, 1.0, 1) == pytest.approx(0.5, abs=1e-12)  # Cauchy: P(|T| > 1) = 1/2
    for t in (0.3, 2.0, 9.0):  # df 2: P(|T| > t) = 1 - t / sqrt(2 + t^2)
        assert t_p_value(t, 1.0, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
    assert t_p_value(0.0, 1.0, 5) == pytest.approx(1.0)


@pytest.mark.parametrize("values", [[0.5, 0.5, 0.5], [0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
def test_identical_seeds_are_no_test_never_significant(values):
    iv = mean_ci(values)
    assert iv.estimate == values[0] and iv.p_value is None and not iv.has_ci and iv.significant is None
    assert "zero variance" in iv.method and iv.sd == 0.0


def test_a_nan_interval_is_not_significant():
    assert Interval(1.0, math.nan, math.nan, 3, "t").significant is None


def test_mean_ci_p_value_is_the_paired_t_test_and_matches_its_interval():
    iv = mean_ci([1.0, 2.0, 3.0])  # mean 2, se 1/sqrt(3), t = 2 sqrt(3), df 2
    t = 2 * math.sqrt(3)
    assert iv.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)  # 0.0742
    assert iv.p_value == pytest.approx(0.0742, abs=1e-4)
    rng = np.random.default_rng(3)
    for _ in range(200):  # the test and the interval are one: p < 0.05 exactly when the 95% CI excludes 0
        iv = mean_ci(list(rng.normal(0.5, 1.0, size=int(rng.integers(2, 7)))))
        assert (iv.p_value < 0.05) == iv.significant
    assert mean_ci([4.0]).p_value is None and mean_ci([]).p_value is None


def test_equivalence_p_value_is_scipys_two_one_sided_tests_and_matches_the_90_interval():
    rng = np.random.default_rng(5)
    for _ in range(200):
        x = rng.normal(rng.normal(0, 0.5), 1.0, size=int(rng.integers(2, 9)))
        n, mean, se, margin = x.size, x.mean(), x.std(ddof=1) / math.sqrt(x.size), float(rng.uniform(0.2, 2))
        p = equivalence_p_value(mean, se, n - 1, margin)
        lower = scipy_stats.ttest_1samp(x, -margin, alternative="greater").pvalue
        upper = scipy_stats.ttest_1samp(x, margin, alternative="less").pvalue
        assert p == pytest.approx(max(lower, upper), rel=1e-9, abs=1e-15)
        low, high = mean_ci(list(x), 0.90).low, mean_ci(list(x), 0.90).high
        assert (p <= 0.05) == (-margin < low and high < margin)


def test_holm_levels_agree_with_the_adjusted_p_values_and_stop_at_the_first_failure():
    rejected, levels = holm_levels([0.01, 0.04, 0.03, 0.005], 0.05)
    assert rejected == [True, False, False, True] and levels == pytest.approx([0.05 / 3, 0.025, 0.025, 0.0125])
    rng = np.random.default_rng(2)
    for _ in range(300):
        p = list(rng.uniform(0, 0.1, size=int(rng.integers(1, 10))) ** 2)
        rejected, levels = holm_levels(p, 0.05)
        assert rejected == [a <= 0.05 for a in holm_bonferroni(p)]
        assert all((pi <= level) == r for pi, level, r in zip(p, levels, rejected))  # interval <-> decision


def test_benjamini_hochberg_matches_the_definition():
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert benjamini_hochberg([0.5, 0.9]) == pytest.approx([0.9, 0.9]) and benjamini_hochberg([]) == []


def test_power_matches_simulation():
    rng = np.random.default_rng(0)
    for n, effect, sd, alpha in [(4, 1.0, 1.0, 0.05), (6, 0.5, 0.4, 0.01), (3, 2.0, 1.0, 0.05 / 8)]:
        x = rng.normal(effect, sd, size=(40_000, n))
        p = 2 * scipy_stats.t.sf(np.abs(x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))), n - 1)
        assert difference_power(n, effect, sd, alpha) == pytest.approx(np.mean(p <= alpha), abs=0.01)
    for n, effect, sd, margin in [(8, 0.2, 0.5, 1.0), (5, 0.0, 0.3, 0.5)]:
        x = rng.normal(effect, sd, size=(40_000, n))
        se = x.std(1, ddof=1) / math.sqrt(n)
        critical = scipy_stats.t.ppf(0.95, n - 1)
        shown = ((x.mean(1) + margin) / se > critical) & ((x.mean(1) - margin) / se < -critical)
        assert equivalence_power(n, effect, sd, margin, 0.05) == pytest.approx(np.mean(shown), abs=0.015)


def test_seeds_needed_is_the_first_n_with_enough_power():
    n = seeds_needed(lambda k: difference_power(k, 1.0, 1.0, 0.05))
    assert difference_power(n, 1.0, 1.0, 0.05) >= 0.8 > difference_power(n - 1, 1.0, 1.0, 0.05)
    assert n == 10  # the textbook paired-t sample size for d = 1 at 80% power, two-sided 5%
    assert seeds_needed(lambda k: 0.0) is None


def test_sd_upper_bound_is_the_chi_square_bound():
    assert sd_upper_bound(1.0, 3) == pytest.approx(math.sqrt(2 / scipy_stats.chi2.ppf(0.2, 2)))
    assert sd_upper_bound(2.0, 30) > 2.0


def test_curvature_weights_find_the_quadratic_coefficient():
    x = np.log2([0.05, 0.1, 0.2])
    assert curvature_weights(x) @ (3 + 2 * x) == pytest.approx(0.0, abs=1e-12)  # a straight line: none
    assert curvature_weights(x) @ (x - x.mean()) ** 2 == pytest.approx(1.0)
    assert curvature_weights(x) == pytest.approx([0.5, -1.0, 0.5])  # the second difference over 2 doublings²


def test_holm_bonferroni_hand_worked_example():
    # sorted: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1: 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm_bonferroni([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # worked the same way: 0.05, 0.08, 0.09, 0.08, 0.05 -> running max
    assert holm_bonferroni([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    assert holm_bonferroni([0.3, 0.6, 0.5]) == pytest.approx([0.9, 1.0, 1.0])  # capped at 1, then monotone
    assert holm_bonferroni([0.04]) == pytest.approx([0.04]) and holm_bonferroni([]) == []


def holm_sequential(p_values, alpha):
    """Holm (1979) as a procedure: walk the sorted p-values, reject while p_(k) <= alpha / (m - k + 1)."""
    rejected = set()
    for k, i in enumerate(sorted(range(len(p_values)), key=lambda i: p_values[i])):
        if p_values[i] > alpha / (len(p_values) - k):
            break
        rejected.add(i)
    return rejected


def test_holm_adjusted_p_values_reject_what_holms_procedure_rejects():
    rng = np.random.default_rng(0)
    for _ in range(300):
        p = list(rng.uniform(0, 0.2, size=int(rng.integers(1, 12))) ** 2)
        for alpha in (0.01, 0.05, 0.1):
            adjusted = holm_bonferroni(p)
            assert {i for i, q in enumerate(adjusted) if q <= alpha} == holm_sequential(p, alpha)
            assert all(q >= x for q, x in zip(adjusted, p)) and all(q <= 1 for q in adjusted)


@pytest.mark.parametrize("bad", [[0.1, float("nan")], [1.5], [-0.1]])
def test_holm_bonferroni_rejects_non_p_values(bad):
    with pytest.raises(ValueError, match="p-values"):
        holm_bonferroni(bad)
