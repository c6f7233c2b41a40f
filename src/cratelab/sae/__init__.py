"""Sparse autoencoders on any run's hook point (the paper's GPT + SAE arm): train, evaluate, load.

An ablation arm is `train_and_evaluate_sae(ckpt, hook, out, cfg, ...)` (`train_sae`, then `evaluate_sae`),
then `interpret` on the SAE folder (its features scored like neurons, through `sae_source`). SAELens is an
optional extra: `pip install 'cratelab[sae]'`.
"""

from .config import SAEConfig, load_sae_config, sae_config_from_dict
from .evaluate import evaluate_sae, format_eval, train_and_evaluate_sae
from .load import SAEFolder, load_sae_folder, load_sae_run, sae_source
from .train import is_sae_folder, train_sae

__all__ = ["SAEConfig", "SAEFolder", "evaluate_sae", "format_eval", "is_sae_folder", "load_sae_config",
           "load_sae_folder", "load_sae_run", "sae_config_from_dict", "sae_source", "train_and_evaluate_sae",
           "train_sae"]
