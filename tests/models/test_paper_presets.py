"""The paper presets as the official recipe has them (crate-lm's train.py): 491,520 tokens a step
(batch 12 x context 1024 x 40 micro-batches, here 5 per GPU on the 8 GPUs the presets are written for),
600k steps, and the GPT baseline without biases, so that its parameter counts are the paper's."""

from pathlib import Path

import pytest

from cratelab.config import load_config, load_sweep_config
from cratelab.models import build_model
from cratelab.sweep.design import expand

from .test_param_counts import PAPER

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = {"paper-1l": "1L", "paper-2l": "2L", "paper-3l": "3L", "paper-s": "S", "paper-b": "B"}
OFFICIAL_TOKENS_PER_STEP = 12 * 1024 * 40  # train.py: batch_size 12, block_size 1024, gradient_accumulation 5 * 8
GPUS = 8  # what the presets' comments and [sweep.slurm] gpus_per_run assume


def tokens_per_step(cfg, processes=GPUS):
    return cfg.train.batch_size * cfg.train.grad_accum * processes * cfg.model.block_size


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_preset_is_the_official_recipe_and_its_gpt_the_papers(preset):
    cfg = load_config(CONFIGS / f"{preset}.toml")
    assert tokens_per_step(cfg) == OFFICIAL_TOKENS_PER_STEP == 491_520
    assert (cfg.train.max_steps, cfg.train.warmup_steps) == (600_000, 2000)
    crate_exact, gpt_exact = PAPER[PRESETS[preset]][3:5]
    assert build_model(cfg.model).num_params() == crate_exact
    gpt = load_config(CONFIGS / f"{preset}.toml", ["model.arch=gpt"])
    assert build_model(gpt.model).num_params() == gpt_exact


def test_paper_seed_ablation_is_the_official_recipe_and_its_gpt_the_papers():
    base, sweep = load_sweep_config(CONFIGS / "seed-ablation-paper.toml")
    assert sweep.slurm.gpus_per_run == GPUS
    runs = expand(base, sweep)
    assert all(tokens_per_step(run.config) == OFFICIAL_TOKENS_PER_STEP for run in runs)
    assert all(run.config.train.max_steps == 600_000 for run in runs)
    gpt = [run for run in runs if run.config.model.arch == "gpt"]
    assert gpt and all(build_model(run.config.model).num_params() == PAPER["2L"][4] for run in gpt)
    # the confirmatory design at the paper's 2L size (issue 26): its conditions and its declared questions
    confirm = load_sweep_config(CONFIGS / "seed-ablation-confirm.toml")[1]
    assert {r.condition.name for r in runs} == {r.condition.name for r in expand(*load_sweep_config(
        CONFIGS / "seed-ablation-confirm.toml"))} and len(runs) == 40
    assert sweep.questions == confirm.questions and base.train.schedule == "wsd"
