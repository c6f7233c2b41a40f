"""Held-out next-token loss (nats/token, perplexity, bits per byte) and the sparsity of the
interpreted neurons (CRATE: the sparse code A_T; GPT: the MLP post-activation), per layer.

Sparsity names follow SAELens: L0 is the mean number of non-zero neurons per token; a neuron is
dead when it never fires on the evaluation tokens and dense when it fires on more than
`dense_threshold` of them; the firing-density histogram bins log10 of each live neuron's firing rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

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
    tokens each interpreted neuron is non-zero, the sum of activations, and the tokens seen. One tensor,
    so that processes evaluating shares of the tokens can sum it (all_reduce)."""

    def __init__(self, n_layer: int, n_neurons: int):
        self.n_neurons = n_neurons
        self.counts = torch.zeros(n_layer, n_neurons + 2, dtype=torch.float64)  # [fires per neuron, act sum, tokens]

    def add(self, layer: int, acts: torch.Tensor) -> None:
        """Count one batch of a layer's activations, (..., n_neurons)."""
        acts = acts.detach().reshape(-1, self.n_neurons).float()
        row = self.counts[layer]
        row[:-2] += (acts != 0).double().sum(0).cpu()
        row[-2] += acts.double().sum().item()
        row[-1] += acts.shape[0]

    def layer_sparsity(self, layer: int, dense_threshold: float, dictionary_norm: float) -> LayerSparsity:
        fires, act_sum, n_tokens = self.counts[layer, :-2], self.counts[layer, -2].item(), self.counts[layer, -1].item()
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
             dense_threshold: float = 0.1, batch_size: int = 16, device: str | torch.device = "cpu") -> EvalResult:
    """Evaluate on `windows` (N, block_size + 1) token ids: inputs are [:, :-1], targets [:, 1:]."""
    model.eval()
    n_layer, h = model.config.n_layer, model.config.n_neurons
    hooks = [neuron_hook_name(model.config, layer) for layer in range(n_layer)]
    byte_lengths = torch.as_tensor(token_bytes, dtype=torch.float64)
    sparsity = SparsityCounter(n_layer, h)
    nats = n_bytes = n_tokens = 0.0
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size].to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        logits, cache = model.run_with_cache(x, names=hooks)
        token_nats = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        nats += token_nats.double().sum().item()
        n_bytes += byte_lengths[y.reshape(-1).cpu()].sum().item()
        n_tokens += y.numel()
        for layer, name in enumerate(hooks):
            sparsity.add(layer, cache[name])
    layers = [sparsity.layer_sparsity(layer, dense_threshold, dictionary_norm(model, layer)) for layer in range(n_layer)]
    val_loss = nats / n_tokens
    return EvalResult(tokens=int(n_tokens), val_loss=val_loss, perplexity=math.exp(min(val_loss, 700.0)),
                      bpb=nats / math.log(2) / max(n_bytes, 1.0), layers=layers)


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
    from .io import write_json
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
    report = result.to_dict() | {"checkpoint": str(ckpt.path), "step": ckpt.step}
    write_json(ckpt.path / EVAL, report)
    return result
