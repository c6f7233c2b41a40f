"""Train a sparse autoencoder on one hook point of a run, with SAELens's SAE classes and trainer.

SAELens's `SAETrainer` does the optimisation (Adam, its lr and L1 schedules, dead-feature tracking, the
TopK auxiliary loss); we feed it activations streamed from our model (ActivationBuffer) and drive it a
step at a time, so that checkpoints fall at buffer boundaries and a run resumes exactly. ReLU + L1 SAEs
also get the paper's dead-feature resampling (SAELens 6 dropped it): every `resample_every` steps,
dead features are re-initialised towards inputs the SAE reconstructs worst.

The output folder:

    cfg.json, sae_weights.safetensors   the SAE in SAELens's format (`sae_lens.SAE.load_from_disk(DIR)`);
                                        cfg.json is written last: it marks a finished SAE
    sae.json        where it comes from: run, checkpoint sha256, hook, layer, the [sae] settings, and the
                    sha256 of sae_weights.safetensors (checked on load: a damaged file is refused, not scored)
    metrics.jsonl   one line per checkpoint: step, tokens, mse, l0, dead fraction, lr, elapsed
    state/          the resumable training state (SAELens checkpoint + data position); dropped at the end
"""

from __future__ import annotations

import json
import pickle
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from .. import layout
from ..checkpoint import Checkpoint, checkpoint_file
from ..config import changed_settings, execution_settings
from ..errors import CratelabError, unpickling_error
from ..io import (JsonlAppender, building_folder, keep_jsonl, read_json_object, remove_tree, sha256_file, write_bytes,
                  write_json)
from ..layout import EVAL, METRICS, SAE_FORMAT, SAE_JSON, SAE_POSITION, SAE_STATE, SAELENS_FILES
from ..runtime import resolve_device, set_threads
from .activations import ActivationBuffer, check_hook, d_in, hook_layer
from .config import SAEConfig

WEIGHTS_SHA256 = "weights_sha256"  # sae.json's checksum of SAELENS_FILES[0]
# files that make a folder another kind of run's (`cratelab train`, `interpret`, `ablate`): never an SAE's --out
OTHER_KINDS = {layout.CHECKPOINT: "a training run", layout.CONFIG: "a training run or an interpret folder",
               layout.INTERP_RUN: "an interpret folder", layout.SWEEP_CONFIG: "a sweep folder",
               layout.RUN_RESULT: "a sweep run"}


def require_sae_lens():
    try:
        import sae_lens
    except ImportError:
        raise CratelabError("SAEs need SAELens: pip install 'cratelab[sae]'") from None
    return sae_lens


def is_sae_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / SAE_JSON).is_file() and (path / SAELENS_FILES[1]).is_file()


def training_sae(cfg: SAEConfig, width_in: int, *, hook: str, model_name: str, context_size: int,
                 device: torch.device):
    """A SAELens training SAE of the configured architecture."""
    sl = require_sae_lens()
    common = dict(d_in=width_in, d_sae=cfg.width(width_in), device=str(device))
    if cfg.architecture == "relu":
        sae_cfg = sl.StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient,
                                               l1_warm_up_steps=cfg.l1_warm_up_steps, **common)
    else:
        sae_cfg = sl.TopKTrainingSAEConfig(k=min(cfg.k, common["d_sae"]),
                                           aux_loss_coefficient=cfg.aux_loss_coefficient, **common)
    sae_cfg.metadata.hook_name = hook
    sae_cfg.metadata.model_name = model_name
    sae_cfg.metadata.context_size = context_size
    torch.manual_seed(cfg.seed)
    return (sl.StandardTrainingSAE if cfg.architecture == "relu" else sl.TopKTrainingSAE)(sae_cfg)


def trainer(sae, cfg: SAEConfig, device: torch.device, data):
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    tcfg = SAETrainerConfig(total_training_samples=cfg.steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size,
                            lr=cfg.lr, lr_end=cfg.lr / 10, lr_warm_up_steps=cfg.lr_warm_up_steps,
                            lr_decay_steps=cfg.lr_decay_steps, device=str(device),
                            dead_feature_window=cfg.dead_feature_window,
                            feature_sampling_window=max(cfg.dead_feature_window, 1),
                            logger=LoggingConfig(log_to_wandb=False))
    return SAETrainer(tcfg, sae, data)


@torch.no_grad()
def resample_dead(sae, trainer, batch: torch.Tensor, seed: int) -> int:
    """Re-initialise the dead features (Anthropic's resampling, as in the paper's SAELens version): each
    gets the direction of an input drawn with probability ~ its squared reconstruction error, as its
    decoder row and (scaled to 0.2 x the mean live encoder norm) its encoder column, and fresh Adam state."""
    dead = trainer.dead_neurons.nonzero().flatten()
    if len(dead) == 0:
        return 0
    err = (sae(batch) - batch).pow(2).sum(-1)
    if err.sum() <= 0:
        return 0
    generator = torch.Generator(device=batch.device).manual_seed(seed)  # seeded: a resumed run resamples alike
    picks = torch.multinomial(err, len(dead), replacement=len(dead) > len(batch), generator=generator)
    directions = batch[picks] - sae.b_dec
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~trainer.dead_neurons
    scale = 0.2 * (sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else 1.0)
    # decoder rows at the live rows' norm (SAELens's decoder is not unit-norm: it starts at decoder_init_norm)
    sae.W_dec[dead] = directions * (sae.W_dec[alive].norm(dim=1).mean() if alive.any() else 1.0)
    sae.W_enc[:, dead] = directions.T * scale
    sae.b_enc[dead] = 0.0
    for param, index in ((sae.W_dec, (dead,)), (sae.W_enc, (slice(None), dead)), (sae.b_enc, (dead,))):
        state = trainer.optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0
    trainer.n_forward_passes_since_fired[dead] = 0
    return len(dead)


# [sae] settings a resumed SAE may change: its execution settings, and eval_tokens (read by the evaluation
# after training, never by it)
SAE_RESUMABLE_CHANGES = execution_settings(SAEConfig) | {"eval_tokens"}


def _identity(ckpt: Checkpoint, hook: str, cfg: SAEConfig) -> dict[str, Any]:
    settings = {k: v for k, v in cfg.to_dict().items() if k not in SAE_RESUMABLE_CHANGES}
    return {"format": SAE_FORMAT, "run": str(ckpt.path.resolve()),
            "checkpoint_sha256": sha256_file(checkpoint_file(ckpt.path)), "step": ckpt.step,
            "arch": ckpt.config.model.arch, "hook": hook, "layer": hook_layer(hook), "sae": settings}


def check_sae_out(out: Path) -> None:
    """Refuse an output folder that holds another kind of run (its files would be deleted or overwritten)."""
    for name, kind in OTHER_KINDS.items():
        if (out / name).exists():
            raise CratelabError(f"{out} holds {kind} ({name}), not an SAE: use another --out")
    if not (out / SAE_JSON).is_file():  # sae.json is written first: without it these files are not ours
        for name in (METRICS, EVAL, *SAELENS_FILES):
            if (out / name).exists():
                raise CratelabError(f"{out} holds {name} but no {SAE_JSON}: not an SAE folder; use another --out")


# sae.json's fields and their types (_identity writes them)
SAE_JSON_FIELDS = {"run": (str, "a string"), "checkpoint_sha256": (str, "a string"), "hook": (str, "a string"),
                   "layer": (int, "an integer"), "sae": (dict, "an object")}


def read_sae_json(folder: Path) -> dict[str, Any]:
    """A folder's sae.json, checked to hold the fields _identity writes; a damaged one is one error naming it."""
    path = folder / SAE_JSON
    meta = read_json_object(path, what="SAE description", keys=tuple(SAE_JSON_FIELDS))
    for key, (kind, what) in SAE_JSON_FIELDS.items():
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise CratelabError(f"{path}: not a valid SAE description ({key!r} is {meta[key]!r}, not {what}); "
                                "rerun `cratelab sae` with --fresh")
    return meta


def _check_identity(out: Path, identity: dict[str, Any]) -> None:
    old = read_sae_json(out)
    keys = ("checkpoint_sha256", "hook", "sae")
    diffs = changed_settings({k: old.get(k) for k in keys}, {k: identity[k] for k in keys})
    if diffs:
        raise CratelabError(f"{out} holds an SAE made with other settings ({'; '.join(diffs)}); use another --out, "
                            "or --fresh to start over")


def _save_state(out: Path, trainer, data: ActivationBuffer, elapsed: float) -> None:
    with building_folder(out / SAE_STATE) as tmp:
        trainer.sae.save_model(tmp)
        trainer.save_trainer_state(tmp)
        write_json(tmp / SAE_POSITION, {"refills_done": data.refills_done, "steps": trainer.n_training_steps,
                                           "elapsed_s": elapsed})


def _export(out: Path, sae) -> None:
    """The SAE in SAELens's inference format, each file atomically, the weights' sha256 recorded in sae.json,
    cfg.json last."""
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        sae.save_inference_model(tmp)
        weights, cfg = (Path(tmp) / name for name in SAELENS_FILES)
        write_bytes(out / SAELENS_FILES[0], weights.read_bytes())
        meta = read_sae_json(out)
        write_json(out / SAE_JSON, meta | {WEIGHTS_SHA256: sha256_file(weights)})
        write_bytes(out / SAELENS_FILES[1], cfg.read_bytes())


def _resume(out: Path, sae, train, data: ActivationBuffer, device: torch.device) -> float:
    """Load the resumable state (SAE weights, optimizer, schedules, data position); returns the seconds spent.
    A damaged state file is one error naming it."""
    from safetensors.torch import load_file

    state = out / SAE_STATE
    with _reading_state(state / SAELENS_FILES[0], state):
        sae.load_state_dict(load_file(state / SAELENS_FILES[0], device=str(device)))
    with _reading_state(state, state):  # SAELens's trainer_state.pt and activation_scaler.json
        train.load_trainer_state(state)
    with _reading_state(state / SAE_POSITION, state):
        position = json.loads((state / SAE_POSITION).read_bytes())
        data.refills_done, elapsed = int(position["refills_done"]), float(position["elapsed_s"])
    return elapsed


@contextmanager
def _reading_state(path: Path, state: Path) -> Iterator[None]:
    from safetensors import SafetensorError

    try:
        yield
    except pickle.UnpicklingError as err:
        raise unpickling_error(path, err) from None
    except (OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError, SafetensorError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CratelabError(f"{path}: damaged SAE resume state ({reason}); delete {state}, or use --fresh, to train "
                            "this SAE from the start") from None


def fit_sae(train, cfg: SAEConfig, batches: Iterator[torch.Tensor], *, batches_per_refill: int = 1,
            elapsed: float = 0.0, log: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
            save: Callable[[float], None] = lambda elapsed: None, progress: bool = False) -> None:
    """Step a SAELens trainer through `cfg.steps` steps (from where it stands) on `batches`, resampling
    dead ReLU features on schedule; after each logging window (at a data-buffer boundary, at least
    `checkpoint_every` steps apart) log a metrics row and `save` a checkpoint."""
    sae = train.sae
    since_save, t0 = 0, time.perf_counter() - elapsed
    fired = torch.zeros(sae.cfg.d_sae, device=sae.W_dec.device)
    with tqdm(total=cfg.steps, initial=train.n_training_steps, unit="step", desc="sae", disable=not progress) as bar:
        while train.n_training_steps < cfg.steps:
            batch = next(batches)
            if train.n_training_steps == 0:  # b_dec starts at the data mean (SAELens's old b_dec_init "mean")
                with torch.no_grad():
                    sae.b_dec.copy_(batch.to(sae.b_dec.device).mean(0))
            output = train.step(batch)
            train.n_training_steps += 1
            since_save += 1
            fired += output.feature_acts.detach().bool().sum(0)
            step = train.n_training_steps
            if cfg.architecture == "relu" and cfg.resample_every and step % cfg.resample_every == 0 and step < cfg.steps:
                resample_dead(sae, train, batch.to(fired.device), seed=cfg.seed * 1_000_003 + step)
            bar.update(1)
            if step == cfg.steps or (step % batches_per_refill == 0 and since_save >= max(cfg.checkpoint_every, 1)):
                elapsed = time.perf_counter() - t0
                mse, l0 = float(output.losses["mse_loss"].detach()), float(fired.sum()) / (since_save * cfg.batch_size)
                log([{"step": step, "tokens": step * cfg.batch_size, "mse": mse, "l0": l0,
                      "dead_frac": float(train.dead_neurons.float().mean()),
                      "lr": train.optimizer.param_groups[0]["lr"], "elapsed_s": round(elapsed, 3)}])
                bar.set_postfix(mse=f"{mse:.4g}", l0=f"{l0:.1f}")
                fired.zero_()
                since_save = 0
                if step < cfg.steps:
                    save(elapsed)


def train_sae(ckpt: Checkpoint, hook: str, out: str | Path, cfg: SAEConfig, *, fresh: bool = False,
              progress: bool | None = None) -> Path:
    """Train (or resume, or find finished) the SAE of `hook` of a run in `out`; returns `out`."""
    cfg.validate()
    out = Path(out)
    check_sae_out(out)
    progress = sys.stderr.isatty() if progress is None else progress
    check_hook(ckpt.model, hook)
    width = d_in(ckpt.model, hook)
    cfg.check_fits_in_memory(width, ckpt.config.model.block_size)
    # before anything runs, finished or not: what follows (the caller's evaluation too) runs on these threads,
    # never on those the process last set (an SAE arm after another run)
    set_threads(cfg.threads, "sae.threads")
    identity = _identity(ckpt, hook, cfg)
    if fresh and out.exists():
        for name in (SAE_JSON, METRICS, SAE_STATE, EVAL, *SAELENS_FILES):
            remove_tree(out / name)
    out.mkdir(parents=True, exist_ok=True)
    if (out / SAE_JSON).is_file():
        _check_identity(out, identity)
        if is_sae_folder(out):
            return out  # finished
    write_json(out / SAE_JSON, identity)

    from ..data.shards import prepare_dataset

    device = resolve_device(cfg.device, setting="sae.device")
    model = ckpt.model.eval().to(device)
    dataset = prepare_dataset(ckpt.config.data, progress=progress)
    sae = training_sae(cfg, width, hook=hook, model_name=ckpt.path.name, context_size=ckpt.config.model.block_size,
                       device=device)
    data = ActivationBuffer(model, hook, dataset.train, batch_size=cfg.batch_size, buffer_tokens=cfg.buffer_tokens,
                            model_batch_size=cfg.model_batch_size, seed=cfg.seed, device=device)
    train = trainer(sae, cfg, device, data)
    elapsed = 0.0
    if (out / SAE_STATE / SAE_POSITION).is_file():  # resume
        elapsed = _resume(out, sae, train, data, device)
        # a kill between a row's logging and its checkpoint logged steps that are trained again now
        done = train.n_training_steps
        keep_jsonl(out / METRICS, lambda row: isinstance(row.get("step"), int) and row["step"] <= done)
    else:
        (out / METRICS).unlink(missing_ok=True)
    log = JsonlAppender(out / METRICS)
    try:
        fit_sae(train, cfg, iter(data), batches_per_refill=data.batches_per_refill, elapsed=elapsed, log=log.write,
                save=lambda seconds: _save_state(out, train, data, seconds), progress=progress)
    finally:
        log.close()
    train.set_final_sae_metadata()
    _export(out, sae)
    remove_tree(out / SAE_STATE)
    return out
