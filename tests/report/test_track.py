"""Do the answers hold along training? Planted contrasts that reverse, hold or stay undetermined between tracked
points (the verdict is a test of each seed's change per doubling of tokens), and the convergence warning."""

import dataclasses
import json
import math

import numpy as np
import pytest

from cratelab import layout
from cratelab.report import read_sweep_results, write_report
from cratelab.report.analysis import Estimator, design_effects
from cratelab.report.document import to_markdown
from cratelab.report.stats import Interval
from cratelab.report.track import (CHANGING, SETTLED, UNDETERMINED, UNTRACKED, last_quarter_drop, track_verdict,
                                   tracked_estimate)
from cratelab.report.write import convergence_blocks, track_section

from .synthetic import DESIGN, add_track, full_grid, make_sweep
from .test_report import N_BOOT, section

GPT_ROW = "| gpt-relu − reference | val loss (nats/token) |"
QKV_ROW = "| model.qkv: separate − shared | val loss (nats/token) |"
SLOPE_ROW = "| model.ista_lambda: per doubling | val loss (nats/token) |"
FRACTIONS = (0.25, 0.5, 1.0)


def _reversal(row, fraction):
    """GPT's val loss 0.3 nats higher per halving of training (GPT − CRATE falls 0.3 per doubling of tokens: a
    reversal from +0.6 to 0 relative to the end); small independent noise elsewhere."""
    if fraction == 1.0:
        return 0.0
    if row["model.arch"] == "gpt":
        return 0.3 * math.log2(1 / fraction)
    return _noise(row, fraction)


def _noise(row, fraction):
    """Noise of SD 0.001 at each tracked point before the end, the same for a run whatever the call order."""
    if fraction == 1.0:
        return 0.0
    key = f"{row['name']}|{fraction}".encode()
    return float(np.random.default_rng(list(key)).normal(0, 0.001))


def _along(out, design=DESIGN) -> str:
    """The report's section on tracked points, without Markdown's escapes."""
    return section(write_report(out, design, n_boot=N_BOOT).read_text().replace("\\", ""),
                   "Do the answers hold along training?")


def _verdict(md: str, start: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(start)).rstrip(" |").rsplit("|", 1)[-1].strip()


def test_a_planted_reversal_is_changing_and_a_steady_contrast_is_settled(tmp_path):
    out = add_track(make_sweep(tmp_path / "sweep"), fractions=FRACTIONS, shift=_reversal)
    along = _along(out)
    assert _verdict(along, GPT_ROW) == CHANGING
    assert _verdict(along, QKV_ROW) == SETTLED and _verdict(along, SLOPE_ROW) == SETTLED
    assert "0.13M tokens (0.25)" in along and "0.52M tokens (1)" in along  # the tracked points, in tokens
    md = (out / layout.REPORT_MD).read_text()
    assert md.index("Do the answers hold along training?") < md.index("## Effects")
    assert (out / "plots" / "track_loss.png").is_file() and (out / "plots" / "track_interp.png").is_file()
    answers = section(md.replace("\\", ""), "Answers")
    assert "| secondary | gpt-relu − reference on val loss (nats/token): differs from 0? |" in answers
    assert answers.count("| changing |") == 1  # the answers table shows each verdict


def test_a_constant_effect_over_8_seeds_is_not_changing(tmp_path):
    design = dataclasses.replace(DESIGN, seeds=list(range(8)))
    out = add_track(make_sweep(tmp_path / "sweep", full_grid(seeds=range(8)), interp=False), fractions=FRACTIONS,
                    shift=_noise)
    along = _along(out, design)
    for row in (GPT_ROW, QKV_ROW, SLOPE_ROW):
        assert _verdict(along, row) != CHANGING


def test_identical_tracked_values_are_undetermined_not_settled(tmp_path):
    out = add_track(make_sweep(tmp_path / "sweep"), fractions=FRACTIONS)  # every point equals the end: no spread
    assert _verdict(_along(out), QKV_ROW) == UNDETERMINED


def _section_text(blocks) -> str:
    return to_markdown(blocks).replace("\\", "")


def test_without_tracked_points_the_report_says_it_does_not_know(tmp_path):
    est = Estimator(read_sweep_results(make_sweep(tmp_path / "sweep"), DESIGN), n_boot=N_BOOT)
    along, figures, _ = track_section(est, design_effects(est.sweep.design), [], tmp_path / "plots", {})
    text = _section_text(along)
    assert "Not measured: the sweep kept no checkpoint along training" in text and not figures
    assert "Convergence" in text and "Warning" not in text and "still learning" not in text


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
    assert "The models are still learning" in _section_text(track_section(est, design_effects(est.sweep.design), [],
                                                                          tmp_path / "plots", {})[0])


def test_verdict_rules():
    assert track_verdict([0.001, -0.002, 0.0015, 0.0], margin=0.01)[0] == SETTLED
    assert track_verdict([0.3, 0.31, 0.29], margin=0.01)[0] == CHANGING
    assert track_verdict([0.3, -0.2, 0.05], margin=0.01)[0] == UNDETERMINED  # wide: neither
    assert track_verdict([0.004, 0.0041, 0.0039], margin=0.01)[0] == SETTLED  # small and certain: settled first
    assert track_verdict([0.3], margin=0.01)[0] == UNDETERMINED  # one seed: no test
    assert track_verdict([0.3, 0.3], margin=0.01)[0] == UNDETERMINED  # zero variance: no test
    verdict, change, band = track_verdict([0.1, 0.2, 0.3], margin=0.01)
    assert change.estimate == pytest.approx(0.2) and band[0] > change.low and band[1] < change.high  # 90% < 95%


def test_an_arm_without_tracked_points_is_not_tracked():
    none = Interval(None, None, None, 0, "none")

    class NoEstimate:
        def estimate(self, metric, contrast):
            return none

    assert tracked_estimate([NoEstimate(), NoEstimate()], [1.0, 2.0], None, {}, margin=0.01).verdict == UNTRACKED
    assert tracked_estimate([NoEstimate()], [1.0], None, {}, margin=None).verdict is None  # exploratory: no claim


def test_last_quarter_drop_interpolates_between_evaluations():
    assert last_quarter_drop([(0, 4.0), (100, 3.0), (200, 2.0)]) == (2.5 - 2.0) / 2.5
    assert last_quarter_drop([(200, 2.0)]) is None and last_quarter_drop([(190, 3.0), (200, 2.0)]) is None
