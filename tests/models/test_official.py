import pytest
import torch

from cratelab.errors import CratelabError
from cratelab.models import load_official_checkpoint

from .reference import crate_forward, random_official_state_dict


def write_official(path, sd, n_layer, n_head, n_embd, vocab, block, compiled=True):
    prefix = "_orig_mod." if compiled else ""
    model = {prefix + k: v.float() for k, v in sd.items()}
    args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block, bias=True,
                vocab_size=vocab, dropout=0.0)
    torch.save({"model": model, "model_args": args, "iter_num": 600000, "best_val_loss": torch.tensor(2.3),
                "config": {"dataset": "pile", "learning_rate": 6e-4}}, path)


@pytest.mark.parametrize("compiled", [True, False])
def test_official_checkpoint_computes_the_official_function(tmp_path, compiled):
    sd = random_official_state_dict(3, 48, 211, 32, seed=3)
    path = tmp_path / "ckpt-crate.pt"
    write_official(path, sd, 3, 6, 48, 211, 32, compiled=compiled)
    model = load_official_checkpoint(path)
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


def test_gpt_shaped_checkpoint_is_refused(tmp_path):
    sd = random_official_state_dict(1, 16, 40, 8, separate=True)
    path = tmp_path / "gpt.pt"
    write_official(path, sd, 1, 2, 16, 40, 8)
    with pytest.raises(CratelabError, match="not a crate_overcomplete checkpoint"):
        load_official_checkpoint(path)


def test_pickled_objects_are_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil(), "model_args": {}}, path)
    with pytest.raises(CratelabError, match="evil.pt"):
        load_official_checkpoint(path)
