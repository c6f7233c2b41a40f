import pytest
import torch

from cratelab.checkpoint import load_checkpoint
from cratelab.cli import main
from cratelab.errors import CratelabError
from cratelab.models import load_official_checkpoint

from .reference import crate_forward, gpt_forward, random_official_gpt_state_dict, random_official_state_dict


def write_official(path, sd, n_layer, n_head, n_embd, vocab, block, compiled=True, bias=True):
    prefix = "_orig_mod." if compiled else ""
    model = {prefix + k: v.float() for k, v in sd.items()}
    args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block, bias=bias,
                vocab_size=vocab, dropout=0.0)
    torch.save({"model": model, "model_args": args, "iter_num": 600000, "best_val_loss": torch.tensor(2.3),
                "config": {"dataset": "pile", "learning_rate": 6e-4}}, path)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("compiled", [True, False])
def test_official_checkpoint_computes_the_official_function(tmp_path, compiled, bias):
    """crate_overcomplete.py keeps its biases whatever model_args' bias says (train.py writes False)."""
    sd = random_official_state_dict(3, 48, 211, 32, seed=3)
    path = tmp_path / "ckpt-crate.pt"
    write_official(path, sd, 3, 6, 48, 211, 32, compiled=compiled, bias=bias)
    model = load_official_checkpoint(path)
    assert (model.config.arch, model.config.bias) == ("crate", bias)
    assert model.config.n_layer == 3 and model.config.overcomplete == 4 and model.config.ista_lambda == 0.1
    idx = torch.randint(0, 211, (2, 32), generator=torch.Generator().manual_seed(0))
    ref_logits, ref_codes = crate_forward(sd, idx, 3, 6)
    logits, cache = model.run_with_cache(idx)
    torch.testing.assert_close(logits.double(), ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cache["blocks.2.ista.hook_post"].double(), ref_codes[2], rtol=1e-4, atol=1e-4)


def test_missing_and_garbage_files_are_clear_errors(tmp_path):
    with pytest.raises(CratelabError, match="not found"):
        load_official_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CratelabError, match="bad.pt"):
        load_official_checkpoint(bad)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    sd = random_official_state_dict(1, 16, 40, 8)
    path = tmp_path / "ckpt.pt"
    write_official(path, sd, 1, 2, 16, 40, 8)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CratelabError, match="ckpt.pt"):
        load_official_checkpoint(path)


def _rounded(sd):
    """The official weights as our loader holds them (float32), in float64 for the reference."""
    return {k: v.float().double() for k, v in sd.items()}


def assert_close_to_scale(actual, reference, tol):
    """Every value within tol x the reference's largest magnitude (logits here reach about 30)."""
    error, scale = (actual.double() - reference).abs().max().item(), reference.abs().max().item()
    assert error <= tol * scale, f"max error {error:.3g} > {tol} x {scale:.3g}"


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("compiled", [True, False])
def test_official_gpt_checkpoint_computes_the_official_function(tmp_path, bias, compiled):
    """The official GPT baseline (gpt.py; train.py's default bias=False) imports as our GPT with model.bias
    alike: the same weights compute the official equations, in float64 to rounding and in float32."""
    sd = random_official_gpt_state_dict(2, 48, 211, 32, bias=bias, seed=5)
    path = tmp_path / "ckpt-gpt.pt"
    write_official(path, sd, 2, 6, 48, 211, 32, compiled=compiled, bias=bias)
    model = load_official_checkpoint(path)
    c = model.config
    assert (c.arch, c.bias, c.n_layer, c.n_head, c.overcomplete, c.mlp_act) == ("gpt", bias, 2, 6, 4, "relu")
    # the official get_num_params(): every tensor once (lm_head is wte), position embeddings left out
    official_count = sum(v.numel() for k, v in sd.items() if k not in ("lm_head.weight", "transformer.wpe.weight"))
    assert model.num_params() == official_count
    idx = torch.randint(0, 211, (2, 32), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_codes = gpt_forward(_rounded(sd), idx, 2, 6)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        logits, cache = model.to(dtype).run_with_cache(idx)
        assert_close_to_scale(logits, ref_logits, tol)
        for layer in (0, 1):
            assert_close_to_scale(cache[f"blocks.{layer}.mlp.hook_post"], ref_codes[layer], tol)


def test_import_official_gpt_writes_a_run_that_computes_the_official_function(tmp_path, capsys):
    sd = random_official_gpt_state_dict(2, 32, 50304, 64, seed=2)
    path = tmp_path / "ckpt-gpt.pt"
    write_official(path, sd, 2, 4, 32, 50304, 64, bias=False)
    main(["import-official", str(path), "--out", str(tmp_path / "imported")])
    assert capsys.readouterr().out.startswith("imported GPT 2L d=32 heads=4 vocab=50304")
    ckpt = load_checkpoint(tmp_path / "imported")
    assert (ckpt.config.model.arch, ckpt.config.model.bias) == ("gpt", False)
    idx = torch.randint(0, 50304, (1, 64), generator=torch.Generator().manual_seed(3))
    assert_close_to_scale(ckpt.model.double()(idx), gpt_forward(_rounded(sd), idx, 2, 4)[0], 1e-12)


def _crate_with_gpt_attention():
    return random_official_state_dict(1, 16, 40, 8, separate=True), True


def _gpt_with_crate_attention():
    sd = random_official_gpt_state_dict(1, 16, 40, 8)
    sd["transformer.h.0.attn.c_attn.weight"] = sd["transformer.h.0.attn.c_attn.weight"][:16]
    return sd, False


def _gpt_without_the_biases_it_declares():
    return random_official_gpt_state_dict(1, 16, 40, 8, bias=False), True


def _gpt_with_biases_it_does_not_declare():
    return random_official_gpt_state_dict(1, 16, 40, 8, bias=True), False


@pytest.mark.parametrize("make,message", [
    (_crate_with_gpt_attention, "attention projection has 48 outputs, expected 16 (CRATE's shared U; this is not a "
                                "crate_overcomplete checkpoint)"),
    (_gpt_with_crate_attention, "attention projection has 16 outputs, expected 48 (GPT-2's q, k, v; this is not a "
                                "gpt.py checkpoint)"),
    (_gpt_without_the_biases_it_declares, "does not match its model_args (missing ['blocks.0.ln_1.bias'"),
    (_gpt_with_biases_it_does_not_declare,
     "does not match its model_args (missing [], unexpected ['blocks.0.ln_1.bias'"),
])
def test_official_files_of_the_wrong_shape_are_refused(tmp_path, make, message):
    sd, bias = make()
    path = tmp_path / "ckpt.pt"
    write_official(path, sd, 1, 2, 16, 40, 8, bias=bias)
    with pytest.raises(CratelabError) as err:
        load_official_checkpoint(path)
    assert message in str(err.value)


@pytest.mark.parametrize("args,message", [
    ({"bias": "no"}, "model_args do not describe a model this cratelab can build (model.bias: must be true or false, "
                     "got 'no')"),
    ({"bias": None}, "model.bias: must be true or false, got None"),
])
def test_official_bias_must_be_a_boolean(tmp_path, args, message):
    path = tmp_path / "ckpt.pt"
    write_official(path, random_official_gpt_state_dict(1, 16, 40, 8), 1, 2, 16, 40, 8)
    ckpt = torch.load(path, weights_only=True)
    torch.save(ckpt | {"model_args": ckpt["model_args"] | args}, path)
    with pytest.raises(CratelabError) as err:
        load_official_checkpoint(path)
    assert message in str(err.value)


def test_official_file_without_bias_is_incomplete(tmp_path):
    path = tmp_path / "ckpt.pt"
    write_official(path, random_official_gpt_state_dict(1, 16, 40, 8), 1, 2, 16, 40, 8)
    ckpt = torch.load(path, weights_only=True)
    torch.save(ckpt | {"model_args": {k: v for k, v in ckpt["model_args"].items() if k != "bias"}}, path)
    with pytest.raises(CratelabError, match=r"incomplete official checkpoint \(no 'bias' in model_args"):
        load_official_checkpoint(path)


def test_pickled_objects_are_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil(), "model_args": {}}, path)
    with pytest.raises(CratelabError, match="evil.pt"):
        load_official_checkpoint(path)
