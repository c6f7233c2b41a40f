import dataclasses
from pathlib import Path

import pytest

from cratelab.config import load_sweep_config
from cratelab.errors import CratelabError
from cratelab.report import read_sweep_results, write_report
from cratelab.report.analysis import INTERP_METRICS, SEED_METRICS, Estimator, design_effects, difference, mean_of
from cratelab.sweep.design import Condition

from .synthetic import DESIGN, Spec, full_grid, make_sweep

N_BOOT = 300  # enough for the tests, fast on 2 cores
PLOTS = ("loss_vs_model_ista_lambda", "sparsity_vs_model_ista_lambda", "interp_vs_model_ista_lambda",
         "loss_vs_model_qkv", "interp_vs_loss", "layer_sparsity", "firing_density", "training_curves",
         "sparsity_curves")
METRIC = {m.column: m for m in SEED_METRICS + INTERP_METRICS}
REFERENCE = Condition("ista_lambda=0.1-qkv=shared")
GPT = Condition("gpt-relu", arm=True)


def effect(sweep, title):
    return next(e for e in design_effects(sweep.design) if e.title == title).contrast


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


def test_report_decides_the_planted_effects_and_not_the_null_ones(tmp_path):
    """With 8 seeds the planted effects (λ raises loss and zero fraction, separate Q,K,V lowers the loss) are
    decided in the declared families; the effects section gives every contrast's raw interval, exploratory."""
    out = make_sweep(tmp_path, full_grid(seeds=range(8)), interp=False)
    write_report(out, dataclasses.replace(DESIGN, seeds=list(range(8))), n_boot=N_BOOT)
    md = md_unescape((out / "report.md").read_text())
    answers = section(md, "Answers")
    slope = "model.ista_lambda: per doubling on"
    assert "differs: higher by 0.04" in line_of(answers, f"| primary | {slope} val loss (nats/token): differs")
    assert "differs: higher by 0.03" in line_of(answers, f"| primary | {slope} zero fraction: differs")
    assert "differs: lower by 0.0" in line_of(answers, "| primary | model.qkv: separate − shared on val loss")
    level = section(md, "model.ista_lambda: 0.2 − 0.1")  # not declared: exploratory, never a decision
    assert "exploratory: raw 95% CI excludes 0" in line_of(level, "- zero fraction")
    assert "exploratory: raw 95% CI includes 0" in line_of(section(md, "model.ista_lambda: per doubling"),
                                                            "- dead fraction")
    assert "primary difference test: differs" in line_of(section(md, "model.qkv: separate − shared"),
                                                        "- val loss")
    assert "not tested (an exact function of val_loss)" in line_of(section(md, "model.qkv: separate − shared"),
                                                                   "- bits per byte")
    assert "gpt-relu − reference" in md


def test_three_seeds_decide_large_effects_and_state_the_seeds_the_rest_need(full, estimator):
    """At 3 seeds (df 2) in a family of 8, the planted λ slope on the zero fraction (many SDs) is decided; the null λ
    slope on interpretability is not, and the report says how many seeds equivalence within ±1.0 would need."""
    md = md_unescape((full / "report.md").read_text())
    answers = section(md, "Answers")
    assert "differs: higher by 0.03" in line_of(answers, "| primary | model.ista_lambda: per doubling on zero "
                                                          "fraction: differs from 0?")
    line = line_of(answers, "| primary | model.ista_lambda: per doubling on interp top-and-random (corr×100): "
                            "equivalent within ±1.00?")
    assert "inconclusive (these seeds establish ±" in line and "seeds needed for 80% power" in line
    methods = section(md, "How the numbers are computed")
    assert "Holm's step-down procedure at α = 0.05 within the primary family and within the secondary family" \
        in methods
    kinds = [e.kind for e in design_effects(estimator.sweep.design)]
    assert kinds == ["main", "main", "slope", "curvature", "main", "interaction", "interaction", "arm"]


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
    curvature = estimator.estimate(METRIC["val_loss"], effect(sweep, "model.ista_lambda: curvature"))
    assert curvature.low <= 0.0 <= curvature.high  # the planted response is linear in log2 λ


def test_interpretability_intervals_are_over_seeds_and_the_bootstrap_is_a_diagnostic(estimator):
    metric = METRIC["interp_top_and_random"]
    iv = estimator.estimate(metric, mean_of(REFERENCE))
    assert iv.n == 4 and iv.method == "t over 4 seeds (df 3)"
    t_only = estimator.seed_values(metric, mean_of(REFERENCE))
    assert iv.estimate == pytest.approx(sum(t_only.values()) / 4)
    gpt = estimator.estimate(metric, difference(GPT, REFERENCE))
    assert gpt.n == 3 and gpt.has_ci
    diagnostic = estimator.neuron_sampling(metric, difference(GPT, REFERENCE))
    # neuron scores are all drawn from one distribution: the spread between seeds is neuron sampling alone
    assert diagnostic.low < gpt.estimate < diagnostic.high and 0.2 < diagnostic.neuron_share < 5
    assert estimator.neuron_sampling(METRIC["val_loss"], difference(GPT, REFERENCE)) is None


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
            "seed 2; gpt-relu seed 0; gpt-relu seed 1; gpt-relu seed 2.") in md  # the whole design counts
    assert "No interpretability scores in this sweep" in md
    assert "interp top" not in section(md, "Effects") and "interp top" not in section(md, "Results per condition")
    assert "gpt-relu − reference" not in section(md, "Effects").split("No estimate yet")[0]
    assert "Comparison with the paper" not in md
    assert not (out / "plots" / "interp_vs_model_ista_lambda.png").exists()
    assert (out / "plots" / "loss_vs_model_ista_lambda.png").is_file()


def test_single_seed_gives_no_seed_interval_and_says_so(tmp_path):
    out = make_sweep(tmp_path, full_grid(seeds=(0,)))
    md = md_unescape(write_report(out, DESIGN, n_boot=N_BOOT).read_text())
    assert "with a single seed there is no interval at all" in md
    level = section(md, "model.ista_lambda: 0.2 − 0.1")
    row = line_of(level, "- zero fraction")
    assert "no CI" in row and "no interval: 1 seed: no confidence interval" in row
    assert "no test" in line_of(section(md, "Answers"), "| primary | model.qkv: separate − shared on val loss")


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


def test_the_papers_direction_is_claimed_only_from_a_decided_answer(full):
    md = md_unescape((full / "report.md").read_text())
    paper = section(md, "Comparison with the paper (2-layer models)")
    assert "same as the paper" in line_of(paper, "| val loss")  # GPT's loss 0.2 lower, decided at 3 seeds
    assert "undecided: inconclusive" in line_of(paper, "| interp anthropic")  # no planted difference


def test_the_report_names_the_training_data_each_run_was_measured_on(tmp_path):
    out = make_sweep(tmp_path, [s for s in full_grid(seeds=(0, 1)) if s.arch == "crate"], interp=False)
    for i, run in enumerate(sorted((out / "runs").iterdir())):
        if i % 4:  # a few runs from before runs recorded their data
            (run / "data.json").write_text('{"train_sha256": "ab12", "val_sha256": "cd34"}')
    md = md_unescape(write_report(out, DESIGN, n_boot=N_BOOT).read_text())
    assert ("Training data (sha256 of the tokenized training split, from each run's data.json): ab12 (9 runs); "
            "not recorded (3 runs).") in md
