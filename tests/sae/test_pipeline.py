"""An SAE on a real (tiny) GPT run: SAELens opens it, the spliced loss lies between clean and zero-ablated,
training resumes, interpret scores its features, and bad input is one line with exit code 2."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sae_lens")  # the optional extra cratelab[sae]

from cratelab.interp.run import interpret  # noqa: E402
from cratelab.interp.config import InterpConfig, RecordConfig  # noqa: E402
from cratelab.io import read_jsonl  # noqa: E402
from cratelab.evaluate import DENSITY_BIN_EDGES  # noqa: E402
from cratelab.sae import (SAEConfig, evaluate_sae, load_sae_folder, sae_source, train_and_evaluate_sae,  # noqa: E402
                          train_sae)

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
    assert 0 < result["l0"] < result["d_sae"] and 0 <= result["dead_frac"] < 1
    assert result["explained_variance"] == pytest.approx(1 - result["fvu"]) and result["fvu"] < 1
    saved = json.loads((sae_dir / "eval.json").read_text())
    assert saved["l0"] == pytest.approx(result["l0"])
    # the features' sparsity is the neurons' (evaluate.py): the same names and histogram bins
    assert result["zero_frac"] == pytest.approx(1 - result["l0_frac"]) and 0 <= result["dense_frac"] <= 1
    assert len(result["density_hist"]) == len(DENSITY_BIN_EDGES) - 1
    assert sum(result["density_hist"]) == round((1 - result["dead_frac"]) * result["d_sae"])


def test_train_and_evaluate_reads_an_evaluation_of_the_same_settings(gpt_run, sae_dir, monkeypatch):
    from cratelab.sae import evaluate as evaluate_module

    _, first = train_and_evaluate_sae(gpt_run, HOOK, sae_dir, CFG, dense_threshold=0.1)
    assert first["requested_tokens"] == CFG.eval_tokens
    monkeypatch.setattr(evaluate_module, "evaluate_sae", lambda *a, **k: pytest.fail("evaluated again"))
    _, again = train_and_evaluate_sae(gpt_run, HOOK, sae_dir, CFG, dense_threshold=0.1)
    assert again["l0"] == first["l0"]
    monkeypatch.undo()
    _, other = train_and_evaluate_sae(gpt_run, HOOK, sae_dir, dataclasses.replace(CFG, eval_tokens=512),
                                      dense_threshold=0.1)
    assert other["requested_tokens"] == 512 and other["n_tokens"] < first["n_tokens"]
    (sae_dir / "eval.json").write_text("{damaged")
    _, redone = train_and_evaluate_sae(gpt_run, HOOK, sae_dir, CFG, dense_threshold=0.1)
    assert redone["l0"] == pytest.approx(first["l0"]) and json.loads((sae_dir / "eval.json").read_text())


@pytest.mark.parametrize("saved", [True, False], ids=["after-the-checkpoint", "between-log-and-checkpoint"])
def test_resume_after_interruption_matches_uninterrupted(gpt_run, sae_dir, tmp_path, monkeypatch, saved):
    """Killed right after the second checkpoint, or after the metrics row of that step and before its
    checkpoint (issue 27: that step was logged twice)."""
    from cratelab.sae import train as train_module

    out = tmp_path / "resumed"
    real_save, calls = train_module._save_state, []

    def save_then_stop(*args):
        calls.append(1)
        if len(calls) < 2 or saved:
            real_save(*args)
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


# ---- issue 27: `cratelab sae` under bad input (run in this process: the CLI's main(), as a user's command)
TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.toml")
SMALL = ["--set", "sae.tokens=512", "--set", "sae.batch_size=64", "--set", "sae.buffer_tokens=256",
         "--set", "sae.expansion_factor=2", "--set", "sae.eval_tokens=256", "--set", 'sae.device="cpu"',
         "--set", "sae.threads=1"]


def _main(argv, capsys) -> tuple[int, str]:
    """Exit code and stderr of `cratelab ARGV`."""
    from cratelab.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def _refused(argv, capsys, message: str) -> None:
    code, err = _main(argv, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """configs/tiny.toml trained two steps, as CRATE and as GPT."""
    from cratelab.config import load_config
    from cratelab.train import train

    root = tmp_path_factory.mktemp("tiny")
    runs = {}
    for arch in ("crate", "gpt"):
        runs[arch] = root / arch
        overrides = ["train.max_steps=2", "train.eval_interval=2", "eval.tokens=512", f'model.arch="{arch}"',
                     f"data.cache_dir={json.dumps(str(root / 'cache'))}"]
        train(load_config(TINY, overrides), runs[arch], progress=False)
    return runs


@pytest.mark.parametrize("arch", ["crate", "gpt"])
def test_cli_sae_without_hook_takes_the_interpreted_neurons_of_layer_0(tiny_runs, tmp_path, capsys, arch):
    """Issue 27: the README's default (no --hook) was a traceback."""
    from cratelab.checkpoint import load_checkpoint
    from cratelab.models import neuron_hook_name

    code, err = _main(["sae", tiny_runs[arch], "--out", tmp_path / "sae", *SMALL], capsys)
    assert code == 0, err
    hook = neuron_hook_name(load_checkpoint(tiny_runs[arch]).config.model, 0)
    assert load_sae_folder(tmp_path / "sae").hook == hook == {"crate": "blocks.0.ista.hook_post",
                                                              "gpt": "blocks.0.mlp.hook_post"}[arch]


def _interpret_folder(out):
    out.mkdir()
    (out / "run.json").write_text("{}")


def _sweep_folder(out):
    out.mkdir()
    (out / "sweep.toml").write_text("[sweep]\n")


def _log_only(out):
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')


@pytest.mark.parametrize("make, message", [
    (None, "holds a training run (ckpt.pt), not an SAE: use another --out"),
    (_interpret_folder, "holds an interpret folder (run.json), not an SAE"),
    (_sweep_folder, "holds a sweep folder (sweep.toml), not an SAE"),
    (_log_only, "holds metrics.jsonl but no sae.json: not an SAE folder"),
], ids=["training-run", "interpret-folder", "sweep-folder", "foreign-log"])
@pytest.mark.parametrize("fresh", [[], ["--fresh"]], ids=["resume", "fresh"])
def test_cli_sae_refuses_another_kind_of_run_as_out_and_touches_nothing(tiny_runs, tmp_path, capsys, make, message,
                                                                        fresh):
    """Issue 27: `sae RUN --out RUN` deleted the run's metrics.jsonl and overwrote its eval.json."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(tiny_runs["gpt"], out) if make is None else make(out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".cratelab.lock"}
    _refused(["sae", tiny_runs["gpt"], "--out", out, *SMALL, *fresh], capsys, f"{out} {message}")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".cratelab.lock"} == before


@pytest.fixture(scope="module")
def tiny_sae(tiny_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-sae") / "sae"
    from cratelab.cli import main

    main(["sae", str(tiny_runs["gpt"]), "--hook", HOOK, "--out", str(out), *SMALL])
    return out


def _flip(data: bytes) -> bytes:
    raw = bytearray(data)
    raw[-20] ^= 0x5A  # inside the last tensor's numbers: the file still parses
    return bytes(raw)


DAMAGE = {"flipped": _flip, "truncated": lambda data: data[: len(data) // 2], "empty": lambda data: b"",
          "garbage": lambda data: os.urandom(len(data))}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", ["interpret", "sae"])
def test_damaged_sae_weights_are_refused_by_name(tiny_runs, tiny_sae, tmp_path, capsys, damage, command):
    """Issue 27: flipped bytes in sae_weights.safetensors were scored without complaint; a truncated, empty or
    garbage file was a traceback."""
    import shutil

    folder = tmp_path / "sae"
    shutil.copytree(tiny_sae, folder)
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(DAMAGE[damage](weights.read_bytes()))
    argv = (["interpret", folder, "--out", tmp_path / "interp", "--neurons", "2", "--tokens", "1024"]
            if command == "interpret" else ["sae", tiny_runs["gpt"], "--hook", HOOK, "--out", folder, *SMALL])
    _refused(argv, capsys, f"{weights}: damaged (its sha256 differs from the one sae.json recorded")
    assert not (tmp_path / "interp").exists()


def _edit_json(path, **changes):
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


FOLDER_DAMAGE = {  # another file of the SAE folder damaged: (how, the message)
    "sae-json-garbage": (lambda f: (f / "sae.json").write_bytes(os.urandom(64)), "sae.json: not a valid JSON SAE"),
    "sae-json-empty-object": (lambda f: (f / "sae.json").write_text("{}"), "sae.json: not a valid SAE description (no"),
    "sae-json-layer": (lambda f: _edit_json(f / "sae.json", layer="x"), "('layer' is 'x', not an integer)"),
    "sae-json-hook": (lambda f: _edit_json(f / "sae.json", hook=5), "('hook' is 5, not a string)"),
    "cfg-json-garbage": (lambda f: (f / "cfg.json").write_bytes(os.urandom(64)), ": cannot load the SAE ("),
    "cfg-json-empty-object": (lambda f: (f / "cfg.json").write_text("{}"), ": cannot load the SAE (KeyError"),
    "cfg-json-list": (lambda f: (f / "cfg.json").write_text("[1]"), ": cannot load the SAE (TypeError"),
}


@pytest.mark.parametrize("damage", FOLDER_DAMAGE)
@pytest.mark.parametrize("command", ["interpret", "sae"])
def test_other_damaged_sae_files_are_one_line(tiny_runs, tiny_sae, tmp_path, capsys, damage, command):
    """Issue 27: every file of an SAE folder damaged; a sae.json layer that is not a number was a traceback."""
    import shutil

    folder = tmp_path / "sae"
    shutil.copytree(tiny_sae, folder)
    how, message = FOLDER_DAMAGE[damage]
    how(folder)
    argv = (["interpret", folder, "--out", tmp_path / "interp", "--neurons", "2", "--tokens", "1024"]
            if command == "interpret" else ["sae", tiny_runs["gpt"], "--hook", HOOK, "--out", folder, *SMALL])
    _refused(argv, capsys, message)


def test_an_sae_rerun_with_other_settings_names_each_changed_field(tiny_runs, tiny_sae, capsys):
    """Issue 27: the message printed the whole settings dict."""
    _refused(["sae", tiny_runs["gpt"], "--hook", HOOK, "--out", tiny_sae, *SMALL, "--set", "sae.lr=0.001",
              "--set", "sae.k=8"], capsys,
             f"{tiny_sae} holds an SAE made with other settings (sae.k 32 -> 8; sae.lr 0.0004 -> 0.001); use another "
             "--out, or --fresh to start over")
    _refused(["sae", tiny_runs["gpt"], "--out", tiny_sae, *SMALL, "--hook", "blocks.1.mlp.hook_post"], capsys,
             "(hook 'blocks.0.mlp.hook_post' -> 'blocks.1.mlp.hook_post')")


STATE_DAMAGE = [("sae_weights.safetensors", b""), ("sae_weights.safetensors", b"garbage"),
                ("trainer_state.pt", b""), ("trainer_state.pt", b"PK\x03\x04 not a zip"),
                ("activation_scaler.json", b"{"),
                ("position.json", b'{"refills_done": 1'), ("position.json", b"[1]"), ("position.json", b"{}")]


@pytest.mark.parametrize("name, data", STATE_DAMAGE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(STATE_DAMAGE)])
def test_a_damaged_resume_state_is_one_line(gpt_run, tmp_path, monkeypatch, capsys, name, data):
    """Issue 27: a damaged state/ file of an interrupted `cratelab sae` was a traceback."""
    from cratelab.sae import train as train_module

    out = tmp_path / "sae"
    real_save = train_module._save_state

    def save_then_stop(*args):  # a kill right after the first checkpoint
        real_save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_sae(gpt_run, HOOK, out, CFG)
    monkeypatch.setattr(train_module, "_save_state", real_save)
    assert (out / "state" / name).is_file()
    (out / "state" / name).write_bytes(data)
    cfg = [f"--set=sae.{k}={json.dumps(v)}" for k, v in CFG.to_dict().items()]
    named = out / "state" / (name if name in ("sae_weights.safetensors", "position.json") else "")
    _refused(["sae", gpt_run.path, "--hook", HOOK, "--out", out, *cfg], capsys,
             f"{str(named).rstrip('/')}: damaged SAE resume state (")


def test_every_sae_training_sets_its_own_threads(gpt_run, sae_dir):
    """Issue 27: with sae.threads = 0 an SAE (an SAE arm of a sweep) ran on whatever thread count the process
    had set last (a rerun 13x slower, sae_fvu different in the 16th digit): 0 is torch's default, set each time."""
    from cratelab.runtime import DEFAULT_THREADS

    other = DEFAULT_THREADS + 1
    torch.set_num_threads(other)
    try:
        train_sae(gpt_run, HOOK, sae_dir, dataclasses.replace(CFG, threads=0))  # finished: nothing to train
        assert torch.get_num_threads() == DEFAULT_THREADS
        train_sae(gpt_run, HOOK, sae_dir, dataclasses.replace(CFG, threads=other))
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(DEFAULT_THREADS)


def test_an_sae_arm_refuses_its_damaged_sae_by_name(gpt_run, sae_dir, tmp_path):
    """Issue 27: `ablate` went on from a damaged SAE of an interrupted SAE arm (flipped bytes scored, a
    truncated file a traceback); its run now fails with the line naming the file."""
    import shutil

    from cratelab.errors import CratelabError
    from cratelab.sweep.sae_arm import run_sae_arm

    run_dir = tmp_path / "runs" / "gpt-sae-s0"
    layer0 = run_dir / "sae" / "layer0"
    shutil.copytree(sae_dir, layer0)
    weights = layer0 / "sae_weights.safetensors"
    weights.write_bytes(_flip(weights.read_bytes()))
    with pytest.raises(CratelabError, match=f"^{weights}: damaged"):
        run_sae_arm(run_dir, gpt_run.path, {}, gpt_run.config, CFG, {"name": "gpt-sae-s0"})
    assert not (run_dir / "result.json").exists()


@pytest.mark.parametrize("setting, message", [
    ("sae.expansion_factor=100000000", "sae.expansion_factor: SAE matrices of 64 x 6,400,000,000 need at least"),
    ("sae.d_sae=1000000000000", "sae.d_sae: SAE matrices of 64 x 1,000,000,000,000 need at least"),
    ("sae.buffer_tokens=1000000000000000", "sae.buffer_tokens: 1,000,000,000,000,000 buffered activations of 64 "),
])
def test_an_sae_larger_than_the_machine_is_refused_before_anything_is_written(gpt_run, tmp_path, capsys, setting,
                                                                             message):
    """Issue 27 (extreme arguments): a huge SAE failed with out of memory, blaming train.batch_size, after its
    sae.json was written."""
    out = tmp_path / "sae"
    _refused(["sae", gpt_run.path, "--hook", HOOK, "--out", out, *SMALL, "--set", "sae.tokens=1000000000000000",
              "--set", setting], capsys, message)
    assert [p.name for p in out.iterdir()] == [".cratelab.lock"]


def test_an_sae_seed_torch_would_take_for_another_is_refused(gpt_run, tmp_path, capsys):
    """Issue 27: torch keeps 32 bits of a seed, so sae.seed 2^32 trained the SAE of seed 0."""
    _refused(["sae", gpt_run.path, "--hook", HOOK, "--out", tmp_path / "sae", *SMALL, "--set", "sae.seed=4294967296"],
             capsys, "sae.seed: must be in [0, 4294967295]")
