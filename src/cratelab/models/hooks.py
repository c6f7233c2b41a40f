"""Named hook points, TransformerLens-style: read any intermediate value, or overwrite it.

Every intermediate value worth looking at passes through a `HookPoint`, an identity module whose
name is its module path (``blocks.0.ista.hook_post``). `run_with_cache` records values;
`run_with_hooks` lets a function replace them during the forward pass (e.g. steer one neuron).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

# fn(value, hook_name) -> new value, or None to leave the value unchanged
HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class HookPoint(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class HookedModel(nn.Module):
    """Base class of the language models: forward hooks addressed by name."""

    def hook_points(self) -> dict[str, HookPoint]:
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    def _hook_point(self, name: str) -> HookPoint:
        points = self.hook_points()
        if name not in points:
            raise KeyError(f"unknown hook point {name!r}; known: {', '.join(points)}")
        return points[name]

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]]) -> Iterator["HookedModel"]:
        """Attach (name, fn) hooks for the duration of a `with` block."""
        handles = []
        try:
            for name, fn in fwd_hooks:
                point = self._hook_point(name)
                handles.append(point.register_forward_hook(
                    lambda _module, _inputs, output, fn=fn, name=name: fn(output, name)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(self, idx: torch.Tensor, fwd_hooks: Iterable[tuple[str, HookFn]], **kwargs):
        with self.hooks(fwd_hooks):
            return self(idx, **kwargs)

    def run_with_cache(self, idx: torch.Tensor, names: Iterable[str] | Callable[[str], bool] | None = None,
                       **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass that also returns the (detached) values at the selected hook points."""
        if names is None:
            selected = list(self.hook_points())
        elif callable(names):
            selected = [n for n in self.hook_points() if names(n)]
        else:
            selected = list(names)
        cache: dict[str, torch.Tensor] = {}

        def save(value: torch.Tensor, name: str) -> None:
            cache[name] = value.detach()

        out = self.run_with_hooks(idx, [(name, save) for name in selected], **kwargs)
        return out, cache


def set_neuron(index: int, value: float) -> HookFn:
    """A hook that fixes one neuron to a value at every position (the paper's steering experiment)."""

    def hook(activation: torch.Tensor, _name: str) -> torch.Tensor:
        activation = activation.clone()
        activation[..., index] = value
        return activation

    return hook
