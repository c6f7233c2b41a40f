import pytest
import torch

from cratelab.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, save_model_checkpoint
from cratelab.config import ModelConfig, RunConfig, load_config
from cratelab.data.tokenizer import BPETokenizer
from cratelab.errors import CratelabError
from cratelab.models import build_model

TEXT = ["the cat sat on the mat", "a white box model of language", "sparse codes and subspaces"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(TEXT, vocab_size=300)


@pytest.fixture
def run(tokenizer, tmp_path):
    """A saved checkpoint: (folder, model, config)."""
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=tokenizer.vocab_size))
    model = build_model(cfg.model)
    save_checkpoint(model, cfg, tokenizer, tmp_path, step=7, tokens=448, metrics={"val_loss": 5.0})
    return tmp_path, model, cfg


def test_round_trip_restores_model_config_tokenizer_and_progress(run, tokenizer):
    folder, model, cfg = run
    for path in (folder, folder / "ckpt.pt"):
        ckpt = load_checkpoint(path)
        assert ckpt.config == cfg and ckpt.step == 7 and ckpt.tokens == 448 and ckpt.metrics == {"val_loss": 5.0}
        assert ckpt.path == folder and not ckpt.model.training
        for name, value in model.state_dict().items():
            assert torch.equal(ckpt.model.state_dict()[name], value), name
        assert ckpt.tokenizer.encode("the cat") == tokenizer.encode("the cat")
    assert load_config(folder / "config.toml") == cfg
    assert isinstance(torch.load(folder / "ckpt.pt", weights_only=True), dict)  # no code runs on load


def test_model_only_checkpoint(tokenizer, tmp_path):
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=320))
    save_model_checkpoint(model, tokenizer, tmp_path / "imported")
    ckpt = load_checkpoint(tmp_path / "imported")
    assert ckpt.step == 0 and ckpt.metrics == {} and ckpt.config.model == model.config
    assert ckpt.config.data.tokenizer == "bpe"
    assert "train" not in read_checkpoint(tmp_path / "imported")


def corrupt(path, position, value=None):
    raw = bytearray(path.read_bytes())
    raw[position] = (raw[position] ^ 0x5A) if value is None else value
    path.write_bytes(bytes(raw))


def test_flipped_bits_are_detected_not_loaded(run):
    folder, model, _ = run
    file = folder / "ckpt.pt"
    offset = file.read_bytes().find(model.wte.weight.detach().numpy().tobytes()[:64])
    assert offset > 0
    corrupt(file, offset + 10)  # inside the embedding's bytes: torch.load alone would load it silently
    with pytest.raises(CratelabError, match=f"{file}.*corrupted"):
        load_checkpoint(folder)


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_files_give_a_clear_error_naming_the_file(run, damage):
    file = run[0] / "ckpt.pt"
    raw = file.read_bytes()
    file.write_bytes({"truncate": raw[: len(raw) // 2], "empty": b"", "garbage": b"not a checkpoint" * 100}[damage])
    with pytest.raises(CratelabError, match=str(file)):
        load_checkpoint(file)


def test_other_files_are_refused(tmp_path):
    with pytest.raises(CratelabError, match="no checkpoint at"):
        load_checkpoint(tmp_path)
    torch.save({"model": {}, "model_args": {}}, tmp_path / "official.pt")
    with pytest.raises(CratelabError, match="import-official"):
        load_checkpoint(tmp_path / "official.pt")


def test_an_interrupted_save_keeps_the_previous_checkpoint(run, tokenizer, monkeypatch):
    folder, model, cfg = run

    def crash(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, cfg, tokenizer, folder, step=8)
    assert load_checkpoint(folder).step == 7
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt.pt", "config.toml"]  # no temporary file left


def test_checkpoints_from_before_the_ablation_options_load_as_the_official_model(tokenizer, tmp_path):
    """A checkpoint whose stored [model] lacks ffn / ista_residual / ista_decoder (cratelab before issue 11)
    loads with the defaults, which are the official CRATE function."""
    new_keys = ("ffn", "ista_residual", "ista_decoder")

    class ConfigBeforeIssue11(RunConfig):
        def to_dict(self):
            values = super().to_dict()
            for key in new_keys:
                del values["model"][key]
            return values

    cfg = ConfigBeforeIssue11(model=ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8,
                                                vocab_size=tokenizer.vocab_size))
    model = build_model(cfg.model)
    save_checkpoint(model, cfg, tokenizer, tmp_path)
    assert not set(new_keys) & set(read_checkpoint(tmp_path)["config"]["model"])
    ckpt = load_checkpoint(tmp_path)
    assert (ckpt.config.model.ffn, ckpt.config.model.ista_residual, ckpt.config.model.ista_decoder) == \
        ("ista", False, "tied")
    idx = torch.randint(0, tokenizer.vocab_size, (1, 8))
    torch.testing.assert_close(ckpt.model(idx), model.eval()(idx))
