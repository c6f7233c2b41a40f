import pytest

from cratelab.checkpoint import load_checkpoint
from cratelab.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from cratelab.train import train


@pytest.fixture(scope="session")
def gpt_run(tmp_path_factory):
    """A tiny GPT trained for a few seconds on the fixture corpus (its MLP matters to the loss)."""
    cache = tmp_path_factory.mktemp("cache")
    cfg = RunConfig(model=ModelConfig(arch="gpt", n_layer=1, n_head=2, n_embd=16, block_size=32),
                    data=DataConfig(corpus="fixture", bpe_vocab_size=300, cache_dir=str(cache)),
                    train=TrainConfig(batch_size=8, max_steps=60, lr=3e-3, warmup_steps=5, eval_interval=60,
                                      device="cpu", threads=1),
                    eval=EvalConfig(tokens=512))
    out = tmp_path_factory.mktemp("run") / "gpt"
    train(cfg, out)
    return load_checkpoint(out)
