"""CRATE and GPT language models with named hook points."""

import torch

from ..config import ModelConfig
from .base import LanguageModel
from .crate import CRATE
from .gpt import GPT
from .hooks import HookPoint, set_neuron
from .official import load_official_checkpoint


def build_model(cfg: ModelConfig) -> LanguageModel:
    """The model a config describes: CRATE (shared or separate Q/K/V) or the GPT baseline."""
    return CRATE(cfg) if cfg.arch == "crate" else GPT(cfg)


def uses_ista(cfg: ModelConfig) -> bool:
    """Whether the model's feed-forward layers are ISTA sparse coding (CRATE with ffn = "ista") or an MLP."""
    return cfg.arch == "crate" and cfg.ffn == "ista"


def neuron_hook_name(cfg: ModelConfig, layer: int) -> str:
    """The hook point of a layer's interpreted neurons: CRATE's sparse code A_T, or the MLP hidden layer
    (the GPT baseline's, or CRATE's with ffn = "mlp")."""
    return f"blocks.{layer}.ista.hook_post" if uses_ista(cfg) else f"blocks.{layer}.mlp.hook_post"


def encoder_weight(model: LanguageModel, layer: int) -> torch.Tensor:
    """The (h, d) matrix whose rows make a layer's interpreted neurons: the ISTA dictionary W or the MLP's c_fc."""
    block = model.blocks[layer]
    return block.ista.weight if uses_ista(model.config) else block.mlp.c_fc.weight


__all__ = ["CRATE", "GPT", "HookPoint", "LanguageModel", "build_model", "encoder_weight",
           "load_official_checkpoint", "neuron_hook_name", "set_neuron", "uses_ista"]
