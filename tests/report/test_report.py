from pathlib import Path

import pytest

from cratelab.config import load_sweep_config
from cratelab.errors import CratelabError
from cratelab.report import read_sweep_results, write_report
from cratelab.report.analysis import INTERP_METRICS, SEED_METRICS, Estimator, design_effects, difference, mean_of
from cratelab.sweep import Condition

from .synthetic import DESIGN, Spec, full_grid, make_sweep

N_BOOT = 300  # enough for the tests, fast on 2 cores
PLOTS = ("loss_vs_model_ista_lambda", "sparsity_vs_model_ista_lambda", "interp_vs_model_ista_lambda",
         "loss_vs_model_qkv", "interp_vs_loss", "layer_sparsity", "firing_density", "training_curves",
         "sparsity_curves")
METRIC = {m.column: m for m in SEED_METRICS + INTERP_METRICS}
REFERENCE = Condition("ista_lambda=0.1-qkv=shared")
GPT = Condition("gpt-relu", arm=True)


def effect(sweep, title):
    return next(e for e in design_effects(sweep) if e.title == title).contrast


def section(md: str, title: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip("#").strip() == title)
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next((j for j in range(start + 1, len(lines))
                if lines[j].startswith("#") and len(lines[j]) - len(lines[j].lstrip("#")) <= level), len(lines))
    return "\n".join(lines[start:end])


def line_of(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    hostile = Spec("crate", "shared", 0.1, 3, name="<script>alert(1)</script>")  # a fourth seed of the reference
    out = make_sweep(tmp_path_factory.mktemp("sweep"), full_grid() + [hostile])
    write_report(out, DESIGN, n_boot=N_BOOT)
    return out


@pytest.fixture(scope="module")
def estimator(full):
    return Estimator(read_sweep_results(full, DESIGN), n_boot=N_BOOT)


def test_report_files_and_plots(full):
    assert (full / "report.md").is_file() and (full / "report.html").is_file()
    for name in PLOTS:
        assert (full / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}.png" in (full / "report.html").read_text()


def test_report_flags_the_planted_effect_and_not_the_null_one(tmp_path):
    """With 8 seeds the planted effects survive the Holm adjustment over the whole family; the nulls do not."""
    out = make_sweep(tmp_path, full_grid(seeds=range(8)), interp=False)
    write_report(out, DESIGN, n_boot=N_BOOT)
    md = md_unescape((out / "report.md").read_text())
    slope = section(md, "model.ista_lambda: per doubling")
    assert "The data show: val loss (nats/token) increases" in slope and "zero fraction increases" in slope
    assert "not significant at 95%: the CI includes 0" in line_of(slope, "- dead fraction")
    level = section(md, "model.ista_lambda: 0.2 − 0.1")
    assert "significant at 95% after Holm adjustment: the CI excludes 0" in line_of(level, "- zero fraction")
    qkv = section(md, "model.qkv: separate − shared")
    assert "The data show: val loss (nats/token) decreases" in qkv
    assert "They show nothing (CI includes 0) for: zero fraction" in qkv
    # no interaction was planted; the two-factor interactions are in the family and report their CIs
    inter = section(md, "model.ista_lambda × model.qkv: (0.2 − 0.1) × (separate − shared)")
    assert "not significant at 95%: the CI includes 0" in line_of(inter, "- zero fraction")
    assert "gpt-relu − reference" in md


def test_three_seeds_do_not_survive_the_adjustment_that_the_raw_ci_passes(full, estimator):
    """At 3 seeds (df 2) a planted effect has p of about 0.003: its raw CI excludes 0, but not after Holm over
    the report's family, and the report says both, with the family's size."""
    md = md_unescape((full / "report.md").read_text())
    line = line_of(section(md, "model.ista_lambda: 0.2 − 0.1"), "- zero fraction")
    assert "not significant at 95% after Holm adjustment (Holm-adjusted p = " in line
    assert "though the raw CI excludes 0" in line
    assert "not significant at 95%: the CI includes 0" in line_of(section(md, "model.ista_lambda: 0.2 − 0.1"),
                                                                  "- dead fraction")
    methods = section(md, "How the numbers are computed")
    n_metrics = len(SEED_METRICS) + len(INTERP_METRICS)
    n_effects = len(design_effects(estimator.sweep))
    assert n_effects == 2 + 1 + 1 + 2 + 1  # two λ levels and the slope, separate − shared, 2 interactions, the arm
    assert f"Holm–Bonferroni adjustment over the family of all {n_metrics * n_effects} tested" in methods
    qkv = section(md, "model.qkv: separate − shared")  # the planted -0.05 loss, at 3 seeds
    assert "The data show: no significant effect on any tested metric" in qkv
    assert "Significant before but not after the Holm adjustment (suggestive only): val loss (nats/token) " \
           "decreases" in qkv


def test_sparsity_during_training_is_read_from_metrics_jsonl(estimator):
    """Each run's sparsity curves: per evaluation, the mean over layers of train.py's sparsity/layer{l}/{stat}."""
    for run in estimator.sweep.runs:
        zero = [row["zero_frac"] for row in run.layers]
        assert [t for t, _ in run.sparsity_curves["zero_frac"]] == [s * 1024 for s in (50, 100, 200, 400, 512)]
        for (tokens, value) in run.sparsity_curves["zero_frac"]:
            assert value == pytest.approx(sum(zero) / len(zero) - 5 / (tokens / 1024))
        assert set(run.sparsity_curves) == {"zero_frac", "l0", "dead_frac"}


def md_unescape(text: str) -> str:
    return text.replace("\\", "")


def test_planted_effects_lie_in_their_intervals(estimator):
    sweep = estimator.sweep
    slope = effect(sweep, "model.ista_lambda: per doubling")
    assert {c.name.split("-")[0] for c in slope} == {"ista_lambda=0.05", "ista_lambda=0.1", "ista_lambda=0.2"}
    zero = estimator.estimate(METRIC["zero_frac"], slope)
    assert zero.low <= 0.03 <= zero.high and zero.significant
    loss = estimator.estimate(METRIC["val_loss"], slope)
    assert loss.low <= 0.04 <= loss.high
    qkv = estimator.estimate(METRIC["val_loss"], effect(sweep, "model.qkv: separate − shared"))
    assert qkv.low <= -0.05 <= qkv.high and qkv.n == 3  # seed 3 has only one condition: not paired
    kinds = [e.kind for e in design_effects(sweep)]  # the family: 2 + 1 levels, 1 slope, 2 interactions, 1 arm
    assert kinds == ["main", "main", "slope", "main", "interaction", "interaction", "arm"]


def test_interpretability_interval_covers_seeds_and_neurons(estimator):
    metric = METRIC["interp_top_and_random"]
    iv = estimator.estimate(metric, mean_of(REFERENCE))
    assert iv.n == 4 and "hierarchical bootstrap" in iv.method
    t_only = estimator.seed_values(metric, mean_of(REFERENCE))
    assert iv.estimate == pytest.approx(sum(t_only.values()) / 4)
    gpt = estimator.estimate(metric, difference(GPT, REFERENCE))
    assert gpt.n == 3 and gpt.has_ci


def test_intervals_are_deterministic_given_the_seed(full):
    sweep = read_sweep_results(full, DESIGN)
    metric = METRIC["interp_random_only"]
    contrast = difference(Condition("ista_lambda=0.2-qkv=separate"), REFERENCE)
    a = Estimator(sweep, n_boot=N_BOOT, seed=5).estimate(metric, contrast)
    b = Estimator(sweep, n_boot=N_BOOT, seed=5).estimate(metric, contrast)
    assert a == b


def test_unscorable_neurons_are_counted(full):
    md = md_unescape((full / "report.md").read_text())
    row = line_of(section(md, "Results per condition"), "| ista_lambda=0.1-qkv=shared | anthropic |")
    # 4 runs (seeds 0-3) x 2 layers x 2 unscorable neurons; 62 scored per layer
    assert "| 496 | 16 |" in row and "real activations are constant" in row


def test_paper_comparison_and_header(full):
    md = md_unescape((full / "report.md").read_text())
    assert "8.05" in md and "3.23" in md and "only the direction of CRATE (ista_lambda=0.1-qkv=shared) minus GPT (gpt-relu) is" in md
    assert "Training tokens per run: 524,288" in md
    assert "2 layers, d=16, 4 heads" in md


def test_html_escapes_a_hostile_run_name(full):
    page = (full / "report.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="runs/%3Cscript%3Ealert%281%29%3C/script%3E/interp/cards/index.html"' in page
    assert "\\<script\\>alert(1)\\</script\\>" in (full / "report.md").read_text()


def test_partial_sweep_without_interpretability(tmp_path):
    specs = [s for s in full_grid() if s.arch == "crate" and not (s.ista_lambda == 0.2 and s.seed == 2)]
    out = make_sweep(tmp_path, specs, interp=False)
    md = md_unescape(write_report(out, DESIGN, n_boot=N_BOOT).read_text())
    assert ("Missing runs (not in results.csv): ista_lambda=0.2-qkv=shared seed 2; ista_lambda=0.2-qkv=separate "
            "seed 2.") in md
    assert "No interpretability scores in this sweep" in md
    assert "interp top" not in section(md, "Effects") and "interp top" not in section(md, "Results per condition")
    assert "gpt-relu − reference" not in md and "Comparison with the paper" not in md
    assert not (out / "plots" / "interp_vs_model_ista_lambda.png").exists()
    assert (out / "plots" / "loss_vs_model_ista_lambda.png").is_file()


def test_single_seed_gives_no_seed_interval_and_says_so(tmp_path):
    out = make_sweep(tmp_path, full_grid(seeds=(0,)))
    md = md_unescape(write_report(out, DESIGN, n_boot=N_BOOT).read_text())
    assert "with a single seed there is no interval at all" in md
    level = section(md, "model.ista_lambda: 0.2 − 0.1")
    row = line_of(level, "- zero fraction")
    assert "no CI" in row and "not tested: 1 seed: no confidence interval" in row
    assert "[" in line_of(level, "- interp top-and-random")  # neuron-level interval only


def test_missing_reference_and_missing_folder(tmp_path):
    out = make_sweep(tmp_path / "s", [s for s in full_grid(seeds=(0, 1)) if s.ista_lambda != 0.1], interp=False)
    md = md_unescape(write_report(out, DESIGN, n_boot=N_BOOT).read_text())
    assert "The reference condition ista_lambda=0.1-qkv=shared has no runs" in md
    with pytest.raises(CratelabError, match="results.csv"):
        write_report(Path(tmp_path / "nothing"), DESIGN)


def test_empty_results_give_a_short_report(tmp_path):
    (tmp_path / "results.csv").write_text("name,condition,model.ista_lambda,model.qkv,model.arch,seed\n")
    assert "lists no finished run yet" in write_report(tmp_path, DESIGN).read_text()


def test_lambda_zero_is_shown_but_left_out_of_the_slope(tmp_path):
    _, design = load_sweep_config("configs/seed-ablation.toml", ["sweep.factors.model.ista_lambda=[0.0, 0.1, 0.2]"])
    specs = [Spec("crate", qkv, lam, seed) for lam in (0.0, 0.1, 0.2) for qkv in ("shared", "separate")
             for seed in (0, 1)]
    md = md_unescape(write_report(make_sweep(tmp_path, specs, interp=False), design, n_boot=N_BOOT).read_text())
    assert "| ista_lambda=0.0-qkv=shared | 2 |" in md
    assert "least-squares slope over log2 model.ista_lambda for model.ista_lambda in {0.1, 0.2}" in md
    assert (tmp_path / "plots" / "loss_vs_model_ista_lambda.png").is_file()


def test_the_papers_direction_says_why_a_difference_is_undecided():
    from cratelab.report.stats import Interval
    from cratelab.report.write import agreement

    excludes_zero, includes_zero = Interval(0.26, 0.20, 0.33, 3, "t"), Interval(-5.1, -12.9, 2.7, 3, "t")
    assert agreement(0.32, excludes_zero, True) == "same as the paper"
    assert agreement(-0.32, excludes_zero, True) == "opposite to the paper"
    assert agreement(0.32, excludes_zero, False) == ("undecided: not significant after the Holm adjustment "
                                                     "(the raw CI excludes 0)")
    assert agreement(3.85, includes_zero, False) == "undecided: our CI includes 0"
    assert agreement(3.85, Interval(1.0, None, None, 1, "one seed"), None) == "undecided: no CI"
