"""Where `interpret` reads the units it scores: by default each layer's interpreted neurons, or any
map of a hook point's values (an SAE's encoder: its features are scored exactly like neurons)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..config import ModelConfig
from ..models import neuron_hook_name


@dataclass(frozen=True)
class ActivationSource:
    n_units: int  # units per layer (neurons, or SAE features)
    hook_name: Callable[[int], str]  # layer -> the hook point read
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda acts: acts  # hook values (B, T, d) -> units (B, T, n)
    identity: dict[str, Any] = field(default_factory=dict)  # what makes the units these (kept with the results)


def model_neurons(cfg: ModelConfig) -> ActivationSource:
    """The interpreted neurons of each layer: CRATE's sparse code A_T, or GPT's MLP hidden layer."""
    return ActivationSource(cfg.n_neurons, lambda layer: neuron_hook_name(cfg, layer))
