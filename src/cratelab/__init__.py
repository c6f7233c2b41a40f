"""cratelab: train CRATE white-box language models, measure neuron interpretability, run ablations."""

from .config import ModelConfig, RunConfig, load_config
from .models import build_model, load_official_checkpoint

__all__ = ["ModelConfig", "RunConfig", "build_model", "load_config", "load_official_checkpoint"]
__version__ = "0.1.0"
