"""The learning-rate schedule of a run, and (schedule "wsd") where its tracked points branch their cooldowns.
Pure functions of the [train] settings, so the sweep checks every run's tracked points before anything trains."""

from __future__ import annotations

import math
from collections.abc import Collection

from .config import TrainConfig
from .errors import CratelabError


def lr_at(step: int, cfg: TrainConfig, budget: int | None = None) -> float:
    """The learning rate of ``step`` in a run of ``budget`` steps (default ``max_steps``): linear warm-up to ``lr``
    over ``warmup_steps``, then cosine decay to ``min_lr`` at the budget (schedule "cosine"), or ``lr`` held until
    cooldown_start(budget) and a linear decay that reaches ``min_lr`` on the budget's last step ("wsd")."""
    budget = cfg.max_steps if budget is None else budget
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "wsd":
        start = cooldown_start(budget, cfg)
        progress = min(1.0, max(0, step - start + 1) / (budget - start))
        return cfg.lr + progress * (cfg.min_lr - cfg.lr)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, budget - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def cooldown_start(budget: int, cfg: TrainConfig) -> int:
    """Schedule "wsd": the step where a budget's cooldown begins (its last ``cooldown`` share, at least 1 step)."""
    return budget - max(1, round(cfg.cooldown * budget))


def cooldown_branches(keep_steps: Collection[int], cfg: TrainConfig) -> dict[int, list[int]]:
    """Schedule "wsd": the kept steps before the end, by the step of the stable phase their cooldown branches
    from. A branch must start after the warm-up, or it would not be the run that budget gives."""
    branches: dict[int, list[int]] = {}
    for step in sorted(s for s in keep_steps if s < cfg.max_steps):
        start = cooldown_start(step, cfg)
        if start < cfg.warmup_steps:
            raise CratelabError(f"train.schedule = 'wsd': the tracked point at step {step} would start its cooldown "
                                f"at step {start}, inside the warm-up (train.warmup_steps = {cfg.warmup_steps}); "
                                f"track a later point, or lower train.warmup_steps or train.cooldown")
        branches.setdefault(start, []).append(step)
    return branches
