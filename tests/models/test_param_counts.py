"""Parameter counts of the paper's sizes (paper-facts section 2; position embeddings excluded, as in
the paper and nanoGPT). Exact counts are pinned; the paper's printed values agree to 0.1M
(it prints 55.9M for CRATE-S, a known misprint of 59.9M). The paper's GPT-2 is the official baseline
without biases (model.bias = false; 6,832,768 at 2L and 123,587,328 at B, as the issue quotes them)."""

import pytest

from cratelab.config import ModelConfig
from cratelab.models import build_model

PAPER = {  # name: (layers, d, heads, CRATE exact, GPT exact, CRATE paper M, GPT paper M)
    "1L": (1, 128, 4, 6_538_112, 6_635_904, 6.54, 6.64),
    "2L": (2, 128, 4, 6_637_056, 6_832_768, 6.64, 6.83),
    "3L": (3, 128, 4, 6_736_000, 7_029_632, 6.74, 7.03),
    "S": (6, 768, 12, 59_891_712, 81_110_784, 59.9, 81.1),
    "B": (12, 768, 12, 81_148_416, 123_587_328, 81.2, 123.6),
}


def paper_shape(name):
    layers, d, heads = PAPER[name][:3]
    return dict(n_layer=layers, n_embd=d, n_head=heads, vocab_size=50304, block_size=1024)


@pytest.mark.parametrize("name", PAPER)
def test_paper_sizes(name):
    crate_exact, gpt_exact, crate_paper, gpt_paper = PAPER[name][3:]
    crate = build_model(ModelConfig(arch="crate", **paper_shape(name))).num_params()
    gpt = build_model(ModelConfig(arch="gpt", bias=False, **paper_shape(name))).num_params()
    assert (crate, gpt) == (crate_exact, gpt_exact)
    assert abs(crate / 1e6 - crate_paper) < 0.1 and abs(gpt / 1e6 - gpt_paper) < 0.1


@pytest.mark.parametrize("name", PAPER)
def test_bias_adds_gpt2s_biases_and_leaves_crate_as_the_official_code_does(name):
    """model.bias = true (the default, unchanged for existing configs) gives the GPT a bias in each of its
    Linear and LayerNorm layers: 11 d per layer (ln_1, c_attn 3d, c_proj, ln_2, c_fc 4d, c_proj) and ln_f's d.
    CRATE is the official model whatever bias says (its fixed biases stay)."""
    d, n_layer = paper_shape(name)["n_embd"], paper_shape(name)["n_layer"]
    crate_exact, gpt_exact = PAPER[name][3:5]
    assert build_model(ModelConfig(arch="gpt", **paper_shape(name))).num_params() == gpt_exact + 11 * d * n_layer + d
    assert build_model(ModelConfig(arch="crate", bias=False, **paper_shape(name))).num_params() == crate_exact


SHAPE_2L = dict(n_layer=2, n_embd=128, n_head=4, vocab_size=50304, block_size=1024)


@pytest.mark.parametrize("options,exact", [
    ({}, 6_637_056),
    ({"ista_residual": True}, 6_637_056),  # a residual has no parameters
    ({"ista_decoder": "separate"}, 6_637_056 + 2 * 128 * 512),  # D: (d, h) per layer
    # ISTA's W (h x d) replaced by c_fc (h x d + h) and c_proj (d x h + d) per layer
    ({"ffn": "mlp"}, 6_637_056 + 2 * (128 * 512 + 512 + 128)),
    ({"ffn": "mlp", "qkv": "separate"}, 6_637_056 + 2 * (128 * 512 + 512 + 128) + 2 * 2 * 128 ** 2),
    ({"overcomplete": 8}, 6_637_056 + 2 * 128 * 512),
])
def test_crate_ablation_sizes(options, exact):
    assert build_model(ModelConfig(arch="crate", **SHAPE_2L, **options)).num_params() == exact


def test_crate_mlp_is_the_baselines_mlp():
    """With ffn = "mlp" and separate Q,K,V, CRATE's parameters are GPT-2's but for its q, k, v biases."""
    crate_mlp = build_model(ModelConfig(arch="crate", ffn="mlp", qkv="separate", **SHAPE_2L)).num_params()
    gpt = build_model(ModelConfig(arch="gpt", **SHAPE_2L)).num_params()
    assert gpt - crate_mlp == 2 * 3 * 128  # GPT-2's c_attn bias (3d) per layer
