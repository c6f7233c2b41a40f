"""Run checkpoints: a folder holding ``ckpt.pt`` and ``config.toml`` (and, for training runs, ``metrics.jsonl``).

``ckpt.pt`` holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``
(no code runs when a checkpoint is opened). Its keys: ``format``, ``version``, ``model`` (state dict),
``config`` (the RunConfig as a dict), ``tokenizer`` (the tokenizer's ``to_dict()``), ``step``, ``tokens``,
``metrics`` (of the last evaluation) and, for a training run, ``train`` (optimizer, grad scaler, RNG and
batch-sampler states, elapsed time) so that a run resumes exactly.

Files are replaced atomically: a new checkpoint is written to a temporary file in the same folder,
flushed to disk, then renamed over the old one, so an interrupted save leaves the previous good
checkpoint in place. On load, the zip container's CRC-32 checksums are verified first, because
``torch.load`` itself does not check them and would silently load flipped bits.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, DataConfig, RunConfig, config_from_dict, dump_toml
from .data.tokenizer import Tokenizer
from .errors import CratelabError, unpickling_error
from .io import atomic_write, write_text
from .layout import CHECKPOINT, CHECKPOINT_FORMAT, CONFIG
from .models import LanguageModel, build_model

VERSION = 1
TRAIN_STATE_KEYS = ("optimizer", "scaler", "batches", "rng", "elapsed_s")  # what train.py saves and resumes from


@dataclass
class Checkpoint:
    model: LanguageModel  # on the CPU, in eval mode
    config: RunConfig
    tokenizer: Tokenizer
    step: int
    tokens: int  # training tokens seen
    metrics: dict[str, Any]  # of the last evaluation ({} for an imported model)
    path: Path  # the checkpoint folder


def checkpoint_file(path: str | Path) -> Path:
    """The file itself, or the ckpt.pt of a checkpoint folder."""
    path = Path(path)
    return path if path.is_file() else path / CHECKPOINT


def write_config(cfg: RunConfig, out_dir: Path) -> None:
    write_text(out_dir / CONFIG, dump_toml(cfg))


def save_checkpoint(model: torch.nn.Module, cfg: RunConfig, tokenizer: Tokenizer, out_dir: str | Path, *,
                    step: int = 0, tokens: int = 0, metrics: dict[str, Any] | None = None,
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/ckpt.pt`` and ``out_dir/config.toml``; ``cfg.model.vocab_size`` must be resolved."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT, "version": VERSION,
        "model": model.state_dict(),
        "config": cfg.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "step": step, "tokens": tokens, "metrics": dict(metrics or {}),
    }
    if train_state is not None:
        state["train"] = train_state
    path = out_dir / CHECKPOINT
    atomic_write(path, lambda f: torch.save(state, f))
    write_config(cfg, out_dir)
    return path


def save_model_checkpoint(model: LanguageModel, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """A checkpoint of a model without training state (e.g. imported weights), loadable by `load_checkpoint`."""
    cfg = RunConfig(model=model.config, data=DataConfig(tokenizer=tokenizer.name))
    return save_checkpoint(model, cfg, tokenizer, out_dir)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw contents of a checkpoint, verified; any damage is a CratelabError naming the file."""
    file = checkpoint_file(path)
    if not file.is_file():
        raise CratelabError(f"no checkpoint at {path}: expected a run folder holding {CHECKPOINT}, or that file")
    try:
        with zipfile.ZipFile(file) as archive:
            damaged = archive.testzip()  # reads every member and checks its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CratelabError(f"{file}: truncated or corrupted checkpoint ({err})") from None
    if damaged is not None:
        raise CratelabError(f"{file}: corrupted checkpoint (checksum mismatch in {damaged})")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise unpickling_error(file, err) from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file for the user
        raise CratelabError(f"{file}: not a loadable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CratelabError(f"{file}: not a cratelab checkpoint (for the authors' released weights use "
                            "`cratelab import-official`)")
    if state.get("version") != VERSION:
        raise CratelabError(f"{file}: checkpoint format version {state.get('version')} is not supported "
                            f"by this cratelab (expects {VERSION})")
    problem = state_problem(state)
    if problem:
        raise CratelabError(f"{file}: damaged checkpoint ({problem})")
    return state


def state_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with the keys of a loaded checkpoint dict, or None."""
    for key in ("model", "config", "tokenizer", "metrics"):
        if not isinstance(state.get(key), dict):
            return f"no {key!r}" if key not in state else f"{key!r} is a {type(state[key]).__name__}, not a mapping"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        return "'model' holds values that are not tensors"
    for key in ("step", "tokens"):
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"no {key!r}" if key not in state else f"{key!r} is {value!r}, not a count"
    if "train" in state:
        train = state["train"]
        if not isinstance(train, dict):
            return f"'train' is a {type(train).__name__}, not a mapping"
        missing = [key for key in TRAIN_STATE_KEYS if key not in train]
        if missing:
            return f"its training state has no {', '.join(map(repr, missing))}"
    return None


def config_of(state: dict[str, Any], file: Path) -> RunConfig:
    try:
        return config_from_dict(state["config"])
    except ConfigError as err:
        raise CratelabError(f"{file}: the stored config is not valid for this cratelab ({err})") from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint folder (or its ckpt.pt) as a ready model on the CPU in eval mode, with its config and tokenizer."""
    file = checkpoint_file(path)
    state = read_checkpoint(file)
    cfg = config_of(state, file)
    cfg.model.check_fits_in_memory()  # the config is the file's: its tensors need not be that big
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CratelabError(f"{file}: weights do not match the stored model config ({err})") from None
    try:
        tokenizer = Tokenizer.from_dict(state["tokenizer"])
    except Exception as err:  # noqa: BLE001 - any failure to rebuild it means a damaged file for the user
        detail = str(err) if isinstance(err, CratelabError) else type(err).__name__
        raise CratelabError(f"{file}: damaged checkpoint (its tokenizer does not load: {detail})") from None
    return Checkpoint(model=model.eval(), config=cfg, tokenizer=tokenizer, step=state["step"], tokens=state["tokens"],
                      metrics=dict(state["metrics"]), path=file.parent)


def _vocabulary_sha256(tok: Tokenizer) -> str:
    h = hashlib.sha256(f"{tok.name} {tok.vocab_size} {tok.eot_id}".encode())
    for i in range(tok.vocab_size):
        h.update(len(tok.token_bytes(i)).to_bytes(4, "little") + tok.token_bytes(i))
    return h.hexdigest()


def check_tokenizer(ckpt: Checkpoint, data_tokenizer: Tokenizer) -> None:
    """The held-out text a checkpoint is read on must be tokenized as in its training: other token ids
    give a plausible-looking but meaningless loss or records (a BPE retrained on a changed corpus
    has the same size and other tokens)."""
    mine, theirs = ckpt.tokenizer, data_tokenizer
    if (mine.name, mine.vocab_size) != (theirs.name, theirs.vocab_size) or \
            _vocabulary_sha256(mine) != _vocabulary_sha256(theirs):
        how = (f"{theirs.name}, vocab {theirs.vocab_size} vs {mine.name}, vocab {mine.vocab_size}"
               if (mine.name, mine.vocab_size) != (theirs.name, theirs.vocab_size)
               else f"{mine.name}, vocab {mine.vocab_size}, but other tokens: the corpus changed since training")
        raise CratelabError(f"the dataset of data.corpus = {ckpt.config.data.corpus!r} is tokenized differently "
                            f"from the checkpoint {checkpoint_file(ckpt.path)} ({how}): use the text and data "
                            "settings the model was trained with")
