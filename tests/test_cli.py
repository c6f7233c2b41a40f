"""The command line as a user meets it: real processes, exit codes, one-line errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.models.reference import random_official_state_dict


def cratelab(*args, cache, check=True):
    env = {**os.environ, "CRATELAB_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-m", "cratelab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"cratelab {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


# tests/test_bad_input.py runs every bad input of every command in one driver process; these few run as
# processes of their own, as a user's would, so that the driver's way of calling main() stays honest
@pytest.mark.parametrize("args,message", [
    (["train", "configs/tiny.toml", "--out", "{tmp}/r", "--set", "model.ista_lambda=-1"], "model.ista_lambda"),
    (["train", "configs/tiny.toml"], "--out"),
    (["eval", "{tmp}/nothing-here"], "no checkpoint"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    proc = cratelab(*[a.replace("{tmp}", str(tmp_path)) for a in args], cache=tmp_path / "cache", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


@pytest.mark.e2e
def test_train_eval_generate_end_to_end(tmp_path):
    run = tmp_path / "tiny"
    out = cratelab("train", "configs/tiny.toml", "--out", run, "--set", "train.max_steps=40",
                   "--set", "train.eval_interval=20", cache=tmp_path / "cache")
    final = json.loads(out.stdout.strip().splitlines()[-1])
    assert final["step"] == 40 and final["val_loss"] < 6.3  # below uniform over 512 tokens (6.24 nats + margin)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [20, 40]

    out = cratelab("eval", run, cache=tmp_path / "cache")
    result = json.loads((run / "eval.json").read_text())
    assert abs(result["val_loss"] - final["val_loss"]) < 1e-4  # the same held-out windows as training's eval
    assert len(result["layers"]) == 2 and 0 <= result["layers"][0]["zero_frac"] <= 1
    assert "bits/byte" in out.stdout

    out = cratelab("generate", run, "--prompt", "In the beginning", "--max-new-tokens", "8", "--show-next", "3",
                   "--set-neuron", "1:5=4.0", cache=tmp_path / "cache")
    assert "unsteered -> steered" in out.stdout and out.stdout.strip().splitlines()[-1].startswith("In the beginning")


@pytest.mark.e2e
def test_import_official_then_generate(tmp_path):
    sd = random_official_state_dict(2, 32, 50304, 64, seed=1)
    official = tmp_path / "ckpt-crate-official.pt"
    torch.save({"model": {"_orig_mod." + k: v.float() for k, v in sd.items()},
                "model_args": dict(n_layer=2, n_head=4, n_embd=32, block_size=64, bias=True, vocab_size=50304,
                                   dropout=0.0)}, official)
    out = cratelab("import-official", official, "--out", tmp_path / "imported", cache=tmp_path / "cache")
    assert "CRATE 2L d=32" in out.stdout
    out = cratelab("generate", tmp_path / "imported", "--prompt", "Hello world", "--max-new-tokens", "4",
                   "--temperature", "0", cache=tmp_path / "cache")
    assert out.stdout.startswith("Hello world")
