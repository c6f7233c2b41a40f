import pytest
import torch

from cratelab.config import ModelConfig
from cratelab.models import build_model, neuron_hook_name

SIZES = dict(n_layer=2, n_head=2, n_embd=16, vocab_size=50, block_size=12)


@pytest.mark.parametrize("arch", ["crate", "gpt"])
def test_hook_points_and_shapes(arch):
    model = build_model(ModelConfig(arch=arch, **SIZES))
    _, cache = model.run_with_cache(torch.randint(0, 50, (3, 12)))
    for layer in range(2):
        assert cache[neuron_hook_name(ModelConfig(arch=arch), layer)].shape == (3, 12, 64)
        for name in ("attn.hook_out", "attn.hook_z", "hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
            assert cache[f"blocks.{layer}.{name}"].shape == (3, 12, 16)
    assert cache["hook_embed"].shape == (3, 12, 16)


def test_cache_can_be_filtered_by_name_or_predicate():
    model = build_model(ModelConfig(arch="gpt", **SIZES))
    idx = torch.randint(0, 50, (1, 5))
    _, by_list = model.run_with_cache(idx, names=["blocks.1.mlp.hook_post"])
    _, by_pred = model.run_with_cache(idx, names=lambda n: n.endswith("mlp.hook_post"))
    assert list(by_list) == ["blocks.1.mlp.hook_post"]
    assert sorted(by_pred) == ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]


def test_gpt_mlp_is_relu_with_residual():
    model = build_model(ModelConfig(arch="gpt", **SIZES)).eval()
    _, cache = model.run_with_cache(torch.randint(0, 50, (2, 7)))
    torch.testing.assert_close(cache["blocks.0.mlp.hook_post"], torch.relu(cache["blocks.0.mlp.hook_pre"]))
    mlp = model.blocks[0].mlp
    expected = cache["blocks.0.hook_resid_mid"] + mlp.c_proj(cache["blocks.0.mlp.hook_post"])
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], expected)


def test_gelu_option():
    model = build_model(ModelConfig(arch="gpt", mlp_act="gelu", **SIZES))
    _, cache = model.run_with_cache(torch.randint(0, 50, (1, 4)))
    assert (cache["blocks.0.mlp.hook_post"] < 0).any()  # GELU, unlike ReLU, has negative outputs
