"""An SAE evaluated as SAELens does, on held-out windows of the run's validation split:

- sparsity: L0 (mean active features per token), dead features (never active on these tokens), dense
  features (active on more than `dense_threshold` of them), the log10 feature-density histogram;
- reconstruction: MSE (summed over dimensions, mean over tokens), explained variance
  1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 pooled over all tokens, and FVU = 1 - explained variance;
- the model's next-token loss clean, with the SAE spliced in (the hook's value replaced by its
  reconstruction), and with the hook zero-ablated; loss recovered = (zero - spliced) / (zero - clean).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import Checkpoint
from ..data.batches import eval_windows
from ..io import write_json
from .activations import replaced

EVAL_JSON = "eval.json"
DENSITY_BINS = np.arange(-8.0, 0.5, 0.5)  # log10 firing density; dead features are counted apart


@torch.no_grad()
def evaluate_sae(ckpt: Checkpoint, sae, hook: str, *, tokens: int, device: str | torch.device = "cpu",
                 batch_size: int = 16, dense_threshold: float = 0.1, out: str | Path | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """The SAE's metrics (see the module docstring); written to out/eval.json when out is given."""
    from ..data.shards import prepare_dataset

    device = torch.device(device)
    model = ckpt.model.eval().to(device)
    sae = sae.eval().to(device)
    windows = eval_windows(prepare_dataset(ckpt.config.data, progress=progress).val, ckpt.config.model.block_size,
                           tokens)
    d_sae = sae.cfg.d_sae
    fired = torch.zeros(d_sae, dtype=torch.float64, device=device)
    sums = {"n": 0, "l0": 0.0, "sse": 0.0, "x": 0.0, "xx": 0.0, "clean": 0.0, "spliced": 0.0, "zero": 0.0}

    def splice(acts: torch.Tensor) -> torch.Tensor:
        x = acts.float()
        feats = sae.encode(x)
        recon = sae.decode(feats)
        flat, active = x.reshape(-1, x.shape[-1]).double(), feats.reshape(-1, d_sae) != 0
        sums["l0"] += active.sum().item()
        fired.add_(active.sum(0))
        sums["sse"] += (recon.reshape(flat.shape).double() - flat).pow(2).sum().item()
        sums["x"] = sums["x"] + flat.sum(0)
        sums["xx"] += flat.pow(2).sum().item()
        return recon.to(acts.dtype)

    for start in tqdm(range(0, len(windows), batch_size), desc="sae eval", unit="batch", disable=not progress):
        batch = windows[start:start + batch_size].to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        n = y.numel()
        sums["n"] += n
        sums["clean"] += model(x, y)[1].item() * n
        with replaced(model, hook, splice):
            sums["spliced"] += model(x, y)[1].item() * n
        with replaced(model, hook, torch.zeros_like):
            sums["zero"] += model(x, y)[1].item() * n

    n = sums["n"]
    sst = sums["xx"] - (sums["x"].pow(2).sum().item() / n)  # sum ||x - mean||^2
    density = (fired / n).cpu().numpy()
    alive = density[density > 0]
    hist, _ = np.histogram(np.log10(alive), bins=DENSITY_BINS) if len(alive) else (np.zeros(len(DENSITY_BINS) - 1), None)
    clean, spliced, zero = sums["clean"] / n, sums["spliced"] / n, sums["zero"] / n
    explained = 1.0 - sums["sse"] / sst if sst > 0 else math.nan
    result = {
        "hook": hook, "architecture": sae.cfg.architecture(), "d_in": sae.cfg.d_in, "d_sae": d_sae, "n_tokens": n,
        "l0": sums["l0"] / n, "l0_fraction": sums["l0"] / n / d_sae, "zero_fraction": 1.0 - sums["l0"] / n / d_sae,
        "dead_fraction": float((density == 0).mean()), "dense_fraction": float((density > dense_threshold).mean()),
        "dense_threshold": dense_threshold, "mse": sums["sse"] / n, "explained_variance": explained,
        "fvu": 1.0 - explained, "ce_loss_clean": clean, "ce_loss_with_sae": spliced, "ce_loss_zero_ablation": zero,
        "ce_loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else math.nan,
        "log10_density_histogram": {"bin_edges": DENSITY_BINS.tolist(), "counts": hist.astype(int).tolist(),
                                    "dead": int((density == 0).sum())},
    }
    if out is not None:
        write_json(Path(out) / EVAL_JSON, {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                           for k, v in result.items()})
    return result


def format_eval(result: dict[str, Any]) -> str:
    rows = [("L0 (active features / token)", f"{result['l0']:.2f} of {result['d_sae']}"),
            ("zero fraction", f"{result['zero_fraction']:.4f}"), ("dead fraction", f"{result['dead_fraction']:.4f}"),
            (f"dense fraction (> {result['dense_threshold']})", f"{result['dense_fraction']:.4f}"),
            ("explained variance", f"{result['explained_variance']:.4f}"), ("FVU", f"{result['fvu']:.4f}"),
            ("MSE", f"{result['mse']:.5g}"), ("CE loss clean", f"{result['ce_loss_clean']:.4f}"),
            ("CE loss with SAE", f"{result['ce_loss_with_sae']:.4f}"),
            ("CE loss zero-ablated", f"{result['ce_loss_zero_ablation']:.4f}"),
            ("CE loss recovered", f"{result['ce_loss_recovered']:.4f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + f"\n({result['n_tokens']:,} held-out tokens, {result['hook']})"
