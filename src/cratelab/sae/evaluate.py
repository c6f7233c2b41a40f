"""An SAE evaluated as SAELens does, on held-out windows of the run's validation split:

- sparsity: the model's neurons' statistics with the same names and histogram bins (evaluate.py's
  SparsityCounter counts the features as units of one layer): zero_frac, L0 (mean active features per
  token), dead features (never active on these tokens), dense features (active on more than
  `dense_threshold` of them), the log10 feature-density histogram (density_hist over DENSITY_BIN_EDGES);
- reconstruction: MSE (summed over dimensions, mean over tokens), explained variance
  1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 pooled over all tokens, and FVU = 1 - explained variance;
- the model's next-token loss clean, with the SAE spliced in (the hook's value replaced by its
  reconstruction), and with the hook zero-ablated; loss recovered = (zero - spliced) / (zero - clean).

train_and_evaluate_sae is the one "train, then evaluate" of `cratelab sae` and of a sweep's SAE arms: the
evaluation is of sae.eval_tokens held-out tokens (an SAE arm sets it to its run's eval.tokens, so that its
losses are on the windows its base run's val_loss is).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..checkpoint import Checkpoint
from ..data.batches import eval_windows
from ..errors import CratelabError
from ..evaluate import SparsityCounter
from ..io import read_json_object, write_json
from ..layout import EVAL
from .activations import replaced
from .config import SAEConfig
from .load import SAEFolder, load_sae_folder
from .train import train_sae

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
    sparsity = SparsityCounter(1, d_sae, device)  # the features as the units of one layer
    sums = {"n": 0, "sse": 0.0, "x": 0.0, "xx": 0.0, "clean": 0.0, "spliced": 0.0, "zero": 0.0}

    def splice(acts: torch.Tensor) -> torch.Tensor:
        x = acts.float()
        feats = sae.encode(x)
        recon = sae.decode(feats)
        flat = x.reshape(-1, x.shape[-1]).double()
        sparsity.add(0, feats)
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
    dictionary_norm = float(sae.W_dec.detach().float().norm(dim=1).mean())
    features = dataclasses.asdict(sparsity.layer_sparsity(0, dense_threshold, dictionary_norm))
    clean, spliced, zero = sums["clean"] / n, sums["spliced"] / n, sums["zero"] / n
    explained = 1.0 - sums["sse"] / sst if sst > 0 else math.nan
    result = {
        "hook": hook, "architecture": sae.cfg.architecture(), "d_in": sae.cfg.d_in, "d_sae": d_sae, "n_tokens": n,
        **{key: value for key, value in features.items() if key not in ("layer", "n_neurons")},
        "dense_threshold": dense_threshold, "mse": sums["sse"] / n, "explained_variance": explained,
        "fvu": 1.0 - explained, "ce_loss_clean": clean, "ce_loss_with_sae": spliced, "ce_loss_zero_ablation": zero,
        "ce_loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else math.nan,
        "requested_tokens": tokens,  # the setting that chose the windows
    }
    if out is not None:
        write_json(Path(out) / EVAL, {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                           for k, v in result.items()})
    return result


def format_eval(result: dict[str, Any]) -> str:
    rows = [("L0 (active features / token)", f"{result['l0']:.2f} of {result['d_sae']}"),
            ("zero fraction", f"{result['zero_frac']:.4f}"), ("dead fraction", f"{result['dead_frac']:.4f}"),
            (f"dense fraction (> {result['dense_threshold']})", f"{result['dense_frac']:.4f}"),
            ("explained variance", f"{result['explained_variance']:.4f}"), ("FVU", f"{result['fvu']:.4f}"),
            ("MSE", f"{result['mse']:.5g}"), ("CE loss clean", f"{result['ce_loss_clean']:.4f}"),
            ("CE loss with SAE", f"{result['ce_loss_with_sae']:.4f}"),
            ("CE loss zero-ablated", f"{result['ce_loss_zero_ablation']:.4f}"),
            ("CE loss recovered", f"{result['ce_loss_recovered']:.4f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + f"\n({result['n_tokens']:,} held-out tokens, {result['hook']})"


def train_and_evaluate_sae(ckpt: Checkpoint, hook: str, out: Path, cfg: SAEConfig, *, dense_threshold: float,
                           fresh: bool = False, progress: bool = False) -> tuple[SAEFolder, dict[str, Any]]:
    """Train (or resume, or find finished) the SAE of `hook` in `out`, then evaluate it on cfg.eval_tokens
    held-out tokens into out/eval.json; an evaluation already there of the same settings is read, not redone
    (a damaged one is redone)."""
    from ..runtime import resolve_device

    device = resolve_device(cfg.device, setting="sae.device")
    train_sae(ckpt, hook, out, cfg, fresh=fresh, progress=progress)
    folder = load_sae_folder(out)
    if (out / EVAL).is_file():
        try:
            saved = read_json_object(out / EVAL, what="SAE evaluation")
        except CratelabError:
            saved = {}
        if saved.get("requested_tokens") == cfg.eval_tokens and saved.get("dense_threshold") == dense_threshold:
            return folder, saved
    return folder, evaluate_sae(ckpt, folder.sae, hook, tokens=cfg.eval_tokens, device=device,
                                batch_size=cfg.model_batch_size, dense_threshold=dense_threshold, out=out,
                                progress=progress)
