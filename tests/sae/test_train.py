"""SAE training: planted sparse directions are recovered (ReLU + L1 and TopK), through SAELens's trainer."""

import pytest
import torch

pytest.importorskip("sae_lens")  # the optional extra cratelab[sae]

from cratelab.sae.config import SAEConfig  # noqa: E402
from cratelab.sae.train import fit_sae, trainer, training_sae  # noqa: E402

D_IN, N_PLANTED = 16, 8


def planted_batches(directions: torch.Tensor, batch_size: int, seed: int):
    """Activations that are sparse non-negative combinations (2 of 8 on average) of planted unit directions."""
    g = torch.Generator().manual_seed(seed)
    while True:
        on = torch.rand(batch_size, N_PLANTED, generator=g) < 0.25
        codes = on * (1 + torch.rand(batch_size, N_PLANTED, generator=g))
        yield codes @ directions


@pytest.mark.parametrize("architecture", ["relu", "topk"])
def test_recovers_planted_directions(architecture):
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(N_PLANTED, D_IN), dim=1)
    cfg = SAEConfig(architecture=architecture, d_sae=32, l1_coefficient=0.3, k=3, lr=1e-2, tokens=128 * 300,
                    batch_size=128, buffer_tokens=128, dead_feature_window=50, resample_every=100, device="cpu")
    sae = training_sae(cfg, D_IN, hook="planted", model_name="planted", context_size=1, device=torch.device("cpu"))
    train = trainer(sae, cfg, torch.device("cpu"), None)
    fit_sae(train, cfg, planted_batches(directions, cfg.batch_size, seed=1))
    decoder = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    best = (directions @ decoder.T).max(dim=1).values  # each planted direction's closest feature
    assert best.min() >= 0.9, best
