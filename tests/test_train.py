import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import cratelab.train as train_module
from cratelab.checkpoint import load_checkpoint, read_checkpoint, save_model_checkpoint
from cratelab.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig, dump_toml, load_config
from cratelab.data.tokenizer import BPETokenizer
from cratelab.errors import CratelabError
from cratelab.models import build_model
from cratelab.schedule import cooldown_branches, cooldown_start, lr_at
from cratelab.train import open_external_log, param_groups, resolve_vocab_size, train, truncate_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METRIC_KEYS = {"step", "tokens", "train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s"}


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    """One token cache for the session: the fixture corpus is tokenized once."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def tiny(data_cache):
    """A run config small enough for a few steps per second on one CPU thread."""
    def make(**train) -> RunConfig:
        settings = dict(batch_size=4, max_steps=6, eval_interval=2, warmup_steps=2, lr=1e-2, device="cpu", threads=1)
        return RunConfig(model=ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16),
                         data=DataConfig(corpus="fixture", bpe_vocab_size=300, cache_dir=data_cache),
                         train=TrainConfig(**(settings | train)), eval=EvalConfig(tokens=512))
    return make


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- pieces of the loop

def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    lrs = [lr_at(step, cfg) for step in range(111)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert all(b > a for a, b in zip(lrs[:10], lrs[1:11]))  # rising during warm-up
    assert lrs[10] == pytest.approx(1.0)
    assert all(b < a for a, b in zip(lrs[10:110], lrs[11:111]))  # then falling
    assert lrs[60] == pytest.approx(0.55)  # half way through the decay: the mean of lr and min_lr
    assert lrs[110] == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    assert lr_at(0, replace(cfg, warmup_steps=0)) == pytest.approx(1.0)


def test_wsd_holds_lr_then_decays_linearly_to_min_lr_on_the_budgets_last_step():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=100, schedule="wsd", cooldown=0.2)
    lrs = [lr_at(step, cfg) for step in range(100)]
    assert lrs[9] == pytest.approx(10 / 11) and lrs[10:80] == [1.0] * 70  # warm-up, then the stable phase
    assert cooldown_start(100, cfg) == 80 and lrs[99] == pytest.approx(0.1)
    assert lrs[80] == pytest.approx(1.0 - 0.9 / 20) and all(b < a for a, b in zip(lrs[79:99], lrs[80:100]))
    # a tracked point's branch: the schedule of a 50-step run, which is the run's own until step 40
    assert [lr_at(s, cfg, 50) for s in range(40)] == lrs[:40] and lr_at(49, cfg, 50) == pytest.approx(0.1)


def test_wsd_branches_start_a_cooldown_share_before_their_budget():
    cfg = TrainConfig(warmup_steps=10, max_steps=100, schedule="wsd", cooldown=0.2)
    assert cooldown_branches([25, 50, 100], cfg) == {20: [25], 40: [50]}  # the end is the run itself
    assert cooldown_branches([10, 11], cfg) == {8: [10], 9: [11]}  # inside the warm-up: still that budget's run
    assert [lr_at(s, cfg, 10) for s in range(8)] == [lr_at(s, cfg) for s in range(8)]


@pytest.mark.e2e
@pytest.mark.parametrize("warmup", [1, 5])  # 5: the branch starts inside the warm-up
def test_a_wsd_tracked_point_is_the_run_of_that_budget_and_leaves_the_run_untouched(tiny, tmp_path, warmup):
    """The model kept at step 6 under schedule = "wsd" is the one an 6-step WSD run ends with (its cooldown
    branched from the stable phase at step 4, on the batches the run takes next), and the 10-step run that
    kept it ends exactly as it does without it."""
    cfg = tiny(max_steps=10, eval_interval=5, warmup_steps=warmup, schedule="wsd", cooldown=0.34)
    tracked = train(cfg, tmp_path / "tracked", progress=False, keep_steps=[6])
    plain = train(cfg, tmp_path / "plain", progress=False)
    train(replace(cfg, train=replace(cfg.train, max_steps=6)), tmp_path / "short", progress=False)
    assert tracked == {**plain, "elapsed_s": tracked["elapsed_s"], "tokens_per_s": tracked["tokens_per_s"]}
    models = {name: load_checkpoint(tmp_path / name).model.state_dict() for name in ("tracked", "plain", "short")}
    kept = load_checkpoint(tmp_path / "tracked" / "track" / "step6").model.state_dict()
    assert all(torch.equal(models["tracked"][k], models["plain"][k]) for k in kept)
    assert all(torch.equal(kept[k], models["short"][k]) for k in kept)
    branch = [m for m in read_metrics(tmp_path / "tracked") if "cooldown_start" in m]
    assert [(m["step"], m["cooldown_start"]) for m in branch] == [(6, 4)]  # cooldown of 2 steps (0.34 x 6)
    assert branch[0]["lr"] == pytest.approx(cfg.train.min_lr)
    assert branch[0]["val_loss"] == read_metrics(tmp_path / "short")[-1]["val_loss"]


@pytest.mark.e2e
def test_a_wsd_branch_cut_short_runs_again_on_resume_and_is_logged_once(tiny, tmp_path, monkeypatch):
    cfg = tiny(max_steps=10, eval_interval=4, warmup_steps=1, schedule="wsd", cooldown=0.34)
    train(cfg, tmp_path / "whole", progress=False, keep_steps=[6])
    save = train_module.save_checkpoint

    def killed_in_the_branch(*args, step, **kwargs):
        if step == 6:  # the branch's kept model (from step 4, the checkpoint just written)
            raise KeyboardInterrupt
        return save(*args, step=step, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", killed_in_the_branch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False, keep_steps=[6])
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "resumed").step == 4
    train(cfg, tmp_path / "resumed", progress=False, keep_steps=[6])
    whole, resumed = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "resumed")
    assert [(m["step"], m.get("cooldown_start")) for m in resumed] == [(4, None), (6, 4), (8, None), (10, None)]
    assert [m["val_loss"] for m in resumed] == [m["val_loss"] for m in whole]
    a, b = (load_checkpoint(tmp_path / n / "track" / "step6").model.state_dict() for n in ("whole", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_truncating_metrics_keeps_the_branches_that_started_before_the_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 4}, {"step": 6, "cooldown_start": 4}, {"step": 8}, {"step": 12, "cooldown_start": 8}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    truncate_metrics(path, 8)  # resuming at step 8 runs the branch that starts there again
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]


def test_weight_decay_applies_to_matrices_only():
    model = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=50, block_size=8))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"wte.weight", "wpe.weight", "blocks.0.ista.weight", "blocks.1.attn.c_attn.weight"} <= decayed
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"blocks.0.ln_1.weight", "blocks.0.attn.c_proj.bias"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))  # tied weight once


def test_vocab_size_comes_from_the_tokenizer_unless_set():
    tok = BPETokenizer.train(["some text to learn a few merges from"] * 10, vocab_size=270)
    assert resolve_vocab_size(RunConfig(), tok).model.vocab_size == tok.vocab_size
    padded = RunConfig(model=ModelConfig(vocab_size=320))
    assert resolve_vocab_size(padded, tok).model.vocab_size == 320
    with pytest.raises(CratelabError, match="model.vocab_size"):
        resolve_vocab_size(RunConfig(model=ModelConfig(vocab_size=100)), tok)


@pytest.mark.parametrize("log, module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_missing_logging_package_is_named(log, module, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail, installed or not
    with pytest.raises(CratelabError, match=f"train.log = '{log}' needs the {log} package"):
        open_external_log(RunConfig(train=TrainConfig(log=log)), tmp_path)
    assert open_external_log(RunConfig(), tmp_path) is None


def test_truncating_metrics_drops_later_and_partial_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2}\n{"step": 4}\n{"step": 6}\n{"ste')
    truncate_metrics(path, 4)
    assert path.read_text() == '{"step": 2}\n{"step": 4}\n'


@pytest.mark.parametrize("name", ["paper-1l", "paper-2l", "paper-3l", "paper-s", "paper-b"])
def test_paper_presets_follow_the_recipe(name):
    cfg = load_config(CONFIGS / f"{name}.toml")
    m, t = cfg.model, cfg.train
    assert (m.arch, m.vocab_size, m.block_size, cfg.data.tokenizer) == ("crate", 50304, 1024, "gpt2")
    assert (t.lr, t.min_lr, t.warmup_steps, t.max_steps) == (6e-4, 6e-5, 2000, 600_000)
    assert (t.weight_decay, t.beta1, t.beta2, t.grad_clip) == (0.1, 0.9, 0.95, 1.0)
    expected = {"paper-1l": (1, 128, 4), "paper-2l": (2, 128, 4), "paper-3l": (3, 128, 4),
                "paper-s": (6, 768, 12), "paper-b": (12, 768, 12)}[name]
    assert (m.n_layer, m.n_embd, m.n_head) == expected


# ---------------------------------------------------------------- training runs

@pytest.mark.e2e
def test_metrics_checkpoint_and_rerun(tiny, tmp_path):
    out = tmp_path / "run"
    final = train(tiny(max_steps=5), out, progress=False)
    lines = read_metrics(out)
    assert [m["step"] for m in lines] == [2, 4, 5]  # every eval_interval steps and at the end
    assert all(set(m) >= METRIC_KEYS for m in lines)
    assert [m["tokens"] for m in lines] == [s * 4 * 16 for s in (2, 4, 5)]
    assert all(math.isfinite(m["val_loss"]) and m["tokens_per_s"] > 0 for m in lines)
    assert final == lines[-1]
    ckpt = load_checkpoint(out)
    assert ckpt.step == 5 and ckpt.metrics == final and ckpt.config.model.vocab_size == ckpt.tokenizer.vocab_size
    assert load_config(out / "config.toml") == ckpt.config
    assert isinstance(torch.load(out / "ckpt.pt", weights_only=True)["train"]["optimizer"], dict)
    assert train(tiny(max_steps=5), out, progress=False) == final  # already done: nothing to train
    assert len(read_metrics(out)) == 3


def test_each_evaluation_logs_the_sparsity_that_evaluate_measures(tiny, tmp_path):
    """The sparsity in metrics.jsonl is evaluate.py's, on the same evaluation windows, of the checkpoint saved
    at that step; also for CRATE with an MLP (whose interpreted layer is mlp.hook_post)."""
    from cratelab.data.batches import eval_windows
    from cratelab.data.shards import prepare_dataset
    from cratelab.evaluate import evaluate

    for ffn in ("ista", "mlp"):
        cfg = tiny(max_steps=2, eval_interval=1)
        cfg = replace(cfg, model=replace(cfg.model, n_layer=2, ffn=ffn))
        out = tmp_path / ffn
        train(cfg, out, progress=False)
        logged = read_metrics(out)[-1]
        ckpt = load_checkpoint(out)
        dataset = prepare_dataset(ckpt.config.data, progress=False)
        windows = eval_windows(dataset.val, cfg.model.block_size, cfg.eval.tokens)
        expected = evaluate(ckpt.model, windows, dataset.tokenizer.token_byte_lengths(), batch_size=4)
        assert math.isclose(logged["val_loss"], expected.val_loss, rel_tol=1e-5)
        for s in expected.layers:
            for stat in ("zero_frac", "l0", "dead_frac"):
                assert math.isclose(logged[f"sparsity/layer{s.layer}/{stat}"], getattr(s, stat),
                                    rel_tol=1e-9, abs_tol=1e-12), (ffn, s.layer, stat)
        assert 0 < logged["sparsity/layer0/zero_frac"] < 1
        assert all(f"sparsity/layer0/{stat}" in row for row in read_metrics(out) for stat in ("l0", "dead_frac"))


def test_training_writes_the_checkpoints_evaluation_that_cratelab_eval_computes(tiny, tmp_path):
    """eval.json beside each checkpoint training saves (the run's and a kept one) is what evaluating the
    checkpoint afterwards gives, so a sweep need not evaluate it again; a stale or other-sized one is not reused."""
    from cratelab.evaluate import evaluate_checkpoint, read_evaluation
    from cratelab.layout import track_folder

    cfg = tiny(max_steps=4, eval_interval=4)
    out = tmp_path / "run"
    train(cfg, out, progress=False, keep_steps=[2])
    for folder, step in ((out, 4), (track_folder(out, 2), 2)):
        written = read_evaluation(folder, step, cfg.eval.tokens)
        assert written is not None, folder
        assert read_evaluation(folder, step + 1, cfg.eval.tokens) is None
        assert read_evaluation(folder, step, cfg.eval.tokens + 1) is None
        again = evaluate_checkpoint(load_checkpoint(folder), device="cpu")
        assert written.tokens == again.tokens
        assert math.isclose(written.val_loss, again.val_loss, rel_tol=1e-6)
        assert math.isclose(written.bpb, again.bpb, rel_tol=1e-6)
        assert [s.zero_frac for s in written.layers] == [s.zero_frac for s in again.layers]
        assert [s.density_hist for s in written.layers] == [s.density_hist for s in again.layers]


def test_sparsity_reaches_tensorboard(tiny, tmp_path, monkeypatch):
    """train.log = "tensorboard" gets every metrics.jsonl value, the sparsity included (a stand-in writer:
    the test does not need the tensorboard package)."""
    import types

    scalars: dict[str, list[tuple[int, float]]] = {}

    class Writer:
        def __init__(self, _logdir):
            pass

        def add_scalar(self, key, value, step):
            scalars.setdefault(key, []).append((step, value))

        def flush(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    out = tmp_path / "run"
    train(tiny(max_steps=2, eval_interval=1, log="tensorboard"), out, progress=False)
    for row in read_metrics(out):
        for key in ("sparsity/layer0/zero_frac", "sparsity/layer0/l0", "sparsity/layer0/dead_frac", "val_loss"):
            assert (row["step"], row[key]) in scalars[key]


@pytest.mark.e2e
def test_resume_ends_exactly_where_an_uninterrupted_run_ends(tiny, tmp_path, monkeypatch):
    cfg = tiny(max_steps=6, eval_interval=2)
    cfg.model.dropout = 0.1  # the dropout masks after resuming must be those of the uninterrupted run too
    whole = train(cfg, tmp_path / "whole", progress=False)

    save = train_module.save_checkpoint

    def preempted_at_step_4(*args, step, **kwargs):
        if step == 4:  # the metrics line of step 4 is written, its checkpoint is not
            raise KeyboardInterrupt
        return save(*args, step=step, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", preempted_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "resumed").step == 2
    resumed = train(cfg, tmp_path / "resumed", progress=False)

    assert resumed["val_loss"] == whole["val_loss"] and resumed["train_loss"] == whole["train_loss"]
    a, b = (load_checkpoint(tmp_path / name).model.state_dict() for name in ("whole", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines, expected = read_metrics(tmp_path / "resumed"), read_metrics(tmp_path / "whole")
    assert [m["step"] for m in lines] == [2, 4, 6]  # no duplicated lines
    assert [m["val_loss"] for m in lines] == [m["val_loss"] for m in expected]


@pytest.mark.parametrize("killed_at", ["kept", "checkpoint"])
def test_kept_checkpoints_survive_a_kill_and_a_resume_exactly_once(tiny, tmp_path, monkeypatch, killed_at):
    """keep_steps (sweep.track): the model at step 3 (not an eval_interval step) is kept in track/step3/, also
    when the run is killed while writing that copy or between it and ckpt.pt; the resumed run keeps the
    same model, and logs step 3 once."""
    cfg = tiny(max_steps=6, eval_interval=2)
    train(cfg, tmp_path / "whole", progress=False, keep_steps=[3, 6])
    save = train_module.save_checkpoint
    calls = []

    def killed(*args, step, **kwargs):
        calls.append(step)
        if step == 3 and (killed_at == "kept" or len(calls) == 3):  # calls: step 2, step 3's copy, step 3's ckpt
            raise KeyboardInterrupt
        return save(*args, step=step, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False, keep_steps=[3, 6])
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "resumed").step == 2
    assert (tmp_path / "resumed" / "track" / "step3" / "ckpt.pt").is_file() == (killed_at == "checkpoint")
    train(cfg, tmp_path / "resumed", progress=False, keep_steps=[3, 6])

    kept = [load_checkpoint(tmp_path / name / "track" / "step3") for name in ("whole", "resumed")]
    assert kept[0].step == kept[1].step == 3 and "train" not in read_checkpoint(kept[1].path)  # model only
    a, b = (k.model.state_dict() for k in kept)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in (tmp_path / "resumed" / "track").iterdir()] == ["step3"]  # the end is ckpt.pt itself
    assert [m["step"] for m in read_metrics(tmp_path / "resumed")] == [2, 3, 4, 6]
    assert [m["val_loss"] for m in read_metrics(tmp_path / "resumed")] == \
        [m["val_loss"] for m in read_metrics(tmp_path / "whole")]
    train(cfg, tmp_path / "resumed", fresh=True, progress=False)
    assert not (tmp_path / "resumed" / "track").exists()  # --fresh starts over without them


def test_a_run_without_fp16_resumes_in_fp16_with_a_fresh_grad_scaler(tiny, tmp_path, monkeypatch):
    """E.g. started on a CPU or in bf16, resumed on a GPU with train.dtype = 'float16': the checkpoint's
    scaler state is empty, which GradScaler.load_state_dict refuses."""
    train(tiny(max_steps=2), tmp_path / "run", progress=False)
    monkeypatch.setattr(train_module, "autocast_dtype", lambda *args: torch.float16)  # fp16 as on a GPU, tiny here
    final = train(tiny(max_steps=4), tmp_path / "run", progress=False)
    assert final["step"] == 4 and math.isfinite(final["val_loss"])
    assert read_checkpoint(tmp_path / "run")["train"]["scaler"]["scale"] > 0  # the scaler ran from then on


@pytest.mark.e2e
def test_a_different_model_in_the_folder_is_refused_unless_fresh(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(max_steps=2), out, progress=False)
    wider = replace(tiny(max_steps=2), model=ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16))
    with pytest.raises(CratelabError, match=r"model.n_embd 16 -> 32.*--fresh"):
        train(wider, out, progress=False)
    train(wider, out, fresh=True, progress=True)
    assert "2/2" in capsys.readouterr().err  # the progress bar
    assert load_checkpoint(out).config.model.n_embd == 32
    assert [m["step"] for m in read_metrics(out)] == [2]

    save_model_checkpoint(load_checkpoint(out).model, load_checkpoint(out).tokenizer, tmp_path / "imported")
    with pytest.raises(CratelabError, match="without training state.*--fresh"):
        train(wider, tmp_path / "imported", progress=False)


@pytest.mark.e2e
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    build = train_module.build_model

    def build_poisoned(cfg):
        """The real model, whose training loss turns NaN from the third training step on."""
        model = build(cfg)
        forward, calls = model.forward, []

        def forward_with_nan(idx, targets=None):
            if targets is None:  # evaluation
                return forward(idx)
            logits, loss = forward(idx, targets)
            if model.training:
                calls.append(1)
                if len(calls) >= 3:
                    loss = loss * float("nan")
            return logits, loss

        model.forward = forward_with_nan
        return model

    monkeypatch.setattr(train_module, "build_model", build_poisoned)
    out = tmp_path / "run"
    with pytest.raises(CratelabError, match=f"loss became NaN at step 3; last good checkpoint kept at {out}"):
        train(tiny(max_steps=6, eval_interval=2), out, progress=False)
    ckpt = load_checkpoint(out)
    assert ckpt.step == 2 and all(torch.isfinite(p).all() for p in ckpt.model.parameters())
    assert [m["step"] for m in read_metrics(out)] == [2]


@pytest.mark.e2e
def test_two_processes_match_one_process_with_gradient_accumulation(tiny, tmp_path):
    single = train(tiny(batch_size=2, grad_accum=2, max_steps=4), tmp_path / "single", progress=False)

    (tmp_path / "ddp.toml").write_text(dump_toml(tiny(batch_size=2, grad_accum=1, max_steps=4)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "cratelab", "train", str(tmp_path / "ddp.toml"), "--out", str(tmp_path / "ddp")],
                          env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # torchrun's and the ranks' own words
    ddp = read_metrics(tmp_path / "ddp")[-1]

    assert ddp["step"] == single["step"] and ddp["tokens"] == single["tokens"]
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], abs=1e-4)
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], abs=1e-4)
    a, b = load_checkpoint(tmp_path / "single").model.state_dict(), load_checkpoint(tmp_path / "ddp").model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert len(read_checkpoint(tmp_path / "ddp")["train"]["rng"]) == 2  # every process's RNG state


@pytest.mark.e2e
def test_tiny_config_trains_end_to_end(data_cache, tmp_path):
    cfg = load_config(CONFIGS / "tiny.toml", [f"data.cache_dir={json.dumps(data_cache)}"])
    final = train(cfg, tmp_path / "tiny", progress=False)
    assert final["step"] == cfg.train.max_steps
    assert final["val_loss"] < math.log(cfg.data.bpe_vocab_size) - 1.0  # well below a uniform guess
