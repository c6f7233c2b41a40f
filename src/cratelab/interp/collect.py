"""From a model to neuron records: run it over held-out text, streaming each layer's interpreted
activations into one RecordBuilder per layer.

The text is the validation split, read as windows of the model's context length spread evenly over
the split (so a split ordered by source is sampled everywhere). Windows need not start at a document:
the builder clips every record at the end-of-text tokens inside a window.

Memory stays flat in the number of tokens: a batch's activations are handed to the builders from
inside the forward pass, one layer at a time, and dropped; the builders keep fixed-size buffers plus
the token ids (4 bytes a token a layer). The pass stops after the last interpreted layer: the LM head,
often the largest matmul of a small model, is never computed (bench/bench_interp.py: collection then
costs less than a plain forward pass, though building the records adds about 20-30% of one).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..config import RecordConfig
from ..data.batches import spread_offsets
from ..errors import CratelabError
from ..models import LanguageModel, neuron_hook_name
from .records import LayerRecords, RecordBuilder


def window_offsets(n_available: int, block_size: int, n_tokens: int) -> np.ndarray:
    """Starts of ceil(n_tokens / block_size) non-overlapping windows spread evenly over n_available
    tokens (as many as fit when the split is shorter)."""
    if n_available < block_size:
        raise CratelabError(f"the validation split has {n_available:,} tokens, fewer than one window of "
                            f"model.block_size = {block_size}")
    return spread_offsets(n_available, block_size, -(-n_tokens // block_size))  # ceil


class _Stop(Exception):
    """Raised by the last interpreted layer's hook: nothing after it is needed."""


@torch.no_grad()
def collect_records(model: LanguageModel, tokens: np.ndarray, vocab: Sequence[str], *, layers: Sequence[int],
                    n_tokens: int, eot_id: int | None = None, seed: int = 0, config: RecordConfig = RecordConfig(),
                    batch_size: int = 16, device: str | torch.device = "cpu",
                    progress: bool = False) -> dict[int, LayerRecords]:
    """Neuron records of the given layers over about n_tokens tokens of `tokens` (1-D token ids).

    vocab: token id -> readable string (the records show these). One forward pass per batch of
    windows feeds every layer's builder; same inputs and seed, same records, whatever batch_size.
    """
    cfg = model.config
    layers = sorted(set(layers))
    if not layers or not all(0 <= layer < cfg.n_layer for layer in layers):
        raise CratelabError(f"layers {layers} out of range (the model has {cfg.n_layer} layers)")
    T = cfg.block_size
    offsets = window_offsets(len(tokens), T, n_tokens)
    builders = {layer: RecordBuilder(cfg.n_neurons, list(vocab), eot_id=eot_id, layer=layer, seed=seed,
                                     config=config) for layer in layers}
    model.eval().to(device)
    batch: dict[str, np.ndarray] = {}

    def feed(layer: int):
        def hook(activations: torch.Tensor, _name: str) -> None:
            builders[layer].add(batch["ids"], activations)
            if layer == layers[-1]:
                raise _Stop

        return hook

    hooks = [(neuron_hook_name(cfg.arch, layer), feed(layer)) for layer in layers]
    with tqdm(total=len(offsets) * T, unit="tok", unit_scale=True, desc="records", disable=not progress) as bar, \
            model.hooks(hooks):
        for start in range(0, len(offsets), batch_size):
            starts = offsets[start:start + batch_size]
            batch["ids"] = np.asarray(tokens[starts[:, None] + np.arange(T)], dtype=np.int64)
            try:
                model(torch.from_numpy(batch["ids"]).to(device))
            except _Stop:
                pass
            bar.update(batch["ids"].size)
    return {layer: builder.finish() for layer, builder in builders.items()}
