"""Bad input to every command: exit code 2 and one line that names the field or file, never a traceback.

Every case is a real `cratelab ...` command line run outside the test process. One process per case
would spend about 2 s importing torch each time, so the cases run in ONE child process (DRIVER): it
calls the CLI's main() for each command line and records the exit code and stderr, printing an
escaped exception as Python would (a "Traceback" the test then finds). tests/test_cli.py and
tests/interp/test_run.py also run a few as separate processes. docs/robustness.md lists the messages.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cratelab.checkpoint import load_checkpoint, save_model_checkpoint
from cratelab.config import load_config, load_sweep_config
from cratelab.data.corpus import default_corpus_dir, split_of
from cratelab.sweep.results import save_sweep
from cratelab.train import train
from tests.models.reference import random_official_gpt_state_dict, random_official_state_dict
from tests.report.synthetic import full_grid, write_run

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")
SWEEP = str(ROOT / "configs" / "seed-ablation.toml")
FIXTURE = ROOT / "src" / "cratelab" / "data" / "fixture" / "fixture.jsonl"
QUICK = ["train.max_steps=4", "train.eval_interval=4", "eval.tokens=512"]
# a one-seed sweep of configs/tiny.toml ({latesweep}) and the GPT arm, then the arm of each case: its last condition
LATE = ["ablate", "{latesweep}", "--out"]
ARMS = 'sweep.arms=[{ name = "gpt-relu", set = { "model.arch" = "gpt" } }, %s]'

DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    from cratelab.cli import main

    cases, results = json.load(open(sys.argv[1])), {}
    for case_id, argv in cases:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 1
            except BaseException:
                traceback.print_exc()  # what Python prints for an uncaught exception
                code = 1
        results[case_id] = {"code": code, "stderr": err.getvalue()}
    json.dump(results, open(sys.argv[2], "w"))
""")


def _world(root: Path) -> dict[str, Path]:
    """The files the bad inputs point at: runs, damaged checkpoints, odd configs and corpora."""
    w = {name: root / name for name in ("cache", "run", "corrupt", "truncated", "imported", "dirrun", "corpus",
                                        "afile", "official", "evil", "garbage", "incomplete", "tinycorpus",
                                        "emptycorpus", "badsweep")}
    w |= {"binary": root / "binary.toml", "invalid": root / "invalid.toml"}
    cache = ["data.cache_dir=" + json.dumps(str(w["cache"]))]
    train(load_config(TINY, QUICK + cache), w["run"], progress=False)
    ckpt = load_checkpoint(w["run"])

    shutil.copytree(w["run"], w["corrupt"])
    raw = bytearray((w["corrupt"] / "ckpt.pt").read_bytes())
    offset = bytes(raw).find(ckpt.model.wte.weight.detach().numpy().tobytes()[:64])
    raw[offset + 10] ^= 0x5A  # a flipped bit inside the embedding: torch.load alone would not notice
    (w["corrupt"] / "ckpt.pt").write_bytes(bytes(raw))
    shutil.copytree(w["run"], w["truncated"])
    (w["truncated"] / "ckpt.pt").write_bytes(bytes(raw[: len(raw) // 2]))
    save_model_checkpoint(ckpt.model, ckpt.tokenizer, w["imported"])

    # a run on a folder of documents that changes after training: the BPE retrained on it differs
    w["corpus"].mkdir()
    shutil.copy(FIXTURE, w["corpus"] / "fixture.jsonl")
    train(load_config(TINY, QUICK + cache + ["data.corpus=" + json.dumps(str(w["corpus"]))]), w["dirrun"],
          progress=False)
    name = next(f"added{i}.txt" for i in range(100) if split_of(f"added{i}.txt", 0.05) == "train")
    (w["corpus"] / name).write_text("zyxwvut qqqjjj " * 2000, encoding="utf-8")

    w["afile"].write_text("a regular file where a folder is expected\n")
    sd = random_official_state_dict(1, 32, 512, 64, seed=0)
    args = dict(n_layer=1, n_head=4, n_embd=32, block_size=64, bias=True, vocab_size=512, dropout=0.0)
    torch.save({"model": sd, "model_args": args}, w["official"])
    torch.save({"model": sd, "model_args": {k: v for k, v in args.items() if k != "n_layer"}}, w["incomplete"])

    class Payload:
        def __reduce__(self):
            return (print, ("this ran while loading",))

    torch.save({"format": "cratelab-checkpoint", "version": 1, "model": Payload()}, w["evil"])
    w["garbage"].write_bytes(os.urandom(3000))
    w["tinycorpus"].mkdir()
    (w["tinycorpus"] / "a.txt").write_text("only a few words\n")
    w["emptycorpus"].mkdir()
    w["binary"].write_bytes(b"\xff\xfe[model]\n")
    w["invalid"].write_text("[model]\nn_layer = \n")
    w["latesweep"] = root / "latesweep.toml"
    w["latesweep"].write_text((ROOT / "configs" / "tiny.toml").read_text() + "\n[sweep]\nseeds = [0]\n")
    w["dupfactor"] = root / "dupfactor.toml"
    w["dupfactor"].write_text('[sweep.factors]\n"model.ista_lambda" = [0.1, 0.2]\nmodel.ista_lambda = [0.4]\n')
    w["badsweep"].mkdir()
    (w["badsweep"] / "sweep.toml").write_text("[sweep]\nseeds = [0, 0]\n")
    _damaged_caches(w)
    _damaged_files(w, sd, args)
    return w


def _damaged_caches(w: dict[str, Path]) -> None:
    """Data caches damaged after they were built (issue 27): a token file with a flipped byte, a default corpus
    file that is not the one its manifest names."""
    w["damagedcache"], w["damagedcorpus"] = w["run"].parent / "damagedcache", w["run"].parent / "damagedcorpus"
    shutil.copytree(w["cache"] / "datasets", w["damagedcache"] / "datasets")
    for train_bin in (w["damagedcache"] / "datasets").glob("*/train.bin"):
        raw = bytearray(train_bin.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        train_bin.write_bytes(bytes(raw))
    corpus = default_corpus_dir(w["damagedcorpus"])
    corpus.mkdir(parents=True)
    (corpus / "x.jsonl").write_text('{"text": "a document"}\n')
    (corpus / "manifest.json").write_text(json.dumps({"sources": [{"source": "x", "file_sha256": "0" * 64}]}))


def _damaged_files(w: dict[str, Path], official_sd: dict, official_args: dict) -> None:
    """Damaged or foreign files of each kind the commands read (issue 14), and a smoke sweep's sweep.toml."""
    state = torch.load(w["run"] / "ckpt.pt", weights_only=True)
    for name, change in (("nomodel", lambda s: s.pop("model")), ("notokenizer", lambda s: s.pop("tokenizer")),
                         ("noconfig", lambda s: s.pop("config")), ("floatstep", lambda s: s.update(step=4.5))):
        damaged = dict(state)
        change(damaged)
        w[name] = w["run"].parent / f"{name}.pt"
        torch.save(damaged, w[name])

    class System:
        def __reduce__(self):
            return (os.system, ("echo this ran while loading",))

    w["evilsystem"] = w["run"].parent / "evilsystem.pt"
    torch.save({"format": "cratelab-checkpoint", "version": 1, "model": System()}, w["evilsystem"])
    w["wrongshape"] = w["run"].parent / "wrongshape.pt"
    torch.save({"model": official_sd, "model_args": official_args | {"vocab_size": 1000}}, w["wrongshape"])
    w["nottensor"] = w["run"].parent / "nottensor.pt"
    torch.save({"model": official_sd | {"transformer.wte.weight": [1, 2]}, "model_args": official_args},
               w["nottensor"])
    # official GPT baseline files (gpt.py) that disagree with themselves
    gpt_sd = random_official_gpt_state_dict(1, 32, 512, 64)  # bias=False: no bias tensors
    narrow = gpt_sd | {"transformer.h.0.attn.c_attn.weight": gpt_sd["transformer.h.0.attn.c_attn.weight"][:32]}
    for name, sd, args in (("gptbiasdeclared", gpt_sd, official_args | {"bias": True}),
                           ("gptnarrow", narrow, official_args | {"bias": False}),
                           ("gptbiasnotbool", gpt_sd, official_args | {"bias": "no"})):
        w[name] = w["run"].parent / f"{name}.pt"
        torch.save({"model": {k: v.float() for k, v in sd.items()}, "model_args": args}, w[name])

    base, sweep = load_sweep_config(SWEEP, smoke=True)
    w["sweep"] = w["run"].parent / "sweep"
    w["sweep"].mkdir()
    save_sweep(base, sweep, w["sweep"])
    for name, data in (("list", b"[1, 2]"), ("empty", b""), ("truncated", b'{"name": "crate-sh'),
                       ("binary", b"\xff\xfe\x00garbage")):
        w["result" + name] = folder = _finished_sweep(w["run"].parent / f"result-{name}")
        (folder / "runs" / "gpt-relu-s0" / "result.json").write_bytes(data)
    for name, field, value in (("valloss", "val_loss", "abc"), ("seed", "seed", "0"),
                               ("layer", "layers", [{"l0": "x"}])):
        w["wrongtype" + name] = folder = _finished_sweep(w["run"].parent / f"wrongtype-{name}")  # issue 27
        path = folder / "runs" / "gpt-relu-s0" / "result.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {field: value}))
    for name, file, data in (("evaljson", "eval.json", "[1, 2]\n"),
                             ("metricsjsonl", "metrics.jsonl", '{"step": 1, "tokens": "many", "val_loss": 2}\n'),
                             ("scoresjsonl", "interp/scores.jsonl", '{"layer": 0, "neuron": 1}\n')):
        w[name] = folder = _finished_sweep(w["run"].parent / f"damaged-{name}")
        (folder / "runs" / "gpt-relu-s0" / file).write_text(data)
    w["nodatajson"] = w["run"].parent / "nodatajson"  # a run folder of a format before data.json
    shutil.copytree(w["run"], w["nodatajson"])
    (w["nodatajson"] / "data.json").unlink()
    w["locked"] = w["run"].parent / "locked"  # held by another process while the cases run (see `results`)


def _finished_sweep(out: Path) -> Path:
    """A synthetic one-seed sweep folder whose runs all have their result.json."""
    rng = np.random.default_rng(0)
    for spec in full_grid(seeds=(0,)):
        result, layers = write_run(out, spec, True, rng)
        (out / "runs" / spec.run_name / "result.json").write_text(json.dumps(result | {"layers": layers}))
    save_sweep(*load_sweep_config(SWEEP, ["sweep.seeds=[0]"], smoke=True), out)
    return out


HOLD_LOCK = ("import sys, time; from cratelab.io import folder_lock\n"
             "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)")


# (id, command line, what the one-line message must contain); {name} is a path from _world
CASES = [
    # ---- any command
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("missing-argument", ["train", TINY], "--out"),
    # ---- prepare
    ("prepare/missing-config", ["prepare", "{cache}/nothing.toml"], "config file not found: {cache}/nothing.toml"),
    ("prepare/unknown-key", ["prepare", TINY, "--set", "data.colour=red"], "data.colour: unknown key"),
    ("prepare/vocab-range", ["prepare", TINY, "--set", "data.bpe_vocab_size=100"], "data.bpe_vocab_size"),
    ("prepare/missing-corpus", ["prepare", TINY, "--set", "data.corpus={cache}/nothing"], "data.corpus"),
    ("prepare/empty-corpus", ["prepare", TINY, "--set", "data.corpus={emptycorpus}"], "no documents in"),
    ("prepare/tiny-corpus", ["prepare", TINY, "--set", "data.corpus={tinycorpus}"], "the val split is empty"),
    ("prepare/cache-below-a-file", ["prepare", TINY, "--set", "data.cache_dir={afile}/cache"], "{afile}"),
    ("prepare/damaged-token-file", ["prepare", TINY, "--set", "data.cache_dir={damagedcache}"],
     "train.bin: damaged dataset file (sha256"),
    ("train/damaged-token-file", ["train", TINY, "--out", "{cache}/r", "--set", "data.cache_dir={damagedcache}"],
     "train.bin: damaged dataset file (sha256"),
    ("train/damaged-default-corpus", ["train", TINY, "--out", "{cache}/r", "--set", "data.corpus=default", "--set",
                                      "data.cache_dir={damagedcorpus}"], "x.jsonl: damaged corpus file (sha256"),
    # ---- train: config values
    ("train/unknown-key", ["train", TINY, "--out", "{cache}/r", "--set", "model.n_layers=3"],
     "model.n_layers: unknown key"),
    ("train/unknown-section", ["train", TINY, "--out", "{cache}/r", "--set", "modle.n_layer=3"],
     "modle: unknown section"),
    ("train/wrong-type", ["train", TINY, "--out", "{cache}/r", "--set", "train.max_steps=ten"],
     "train.max_steps: expected int"),
    ("train/float-for-int", ["train", TINY, "--out", "{cache}/r", "--set", "model.n_layer=1.5"],
     "model.n_layer: expected int"),
    ("train/heads", ["train", TINY, "--out", "{cache}/r", "--set", "model.n_embd=30"],
     "model.n_embd: must be divisible by model.n_head"),
    ("train/negative-lambda", ["train", TINY, "--out", "{cache}/r", "--set", "model.ista_lambda=-0.1"],
     "model.ista_lambda: must be >= 0"),
    ("train/zero-step-size", ["train", TINY, "--out", "{cache}/r", "--set", "model.ista_step_size=0"],
     "model.ista_step_size: must be in (0, 1]"),
    ("train/zero-ista-steps", ["train", TINY, "--out", "{cache}/r", "--set", "model.ista_steps=0"],
     "model.ista_steps: must be >= 1"),
    ("train/too-many-ista-steps", ["train", TINY, "--out", "{cache}/r", "--set", "model.ista_steps=100"],
     "model.ista_steps: must be <= 64"),
    ("train/unknown-ffn", ["train", TINY, "--out", "{cache}/r", "--set", "model.ffn=moe"],
     "model.ffn: must be one of 'ista', 'mlp'"),
    ("train/residual-not-bool", ["train", TINY, "--out", "{cache}/r", "--set", "model.ista_residual=1"],
     "model.ista_residual: "),
    ("train/bias-not-bool", ["train", TINY, "--out", "{cache}/r", "--set", "model.bias=1"],
     "model.bias: expected bool, got int 1"),
    ("train/zero-steps", ["train", TINY, "--out", "{cache}/r", "--set", "train.max_steps=0"],
     "train.max_steps: must be >= 1"),
    ("train/unknown-arch", ["train", TINY, "--out", "{cache}/r", "--set", "model.arch=transformer"],
     "model.arch: must be one of"),
    ("train/unknown-qkv", ["train", TINY, "--out", "{cache}/r", "--set", "model.qkv=tied"],
     "model.qkv: must be one of"),
    ("train/infinite-lr", ["train", TINY, "--out", "{cache}/r", "--set", "train.lr=inf"],
     "train.lr: must be a finite number"),
    ("train/nan-dropout", ["train", TINY, "--out", "{cache}/r", "--set", "model.dropout=nan"], "model.dropout"),
    ("train/huge-integer", ["train", TINY, "--out", "{cache}/r", "--set", "model.n_layer=99999999999999999999999"],
     "model.n_layer"),
    ("train/model-too-big", ["train", TINY, "--out", "{cache}/r", "--set", "model.n_layer=999999999"],
     "GiB for the weights alone"),
    ("train/bad-device", ["train", TINY, "--out", "{cache}/r", "--set", "train.device=cuda:x"], "train.device"),
    ("train/too-many-threads", ["train", TINY, "--out", "{cache}/r", "--set", "train.threads=100000"],
     "train.threads: must be at most"),
    # ---- train: --set syntax and the config file
    ("train/set-no-equals", ["train", TINY, "--out", "{cache}/r", "--set", "model.qkv"],
     "--set: expected section.key=value"),
    ("train/set-no-key", ["train", TINY, "--out", "{cache}/r", "--set", "model=3"],
     "--set: expected section.key=value"),
    ("train/set-too-deep", ["train", TINY, "--out", "{cache}/r", "--set", "train.lr.x=3"], "train.lr.x"),
    ("train/set-bad-toml", ["train", TINY, "--out", "{cache}/r", "--set", "train.lr=[1"], "train.lr: expected float"),
    ("train/missing-config", ["train", "{cache}/nothing.toml", "--out", "{cache}/r"], "config file not found"),
    ("train/config-is-a-folder", ["train", "{cache}", "--out", "{cache}/r"], "{cache} is a folder"),
    ("train/config-not-utf8", ["train", "{binary}", "--out", "{cache}/r"], "{binary}: not UTF-8"),
    ("train/config-invalid-toml", ["train", "{invalid}", "--out", "{cache}/r"], "{invalid}: invalid TOML"),
    # ---- train: data and the output folder
    ("train/missing-corpus", ["train", TINY, "--out", "{cache}/r", "--set", "data.corpus={cache}/nothing"],
     "data.corpus"),
    ("train/context-too-long", ["train", TINY, "--out", "{cache}/r", "--set", "model.block_size=200000"],
     "corpus too small for the context length"),
    ("train/other-architecture", ["train", TINY, "--out", "{run}", "--set", "model.arch=gpt"],
     "model.arch 'crate' -> 'gpt'"),
    ("train/other-vocabulary", ["train", TINY, "--out", "{run}", "--set", "data.bpe_vocab_size=300"],
     "data.bpe_vocab_size 512 -> 300"),
    ("train/imported-weights", ["train", TINY, "--out", "{imported}"], "without training state"),
    ("train/corrupted-checkpoint", ["train", TINY, "--out", "{corrupt}"], "{corrupt}/ckpt.pt: corrupted"),
    ("train/truncated-checkpoint", ["train", TINY, "--out", "{truncated}"], "{truncated}/ckpt.pt: truncated"),
    ("train/out-below-a-file", ["train", TINY, "--out", "{afile}/run"], "{afile}/run: Not a directory"),
    ("train/out-is-a-file", ["train", TINY, "--out", "{afile}"], "{afile}: exists and is not a folder"),
    # ---- eval
    ("eval/missing-checkpoint", ["eval", "{cache}/nothing"], "no checkpoint at {cache}/nothing"),
    ("eval/corrupted-checkpoint", ["eval", "{corrupt}"], "{corrupt}/ckpt.pt: corrupted"),
    ("eval/truncated-checkpoint", ["eval", "{truncated}"], "{truncated}/ckpt.pt: truncated"),
    ("eval/not-a-checkpoint", ["eval", "{afile}"], "{afile}"),
    ("eval/pickled-code", ["eval", "{evil}"], "{evil}: refused"),
    ("eval/other-tokenizer", ["eval", "{dirrun}"], "tokenized differently from the checkpoint {dirrun}/ckpt.pt"),
    ("eval/negative-tokens", ["eval", "{run}", "--tokens", "-1"], "--tokens: must be >= 0"),
    ("eval/bad-device", ["eval", "{run}", "--device", "tpu"], "--device = 'tpu'"),
    # ---- generate
    ("generate/empty-prompt", ["generate", "{run}", "--prompt", ""], "--prompt: must not be empty"),
    ("generate/blank-prompt", ["generate", "{run}", "--prompt", "  \n"], "--prompt: must not be empty"),
    ("generate/set-neuron-syntax", ["generate", "{run}", "--prompt", "hi", "--set-neuron", "1-2=3"],
     "--set-neuron: expected LAYER:INDEX=VALUE"),
    ("generate/set-neuron-value", ["generate", "{run}", "--prompt", "hi", "--set-neuron", "0:1=1.2.3"],
     "--set-neuron"),
    ("generate/set-neuron-layer", ["generate", "{run}", "--prompt", "hi", "--set-neuron", "5:1=2"],
     "--set-neuron: layer 5 out of range"),
    ("generate/set-neuron-index", ["generate", "{run}", "--prompt", "hi", "--set-neuron", "0:9999=2"],
     "--set-neuron: neuron 9999 out of range"),
    ("generate/negative-top-k", ["generate", "{run}", "--prompt", "hi", "--top-k", "-1"], "--top-k: must be >= 0"),
    ("generate/negative-temperature", ["generate", "{run}", "--prompt", "hi", "--temperature", "-1"],
     "--temperature"),
    ("generate/nan-temperature", ["generate", "{run}", "--prompt", "hi", "--temperature", "nan"], "--temperature"),
    ("generate/negative-length", ["generate", "{run}", "--prompt", "hi", "--max-new-tokens", "-1"],
     "--max-new-tokens: must be >= 0"),
    ("generate/negative-show-next", ["generate", "{run}", "--prompt", "hi", "--show-next", "-1"], "--show-next"),
    ("generate/not-an-int", ["generate", "{run}", "--prompt", "hi", "--top-k", "ten"], "--top-k"),
    ("generate/corrupted-checkpoint", ["generate", "{corrupt}", "--prompt", "hi"], "{corrupt}/ckpt.pt: corrupted"),
    ("generate/bad-device", ["generate", "{run}", "--prompt", "hi", "--device", "cuda:x"], "--device = 'cuda:x'"),
    # ---- interpret
    ("interpret/corrupted-checkpoint", ["interpret", "{corrupt}", "--out", "{cache}/i"], "{corrupt}/ckpt.pt"),
    ("interpret/truncated-checkpoint", ["interpret", "{truncated}", "--out", "{cache}/i"], "{truncated}/ckpt.pt"),
    ("interpret/model-override", ["interpret", "{run}", "--out", "{cache}/i", "--set", "model.n_layer=3"],
     "interpret takes interp.* and data.* overrides"),
    ("interpret/unknown-key", ["interpret", "{run}", "--out", "{cache}/i", "--set", "interp.colour=red"],
     "interp.colour: unknown key"),
    ("interpret/layer-range", ["interpret", "{run}", "--out", "{cache}/i", "--layers", "5"],
     "interp.layers: layer 5 out of range"),
    ("interpret/protocol", ["interpret", "{run}", "--out", "{cache}/i", "--protocol", "bogus"], "interp.protocols"),
    ("interpret/negative-neurons", ["interpret", "{run}", "--out", "{cache}/i", "--neurons", "-1"],
     "interp.neurons: must be >= 0"),
    ("interpret/window", ["interpret", "{run}", "--out", "{cache}/i", "--set", "interp.records.window=100000"],
     "interp.records.window: must be <= model.block_size"),
    ("interpret/other-tokenizer", ["interpret", "{run}", "--out", "{cache}/i2", "--set", "data.bpe_vocab_size=300"],
     "tokenized differently from the checkpoint {run}/ckpt.pt"),
    ("interpret/tiny-corpus", ["interpret", "{run}", "--out", "{cache}/i3", "--set", "data.corpus={tinycorpus}"],
     "the val split is empty"),
    ("interpret/missing-model", ["interpret", "{run}", "--out", "{cache}/i4", "--method", "local:{cache}/nothing",
                                 "--layers", "0", "--neurons", "1", "--tokens", "2048"], "{cache}/nothing"),
    ("interpret/bad-device", ["interpret", "{run}", "--out", "{cache}/i5", "--device", "tpu"], "interp.device"),
    ("interpret/out-below-a-file", ["interpret", "{run}", "--out", "{afile}/i"], "{afile}/i: Not a directory"),
    ("interpret/simulation", ["interpret", "{run}", "--out", "{cache}/i", "--set", "interp.backend.simulation=guess"],
     "interp.backend.simulation: must be one of"),
    ("interpret/local-json", ["interpret", "{run}", "--out", "{cache}/i", "--method", "local:model.gguf", "--set",
                              "interp.backend.simulation=json"], "interp.backend.simulation: 'json' needs an endpoint"),
    ("interpret/local-dtype", ["interpret", "{run}", "--out", "{cache}/i", "--set", "interp.backend.dtype=int4"],
     "interp.backend.dtype: must be one of 'float32', 'bfloat16', 'float16', got 'int4'"),
    ("interpret/explanation-tokens", ["interpret", "{run}", "--out", "{cache}/i", "--set",
                                      "interp.backend.max_explanation_tokens=0"],
     "interp.backend.max_explanation_tokens: must be >= 1, got 0"),
    ("interpret/local-device", ["interpret", "{run}", "--out", "{cache}/i", "--set", "interp.backend.device=tpu"],
     "interp.backend.device: must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'tpu'"),
    # ---- sae
    ("sae/architecture", ["sae", "{run}", "--out", "{cache}/s", "--set", "sae.architecture=gated"],
     "sae.architecture: must be one of"),
    ("sae/tokens", ["sae", "{run}", "--out", "{cache}/s", "--set", "sae.tokens=0"], "sae.tokens: must be >= 1"),
    ("sae/lr", ["sae", "{run}", "--out", "{cache}/s", "--set", "sae.lr=fast"], "sae.lr: expected float"),
    ("sae/unknown-key", ["sae", "{run}", "--out", "{cache}/s", "--set", "sae.nope=1"], "sae.nope: unknown key"),
    ("sae/model-override", ["sae", "{run}", "--out", "{cache}/s", "--set", "model.n_layer=3"],
     "sae takes sae.* overrides"),
    ("sae/hook", ["sae", "{run}", "--out", "{cache}/s", "--hook", "blocks.9.mlp.hook_post"],
     "unknown hook point 'blocks.9.mlp.hook_post'"),
    # issue 27: --out of another kind (`sae RUN --out RUN` deleted the run's metrics.jsonl); extreme generate values
    ("sae/out-training-run", ["sae", "{run}", "--out", "{run}"], "{run} holds a training run (ckpt.pt), not an SAE"),
    ("sae/out-training-run-fresh", ["sae", "{run}", "--out", "{run}", "--fresh"],
     "{run} holds a training run (ckpt.pt), not an SAE"),
    ("sae/out-sweep-folder", ["sae", "{run}", "--out", "{sweep}"],
     "{sweep} holds a sweep folder (sweep.toml), not an SAE"),
    ("generate/tiny-temperature", ["generate", "{run}", "--prompt", "hi", "--temperature", "1e-300"],
     "--temperature: must be 0 (greedy) or a finite number >= 1.18e-38, got 1e-300"),
    ("generate/inf-temperature", ["generate", "{run}", "--prompt", "hi", "--temperature", "inf"], "--temperature"),
    ("generate/negative-seed", ["generate", "{run}", "--prompt", "hi", "--seed", "-1"], "--seed: must be in [0, "),
    ("generate/seed-2^64", ["generate", "{run}", "--prompt", "hi", "--seed", str(2**64)], "--seed: must be in [0, "),
    ("generate/huge-seed", ["generate", "{run}", "--prompt", "hi", "--seed", "9" * 40], "--seed: must be in [0, "),
    ("generate/set-neuron-beyond-float32", ["generate", "{run}", "--prompt", "hi", "--set-neuron", "0:1=1e39"],
     "--set-neuron: expected LAYER:INDEX=VALUE with a finite VALUE of at most 3.403e+38"),
    ("generate/set-neuron-nan-logits", ["generate", "{run}", "--prompt", "hi", "--set-neuron", "0:1=1e30"],
     "the model's next-token logits are not finite (NaN or inf): the activations set by the hooks (--set-neuron)"),
    ("generate/set-neuron-nan-logits-show-next", ["generate", "{run}", "--prompt", "hi", "--set-neuron", "0:1=-1e30",
                                                  "--show-next", "3"], "the model's next-token logits are not finite"),
    # ---- ablate
    ("ablate/missing-config", ["ablate", "{cache}/nothing.toml", "--out", "{cache}/a"], "config file not found"),
    ("ablate/unknown-key", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--set", "sweep.nope=1"],
     "sweep.nope: unknown key"),
    ("ablate/duplicate-seeds", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--set", "sweep.seeds=[1, 1]"],
     "sweep.seeds: must list distinct seeds"),
    ("ablate/seeds-type", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--set", "sweep.seeds=3"],
     "sweep.seeds: expected a list"),
    ("ablate/negative-lambda", ["ablate", SWEEP, "--out", "{cache}/a", "--set",
                                "sweep.factors.model.ista_lambda=[-0.1, 0.1]"], "model.ista_lambda: must be >= 0"),
    ("ablate/unknown-factor", ["ablate", SWEEP, "--out", "{cache}/a", "--set", "sweep.factors.train.lrr=[0.1]"],
     "train.lrr: unknown key"),
    ("ablate/reference", ["ablate", SWEEP, "--out", "{cache}/a", "--set", "sweep.reference.model.ista_lambda=0.3"],
     "sweep.reference.model.ista_lambda"),
    ("ablate/model-value", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--set", "model.n_embd=31"],
     "model.n_embd"),
    ("ablate/workers", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--workers", "0"], "sweep.workers"),
    ("ablate/too-many-workers", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--workers", "100000"],
     "sweep.workers: must be at most"),
    ("ablate/unknown-run", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--only", "nosuchrun"],
     "--only: no run named nosuchrun"),
    ("ablate/out-below-a-file", ["ablate", SWEEP, "--out", "{afile}/a", "--smoke"], "{afile}/a: Not a directory"),
    # ---- issue 27: the sweep design; each late-* sweep's last condition is bad, found before anything trains
    ("ablate/late-window", LATE + ["{cache}/late-window", "--set", ARMS % '{ name = "short", set = { "model.block_size" '
                                   '= 16 } }'], "interp.records.window: must be <= model.block_size (16), got 64 "
                                                "(condition short)"),
    ("ablate/late-layers", LATE + ["{cache}/late-layers", "--set", ARMS % '{ name = "deep", set = { "interp.layers" '
                                   '= "5" } }'], "interp.layers: layer 5 out of range (the model has 2 layers: 0 to 1) "
                                                 "(condition deep)"),
    ("ablate/late-layers-type", LATE + ["{cache}/late-layers-type", "--set", ARMS % '{ name = "third", set = { '
                                        '"interp.layers" = 3 } }'],
     "interp.layers: expected a string: 'all' or a comma list of layer indices such as '0,2', got int 3: write it in "
     "quotes, layers = \"3\" (condition third)"),
    ("ablate/late-corpus", LATE + ["{cache}/late-corpus", "--set", ARMS % '{ name = "elsewhere", set = { '
                                   '"data.corpus" = "{cache}/nothing" } }'],
     "data.corpus = '{cache}/nothing' is not 'default', 'fixture', 'hf:NAME[:CONFIG]' or an existing directory "
     "(condition elsewhere)"),
    ("ablate/late-block-size", LATE + ["{cache}/late-block-size", "--set", ARMS % '{ name = "long", set = { '
                                       '"model.block_size" = 200000 } }'],
     "corpus too small for the context length (model.block_size = 200000 needs at least 200001); use a larger corpus "
     "or a smaller model.block_size (condition long)"),
    ("ablate/late-name", LATE + ["{cache}/late-name", "--set", "sweep.arms=[]", "--set",
                                 "sweep.factors.data.hf_split=['train', '" + "x" * 250 + "']"],
     "sweep.factors.data.hf_split: makes the run name 'hf_split=" + "x" * 31 + "'... 262 bytes long, more than the 255 "
     "of a file name: use shorter levels"),
    ("ablate/late-device", LATE + ["{cache}/late-device", "--set", ARMS % '{ name = "gpu", set = { "train.device" = '
                                   '"cuda:99" } }'], "train.device = 'cuda:99' but "),
    ("ablate/late-interp-device", LATE + ["{cache}/late-interp-device", "--set", ARMS % '{ name = "gpu", set = { '
                                          '"interp.device" = "cuda:99" } }'], "interp.device = 'cuda:99' but "),
    ("ablate/late-sae-device", LATE + ["{cache}/late-sae-device", "--set", ARMS % '{ name = "gpt-sae", of = '
                                       '"gpt-relu", sae = { device = "cuda:99" } }'],
     "sweep.arms[1].sae.device = 'cuda:99' but "),
    ("ablate/arm-sets-seed", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--set",
                              'sweep.arms=[{ name = "gpt-relu", set = { "model.arch" = "gpt", "train.seed" = 7 } }]'],
     "sweep.arms[0].set.train.seed: arm 'gpt-relu' sets a seed, but seeds are set by sweep.seeds (every arm runs each)"),
    ("ablate/levels-equal", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--set",
                             "sweep.factors.model.ista_lambda=[0.1, 1, 1.0]"],
     "sweep.factors.model.ista_lambda: levels 1 and 1.0 are the same value for model.ista_lambda: two identical "
     "conditions"),
    ("ablate/arm-twice", LATE + ["{cache}/a", "--set", ARMS % '{ name = "again", set = { "model.arch" = "gpt" } }'],
     "sweep.arms[1].set: condition again has the settings of condition gpt-relu: the same runs would be trained twice"),
    ("ablate/reference-type", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--set",
                               "sweep.reference.model.ista_lambda='0.1'"],
     "sweep.reference.model.ista_lambda: must be one of the factor's levels [0.05, 0.1, 0.2], got '0.1'"),
    ("ablate/factor-twice", ["ablate", "{dupfactor}", "--out", "{cache}/a"],
     "sweep.factors.model.ista_lambda: given twice: as a quoted \"section.key\" and as a dotted key or table; keep one"),
    ("ablate/seed-2^32", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--set", "sweep.seeds=[0, 4294967296]"],
     "sweep.seeds: must be in [0, 4294967295] (2^32 - 1), got 4294967296: torch keeps the low 32 bits of a seed, so it "
     "would train as seed 0"),
    ("train/seed-2^32", ["train", TINY, "--out", "{cache}/r", "--set", "train.seed=4294967296"],
     "train.seed: must be in [0, 4294967295] (2^32 - 1), got 4294967296"),
    ("train/layers-type", ["train", TINY, "--out", "{cache}/r", "--set", "interp.layers=[0, 1]"],
     "interp.layers: expected a string: 'all' or a comma list of layer indices such as '0,2', got list [0, 1]: write "
     "it in quotes, layers = \"0,1\""),
    ("ablate/slurm-newline", ["ablate", SWEEP, "--out", "{cache}/a", "--smoke", "--launcher", "slurm", "--dry-run",
                              "--set", r'sweep.slurm.extra=["--qos=high\n#SBATCH --mem=1T"]'],
     "sweep.slurm.extra[0]: must not hold control characters (a newline would add lines to the job's sbatch script), "
     "got '--qos=high\\n#SBATCH --mem=1T'"),
    # ---- report
    ("report/missing-folder", ["report", "{cache}/nothing"], "{cache}/nothing is not a sweep folder"),
    ("report/run-folder", ["report", "{run}"], "{run} is not a sweep folder"),
    ("report/bad-sweep-file", ["report", "{badsweep}"], "{badsweep}/sweep.toml: sweep.seeds"),
    # ---- import-official
    ("import-official/missing-file", ["import-official", "{cache}/nothing.pt", "--out", "{cache}/o"], "not found"),
    ("import-official/garbage", ["import-official", "{garbage}", "--out", "{cache}/o"],
     "{garbage}: not a loadable checkpoint"),
    ("import-official/incomplete", ["import-official", "{incomplete}", "--out", "{cache}/o"],
     "{incomplete}: incomplete official checkpoint (no 'n_layer'"),
    ("import-official/pickled-code", ["import-official", "{evil}", "--out", "{cache}/o"], "{evil}: refused"),
    ("import-official/our-checkpoint", ["import-official", "{run}/ckpt.pt", "--out", "{cache}/o"],
     "expected an official crate-lm checkpoint"),
    ("import-official/over-a-run", ["import-official", "{official}", "--out", "{run}"],
     "{run}/ckpt.pt already exists"),
    ("import-official/out-below-a-file", ["import-official", "{official}", "--out", "{afile}/o"],
     "{afile}/o: Not a directory"),
    # ---- issue 14: a folder another process works in
    ("train/locked-folder", ["train", TINY, "--out", "{locked}"], "{locked} is in use by another cratelab process (PID"),
    ("interpret/locked-folder", ["interpret", "{run}", "--out", "{locked}"],
     "{locked} is in use by another cratelab process (PID"),
    ("ablate/locked-folder", ["ablate", SWEEP, "--out", "{locked}", "--smoke"],
     "{locked} is in use by another cratelab process (PID"),
    # ---- issue 14: settings changed on resume
    ("train/other-seed", ["train", TINY, "--out", "{run}", "--set", "train.seed=1"], "train.seed 0 -> 1"),
    ("train/resume-without-data-json", ["train", TINY, "--out", "{nodatajson}", "--set", "eval.tokens=512"],
     "{nodatajson} holds a checkpoint but no data.json (not a folder this version trained"),
    ("train/other-batch", ["train", TINY, "--out", "{run}", "--set", "train.batch_size=4"],
     "train.batch_size 16 -> 4"),
    ("train/other-lr", ["train", TINY, "--out", "{run}", "--set", "train.lr=0.01"], "train.lr 0.003 -> 0.01"),
    ("train/other-data", ["train", TINY, "--out", "{run}", "--set", "data.val_fraction=0.1"],
     "data.val_fraction 0.05 -> 0.1"),
    ("ablate/changed-sweep", ["ablate", SWEEP, "--out", "{sweep}", "--smoke", "--set", "model.n_embd=64",
                              "--set", "train.max_steps=60"],
     "{sweep} holds a sweep run with other settings (model.n_embd 32 -> 64; train.max_steps 30 -> 60)"),
    # ---- issue 14: resources
    ("train/threads", ["train", TINY, "--out", "{cache}/r", "--set", "train.threads=100000"],
     "train.threads: must be at most"),
    ("interpret/threads", ["interpret", "{run}", "--out", "{cache}/i6", "--set", "interp.threads=100000"],
     "interp.threads: must be at most"),
    ("train/ista-steps", ["train", TINY, "--out", "{cache}/r", "--set", "model.ista_steps=1000000"],
     "model.ista_steps: must be <= 64"),
    ("train/n-embd", ["train", TINY, "--out", "{cache}/r", "--set", "model.n_embd=1048576"],
     "model.n_embd: must be at most 65536"),
    # ---- issue 14: damaged or foreign files
    ("report/result-list", ["report", "{resultlist}"], "{resultlist}/runs/gpt-relu-s0/result.json: damaged"),
    ("report/result-empty", ["report", "{resultempty}"], "{resultempty}/runs/gpt-relu-s0/result.json: damaged"),
    ("report/result-truncated", ["report", "{resulttruncated}"],
     "{resulttruncated}/runs/gpt-relu-s0/result.json: damaged"),
    ("report/result-binary", ["report", "{resultbinary}"], "{resultbinary}/runs/gpt-relu-s0/result.json: damaged"),
    ("report/eval-json", ["report", "{evaljson}"], "{evaljson}/runs/gpt-relu-s0/eval.json: not a valid evaluation"),
    ("report/metrics-jsonl", ["report", "{metricsjsonl}"],
     "{metricsjsonl}/runs/gpt-relu-s0/metrics.jsonl: not a valid training log"),
    ("report/scores-jsonl", ["report", "{scoresjsonl}"],
     "{scoresjsonl}/runs/gpt-relu-s0/interp/scores.jsonl: not a valid score file"),
    ("report/result-wrong-type", ["report", "{wrongtypevalloss}"],
     "{wrongtypevalloss}/runs/gpt-relu-s0/result.json: damaged ('val_loss' is 'abc', not a number)"),
    ("report/result-seed-type", ["report", "{wrongtypeseed}"],
     "{wrongtypeseed}/runs/gpt-relu-s0/result.json: damaged ('seed' is '0', not an integer)"),
    ("report/result-layer-type", ["report", "{wrongtypelayer}"],
     "{wrongtypelayer}/runs/gpt-relu-s0/result.json: damaged ('layers[0].l0' is 'x', not a number)"),
    ("eval/checkpoint-without-model", ["eval", "{nomodel}"], "{nomodel}: damaged checkpoint (no 'model')"),
    ("eval/checkpoint-without-tokenizer", ["eval", "{notokenizer}"],
     "{notokenizer}: damaged checkpoint (no 'tokenizer')"),
    ("eval/checkpoint-without-config", ["eval", "{noconfig}"], "{noconfig}: damaged checkpoint (no 'config')"),
    ("eval/checkpoint-float-step", ["eval", "{floatstep}"], "{floatstep}: damaged checkpoint ('step' is 4.5"),
    ("eval/pickled-os-system", ["eval", "{evilsystem}"], "{evilsystem}: refused"),
    ("import-official/pickled-os-system", ["import-official", "{evilsystem}", "--out", "{cache}/o"],
     "{evilsystem}: refused"),
    ("import-official/shapes-disagree", ["import-official", "{wrongshape}", "--out", "{cache}/o"],
     "{wrongshape}: checkpoint does not match its model_args"),
    ("import-official/not-a-tensor", ["import-official", "{nottensor}", "--out", "{cache}/o"],
     "{nottensor}: 'model' holds values that are not tensors"),
    ("import-official/gpt-biases-declared-absent", ["import-official", "{gptbiasdeclared}", "--out", "{cache}/o"],
     "{gptbiasdeclared}: checkpoint does not match its model_args (missing ['blocks.0.ln_1.bias'"),
    ("import-official/gpt-attention-too-narrow", ["import-official", "{gptnarrow}", "--out", "{cache}/o"],
     "{gptnarrow}: attention projection has 32 outputs, expected 96 (GPT-2's q, k, v; this is not a gpt.py"),
    ("import-official/bias-not-bool", ["import-official", "{gptbiasnotbool}", "--out", "{cache}/o"],
     "{gptbiasnotbool}: model_args do not describe a model this cratelab can build (model.bias: must be true or"),
]


def _fill(text: str, world: dict[str, Path]) -> str:
    for name, path in world.items():
        text = text.replace("{" + name + "}", str(path))
    return text


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case run by the driver process: {id: {"code": int, "stderr": str}}, and the world's paths."""
    root = tmp_path_factory.mktemp("bad-input")
    world = _world(root)
    cases = [(case_id, [_fill(a, world) for a in argv]) for case_id, argv, _ in CASES]
    (root / "cases.json").write_text(json.dumps(cases))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(world["locked"])], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        world["holder_pid"] = holder.pid
        proc = subprocess.run([sys.executable, "-c", DRIVER, str(root / "cases.json"), str(root / "results.json")],
                              capture_output=True, text=True, timeout=900, cwd=root,
                              env={**os.environ, "CRATELAB_CACHE": str(world["cache"]), "OMP_NUM_THREADS": "1"})
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 0, proc.stderr
    return json.loads((root / "results.json").read_text()), world


@pytest.mark.parametrize("case_id, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_problem_and_exit_code_2(results, case_id, argv, message):
    by_id, world = results
    result = by_id[case_id]
    stderr = result["stderr"]
    assert "Traceback" not in stderr, stderr
    assert result["code"] == 2, stderr
    lines = stderr.strip().splitlines()
    last = lines[-1]
    assert last.startswith("error: ") and _fill(message, world) in last, last
    # one line; argparse's own errors print the command's usage above it
    assert len(lines) == 1 or lines[0].startswith("usage: cratelab"), stderr
    assert sum(line.startswith("error:") for line in lines) == 1, stderr


def test_the_pickled_payload_never_ran(results):
    by_id, _ = results
    assert all("this ran while loading" not in r["stderr"] for r in by_id.values())


def test_no_message_suggests_weights_only_false(results):
    by_id, _ = results
    assert all("weights_only" not in r["stderr"] for r in by_id.values())


def test_a_locked_folder_names_the_pid_of_its_holder(results):
    by_id, world = results
    for case in ("train/locked-folder", "interpret/locked-folder", "ablate/locked-folder"):
        assert f"(PID {world['holder_pid']})" in by_id[case]["stderr"]


def test_refused_resumes_and_sweeps_ran_nothing(results):
    _, world = results
    assert sorted(p.name for p in world["sweep"].iterdir()) == [".cratelab.lock", "sweep.toml"]
    assert "n_embd = 32" in (world["sweep"] / "sweep.toml").read_text()


def test_a_sweep_whose_last_condition_is_bad_trains_nothing(results):
    """Issue 27: these failed when their run started, after the runs before it had trained."""
    by_id, world = results
    late = [case_id for case_id, *_ in CASES if case_id.startswith("ablate/late-")]
    assert len(late) == 9 and all(by_id[case_id]["code"] == 2 for case_id in late)
    for case_id in late:
        out = world["cache"] / case_id.removeprefix("ablate/")
        assert not (out / "runs").exists() and not list(out.rglob("ckpt.pt")), case_id


def test_failed_commands_leave_the_runs_they_point_at_as_they_were(results):
    _, world = results
    ckpt = load_checkpoint(world["run"])  # refused resumes and imports did not touch the run
    assert ckpt.step == 4 and ckpt.config.model.arch == "crate" and "train" in torch.load(
        world["run"] / "ckpt.pt", weights_only=True)
    assert [json.loads(line)["step"] for line in (world["run"] / "metrics.jsonl").read_text().splitlines()] == [4]
    assert world["afile"].read_text() == "a regular file where a folder is expected\n"
