"""Batches of token windows: random training windows and fixed evaluation windows.

A window is ``block_size + 1`` consecutive tokens: the model reads the first ``block_size`` and
predicts the last ``block_size``. Windows may cross document boundaries (the end-of-text token
separates documents), as in GPT-2 and nanoGPT.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CratelabError


def check_split_length(tokens: np.ndarray, block_size: int, split: str) -> None:
    """A split must hold at least one window."""
    if len(tokens) < block_size + 1:
        raise CratelabError(
            f"the {split} split has {len(tokens):,} tokens: corpus too small for the context length "
            f"(model.block_size = {block_size} needs at least {block_size + 1}); use a larger corpus "
            "or a smaller model.block_size")


def gather_windows(tokens: np.ndarray, offsets: np.ndarray, block_size: int) -> torch.Tensor:
    """The windows starting at ``offsets``: int64 (len(offsets), block_size + 1)."""
    return torch.from_numpy(tokens[offsets[:, None] + np.arange(block_size + 1)].astype(np.int64))


class TrainBatches:
    """Random training windows, reproducible from a seed and resumable from ``state_dict()``.

    Each optimizer step draws the offsets of the WHOLE global batch (batch_size x grad_accum x
    world_size windows) from one generator that every process seeds identically; a process keeps
    its own slice. So one process with grad_accum=2 and two processes with grad_accum=1 train on
    exactly the same windows, and the generator state alone is the position in the data.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, grad_accum: int, seed: int,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu"):
        check_split_length(tokens, block_size, "train")
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)  # CPU generator: the same on every device

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of the next optimizer step: x, y of shape (grad_accum, batch_size, block_size)."""
        per_rank = self.batch_size * self.grad_accum
        n_starts = len(self.tokens) - self.block_size  # window [o, o + block_size] must fit in the split
        offsets = torch.randint(n_starts, (per_rank * self.world_size,), generator=self.generator)
        mine = offsets[self.rank * per_rank:(self.rank + 1) * per_rank].numpy()
        windows = gather_windows(self.tokens, mine, self.block_size)
        windows = windows.view(self.grad_accum, self.batch_size, self.block_size + 1)
        x, y = windows[..., :-1], windows[..., 1:]
        if self.device.type == "cuda":  # pinned host memory lets the copy overlap with compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def eval_windows(tokens: np.ndarray, block_size: int, n_tokens: int) -> torch.Tensor:
    """Deterministic evaluation windows: about ``n_tokens`` predicted tokens in non-overlapping windows
    spread evenly over the split (so a split ordered by document is sampled everywhere, not just at
    its start). The same windows every time, for every model: val losses are comparable across runs.
    Returns int64 (n_windows, block_size + 1): inputs are [:, :-1], targets [:, 1:].
    """
    check_split_length(tokens, block_size, "validation")
    offsets = spread_offsets(len(tokens), block_size + 1, -(-n_tokens // block_size))  # ceil
    return gather_windows(tokens, offsets, block_size)


def spread_offsets(n_available: int, width: int, n_windows: int) -> np.ndarray:
    """Starts of n_windows non-overlapping windows of `width` tokens spread evenly over n_available tokens
    (as many as fit when there are fewer; at least one): the first at 0, the last at the end."""
    n = max(1, min(n_windows, n_available // width))
    last = n_available - width
    # floor(i * last / (n - 1)): consecutive starts are at least floor(last / (n - 1)) >= width apart
    return np.arange(n, dtype=np.int64) * last // max(n - 1, 1)
