"""Held-out next-token loss (nats/token, perplexity, bits per byte) and the sparsity of the
interpreted neurons (CRATE: the sparse code A_T; GPT: the MLP post-activation), per layer.

Sparsity names follow SAELens: L0 is the mean number of non-zero neurons per token; a neuron is
dead when it never fires on the evaluation tokens and dense when it fires on more than
`dense_threshold` of them; the firing-density histogram bins log10 of each live neuron's firing rate.
SparsityCounter is the one measurement of these statistics: an SAE's features (sae/evaluate.py) are
counted by it too, as units of one layer.
"""

from __future__ import annotations

import json
import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .layout import EVAL
from .models import LanguageModel, encoder_weight, neuron_hook_name


# log10 firing-rate bins from 1e-7 to 1 (dead neurons are counted apart)
DENSITY_BIN_EDGES = np.linspace(-7.0, 0.0, 29)


@dataclass
class LayerSparsity:
    layer: int
    n_neurons: int
    zero_frac: float  # share of exact zeros among all (token, neuron) activations
    l0: float  # mean non-zeros per token
    l0_frac: float  # l0 / n_neurons
    dead_frac: float
    dense_frac: float
    mean_activation: float
    dictionary_norm: float  # mean L2 norm of the layer's dictionary atoms (an MLP: of its input rows)
    density_hist: list[int] = field(default_factory=list)  # counts over DENSITY_BIN_EDGES


@dataclass
class EvalResult:
    tokens: int
    val_loss: float
    perplexity: float
    bpb: float
    layers: list[LayerSparsity]

    def to_dict(self) -> dict:
        return asdict(self)


class SparsityCounter:
    """What the sparsity statistics need, accumulated batch by batch: per layer, on how many evaluation
    tokens each interpreted neuron (or SAE feature) is non-zero, the sum of activations, and the tokens
    seen. One tensor, on the activations' device (no host sync a batch), so that processes evaluating
    shares of the tokens can sum it (all_reduce)."""

    def __init__(self, n_layer: int, n_neurons: int, device: str | torch.device = "cpu"):
        self.n_neurons = n_neurons
        # per layer: [fires per neuron..., activation sum, tokens]
        self.counts = torch.zeros(n_layer, n_neurons + 2, dtype=torch.float64, device=device)

    def add(self, layer: int, acts: torch.Tensor) -> None:
        """Count one batch of a layer's activations, (..., n_neurons)."""
        acts = acts.detach().reshape(-1, self.n_neurons)
        row = self.counts[layer]
        row[:-2] += (acts != 0).sum(0)
        row[-2] += acts.double().sum()
        row[-1] += acts.shape[0]

    def layer_sparsity(self, layer: int, dense_threshold: float, dictionary_norm: float) -> LayerSparsity:
        counts = self.counts[layer].cpu()
        fires, act_sum, n_tokens = counts[:-2], counts[-2].item(), counts[-1].item()
        h = self.n_neurons
        rate = (fires / n_tokens).numpy()
        hist, _ = np.histogram(np.log10(rate[rate > 0]), bins=DENSITY_BIN_EDGES)
        l0 = float(fires.sum().item() / n_tokens)
        return LayerSparsity(
            layer=layer, n_neurons=h, zero_frac=1.0 - l0 / h, l0=l0, l0_frac=l0 / h,
            dead_frac=float((rate == 0).mean()), dense_frac=float((rate > dense_threshold).mean()),
            mean_activation=float(act_sum / (n_tokens * h)), dictionary_norm=dictionary_norm,
            density_hist=hist.tolist())


# what training logs of each interpreted layer at every evaluation (metrics.jsonl, TensorBoard, wandb)
TRAINING_SPARSITY = ("zero_frac", "l0", "dead_frac")


def training_sparsity_metrics(layers: list[LayerSparsity]) -> dict[str, float]:
    """Flat metric names, one per layer and statistic: ``sparsity/layer{l}/{zero_frac|l0|dead_frac}``."""
    return {f"sparsity/layer{s.layer}/{stat}": getattr(s, stat) for s in layers for stat in TRAINING_SPARSITY}


def dictionary_norm(model: LanguageModel, layer: int) -> float:
    return encoder_weight(model, layer).detach().float().norm(dim=1).mean().item()


@torch.no_grad()
def evaluate(model: LanguageModel, windows: torch.Tensor, token_bytes: np.ndarray,
             dense_threshold: float = 0.1, batch_size: int = 16, device: str | torch.device = "cpu",
             forward: torch.nn.Module | None = None, autocast: AbstractContextManager | None = None,
             ddp: bool = False) -> EvalResult:
    """Evaluate on `windows` (N, block_size + 1) token ids: inputs are [:, :-1], targets [:, 1:].

    The same function evaluates during training: ``forward`` is the module that runs the batches (the
    model itself, or its compiled wrapper; the hooks that count sparsity go on ``model``), ``autocast`` the
    training's, and under DDP (``ddp``) each process holds a share of the windows and the sums are reduced."""
    forward = forward or model
    was_training = forward.training
    forward.eval()
    n_layer, h = model.config.n_layer, model.config.n_neurons
    byte_lengths = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    sparsity = SparsityCounter(n_layer, h, device)
    count_layer = lambda layer: lambda acts, hook: sparsity.add(layer, acts)  # noqa: E731
    batch_nats, batch_bytes, n_tokens = [], [], 0  # left on the device until the end: no host sync a batch
    with model.hooks([(neuron_hook_name(model.config, layer), count_layer(layer)) for layer in range(n_layer)]):
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size].to(device)
            x, y = batch[:, :-1], batch[:, 1:]
            with autocast or nullcontext():
                logits = forward(x)
            batch_nats.append(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                              reduction="sum"))
            batch_bytes.append(byte_lengths[y.reshape(-1)].sum())
            n_tokens += y.numel()
    forward.train(was_training)
    # summed in float64 in batch order on the host, as a running total would be
    sums = torch.tensor([sum(torch.stack(batch_nats).tolist()), sum(torch.stack(batch_bytes).tolist()), n_tokens],
                        dtype=torch.float64)
    if ddp:
        reduced = torch.cat([sums.to(device), sparsity.counts.reshape(-1)])
        dist.all_reduce(reduced)
        reduced = reduced.cpu()
        sums, sparsity.counts = reduced[:3], reduced[3:].reshape(sparsity.counts.shape)
    nats, n_bytes, n_tokens = sums.tolist()
    layers = [sparsity.layer_sparsity(layer, dense_threshold, dictionary_norm(model, layer)) for layer in range(n_layer)]
    val_loss = nats / n_tokens
    return EvalResult(tokens=int(n_tokens), val_loss=val_loss, perplexity=math.exp(min(val_loss, 700.0)),
                      bpb=nats / math.log(2) / max(n_bytes, 1.0), layers=layers)


def write_evaluation(result: EvalResult, folder: Path, step: int, requested_tokens: int) -> None:
    """``eval.json``: the evaluation of the checkpoint in ``folder`` at ``step``, of ``requested_tokens``
    (the setting that chose the windows)."""
    from .io import write_json

    write_json(folder / EVAL, result.to_dict() | {"checkpoint": str(folder), "step": step,
                                                  "requested_tokens": requested_tokens})


def read_evaluation(folder: Path, step: int, requested_tokens: int) -> EvalResult | None:
    """The evaluation in ``folder``'s eval.json when it is of the checkpoint at ``step`` with the same token
    setting (as training writes it at each evaluation); None when missing, older or unreadable."""
    try:
        data = json.loads((folder / EVAL).read_text())
        if data.get("step") != step or data.get("requested_tokens") != requested_tokens:
            return None
        return EvalResult(tokens=data["tokens"], val_loss=data["val_loss"], perplexity=data["perplexity"],
                          bpb=data["bpb"], layers=[LayerSparsity(**layer) for layer in data["layers"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def format_table(result: EvalResult) -> str:
    """A readable summary: the loss line, then one row of sparsity statistics per layer."""
    lines = [f"tokens {result.tokens:,}   val_loss {result.val_loss:.4f}   perplexity {result.perplexity:.2f}"
             f"   bits/byte {result.bpb:.4f}", "",
             f"{'layer':>5} {'neurons':>7} {'zero_frac':>9} {'L0':>8} {'L0/h':>6} {'dead':>6} {'dense':>6} "
             f"{'mean_act':>9} {'dict_norm':>9}"]
    for s in result.layers:
        lines.append(f"{s.layer:>5} {s.n_neurons:>7} {s.zero_frac:>9.4f} {s.l0:>8.2f} {s.l0_frac:>6.3f} "
                     f"{s.dead_frac:>6.3f} {s.dense_frac:>6.3f} {s.mean_activation:>9.4f} {s.dictionary_norm:>9.3f}")
    return "\n".join(lines)


def evaluate_checkpoint(ckpt, tokens: int = 0, device: str = "auto", progress: bool = False) -> EvalResult:
    """Evaluate a loaded checkpoint on its own held-out split and write ``eval.json`` into its folder."""

    from .checkpoint import check_tokenizer
    from .data.batches import eval_windows
    from .data.shards import prepare_dataset
    from .runtime import resolve_device

    cfg = ckpt.config
    dataset = prepare_dataset(cfg.data, progress=progress)
    check_tokenizer(ckpt, dataset.tokenizer)
    windows = eval_windows(dataset.val, cfg.model.block_size, tokens or cfg.eval.tokens)
    target = resolve_device(device)
    result = evaluate(ckpt.model.to(target), windows, dataset.tokenizer.token_byte_lengths(),
                      dense_threshold=cfg.eval.dense_threshold, device=target)
    write_evaluation(result, ckpt.path, ckpt.step, tokens or cfg.eval.tokens)
    return result
