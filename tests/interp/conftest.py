"""Fixtures shared by the interpret tests: a tiny checkpoint over the fixture corpus."""

import pytest
import torch

from cratelab.checkpoint import save_checkpoint
from cratelab.config import DataConfig, ModelConfig, RunConfig
from cratelab.data.shards import prepare_dataset
from cratelab.models import build_model

DEAD = (3, 5)  # neurons of layer 1 whose dictionary atom is zeroed: they never fire


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A random-weight 2-layer CRATE (h = 32) over the fixture corpus, with two dead neurons in layer 1."""
    cache = tmp_path_factory.mktemp("cache")
    data = DataConfig(corpus="fixture", bpe_vocab_size=300, cache_dir=str(cache))
    tok = prepare_dataset(data, progress=False).tokenizer
    cfg = RunConfig(model=ModelConfig(n_layer=2, n_head=2, n_embd=8, block_size=32, vocab_size=tok.vocab_size),
                    data=data)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        model.blocks[1].ista.weight[list(DEAD)] = 0.0
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(model, cfg, tok, path, step=7)
    return path
