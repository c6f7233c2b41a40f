"""A trained SAE folder, opened with SAELens, and its features as an activation source for `interpret`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CratelabError
from ..interp.source import ActivationSource
from ..io import sha256_file
from ..layout import SAE_JSON, SAELENS_FILES
from .train import WEIGHTS_SHA256, is_sae_folder, read_sae_json, require_sae_lens


@dataclass
class SAEFolder:
    sae: Any  # a sae_lens.SAE (inference)
    meta: dict[str, Any]  # sae.json: run, checkpoint_sha256, hook, layer, settings
    path: Path

    @property
    def hook(self) -> str:
        return self.meta["hook"]

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])


def load_sae_folder(path: str | Path) -> SAEFolder:
    path = Path(path)
    if not is_sae_folder(path):
        what = "unfinished (rerun `cratelab sae` to resume it)" if (path / SAE_JSON).is_file() else "not an SAE folder"
        raise CratelabError(f"{path}: {what}: expected sae.json and cfg.json from `cratelab sae`")
    meta = read_sae_json(path)
    weights = path / SAELENS_FILES[0]
    if not weights.is_file():
        raise CratelabError(f"{weights}: missing; rerun `cratelab sae` with --fresh to train the SAE again")
    # safetensors checks the layout of a file, not its numbers: flipped bytes would be scored without complaint
    if WEIGHTS_SHA256 not in meta:
        raise CratelabError(f"{path / SAE_JSON}: no {WEIGHTS_SHA256} (an SAE from an older cratelab), so "
                            f"{weights.name} cannot be checked; rerun `cratelab sae` with --fresh")
    if sha256_file(weights) != meta[WEIGHTS_SHA256]:
        raise CratelabError(f"{weights}: damaged (its sha256 differs from the one {SAE_JSON} recorded when it was "
                            "written); rerun `cratelab sae` with --fresh to train the SAE again")
    from safetensors import SafetensorError

    try:
        sae = require_sae_lens().SAE.load_from_disk(path, device="cpu")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else ""
        raise CratelabError(f"{path}: cannot load the SAE ({type(err).__name__}: {reason})") from None
    return SAEFolder(sae.eval(), meta, path)


def load_sae_run(folder: SAEFolder):
    """The run the SAE was trained on, checked to be the same checkpoint (a run trained on since is refused)."""
    from ..checkpoint import checkpoint_file, load_checkpoint

    ckpt = load_checkpoint(folder.meta["run"])
    if sha256_file(checkpoint_file(ckpt.path)) != folder.meta["checkpoint_sha256"]:
        raise CratelabError(f"{folder.path}: its run {ckpt.path} has changed since the SAE was trained "
                            "(another checkpoint): retrain the SAE")
    return ckpt


def sae_source(folder: SAEFolder, features: list[int] | None = None) -> ActivationSource:
    """The SAE's features at its hook point: interpret scores them with the same records and protocols as neurons.
    With `features`, only those (unit i is feature features[i]): records are built for them alone, so a
    sample of a wide SAE costs what its size does, not what d_sae does."""
    sae = folder.sae
    index = None if features is None else torch.as_tensor(features, dtype=torch.long)

    @torch.no_grad()
    def encode(acts: torch.Tensor) -> torch.Tensor:
        codes = sae.to(acts.device).encode(acts.float())
        return codes if index is None else codes[..., index.to(codes.device)]

    identity = {"kind": "sae", "hook": folder.hook, "d_sae": sae.cfg.d_sae, "sae_sha256": folder.meta[WEIGHTS_SHA256]}
    if features is not None:
        identity["features"] = list(features)
    return ActivationSource(sae.cfg.d_sae if index is None else len(features), lambda _layer: folder.hook, encode,
                            identity)
