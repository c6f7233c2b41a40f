"""configs/ablations/: one sweep file per study of issue 11 item 3. Every cell (factor levels and arms) is
a valid run config (sweep.expand builds and validates each), and each study runs end to end with --smoke,
its report naming the factor and answering each main effect with a CI."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cratelab.config import load_sweep_config
from cratelab.sweep.design import expand

ABLATIONS = Path(__file__).resolve().parents[1] / "configs" / "ablations"
STUDIES = {"ista-steps": ("model.ista_steps", [1, 2, 3, 4]),
           "overcomplete": ("model.overcomplete", [1, 2, 4, 8]),
           "ista-vs-mlp": ("model.ffn", ["ista", "mlp"]),
           "ista-residual": ("model.ista_residual", [False, True]),
           "ista-decoder": ("model.ista_decoder", ["tied", "separate"])}


def test_one_file_per_study():
    assert sorted(p.stem for p in ABLATIONS.glob("*.toml")) == sorted(STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_every_cell_is_a_valid_run_config(study):
    base, sweep = load_sweep_config(ABLATIONS / f"{study}.toml")
    factor, levels = STUDIES[study]
    assert sweep.factors == {factor: levels}
    runs = expand(base, sweep)
    assert len(runs) == len(sweep.seeds) * (len(levels) + len(sweep.arms))
    for run in runs:
        if not run.condition.arm:
            section, key = factor.split(".")
            assert getattr(getattr(run.config, section), key) == run.condition.levels[factor]


@pytest.mark.e2e
@pytest.mark.parametrize("study", STUDIES)
def test_each_study_runs_with_smoke_and_reports_its_main_effects(study, tmp_path):
    out = tmp_path / study
    # scored at the end of training only, in one process: tracked points and workers have tests of their own
    proc = subprocess.run([sys.executable, "-m", "cratelab", "ablate", str(ABLATIONS / f"{study}.toml"), "--smoke",
                           "--out", str(out), "--set", "sweep.track=[]", "--workers", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    md = re.sub(r"\\(.)", r"\1", (out / "report.md").read_text())  # markdown escapes, e.g. ista\_steps
    factor, levels = STUDIES[study]
    base, sweep = load_sweep_config(out / "sweep.toml")
    reference = sweep.reference_levels()[factor]
    assert f"Factors (a full grid): {factor} in" in md
    for level in levels:
        if level != reference:
            title = f"#### {factor}: {str(level).lower() if isinstance(level, bool) else level} − " \
                    f"{str(reference).lower() if isinstance(reference, bool) else reference}"
            block = md.split(title, 1)[1].split("####", 1)[0]
            assert "- val loss (nats/token): " in block and "(n=2)" in block  # an interval over the 2 seeds
