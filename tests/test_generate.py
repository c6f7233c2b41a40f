import pytest
import torch

from cratelab.config import ModelConfig
from cratelab.errors import CratelabError
from cratelab.generate import MIN_TEMPERATURE, generate, next_token_distribution
from cratelab.models import build_model, neuron_hook_name, set_neuron


def small_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="crate", n_layer=2, n_head=2, n_embd=16, vocab_size=50, block_size=8))


def test_generate_extends_past_the_context_and_is_seeded():
    model = small_model()
    idx = torch.tensor([[1, 2, 3]])
    a = generate(model, idx, 12, generator=torch.Generator().manual_seed(4))
    b = generate(model, idx, 12, generator=torch.Generator().manual_seed(4))
    assert a.shape == (1, 15) and torch.equal(a, b) and torch.equal(a[:, :3], idx)
    greedy = generate(model, idx, 1, temperature=0)
    assert greedy[0, -1] == next_token_distribution(model, idx).argmax()


def test_top_k_restricts_the_choice():
    model = small_model()
    idx = torch.tensor([[5]])
    allowed = set(torch.topk(next_token_distribution(model, idx)[0], 3).indices.tolist())
    for seed in range(20):
        out = generate(model, idx, 1, top_k=3, generator=torch.Generator().manual_seed(seed))
        assert out[0, -1].item() in allowed


def test_steering_a_neuron_moves_the_next_token_distribution():
    model = small_model()
    idx = torch.tensor([[1, 2, 3, 4]])
    hooks = [(neuron_hook_name(ModelConfig(arch="crate"), 1), set_neuron(3, 10.0))]
    before = next_token_distribution(model, idx)
    after = next_token_distribution(model, idx, hooks)
    assert (before - after).abs().sum() > 1e-3
    # the steered code decodes to the old output plus (10 - old value) times dictionary atom 3
    names = ["blocks.1.hook_resid_post", "blocks.1.ista.hook_post"]
    _, base = model.run_with_cache(idx, names_filter=names)
    with model.hooks(hooks):
        _, steered = model.run_with_cache(idx, names_filter=names)
    atom = model.blocks[1].ista.weight[3].detach()
    shift = (10.0 - base["blocks.1.ista.hook_post"][..., 3:4]) * atom
    torch.testing.assert_close(steered["blocks.1.hook_resid_post"], base["blocks.1.hook_resid_post"] + shift)


def test_logits_that_are_not_finite_are_refused_not_sampled():
    """Issue 27: a huge --set-neuron value made the logits NaN, and text was sampled from them."""
    model = small_model()
    idx = torch.tensor([[1, 2, 3]])
    hooks = [(neuron_hook_name(ModelConfig(arch="crate"), 1), set_neuron(3, 1e30))]
    for call in (lambda: generate(model, idx, 2, fwd_hooks=hooks, generator=torch.Generator().manual_seed(0)),
                 lambda: generate(model, idx, 2, temperature=0, fwd_hooks=hooks),
                 lambda: next_token_distribution(model, idx, hooks)):
        with pytest.raises(CratelabError, match="next-token logits are not finite .*--set-neuron"):
            call()


def test_a_tiny_temperature_samples_the_most_likely_token():
    """Issue 27: logits / 1e-30 overflowed to inf - inf = NaN; any temperature down to float32's smallest
    normal number is the limit of sampling as the temperature goes to 0 (greedy), below it is refused."""
    model = small_model()
    idx = torch.tensor([[1, 2, 3]])
    greedy = generate(model, idx, 6, temperature=0)
    for temperature in (1e-30, MIN_TEMPERATURE):
        assert torch.equal(generate(model, idx, 6, temperature=temperature,
                                    generator=torch.Generator().manual_seed(1)), greedy)
    for temperature in (MIN_TEMPERATURE / 2, -1.0, float("inf"), float("nan")):
        with pytest.raises(CratelabError, match="temperature must be 0"):
            generate(model, idx, 1, temperature=temperature)
