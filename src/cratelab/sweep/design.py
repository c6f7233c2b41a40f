"""A sweep's design: its conditions (the grid's cells, then the arms), their names and run configs, and the
(condition, seed) runs, each config built and checked here so that a bad key or level fails before anything
runs. The report reads a sweep through this module alone."""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..config import REFERENCE_ARM, Arm, ConfigError, RunConfig, SweepConfig, config_from_dict, level_text
from ..errors import CratelabError
from ..sae.config import SAEConfig, sae_config_from_dict


@dataclass(frozen=True)
class Condition:
    """A condition of the sweep: a cell of the grid (its level of each factor) or a named arm."""

    name: str  # the run names' stem, and results.csv's "condition" column
    levels: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # grid cells: factor -> level
    arm: bool = False

@dataclass
class PlannedRun:
    """One (condition, seed) run of the sweep: the run folder's name, its condition and its run config."""

    name: str
    condition: Condition
    config: RunConfig
    columns: dict[str, Any]  # its condition columns in the results: name, condition, each varied field, seed
    track: tuple[float, ...] = ()  # sweep.track: fractions of train.max_steps also evaluated and scored
    base: str = ""  # an SAE arm's run: the run whose checkpoint its SAEs are trained on (sae_arm.py)
    sae: SAEConfig | None = None  # and their [sae] settings

def grid_conditions(sweep: SweepConfig) -> list[Condition]:
    """The grid's cells (the last factor varying fastest), then the arms; names from the factor values."""
    keys = list(sweep.factors)
    leaves = [key.split(".")[-1] for key in keys]
    labels = [leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves)]  # short where unique
    cells = [Condition("-".join(_safe(f"{label}={level_text(v)}") for label, v in zip(labels, combo)) or "base",
                       dict(zip(keys, combo)))
             for combo in itertools.product(*sweep.factors.values())]
    conditions = cells + [Condition(arm.name, arm=True) for arm in sweep.arms]
    names = [c.name for c in conditions]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ConfigError("sweep", f"two conditions get the run name {clashes[0]!r}: rename the arm, or use levels "
                                   f"that read differently")
    return conditions

def _safe(text: str) -> str:
    """A folder name: characters that mean something to shells or file systems become '_'."""
    return "".join(c if c.isalnum() or c in "._=+-" else "_" for c in text)

def condition_settings(sweep: SweepConfig, condition: Condition) -> dict[str, Any]:
    """The "section.key" values a condition sets on the sweep's shared config: a cell its levels, an arm the
    reference condition's levels with its own settings on top."""
    if not condition.arm:
        return dict(condition.levels)
    arm = next(a for a in sweep.arms if a.name == condition.name)
    if arm.derived:  # an SAE arm: its base condition's model and training
        if arm.of == REFERENCE_ARM:
            return sweep.reference_levels() | arm.set
        return condition_settings(sweep, Condition(arm.of, arm=True)) | arm.set
    return sweep.reference_levels() | arm.set

def design_keys(sweep: SweepConfig) -> list[str]:
    """The fields the sweep varies (factors, then what arms set): the condition columns of the results."""
    keys = list(sweep.factors)
    for arm in sweep.arms:
        keys += [key for key in arm.set if key not in keys]
    return keys

def expand(base: RunConfig, sweep: SweepConfig) -> list[PlannedRun]:
    """Every (condition, seed) run, seed-major so that a partial sweep holds whole seeds first. Each run's
    config is built and validated here, so a bad key or level fails (naming the field) before anything runs."""
    shared = base.to_dict()
    keys = design_keys(sweep)
    conditions = grid_conditions(sweep)
    configs = {c.name: _condition_config(shared, condition_settings(sweep, c), c.name) for c in conditions}
    arms = {arm.name: (i, arm) for i, arm in enumerate(sweep.arms)}
    _check_conditions(conditions, configs, arms)
    reference = next(c.name for c in conditions if not c.arm and _is_reference(sweep, c))
    runs = []
    for seed in sweep.seeds:
        for condition in conditions:
            cfg = configs[condition.name]
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed),
                                      interp=dataclasses.replace(cfg.interp, seed=seed))
            name = f"{condition.name}-s{seed}"
            index, arm = arms.get(condition.name, (0, None))
            if arm is None or not arm.derived:
                runs.append(PlannedRun(name, condition, cfg, _condition_columns(name, condition, cfg, keys),
                                       tuple(sweep.track)))
                continue
            base = reference if arm.of == REFERENCE_ARM else arm.of
            cfg = dataclasses.replace(cfg, interp=dataclasses.replace(
                cfg.interp, neurons=arm_interp_neurons(arm, configs[base])))
            runs.append(PlannedRun(name, condition, cfg, _condition_columns(name, condition, cfg, keys),
                                   base=f"{base}-s{seed}", sae=arm_sae_config(arm, index, cfg)))
    for run in runs:  # its folder's name
        size = len(os.fsencode(run.name))
        if size > NAME_MAX:
            arm = arms.get(run.condition.name)
            field = (f"sweep.arms[{arm[0]}].name" if arm else "sweep.factors." + max(
                run.condition.levels, key=lambda key: len(level_text(run.condition.levels[key]))))
            raise ConfigError(field, f"makes the run name {run.name[:40]!r}... {size} bytes long, more than the "
                                     f"{NAME_MAX} of a file name: use {'a shorter name' if arm else 'shorter levels'}")
    return runs

NAME_MAX = 255  # bytes of a file name (a run's folder) on Linux, macOS and Windows file systems

def _check_conditions(conditions: list[Condition], configs: dict[str, RunConfig],
                      arms: dict[str, tuple[int, Arm]]) -> None:
    """What would fail only once a condition's runs are trained (their interp settings against their model),
    and trained conditions that are one another (the same runs twice under two names)."""
    seen: dict[str, str] = {}
    for condition in conditions:
        cfg = configs[condition.name]
        with in_condition(condition.name):
            cfg.interp.check_model(cfg.model.n_layer, cfg.model.block_size)
        index, arm = arms.get(condition.name, (0, None))
        if arm is not None and arm.derived:
            continue
        same = seen.setdefault(repr(cfg), condition.name)
        if same != condition.name:
            raise ConfigError(f"sweep.arms[{index}].set" if arm else "sweep.factors",
                              f"condition {condition.name} has the settings of condition {same}: the same runs "
                              f"would be trained twice")

@contextmanager
def in_condition(name: str) -> Iterator[None]:
    """Errors about one condition's settings name the condition."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(err.field, f"{str(err).removeprefix(err.field + ': ')} (condition {name})") from None
    except CratelabError as err:
        raise CratelabError(f"{err} (condition {name})") from None

def _is_reference(sweep: SweepConfig, condition: Condition) -> bool:
    levels = {key: level_text(v) for key, v in sweep.reference_levels().items()}
    return {key: level_text(v) for key, v in condition.levels.items()} == levels

def tracked_steps(fractions: tuple[float, ...] | list[float], max_steps: int) -> dict[int, float]:
    """The steps of the tracked points before the end (step -> its fraction of max_steps), from the run's own
    max_steps; fractions that round to the same step are one point (the first), those at the end are the
    run itself."""
    steps: dict[int, float] = {}
    for fraction in sorted(fractions):
        step = max(1, round(fraction * max_steps))
        if step < max_steps:
            steps.setdefault(step, fraction)
    return steps

def _condition_config(shared: dict[str, dict[str, Any]], settings: dict[str, Any], name: str) -> RunConfig:
    values = {section: dict(fields) for section, fields in shared.items()}
    for key, value in settings.items():
        section, leaf = key.split(".")
        if not isinstance(values.get(section), dict):
            raise ConfigError(key, f"unknown section {section!r} (known: {', '.join(shared)}) in condition {name}")
        values[section][leaf] = value
    with in_condition(name):
        return config_from_dict(values)

def _condition_columns(name: str, condition: Condition, cfg: RunConfig, keys: list[str]) -> dict[str, Any]:
    values = cfg.to_dict()
    row: dict[str, Any] = {"name": name, "condition": condition.name}
    for key in keys:
        section, leaf = key.split(".")
        row[key] = values[section][leaf]
    return row | {"seed": cfg.train.seed}

def selected_runs(runs: list[PlannedRun], only: list[str]) -> list[PlannedRun]:
    """The runs named by ``--only`` (all when none is named)."""
    unknown = sorted(set(only) - {r.name for r in runs})
    if unknown:
        raise ConfigError("--only", f"no run named {', '.join(unknown)} in this sweep "
                                    f"(runs: {', '.join(r.name for r in runs)})")
    return [r for r in runs if r.name in only] if only else runs


def arm_sae_config(arm: Arm, index: int, cfg: RunConfig) -> SAEConfig:
    """The [sae] settings of an SAE arm's run (checked, the error naming `sweep.arms[i].sae.key`): its
    seed is the run's seed, its eval_tokens the run's eval.tokens (its losses are on the windows of its base
    run's val_loss), and its device the run's train.device unless the arm sets one."""
    values = dict(arm.sae)
    values.setdefault("device", cfg.train.device)
    pinned = (("seed", "sweep.seeds", cfg.train.seed), ("eval_tokens", "eval.tokens", cfg.eval.tokens))
    for key, setting, value in pinned:
        if key in arm.sae:
            raise ConfigError(f"sweep.arms[{index}].sae.{key}", f"is set by {setting}")
        values[key] = value
    try:
        return sae_config_from_dict(values)
    except ConfigError as err:
        field = f"sweep.arms[{index}]." + err.field
        raise ConfigError(field, str(err).removeprefix(err.field + ": ")) from None


def arm_interp_neurons(arm: Arm, base: RunConfig) -> int:
    """Features scored per layer: as many as the base run scores neurons (all of them: the model's
    neurons per layer), drawn with the run's seed from the SAE's d_sae; `set` interp.neurons overrides."""
    return arm.set.get("interp.neurons", base.interp.neurons or base.model.n_neurons)
