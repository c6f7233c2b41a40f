import pytest
import torch

from cratelab.config import ConfigError, ModelConfig
from cratelab.models import build_model, neuron_hook_name, set_neuron
from cratelab.models.official import official_key_to_ours

from .reference import crate_forward, random_official_state_dict

SIZES = dict(n_layer=2, n_head=4, n_embd=32, vocab_size=97, block_size=24)


def reference_key_to_ours(key):
    """Official names, plus the reference's `transformer.h.{i}.mlp.*` for ffn = "mlp" (no official name)."""
    return key.replace("transformer.h.", "blocks.") if ".mlp." in key else official_key_to_ours(key)


def crate_with_official_weights(sd, **overrides):
    cfg = ModelConfig(arch="crate", **{**SIZES, **overrides})
    model = build_model(cfg).double().eval()
    model.load_state_dict({reference_key_to_ours(k): v for k, v in sd.items()})
    return model


@pytest.mark.parametrize("qkv", ["shared", "separate"])
@pytest.mark.parametrize("eta,lam,steps", [(0.1, 0.1, 2), (0.2, 0.05, 3), (0.05, 0.2, 1)])
def test_crate_matches_float64_reference(qkv, eta, lam, steps):
    separate = qkv == "separate"
    sd = random_official_state_dict(2, 32, 97, 24, separate=separate, seed=steps)
    model = crate_with_official_weights(sd, qkv=qkv, ista_step_size=eta, ista_lambda=lam, ista_steps=steps)
    idx = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_codes = crate_forward(sd, idx, 2, 4, eta=eta, lam=lam, steps=steps, separate=separate)
    logits, cache = model.run_with_cache(idx)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-10)
    for layer, ref_code in enumerate(ref_codes):
        code = cache[neuron_hook_name(ModelConfig(arch="crate"), layer)]
        torch.testing.assert_close(code, ref_code, rtol=1e-10, atol=1e-10)
        zero_frac = (ref_code == 0).double().mean().item()
        assert 0.05 < zero_frac < 0.95, "the test weights must give a code with zeros and non-zeros"


ABLATIONS = [  # (ffn, ista_residual, ista_decoder): every non-default combination that changes the function
    ("ista", True, "tied"), ("ista", False, "separate"), ("ista", True, "separate"),
    ("mlp", False, "tied"), ("mlp", True, "tied"),
]


@pytest.mark.parametrize("ffn,residual,decoder", ABLATIONS)
@pytest.mark.parametrize("qkv", ["shared", "separate"])
def test_ablation_options_match_float64_reference(ffn, residual, decoder, qkv):
    separate = qkv == "separate"
    sd = random_official_state_dict(2, 32, 97, 24, separate=separate, seed=7, ffn=ffn, decoder=decoder)
    options = dict(ffn=ffn, ista_residual=residual, ista_decoder=decoder)
    model = crate_with_official_weights(sd, qkv=qkv, ista_steps=3, **options)
    idx = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_codes = crate_forward(sd, idx, 2, 4, steps=3, separate=separate,
                                          ffn=ffn, residual=residual, decoder=decoder)
    logits, cache = model.run_with_cache(idx)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-10)
    for layer, ref_code in enumerate(ref_codes):
        torch.testing.assert_close(cache[neuron_hook_name(model.config, layer)], ref_code, rtol=1e-10, atol=1e-10)
        assert 0.05 < (ref_code == 0).double().mean().item() < 0.95


def test_mlp_ffn_is_interpreted_at_its_hidden_layer():
    cfg = ModelConfig(arch="crate", ffn="mlp", **SIZES)
    assert neuron_hook_name(cfg, 1) == "blocks.1.mlp.hook_post"
    model = build_model(cfg).eval()
    _, cache = model.run_with_cache(torch.randint(0, 97, (1, 8)), names_filter=[neuron_hook_name(cfg, 1)])
    assert cache["blocks.1.mlp.hook_post"].shape == (1, 8, cfg.n_neurons)
    assert not hasattr(model.blocks[0], "ista")


def test_separate_decoder_starts_as_the_tied_dictionary():
    """D is initialised to W^T (no extra random draws), so an untrained model computes the tied function."""
    torch.manual_seed(3)
    tied = build_model(ModelConfig(arch="crate", **SIZES)).eval()
    torch.manual_seed(3)
    untied = build_model(ModelConfig(arch="crate", ista_decoder="separate", **SIZES)).eval()
    decoder = untied.blocks[0].ista.decoder
    assert decoder.shape == (SIZES["n_embd"], 4 * SIZES["n_embd"])
    torch.testing.assert_close(decoder, untied.blocks[0].ista.weight.t())
    assert decoder.data_ptr() != untied.blocks[0].ista.weight.data_ptr()
    idx = torch.randint(0, 97, (2, 10))
    torch.testing.assert_close(untied(idx), tied(idx))
    _, loss = untied(idx, idx)
    loss.backward()  # and they are separate parameters: each gets its own gradient
    assert decoder.grad is not None and not torch.allclose(decoder.grad, untied.blocks[0].ista.weight.grad.t())


def test_residual_around_ista():
    model = build_model(ModelConfig(arch="crate", ista_residual=True, **SIZES)).eval()
    _, cache = model.run_with_cache(torch.randint(0, 97, (1, 8)))
    decoded = cache["blocks.0.ista.hook_post"] @ model.blocks[0].ista.weight
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_mid"] + decoded)


@pytest.mark.parametrize("field,value", [
    ("ffn", "moe"), ("ista_decoder", "untied"), ("ista_residual", 1), ("ista_steps", 65), ("ista_steps", 0),
    ("overcomplete", 65), ("ista_step_size", 1.5), ("ista_step_size", 0.0),
])
def test_ablation_options_are_validated(field, value):
    with pytest.raises(ConfigError, match=f"^model.{field}: "):
        ModelConfig(arch="crate", **{**SIZES, field: value}).validate()


def test_gpt_ignores_crate_only_options():
    """As with qkv: the GPT baseline has no ISTA, so the CRATE-only options do not change it."""
    options = dict(ffn="mlp", ista_residual=True, ista_decoder="separate", qkv="separate")
    torch.manual_seed(0)
    plain = build_model(ModelConfig(arch="gpt", **SIZES)).eval()
    torch.manual_seed(0)
    other = build_model(ModelConfig(arch="gpt", **SIZES, **options)).eval()
    idx = torch.randint(0, 97, (1, 8))
    torch.testing.assert_close(plain(idx), other(idx))
    assert neuron_hook_name(other.config, 0) == "blocks.0.mlp.hook_post"


def test_float32_model_matches_reference_to_rounding():
    sd = random_official_state_dict(2, 32, 97, 24, seed=5)
    model = build_model(ModelConfig(arch="crate", **SIZES)).eval()
    model.load_state_dict({official_key_to_ours(k): v.float() for k, v in sd.items()})
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(2))
    ref_logits, _ = crate_forward(sd, idx, 2, 4)
    torch.testing.assert_close(model(idx).double(), ref_logits, rtol=1e-4, atol=1e-4)


def test_no_residual_around_ista():
    """The ISTA output replaces the residual stream: resid_post is exactly the decoded code D A_T."""
    model = build_model(ModelConfig(arch="crate", **SIZES)).eval()
    _, cache = model.run_with_cache(torch.randint(0, 97, (1, 8)))
    decoded = cache["blocks.0.ista.hook_post"] @ model.blocks[0].ista.weight
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], decoded)


def test_separate_qkv_adds_two_d_squared_per_layer():
    shared = build_model(ModelConfig(arch="crate", qkv="shared", **SIZES)).num_params()
    separate = build_model(ModelConfig(arch="crate", qkv="separate", **SIZES)).num_params()
    assert separate - shared == SIZES["n_layer"] * 2 * SIZES["n_embd"] ** 2


def test_logits_and_loss():
    model = build_model(ModelConfig(arch="crate", **SIZES))
    idx = torch.randint(0, 97, (2, 10))
    assert model(idx).shape == (2, 10, 97)
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 10, 97) and loss.ndim == 0
    # an untrained model predicts about uniformly
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 1.0


def test_init_matches_official_scheme():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="crate", n_layer=4, n_head=4, n_embd=128, vocab_size=500, block_size=16))
    assert model.lm_head.weight is model.wte.weight
    assert abs(model.blocks[0].attn.c_attn.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].attn.c_proj.weight.std().item() - 0.02 / (2 * 4) ** 0.5) < 0.001
    bound = (6 / 128) ** 0.5  # kaiming-uniform (a=0) on fan_in = d
    w = model.blocks[0].ista.weight
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.95 * bound


def test_steering_sets_a_neuron_and_changes_the_prediction():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="crate", **SIZES)).eval()
    idx = torch.randint(0, 97, (1, 12))
    base = model(idx)
    name = neuron_hook_name(ModelConfig(arch="crate"), 1)
    with model.hooks([(name, set_neuron(7, 5.0))]):
        steered, cache = model.run_with_cache(idx, names_filter=[name])
    assert torch.all(cache[name][..., 7] == 5.0)
    assert not torch.allclose(base, steered)
    # hooks are removed after the block
    torch.testing.assert_close(model(idx), base)


def test_unknown_hook_name_is_a_clear_error():
    model = build_model(ModelConfig(arch="crate", **SIZES))
    with pytest.raises(KeyError, match="unknown hook point"):
        model.run_with_hooks(torch.zeros(1, 3, dtype=torch.long), fwd_hooks=[("blocks.9.ista.hook_post", lambda t, hook: t)])


def test_model_without_vocab_is_rejected():
    with pytest.raises(ConfigError, match="model.vocab_size"):
        build_model(ModelConfig(arch="crate"))


def test_sequence_longer_than_context_is_rejected():
    model = build_model(ModelConfig(arch="crate", **SIZES))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 25, dtype=torch.long))
