"""configs/ablations/: one sweep file per study of issue 11 item 3, in the general sweep format. Until the
sweep engine reads them, this checks what it will: every cell (factor levels and arms) and the reference
is a valid run config, so a typo in a key or value fails here, naming the field."""

import itertools
from pathlib import Path

import pytest
import tomllib

from cratelab.config import config_from_dict

ABLATIONS = Path(__file__).resolve().parents[1] / "configs" / "ablations"
STUDIES = {"ista-steps": ("model.ista_steps", [1, 2, 3, 4]),
           "overcomplete": ("model.overcomplete", [1, 2, 4, 8]),
           "ista-vs-mlp": ("model.ffn", ["ista", "mlp"]),
           "ista-residual": ("model.ista_residual", [False, True]),
           "ista-decoder": ("model.ista_decoder", ["tied", "separate"])}


def with_settings(base: dict, settings: dict) -> dict:
    values = {section: dict(fields) for section, fields in base.items() if section != "sweep"}
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        values.setdefault(section, {})[key] = value
    return values


def test_one_file_per_study():
    assert sorted(p.stem for p in ABLATIONS.glob("*.toml")) == sorted(STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_every_cell_is_a_valid_run_config(study):
    values = tomllib.loads((ABLATIONS / f"{study}.toml").read_text(encoding="utf-8"))
    sweep = values["sweep"]
    assert sweep["factors"] == dict([STUDIES[study]])
    assert set(sweep["reference"]) == set(sweep["factors"])
    assert all(sweep["reference"][k] in levels for k, levels in sweep["factors"].items())
    cells = [dict(zip(sweep["factors"], levels)) for levels in itertools.product(*sweep["factors"].values())]
    cells += [arm["set"] for arm in sweep.get("arms", [])]
    for cell in cells:
        cfg = config_from_dict(with_settings(values, cell))
        for dotted, value in cell.items():
            section, key = dotted.split(".")
            assert getattr(getattr(cfg, section), key) == value
    assert sweep["seeds"] and all(isinstance(seed, int) for seed in sweep["seeds"])
