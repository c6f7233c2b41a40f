"""The training loop: one process, or one process per GPU under torchrun (DDP); resumable exactly.

Read `train` top to bottom, as nanoGPT's train.py: processes and device, output folder, data, model,
optimizer, resume, then the loop (lr schedule, micro-steps with gradient accumulation, clip, step,
and every ``eval_interval`` steps: evaluate, log, checkpoint). Small helpers come first; after `_train`, the steps
it names, in the order it takes them.

Run folder (names in layout.py): ``config.toml``, ``ckpt.pt`` (see checkpoint.py), ``metrics.jsonl`` (one JSON
line per evaluation: step, tokens, train_loss, val_loss, lr, tokens_per_s, elapsed_s, and per interpreted layer
``sparsity/layer{l}/zero_frac``, ``/l0``, ``/dead_frac`` measured on the same evaluation batches), and
``track/step{N}/ckpt.pt`` for each of ``keep_steps`` (the model at step N: what a sweep's ``sweep.track`` scores).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Collection
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .checkpoint import config_of, read_checkpoint, save_checkpoint, write_config
from .config import RunConfig, changed_settings, execution_settings
from .data.batches import TrainBatches, eval_windows
from .data.shards import TokenDataset, prepare_dataset, run_data_identity
from .data.tokenizer import Tokenizer
from .errors import CratelabError
from .evaluate import evaluate, training_sparsity_metrics, write_evaluation
from .io import append_line, folder_lock, keep_jsonl, remove_tree, write_json
from .layout import CHECKPOINT, CONFIG, COOLDOWN_START, DATA, EVAL, METRICS, TENSORBOARD, TRACK, track_folder
from .models import build_model
from .runtime import autocast_dtype, distributed, resolve_device, set_threads
from .schedule import cooldown_branches, lr_at



def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (embeddings, projections, ISTA dictionaries), not on biases or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]  # a tied weight is listed once
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def resolve_vocab_size(cfg: RunConfig, tokenizer: Tokenizer) -> RunConfig:
    """``model.vocab_size = 0`` means the tokenizer's; a larger value pads it (GPT-2's 50257 -> 50304)."""
    vocab = cfg.model.vocab_size or tokenizer.vocab_size
    if vocab < tokenizer.vocab_size:
        raise CratelabError(f"model.vocab_size = {vocab} is smaller than the tokenizer's vocabulary "
                            f"({tokenizer.vocab_size} tokens); set it to 0 to use the tokenizer's size")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))


# Settings a resumed run may change: the execution settings (where and how it runs), and what does not change the
# weights it computes. max_steps extends (or ends) the run, re-stretching the cosine schedule from the resume point;
# eval_interval spaces its evaluations; [interp] is read by `cratelab interpret`, never by training.
RESUMABLE_CHANGES = execution_settings(RunConfig) | {"train.max_steps", "train.eval_interval", "interp"}


def check_same_run(state: dict[str, Any], cfg: RunConfig, tokenizer: Tokenizer, file: Path) -> None:
    """Resuming only makes sense for the same computation: the same model on the same token ids, trained
    with the same seed, data, batch and optimizer settings (RESUMABLE_CHANGES aside)."""
    if "train" not in state:
        raise CratelabError(f"{file} holds a model without training state (e.g. imported weights), which cannot be "
                            "resumed; pass --fresh to start over, or choose another output folder")
    old = config_of(state, file)
    diffs = changed_settings(old.to_dict(), cfg.to_dict(), RESUMABLE_CHANGES)
    if state["tokenizer"] != tokenizer.to_dict() and not any(d.startswith("data.") for d in diffs):
        diffs.append("a different vocabulary (the corpus changed)")
    if diffs:
        raise CratelabError(f"{file.parent} holds a checkpoint of a different run ({'; '.join(diffs)}); "
                            "pass --fresh to start over, or choose another output folder")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric lines up to ``step``, and those of cooldown branches that started before it: the lines
    a resumed run writes again would otherwise appear twice. Also drops a line cut short by a crash."""
    def kept(row: dict[str, Any]) -> bool:
        if not isinstance(row.get("step"), int):
            return False
        return row[COOLDOWN_START] < step if isinstance(row.get(COOLDOWN_START), int) else row["step"] <= step
    keep_jsonl(path, kept)


def rng_states(device: torch.device) -> dict[str, torch.Tensor | None]:
    """The global RNG state of this process (used by dropout)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng_states(saved: list[dict[str, torch.Tensor | None]], rank: int, world_size: int,
                       device: torch.device, seed: int) -> None:
    if len(saved) != world_size:  # resumed with another number of processes: new streams, same seed
        torch.manual_seed(seed + rank + 1_000_003 * world_size)
        return
    torch.set_rng_state(saved[rank]["torch"])
    if device.type == "cuda" and saved[rank]["cuda"] is not None:
        torch.cuda.set_rng_state(saved[rank]["cuda"], device)


def open_external_log(cfg: RunConfig, out_dir: Path) -> Callable[[dict[str, Any]], None] | None:
    """TensorBoard or Weights & Biases, when ``train.log`` asks for it; a function that logs one metrics dict."""
    if cfg.train.log == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CratelabError("train.log = 'tensorboard' needs the tensorboard package: "
                                "pip install tensorboard") from None
        writer = SummaryWriter(str(out_dir / TENSORBOARD))

        def log_tensorboard(metrics: dict[str, Any]) -> None:
            for key, value in metrics.items():
                if key != "step":
                    writer.add_scalar(key, value, metrics["step"])
            writer.flush()
        return log_tensorboard
    if cfg.train.log == "wandb":
        try:
            import wandb
        except ImportError:
            raise CratelabError("train.log = 'wandb' needs the wandb package: pip install wandb") from None
        run = wandb.init(project=cfg.train.wandb_project, name=out_dir.name, dir=str(out_dir), config=cfg.to_dict())
        return lambda metrics: run.log(metrics, step=metrics["step"])
    return None


def nan_message(what: str, value: float, step: int, ckpt_path: Path) -> str:
    kept = f"last good checkpoint kept at {ckpt_path}" if ckpt_path.exists() else "no checkpoint was written yet"
    return (f"{what} became {'NaN' if math.isnan(value) else 'infinite'} at step {step}; {kept}. "
            "Try a lower train.lr, or train.grad_clip = 1.0")



def train(cfg: RunConfig, out_dir: Path, fresh: bool = False, progress: bool | None = None,
          keep_steps: Collection[int] = ()) -> dict[str, Any]:
    """Train (or resume) the run in ``out_dir``; returns the metrics of the final evaluation.

    ``fresh`` deletes an existing checkpoint and metrics first. ``progress``: a tqdm bar (True), plain
    log lines (False), or a bar only when stderr is a terminal (None). ``keep_steps``: steps at which the
    run also evaluates and keeps its model in ``track/step{N}/`` (steps at or past max_steps are the run itself).
    """
    cfg.validate()
    place = distributed()
    ddp = place.under_torchrun
    device = resolve_device(cfg.train.device, place.local_rank)
    own_group = ddp and not dist.is_initialized()
    if own_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        if place.rank != 0:  # rank 0 holds the run folder for all of torchrun's processes
            return _train(cfg, Path(out_dir), fresh, progress, ddp, device, set(keep_steps))
        with folder_lock(out_dir):  # a second process on the folder would mix its steps with ours
            return _train(cfg, Path(out_dir), fresh, progress, ddp, device, set(keep_steps))
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(cfg: RunConfig, out_dir: Path, fresh: bool, progress_bar: bool | None, ddp: bool,
           device: torch.device, keep_steps: set[int]) -> dict[str, Any]:
    tc = cfg.train
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    master = rank == 0  # the one process that writes files and logs
    show_bar = master and (sys.stderr.isatty() if progress_bar is None else progress_bar)
    set_threads(tc.threads)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: several times faster on Ampere+, ample precision
    torch.backends.cudnn.allow_tf32 = True
    amp_dtype = autocast_dtype(tc.dtype, device)

    # ---- output folder, data, and the checkpoint to resume (of the same run only)
    external_log = start_folder(cfg, out_dir, fresh) if master else None
    barrier(ddp)  # the folder is ready before any process goes on
    dataset = load_dataset(cfg, master, ddp, show_bar)
    cfg = resolve_vocab_size(cfg, dataset.tokenizer)
    batches = TrainBatches(dataset.train, cfg.model.block_size, tc.batch_size, tc.grad_accum, tc.seed, rank,
                           world_size, device)
    val_windows = eval_windows(dataset.val, cfg.model.block_size, cfg.eval.tokens)[rank::world_size]
    resume = read_resume(out_dir, cfg, dataset)
    if master:
        write_config(cfg, out_dir)
        write_json(out_dir / DATA, dataset.identity())  # every run folder names the data it is measured on

    # ---- model and optimizer, restored from the checkpoint when resuming. Seeds differ per process so that
    # dropout masks do; DDP copies rank 0's initial weights to every process, so the start is the single-process one.
    torch.manual_seed(tc.seed + rank)
    loop = build_loop(cfg, batches, val_windows, dataset.tokenizer, out_dir, master, device, amp_dtype, ddp, world_size)
    progress = Progress()
    if resume is not None:
        progress = restore(loop, resume, rank)
        log(master, f"resuming {out_dir} at step {progress.step:,}")
        del resume  # the optimizer state can be large
    if master:
        truncate_metrics(out_dir / METRICS, progress.step)
    loop.model = parallel_model(loop)
    log(master, f"training {loop.raw_model.num_params() / 1e6:.2f}M parameters on {device} x {world_size}, "
        f"{loop.tokens_per_step:,} tokens per step, steps {progress.step:,} -> {tc.max_steps:,}")

    # ---- the loop. Kept steps: snapshots of the run itself (cosine), or cooldowns branched from it (wsd)
    branches = cooldown_branches(keep_steps, tc) if tc.schedule == "wsd" else {}
    snapshots = set() if tc.schedule == "wsd" else keep_steps
    loop.model.train()
    start = time.perf_counter() - progress.elapsed_s
    with tqdm(total=tc.max_steps, initial=progress.step, disable=not show_bar, unit="step", dynamic_ncols=True) as bar:
        while progress.step < tc.max_steps:
            for budget in branches.get(progress.step, []):  # on resuming here too: a branch cut short runs again
                cooldown_branch(loop, progress.step, budget)
            t0 = time.perf_counter()
            lr = lr_at(progress.step, tc)
            train_loss = train_step(loop, lr)
            if not math.isfinite(train_loss):
                raise CratelabError(nan_message("loss", train_loss, progress.step + 1, out_dir / CHECKPOINT))
            progress.count_step(train_loss, loop.tokens_per_step, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            bar.update()
            step = progress.step
            if step % tc.eval_interval == 0 or step == tc.max_steps or step in snapshots:
                evaluate_and_save(loop, progress, lr, start, step in snapshots, external_log)
    return progress.metrics


def log(master: bool, message: str) -> None:
    if master:  # one process logs; tqdm.write keeps a progress bar below the line
        tqdm.write(message, file=sys.stderr)


def barrier(ddp: bool) -> None:
    if ddp:
        dist.barrier()


def start_folder(cfg: RunConfig, out_dir: Path, fresh: bool) -> Callable[[dict[str, Any]], None] | None:
    """The run folder, without the temporary files of a save cut short by a kill, and emptied of the run's
    checkpoint, metrics, logs and kept models when ``fresh``; returns the external log it opens there, if any."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (CHECKPOINT, METRICS, CONFIG, EVAL):
        for stale in [*out_dir.glob(f".{name}.*.tmp"), *out_dir.glob(f"{TRACK}/*/.{name}.*.tmp")]:
            stale.unlink(missing_ok=True)
    if fresh:
        (out_dir / CHECKPOINT).unlink(missing_ok=True)
        (out_dir / METRICS).unlink(missing_ok=True)
        remove_tree(out_dir / TENSORBOARD)
        remove_tree(out_dir / TRACK)
    return open_external_log(cfg, out_dir)  # here: a missing package fails before any work


def load_dataset(cfg: RunConfig, master: bool, ddp: bool, show_bar: bool) -> TokenDataset:
    """Rank 0 builds the token cache first, the other processes then read it."""
    if not master:
        barrier(ddp)
    dataset = prepare_dataset(cfg.data, progress=show_bar)
    if master:
        barrier(ddp)
    return dataset


def read_resume(out_dir: Path, cfg: RunConfig, dataset: TokenDataset) -> dict[str, Any] | None:
    """The checkpoint in ``out_dir`` to resume, if there is one: refused unless it is of the same run, trained on
    the same token data."""
    ckpt_path = out_dir / CHECKPOINT
    if not ckpt_path.exists():
        return None
    resume = read_checkpoint(ckpt_path)
    check_same_run(resume, cfg, dataset.tokenizer, ckpt_path)
    data = dataset.identity()
    trained_on = run_data_identity(out_dir)
    if trained_on is None:  # train writes data.json before its first checkpoint
        raise CratelabError(f"{out_dir} holds a checkpoint but no {DATA} (not a folder this version trained: an "
                            "imported checkpoint, or an earlier cratelab's run), so the data it was trained on cannot "
                            "be checked; pass --fresh to start over, or choose another output folder")
    if (trained_on["train_sha256"], trained_on["val_sha256"]) != (data["train_sha256"], data["val_sha256"]):
        raise CratelabError(f"{out_dir} was trained on other token data (train.bin sha256 "
                            f"{trained_on['train_sha256']}, now {data['train_sha256']}): the data cache was built "
                            "again, by other code or from another corpus; pass --fresh to start over, or choose "
                            "another output folder")
    return resume


@dataclass
class Loop:
    """The run being trained: what an optimizer step, an evaluation and a save need, for the run and for its
    cooldown branches."""

    cfg: RunConfig
    model: torch.nn.Module  # what the steps run: the model, compiled and/or DDP-wrapped
    raw_model: torch.nn.Module  # the plain module: its state dict is what checkpoints hold
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batches: TrainBatches
    autocast: Any  # the autocast context of amp_dtype, or a null context
    amp_dtype: torch.dtype | None
    device: torch.device
    ddp: bool
    world_size: int
    tokens_per_step: int
    val_windows: torch.Tensor
    token_bytes: torch.Tensor
    tokenizer: Tokenizer
    out_dir: Path
    master: bool  # the one process that writes files and logs


def build_loop(cfg: RunConfig, batches: TrainBatches, val_windows: torch.Tensor, tokenizer: Tokenizer, out_dir: Path,
               master: bool, device: torch.device, amp_dtype: torch.dtype | None, ddp: bool, world_size: int) -> Loop:
    """A new model and its optimizer; the steps run the plain model until parallel_model compiles or wraps it."""
    tc = cfg.train
    cfg.model.check_fits_in_memory()
    model = build_model(cfg.model).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2),
                                  fused=True if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # fp16 only: bf16 has fp32's range
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    tokens_per_step = tc.batch_size * tc.grad_accum * world_size * cfg.model.block_size
    return Loop(cfg, model, model, optimizer, scaler, batches, autocast, amp_dtype, device, ddp, world_size,
                tokens_per_step, val_windows, tokenizer.token_byte_lengths(), tokenizer, out_dir, master)


def parallel_model(loop: Loop) -> torch.nn.Module:
    """The model the steps run: compiled if train.compile, DDP-wrapped under torchrun."""
    model = torch.compile(loop.raw_model) if loop.cfg.train.compile else loop.raw_model
    if loop.ddp:
        model = DDP(model, device_ids=[loop.device.index] if loop.device.type == "cuda" else None)
    return model


@dataclass
class Progress:
    """How far the run is (restored from its checkpoint, advanced by each step), and its train loss, steps and
    training time since the last evaluation (that evaluation's train_loss and tokens_per_s)."""

    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0  # wall time of the run before this process took it up
    metrics: dict[str, Any] = field(default_factory=dict)  # the last evaluation's
    loss_sum: float = 0.0
    loss_steps: int = 0
    train_time: float = 0.0

    def count_step(self, train_loss: float, tokens: int, seconds: float) -> None:
        self.step, self.tokens = self.step + 1, self.tokens + tokens
        self.loss_sum, self.loss_steps = self.loss_sum + train_loss, self.loss_steps + 1
        self.train_time += seconds


def restore(loop: Loop, state: dict[str, Any], rank: int) -> Progress:
    """Put the run back where its checkpoint left it: weights, optimizer, grad scaler, batches and RNG."""
    loop.raw_model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["train"]["optimizer"])
    if state["train"]["scaler"]:  # empty if saved without fp16 (scaler off): then fp16 starts a fresh scale
        loop.scaler.load_state_dict(state["train"]["scaler"])
    loop.batches.load_state_dict(state["train"]["batches"])
    restore_rng_states(state["train"]["rng"], rank, loop.world_size, loop.device, loop.cfg.train.seed)
    return Progress(step=state["step"], tokens=state["tokens"], elapsed_s=state["train"]["elapsed_s"],
                    metrics=state["metrics"])


def train_step(loop: Loop, lr: float) -> float:
    """One optimizer step at learning rate ``lr`` (micro-steps with gradient accumulation, clip, step); returns the
    global batch's loss, the same in every process (so that all stop together on NaN)."""
    tc, model, optimizer, scaler = loop.cfg.train, loop.model, loop.optimizer, loop.scaler
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = loop.batches.next()
    step_loss = torch.zeros((), device=loop.device)
    for micro in range(tc.grad_accum):
        # DDP all-reduces gradients during backward: only needed on the last micro-step
        sync = model.no_sync() if loop.ddp and micro < tc.grad_accum - 1 else nullcontext()
        with sync:
            with loop.autocast:
                loss = model(x[micro], y[micro])[1]  # holding no reference to the logits frees them early
                loss = loss / tc.grad_accum  # gradients sum over micro-steps: this makes them a mean
            scaler.scale(loss).backward()
        step_loss += loss.detach()
    if loop.ddp:
        dist.all_reduce(step_loss)
        step_loss /= loop.world_size
    train_loss = step_loss.item()
    if not math.isfinite(train_loss):
        return train_loss
    if tc.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return train_loss


def evaluate_now(loop: Loop):
    eval_model = loop.model.module if loop.ddp else loop.model  # evaluation shards differ per process: no DDP sync
    return evaluate(loop.raw_model, loop.val_windows, loop.token_bytes, loop.cfg.eval.dense_threshold,
                    loop.cfg.train.batch_size, loop.device, forward=eval_model, autocast=loop.autocast, ddp=loop.ddp)


def evaluate_and_save(loop: Loop, progress: Progress, lr: float, start: float, snapshot: bool,
                      external_log: Callable[[dict[str, Any]], None] | None) -> None:
    """Evaluate, then (rank 0) log the metrics line, keep the model of a snapshot step, save the checkpoint with
    every process's RNG state; the loss, steps and time since the evaluation start again."""
    step, tokens, out_dir = progress.step, progress.tokens, loop.out_dir
    evaluation = evaluate_now(loop)
    val_loss = evaluation.val_loss
    if not math.isfinite(val_loss):
        raise CratelabError(nan_message("validation loss", val_loss, step, out_dir / CHECKPOINT))
    progress.metrics = metrics = {
        "step": step, "tokens": tokens, "train_loss": progress.loss_sum / progress.loss_steps, "val_loss": val_loss,
        "lr": lr, "tokens_per_s": progress.loss_steps * loop.tokens_per_step / progress.train_time,
        "elapsed_s": time.perf_counter() - start, **training_sparsity_metrics(evaluation.layers)}
    rng = [rng_states(loop.device)]
    if loop.ddp:
        rng = [None] * loop.world_size
        dist.all_gather_object(rng, rng_states(loop.device))
    if loop.master:
        append_line(out_dir / METRICS, json.dumps(metrics))
        if snapshot and step < loop.cfg.train.max_steps:
            # before ckpt.pt: a kill in between resumes from the previous checkpoint and passes
            # this step again, so a kept model is never missing, and rewritten identically
            keep_model(loop, evaluation, track_folder(out_dir, step), metrics)
        if loop.amp_dtype is None:
            # eval.json of the checkpoint about to be saved, in float32 as `cratelab eval` computes it;
            # written first: a kill in between leaves one of a later step, which no reader takes for
            # the checkpoint's (read_evaluation checks the step)
            write_evaluation(evaluation, out_dir, step, loop.cfg.eval.tokens)
        train_state = {"optimizer": loop.optimizer.state_dict(), "scaler": loop.scaler.state_dict(),
                       "batches": loop.batches.state_dict(), "rng": rng, "elapsed_s": metrics["elapsed_s"]}
        save_checkpoint(loop.raw_model, loop.cfg, loop.tokenizer, out_dir, step=step, tokens=tokens, metrics=metrics,
                        train_state=train_state)
        if external_log is not None:
            external_log(metrics)
    log(loop.master, f"step {step:,}/{loop.cfg.train.max_steps:,} | train_loss {metrics['train_loss']:.4f} | "
                     f"val_loss {val_loss:.4f} | lr {lr:.2e} | {metrics['tokens_per_s']:,.0f} tokens/s")
    progress.loss_sum, progress.loss_steps, progress.train_time = 0.0, 0, 0.0


def keep_model(loop: Loop, evaluation, folder: Path, metrics: dict[str, Any]) -> None:
    """A kept model (track/step{N}/): its checkpoint without training state, and its eval.json."""
    save_checkpoint(loop.raw_model, loop.cfg, loop.tokenizer, folder, step=metrics["step"], tokens=metrics["tokens"],
                    metrics=metrics)
    if loop.amp_dtype is None:
        write_evaluation(evaluation, folder, metrics["step"], loop.cfg.eval.tokens)


def cooldown_branch(loop: Loop, start: int, budget: int) -> None:
    """Schedule "wsd": train from the stable phase at ``start`` through the cooldown of a ``budget``-step run, on
    the batches the run itself takes next, keep that model in track/step{budget}/ with a metrics line marked with
    its start, then put the run back exactly as it was (weights, optimizer, batches, RNG). The kept model is the
    one a run with max_steps = budget gives."""
    saved = copy.deepcopy({"model": loop.raw_model.state_dict(), "optimizer": loop.optimizer.state_dict(),
                           "scaler": loop.scaler.state_dict(), "batches": loop.batches.state_dict(),
                           "rng": rng_states(loop.device)})
    t0, losses = time.perf_counter(), []
    for step in range(start, budget):
        losses.append(train_step(loop, lr_at(step, loop.cfg.train, budget)))
        if not math.isfinite(losses[-1]):
            raise CratelabError(nan_message("loss", losses[-1], step + 1, loop.out_dir / CHECKPOINT))
    train_time = time.perf_counter() - t0
    evaluation = evaluate_now(loop)
    metrics = {"step": budget, "tokens": budget * loop.tokens_per_step, "train_loss": sum(losses) / len(losses),
               "val_loss": evaluation.val_loss, "lr": lr_at(budget - 1, loop.cfg.train, budget),
               "tokens_per_s": len(losses) * loop.tokens_per_step / train_time, COOLDOWN_START: start,
               **training_sparsity_metrics(evaluation.layers)}
    if not math.isfinite(evaluation.val_loss):
        raise CratelabError(nan_message("validation loss", evaluation.val_loss, budget, loop.out_dir / CHECKPOINT))
    folder = track_folder(loop.out_dir, budget)
    if loop.master:
        keep_model(loop, evaluation, folder, metrics)
        append_line(loop.out_dir / METRICS, json.dumps(metrics))  # after the model: a line always has its model
    loop.raw_model.load_state_dict(saved["model"])
    loop.optimizer.load_state_dict(saved["optimizer"])
    loop.scaler.load_state_dict(saved["scaler"])
    loop.batches.load_state_dict(saved["batches"])
    torch.set_rng_state(saved["rng"]["torch"])
    if saved["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(saved["rng"]["cuda"], loop.device)
    log(loop.master, f"step {budget:,} (cooldown from step {start:,}): kept in {folder}")
