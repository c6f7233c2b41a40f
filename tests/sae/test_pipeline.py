"""An SAE on a real (tiny) GPT run: SAELens opens it, the spliced loss lies between clean and zero-ablated,
training resumes, interpret scores its features, and bad input is one line with exit code 2."""

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("sae_lens")  # the optional extra cratelab[sae]

from cratelab.interp.run import interpret  # noqa: E402
from cratelab.config import InterpConfig, RecordConfig  # noqa: E402
from cratelab.io import read_jsonl  # noqa: E402
from cratelab.sae import SAEConfig, evaluate_sae, load_sae_folder, sae_source, train_sae  # noqa: E402

HOOK = "blocks.0.mlp.hook_post"
CFG = SAEConfig(expansion_factor=2, l1_coefficient=0.05, lr=1e-2, tokens=64 * 120, batch_size=64, buffer_tokens=1024,
                model_batch_size=8, eval_tokens=1024, dead_feature_window=20, device="cpu",
                threads=1)


@pytest.fixture(scope="module")
def sae_dir(gpt_run, tmp_path_factory):
    return train_sae(gpt_run, HOOK, tmp_path_factory.mktemp("sae") / "sae", CFG)


def test_saelens_opens_it_with_the_same_encode_decode(sae_dir):
    from sae_lens import SAE

    ours = load_sae_folder(sae_dir)
    theirs = SAE.load_from_disk(sae_dir)
    x = torch.relu(torch.randn(5, 7, theirs.cfg.d_in))
    assert theirs.cfg.metadata.hook_name == HOOK and theirs.cfg.d_sae == 2 * 64
    torch.testing.assert_close(ours.sae.encode(x), theirs.encode(x))
    torch.testing.assert_close(ours.sae.decode(ours.sae.encode(x)), theirs.decode(theirs.encode(x)))
    assert (theirs.encode(x) > 0).any()


def test_spliced_loss_between_clean_and_zero_ablated(gpt_run, sae_dir):
    result = evaluate_sae(gpt_run, load_sae_folder(sae_dir).sae, HOOK, tokens=1024, out=sae_dir)
    assert result["ce_loss_clean"] < result["ce_loss_with_sae"] < result["ce_loss_zero_ablation"]
    assert 0 < result["ce_loss_recovered"] < 1
    assert 0 < result["l0"] < result["d_sae"] and 0 <= result["dead_fraction"] < 1
    assert result["explained_variance"] == pytest.approx(1 - result["fvu"]) and result["fvu"] < 1
    saved = json.loads((sae_dir / "eval.json").read_text())
    assert saved["l0"] == pytest.approx(result["l0"])


def test_resume_after_interruption_matches_uninterrupted(gpt_run, sae_dir, tmp_path, monkeypatch):
    from cratelab.sae import train as train_module

    out = tmp_path / "resumed"
    real_save, calls = train_module._save_state, []

    def save_then_stop(*args):  # a kill right after the second checkpoint
        real_save(*args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_sae(gpt_run, HOOK, out, CFG)
    monkeypatch.setattr(train_module, "_save_state", real_save)
    assert (out / "state" / "position.json").is_file() and not (out / "cfg.json").exists()
    train_sae(gpt_run, HOOK, out, CFG)
    a, b = load_sae_folder(out).sae, load_sae_folder(sae_dir).sae
    for name, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[name], msg=name)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [r["step"] for r in
                                                                      read_jsonl(sae_dir / "metrics.jsonl")]


def test_interpret_scores_sae_features(gpt_run, sae_dir, tmp_path):
    folder = load_sae_folder(sae_dir)
    icfg = InterpConfig(tokens=2048, records=RecordConfig(window=16), batch_size=8, device="cpu", bootstrap=100, neurons=40, seed=3,
                        layers=str(folder.layer), protocols="top-and-random,random-only")
    summary = interpret(gpt_run, tmp_path / "interp", icfg, progress=False, source=sae_source(folder))
    rows = read_jsonl(tmp_path / "interp" / "scores.jsonl")
    assert len(rows) == 40 * 2 and summary["n_neurons"] == folder.sae.cfg.d_sae
    assert len({r["neuron"] for r in rows}) == 40
    assert any(r["score"] is not None for r in rows)
    assert (tmp_path / "interp" / "cards" / "index.html").is_file()
    # the SAE's features, not the neurons: the firing rates are those of the encoder's outputs
    assert json.loads((tmp_path / "interp" / "run.json").read_text())["source"]["kind"] == "sae"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cratelab", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_cli_sae_then_interpret(gpt_run, tmp_path):
    out = tmp_path / "sae"
    r = _cli("sae", str(gpt_run.path), "--hook", HOOK, "--out", str(out), "--set", "sae.tokens=2048",
             "--set", "sae.batch_size=64", "--set", "sae.buffer_tokens=512", "--set", "sae.expansion_factor=2",
             "--set", "sae.eval_tokens=512", "--set", "sae.device=cpu")
    assert r.returncode == 0, r.stderr
    assert "CE loss recovered" in r.stdout and (out / "eval.json").is_file()
    r = _cli("interpret", str(out), "--out", str(tmp_path / "interp"), "--neurons", "3", "--tokens", "2048",
             "--protocol", "random-only", "--set", "interp.records.window=16", "--set", "interp.bootstrap=50")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "interp" / "summary.md").is_file()


def test_crate_sparse_code_hook(gpt_run, tmp_path):
    """CRATE's interpreted hook (the ISTA code A_T) trains and evaluates the same way (random weights suffice)."""
    from cratelab.checkpoint import load_checkpoint, save_checkpoint
    from cratelab.config import ModelConfig, RunConfig
    from cratelab.models import build_model

    cfg = RunConfig(model=ModelConfig(arch="crate", n_layer=1, n_head=2, n_embd=16, block_size=32,
                                      vocab_size=gpt_run.tokenizer.vocab_size), data=gpt_run.config.data)
    torch.manual_seed(0)
    save_checkpoint(build_model(cfg.model), cfg, gpt_run.tokenizer, tmp_path / "crate", step=0)
    crate = load_checkpoint(tmp_path / "crate")
    cfg_sae = SAEConfig(architecture="topk", k=4, expansion_factor=2, tokens=64 * 8, batch_size=64, buffer_tokens=256,
                        device="cpu", threads=1)
    out = train_sae(crate, "blocks.0.ista.hook_post", tmp_path / "sae", cfg_sae)
    folder = load_sae_folder(out)
    assert folder.sae.cfg.d_in == 64 and folder.layer == 0 and folder.sae.cfg.metadata.hook_name == folder.hook
    result = evaluate_sae(crate, folder.sae, folder.hook, tokens=256)
    assert result["l0"] <= 4 and result["ce_loss_clean"] > 0
