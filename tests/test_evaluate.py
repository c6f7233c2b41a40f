import math

import numpy as np
import torch

from cratelab.config import ModelConfig
from cratelab.evaluate import evaluate, format_table
from cratelab.models import build_model, neuron_hook_name


def test_loss_bpb_and_sparsity_match_a_dense_computation():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="crate", n_layer=2, n_head=2, n_embd=16, vocab_size=40, block_size=8,
                                    ista_lambda=2.0))
    windows = torch.randint(0, 40, (10, 9), generator=torch.Generator().manual_seed(1))
    token_bytes = np.arange(40) % 5 + 1
    result = evaluate(model, windows, token_bytes, batch_size=3)

    logits, cache = model.run_with_cache(windows[:, :-1])
    nats = torch.nn.functional.cross_entropy(logits.reshape(-1, 40), windows[:, 1:].reshape(-1), reduction="sum")
    assert result.tokens == 80
    assert math.isclose(result.val_loss, nats.item() / 80, rel_tol=1e-5)
    assert math.isclose(result.perplexity, math.exp(result.val_loss), rel_tol=1e-9)
    assert math.isclose(result.bpb, nats.item() / math.log(2) / token_bytes[windows[:, 1:]].sum(), rel_tol=1e-5)
    for layer in range(2):
        acts = cache[neuron_hook_name(ModelConfig(arch="crate"), layer)].reshape(-1, 64)
        s = result.layers[layer]
        assert math.isclose(s.zero_frac, (acts == 0).float().mean().item(), rel_tol=1e-5)
        assert math.isclose(s.l0, (acts != 0).sum(1).float().mean().item(), rel_tol=1e-5)
        rate = (acts != 0).float().mean(0)
        assert math.isclose(s.dead_frac, (rate == 0).float().mean().item())
        assert math.isclose(s.dense_frac, (rate > 0.1).float().mean().item())
        assert sum(s.density_hist) == int((rate > 0).sum())
    assert 0 < result.layers[0].zero_frac < 1, "the test should exercise both zeros and non-zeros"
    assert "val_loss" in format_table(result) and "dead" in format_table(result)


def test_gpt_sparsity_is_measured_on_the_mlp_hidden_layer():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gpt", n_layer=1, n_head=2, n_embd=16, vocab_size=30, block_size=8))
    result = evaluate(model, torch.randint(0, 30, (4, 9)), np.ones(30))
    assert 0.2 < result.layers[0].zero_frac < 0.8  # ReLU of a random projection: about half zeros
