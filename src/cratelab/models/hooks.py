"""Named hook points as in TransformerLens: read any intermediate value, or overwrite it.

Every intermediate value worth looking at passes through a `HookPoint`, an identity module whose
name is its module path (``blocks.0.ista.hook_post``). `run_with_cache` records values;
`run_with_hooks` lets a function replace them during the forward pass (e.g. steer one neuron). Hook
functions take ``(value, hook)`` with ``hook.name`` the point's name, as TransformerLens calls them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

# TransformerLens's convention: fn(value, hook=point) -> a new value, or None to leave the value unchanged;
# point.name is the hook point's name. A hook written for TransformerLens runs on these models unchanged.
HookFn = Callable[..., "torch.Tensor | None"]
# which hook points: a name, a list of names, or a predicate on names (TransformerLens's names_filter)
NamesFilter = "str | Iterable[str] | Callable[[str], bool] | None"


class HookPoint(nn.Module):
    """An identity module that names a value; ``name`` is its module path, set by the model."""

    def __init__(self):
        super().__init__()
        self.name: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class HookedModel(nn.Module):
    """Base class of the language models: forward hooks addressed by name, with TransformerLens's method
    names and signatures (``hooks``, ``run_with_hooks``, ``run_with_cache``, ``hook_dict``) and hook
    functions called as TransformerLens calls them. Not a TransformerLens HookedRootModule: importing
    transformer_lens costs seconds per process (it loads transformers), and every CLI command and sweep
    worker builds a model."""

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        points = {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}
        for name, point in points.items():
            point.name = name
        return points

    def _select(self, names: NamesFilter) -> list[str]:
        points = self.hook_dict
        if names is None:
            return list(points)
        if callable(names):
            return [n for n in points if names(n)]
        selected = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in selected if n not in points]
        if unknown:
            raise KeyError(f"unknown hook point {unknown[0]!r}; known: {', '.join(points)}")
        return selected

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NamesFilter, HookFn]] = ()) -> Iterator["HookedModel"]:
        """Attach (name or names filter, fn) hooks for the duration of a `with` block."""
        handles = []
        points = self.hook_dict
        try:
            for names, fn in fwd_hooks:
                for name in self._select(names):
                    point = points[name]
                    handles.append(point.register_forward_hook(
                        lambda _module, _inputs, output, fn=fn, point=point: fn(output, hook=point)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def run_with_hooks(self, *model_args, fwd_hooks: Iterable[tuple[NamesFilter, HookFn]] = (), **kwargs):
        with self.hooks(fwd_hooks):
            return self(*model_args, **kwargs)

    def run_with_cache(self, *model_args, names_filter: NamesFilter = None,
                       **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass that also returns the (detached) values at the selected hook points."""
        cache: dict[str, torch.Tensor] = {}

        def save(value: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = value.detach()

        out = self.run_with_hooks(*model_args, fwd_hooks=[(names_filter if names_filter is not None
                                                           else (lambda _name: True), save)], **kwargs)
        return out, cache


def set_neuron(index: int, value: float) -> HookFn:
    """A hook that fixes one neuron to a value at every position (the paper's steering experiment)."""

    def hook(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        activation = activation.clone()
        activation[..., index] = value
        return activation

    return hook
