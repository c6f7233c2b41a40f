"""The learning-rate schedule of a run, and (schedule "wsd") where its tracked points branch their cooldowns.
Pure functions of the [train] settings."""

from __future__ import annotations

import math
from collections.abc import Collection

from .config import TrainConfig


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
    from. Until that step the run's learning rates are those of a run of the kept step's budget (both warm up
    alike and then hold lr), so the branch is that run, also when it starts inside the warm-up."""
    branches: dict[int, list[int]] = {}
    for step in sorted(s for s in keep_steps if s < cfg.max_steps):
        branches.setdefault(cooldown_start(step, cfg), []).append(step)
    return branches
