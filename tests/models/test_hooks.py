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
    _, by_list = model.run_with_cache(idx, names_filter=["blocks.1.mlp.hook_post"])
    _, by_pred = model.run_with_cache(idx, names_filter=lambda n: n.endswith("mlp.hook_post"))
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


def test_hooks_are_called_as_transformer_lens_calls_them():
    """fn(value, *, hook) with hook.name, a names filter per hook, and a returned value replacing the
    value: a hook written for TransformerLens runs unchanged."""
    model = build_model(ModelConfig(arch="crate", **SIZES)).eval()
    idx = torch.randint(0, 50, (1, 5))
    seen = []

    def zero_the_code(act, *, hook):
        seen.append(hook.name)
        return torch.zeros_like(act)

    clean = model(idx)
    with model.hooks(fwd_hooks=[(lambda name: name.endswith("ista.hook_post"), zero_the_code)]):
        ablated, cache = model.run_with_cache(idx, names_filter="blocks.1.ista.hook_post")
    assert seen == ["blocks.0.ista.hook_post", "blocks.1.ista.hook_post"]
    assert (cache["blocks.1.ista.hook_post"] == 0).all() and not torch.allclose(ablated, clean)
    torch.testing.assert_close(model(idx), clean)  # the hooks are gone after the block
