"""CRATE and GPT language models with named hook points."""

from ..config import ModelConfig
from .base import LanguageModel
from .crate import CRATE
from .gpt import GPT
from .hooks import HookPoint, set_neuron
from .official import load_official_checkpoint


def build_model(cfg: ModelConfig) -> LanguageModel:
    """The model a config describes: CRATE (shared or separate Q/K/V) or the GPT baseline."""
    return CRATE(cfg) if cfg.arch == "crate" else GPT(cfg)


def neuron_hook_name(arch: str, layer: int) -> str:
    """The hook point of a layer's interpreted neurons: CRATE's sparse code A_T, or GPT's MLP hidden layer."""
    return f"blocks.{layer}.ista.hook_post" if arch == "crate" else f"blocks.{layer}.mlp.hook_post"


__all__ = ["CRATE", "GPT", "HookPoint", "LanguageModel", "build_model", "load_official_checkpoint",
           "neuron_hook_name", "set_neuron"]
