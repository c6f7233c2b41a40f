"""Activations of one hook point, streamed from a model: the SAE's training data and its evaluation.

Training reads random windows of the training split, runs the model up to the hook point only (the
pass is cut there), and fills a fixed-size buffer of activations that is shuffled and handed out in
batches; memory is flat in the number of tokens (buffer_tokens x d_in floats). Each refill draws its
windows and its shuffle from a generator seeded by (seed, refill index), so the refill index alone is
the position in the data: a resumed run reads exactly what an uninterrupted one reads.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from ..errors import CratelabError
from ..models import LanguageModel


class _Stop(Exception):
    """Raised by the hook: nothing after the hook point is needed."""


def check_hook(model: LanguageModel, hook: str) -> None:
    points = model.hook_dict
    if hook not in points:
        known = [n for n in points if n.startswith("blocks.0.") or not n.startswith("blocks.")]
        raise CratelabError(f"unknown hook point {hook!r} for this {model.config.arch} model "
                            f"({model.config.n_layer} layers); e.g. {', '.join(known)}")


def hook_layer(hook: str) -> int:
    """The layer a hook point belongs to (blocks.{l}.…), which interpret reports the SAE's features under."""
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else 0


@torch.no_grad()
def hook_activations(model: LanguageModel, hook: str, idx: torch.Tensor) -> torch.Tensor:
    """The values at `hook` for token ids idx (B, T): (B, T, d); the model stops there."""
    captured: list[torch.Tensor] = []

    def grab(value: torch.Tensor, hook) -> None:
        captured.append(value)
        raise _Stop

    with model.hooks([(hook, grab)]):
        try:
            model(idx)
        except _Stop:
            pass
    return captured[0]


def d_in(model: LanguageModel, hook: str) -> int:
    check_hook(model, hook)
    device = next(model.parameters()).device  # the model may be on a GPU already (an SAE arm's next layer)
    return hook_activations(model, hook, torch.zeros(1, 1, dtype=torch.long, device=device)).shape[-1]


class ActivationBuffer:
    """Shuffled batches of activations at `hook` over random windows of `tokens` (1-D token ids)."""

    def __init__(self, model: LanguageModel, hook: str, tokens: np.ndarray, *, batch_size: int, buffer_tokens: int,
                 model_batch_size: int, seed: int, device: torch.device, refills_done: int = 0):
        T = model.config.block_size
        if len(tokens) < T:
            raise CratelabError(f"the training split has {len(tokens):,} tokens, fewer than one window of "
                                f"model.block_size = {T}")
        self.model, self.hook, self.tokens, self.T = model, hook, tokens, T
        self.batch_size, self.model_batch_size, self.seed, self.device = batch_size, model_batch_size, seed, device
        self.n_windows = -(-buffer_tokens // T)
        self.batches_per_refill = self.n_windows * T // batch_size
        self.refills_done = refills_done  # the position in the data (saved with checkpoints)

    def refill(self) -> torch.Tensor:
        """The next buffer: (batches_per_refill * batch_size, d) activations in a seeded random order."""
        rng = np.random.default_rng([self.seed, self.refills_done])
        starts = rng.integers(0, len(self.tokens) - self.T + 1, self.n_windows)
        chunks = []
        for i in range(0, len(starts), self.model_batch_size):
            ids = self.tokens[starts[i:i + self.model_batch_size, None] + np.arange(self.T)].astype(np.int64)
            acts = hook_activations(self.model, self.hook, torch.from_numpy(ids).to(self.device))
            chunks.append(acts.reshape(-1, acts.shape[-1]).float())
        acts = torch.cat(chunks)
        order = torch.from_numpy(rng.permutation(len(acts))).to(acts.device)
        self.refills_done += 1
        return acts[order[:self.batches_per_refill * self.batch_size]]

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Batches forever; `refills_done` counts the buffers handed out completely or in part."""
        while True:
            buffer = self.refill()
            yield from buffer.split(self.batch_size)


@contextmanager
def replaced(model: LanguageModel, hook: str, fn) -> Iterator[None]:
    """Within the block, the value at `hook` is fn(value)."""
    with model.hooks([(hook, lambda value, hook: fn(value))]):
        yield
