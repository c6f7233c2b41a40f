"""Do the answers hold along training? Planted contrasts that flip, stay or settle between tracked points,
and the convergence warning, on synthetic sweep folders."""

import json
import math

from cratelab import layout
from cratelab.report import read_sweep_results, write_report
from cratelab.report.analysis import Estimator, design_effects
from cratelab.report.document import to_markdown
from cratelab.report.stats import Interval
from cratelab.report.track import FLIPPED, MOVING, STABLE, UNTRACKED, last_quarter_drop, track_verdict
from cratelab.report.write import convergence_blocks, track_section

from .synthetic import DESIGN, add_track, make_sweep
from .test_report import N_BOOT, section

GPT_ROW = "| gpt-relu − reference | val loss (nats/token) |"
QKV_ROW = "| model.qkv: separate − shared | val loss (nats/token) |"
SLOPE_ROW = "| model.ista_lambda: per doubling | val loss (nats/token) |"


def _planted(row, fraction):
    """GPT's loss 0.4 higher at half of training (GPT − CRATE +0.2 there, −0.2 at the end: a flip); the
    lambda slope absent at half of training (significant only at the end: still moving); qkv untouched."""
    if fraction == 1.0:
        return 0.0
    if row["model.arch"] == "gpt":
        return 0.4
    return -0.04 * math.log2(float(row["model.ista_lambda"]) / 0.1)


def _along(out) -> str:
    """The report's section on tracked points, without Markdown's escapes."""
    return section(write_report(out, DESIGN, n_boot=N_BOOT).read_text().replace("\\", ""),
                   "Do the answers hold along training?")


def _verdict(md: str, start: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(start)).rstrip(" |").rsplit("|", 1)[-1].strip()


def test_a_planted_flip_is_flipped_and_a_constant_contrast_is_stable(tmp_path):
    out = add_track(make_sweep(tmp_path / "sweep"), shift=_planted)
    along = _along(out)
    assert _verdict(along, GPT_ROW) == FLIPPED
    assert _verdict(along, QKV_ROW) == STABLE
    assert _verdict(along, SLOPE_ROW) == MOVING
    assert "early-training preview" in along
    assert "0.26M tokens (0.5)" in along and "0.52M tokens (1)" in along  # the tracked points, in tokens
    assert "gpt-relu − reference on val loss (nats/token) (flipped)" in along
    # the section comes before the effects it qualifies, and its figures are drawn
    md = (out / layout.REPORT_MD).read_text()
    assert md.index("Do the answers hold along training?") < md.index("## Effects")
    assert (out / "plots" / "track_loss.png").is_file() and (out / "plots" / "track_interp.png").is_file()


def test_answers_that_hold_are_not_called_a_preview(tmp_path):
    out = add_track(make_sweep(tmp_path / "sweep"))
    along = _along(out)
    assert _verdict(along, GPT_ROW) == STABLE and _verdict(along, QKV_ROW) == STABLE
    assert "early-training preview" not in along and "still learning" not in along
    assert "hold over the last two tracked points" in along


def _section_text(blocks) -> str:
    return to_markdown(blocks).replace("\\", "")


def test_without_tracked_points_the_report_says_it_does_not_know(tmp_path):
    est = Estimator(read_sweep_results(make_sweep(tmp_path / "sweep"), DESIGN), n_boot=N_BOOT)
    along, figures = track_section(est, design_effects(est.sweep), [], tmp_path / "plots")
    text = _section_text(along)
    assert "Not measured: the sweep kept no checkpoint along training" in text and not figures
    assert "Convergence" in text and "Warning" not in text and "preview" not in text


def test_conditions_still_learning_get_a_warning(tmp_path):
    out = make_sweep(tmp_path / "sweep")
    for metrics in (out / layout.RUNS).glob("gpt-relu-s*/" + layout.METRICS):  # loss falling 5% a quarter
        metrics.write_text("".join(json.dumps({"step": s, "tokens": s * 1024, "val_loss": 4.0 * 0.95 ** (s / 128)})
                                   + "\n" for s in (128, 256, 384, 512)))
    blocks, learning = convergence_blocks(read_sweep_results(out, DESIGN))
    text = _section_text(blocks)
    assert learning
    assert "gpt-relu: val loss fell 5.00% over the last quarter of training (mean of 3 seeds): still learning." in text
    assert "Warning: 1 of 7 conditions are still learning" in text
    assert "ista_lambda=0.1-qkv=shared: val loss fell 0.0" in text  # the others have converged
    est = Estimator(read_sweep_results(out, DESIGN), n_boot=N_BOOT)
    assert "early-training preview" in _section_text(track_section(est, design_effects(est.sweep), [],
                                                                   tmp_path / "plots")[0])


def _iv(estimate: float, significant: bool) -> Interval:
    half = 0.5 * abs(estimate) if significant else 2 * abs(estimate) + 1
    return Interval(estimate, estimate - half, estimate + half, 3, "t")


def test_verdict_rules():
    sig = lambda *ivs: [iv.significant for iv in ivs]
    a, b = _iv(1.0, True), _iv(-1.0, True)
    assert track_verdict([a, b], sig(a, b)) == FLIPPED
    assert track_verdict([a, _iv(-1.0, False)], sig(a, _iv(-1.0, False))) == FLIPPED  # significant at either point
    assert track_verdict([b, a, a], sig(b, a, a)) == STABLE  # the last two points decide
    assert track_verdict([_iv(1.0, False), _iv(-1.0, False)], [False, False]) == STABLE  # nothing at both
    assert track_verdict([_iv(1.0, False), a], [False, True]) == MOVING
    assert track_verdict([a], [True]) == MOVING  # a single point
    none = Interval(None, None, None, 0, "none")
    assert track_verdict([none, a], [None, True]) == MOVING
    no_ci = Interval(1.0, None, None, 1, "one seed")
    assert track_verdict([no_ci, no_ci], [None, None]) == MOVING  # untested is not stable
    assert track_verdict([none, none], [None, None]) == UNTRACKED  # e.g. an SAE arm: nothing along training


def test_last_quarter_drop_interpolates_between_evaluations():
    assert last_quarter_drop([(0, 4.0), (100, 3.0), (200, 2.0)]) == (2.5 - 2.0) / 2.5
    assert last_quarter_drop([(200, 2.0)]) is None and last_quarter_drop([(190, 3.0), (200, 2.0)]) is None
