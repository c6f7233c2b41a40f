"""From a model to neuron records: run it over held-out text, streaming each layer's interpreted
activations into one RecordBuilder per layer.

The text is the validation split, read as windows of the model's context length spread evenly over
the split (so a split ordered by source is sampled everywhere). Windows need not start at a document:
the builder clips every record at the end-of-text tokens inside a window.

The model reads the text twice, with the same batches: the builders' first pass collects the records,
the second counts every activation into each neuron's quantile grid, so that the quantile bins are
the true ones (sampling.py); once with interp.records.quantiles = "sample". Memory stays flat in the number of tokens: a batch's activations are
handed to the builders from inside the forward pass, one layer at a time, and dropped; the builders keep fixed-size buffers plus
the token ids (4 bytes a token a layer). Each pass stops after the last interpreted layer: the LM head,
often the largest matmul of a small model, is never computed (bench/bench_interp.py measures
collection against a plain forward pass).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..data.batches import spread_offsets
from ..errors import CratelabError
from ..models import LanguageModel
from .activations import LayerRecords
from .config import RecordConfig
from .sampling import RecordBuilder
from .source import ActivationSource, model_neurons


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
                    progress: bool = False, source: ActivationSource | None = None) -> dict[int, LayerRecords]:
    """Neuron records of the given layers over about n_tokens tokens of `tokens` (1-D token ids).

    vocab: token id -> readable string (the records show these). One forward pass per batch of
    windows feeds every layer's builder; same inputs and seed, same records, whatever batch_size.
    source: what is recorded (default: the interpreted neurons of each layer).
    """
    cfg = model.config
    source = source or model_neurons(cfg)
    layers = sorted(set(layers))
    if not layers or not all(0 <= layer < cfg.n_layer for layer in layers):
        raise CratelabError(f"layers {layers} out of range (the model has {cfg.n_layer} layers)")
    T = cfg.block_size
    offsets = window_offsets(len(tokens), T, n_tokens)
    builders = {layer: RecordBuilder(source.n_units, list(vocab), eot_id=eot_id, layer=layer, seed=seed,
                                     config=config) for layer in layers}
    model.eval().to(device)
    batch: dict[str, np.ndarray] = {}
    step = {"method": "add"}

    def feed(layer: int):
        def record(activations: torch.Tensor, hook) -> None:
            getattr(builders[layer], step["method"])(batch["ids"], source.transform(activations))
            if layer == layers[-1]:
                raise _Stop

        return record

    hooks = [(source.hook_name(layer), feed(layer)) for layer in layers]
    passes = ("add", "count") if config.quantiles == "exact" else ("add",)  # the second pass: exact quantiles
    with tqdm(total=len(passes) * len(offsets) * T, unit="tok", unit_scale=True,
              desc=f"records ({len(passes)} pass{'es' if len(passes) > 1 else ''})",
              disable=not progress) as bar, model.hooks(hooks):
        for step["method"] in passes:  # the builders read the same batches again
            for start in range(0, len(offsets), batch_size):
                starts = offsets[start:start + batch_size]
                batch["ids"] = np.asarray(tokens[starts[:, None] + np.arange(T)], dtype=np.int64)
                try:
                    model(torch.from_numpy(batch["ids"]).to(device))
                except _Stop:
                    pass
                bar.update(batch["ids"].size)
    return {layer: builder.finish() for layer, builder in builders.items()}
