"""Import checkpoints written by the official crate-lm code (a nanoGPT fork): its CRATE
(`crate_overcomplete.py`) and its GPT-2 baseline (`gpt.py`, ReLU MLP), told apart by their keys.

The official file is a `torch.save` dict with `model_args` (n_layer, n_head, n_embd, block_size,
bias, vocab_size, dropout) and `model` (a state dict whose keys may carry torch.compile's
`_orig_mod.` prefix). CRATE's ISTA step size and lambda are hard-coded to 0.1 and it runs 2 steps;
it keeps its biases whatever `bias` says. The GPT has biases in its Linear and LayerNorm layers only
with `bias` true (`train.py`'s default is false): `bias` becomes our `model.bias`.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ConfigError, CratelabError, unpickling_error
from .base import LanguageModel
from .crate import CRATE
from .gpt import GPT

# official key pattern -> our key (CRATE's prenorm_1/2 and ista; the GPT's nanoGPT names ln_1/2 and mlp)
_KEY_MAP = [
    (r"transformer\.wte\.", "wte."),
    (r"transformer\.wpe\.", "wpe."),
    (r"transformer\.h\.(\d+)\.prenorm_1\.", r"blocks.\1.ln_1."),
    (r"transformer\.h\.(\d+)\.prenorm_2\.", r"blocks.\1.ln_2."),
    (r"transformer\.h\.(\d+)\.ln_1\.", r"blocks.\1.ln_1."),
    (r"transformer\.h\.(\d+)\.ln_2\.", r"blocks.\1.ln_2."),
    (r"transformer\.h\.(\d+)\.attn\.", r"blocks.\1.attn."),
    (r"transformer\.h\.(\d+)\.ista\.", r"blocks.\1.ista."),
    (r"transformer\.h\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"transformer\.ln_f\.", "ln_f."),
    (r"lm_head\.", "lm_head."),
]
OFFICIAL_ISTA = dict(ista_step_size=0.1, ista_lambda=0.1, ista_steps=2)


def official_key_to_ours(key: str) -> str:
    key = key.removeprefix("_orig_mod.")
    for pattern, replacement in _KEY_MAP:
        new, n = re.subn("^" + pattern, replacement, key)
        if n:
            return new
    raise KeyError(key)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise CratelabError(f"official checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise unpickling_error(path, err) from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CratelabError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})") from None


def load_official_checkpoint(path: str | Path) -> LanguageModel:
    """Our CRATE or GPT computing the same function as the official checkpoint (to float32 rounding)."""
    path = Path(path)
    ckpt = _read(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or \
            not isinstance(ckpt.get("model_args"), dict):
        raise CratelabError(f"{path}: expected an official crate-lm checkpoint with 'model' and 'model_args'")
    args, official = ckpt["model_args"], ckpt["model"]
    not_tensors = [str(key) for key, value in official.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CratelabError(f"{path}: 'model' holds values that are not tensors ({', '.join(not_tensors[:3])})")
    state = {}
    for key, value in official.items():
        if key.removeprefix("_orig_mod.").endswith("attn.bias") and value.dim() == 4:
            continue  # the causal-mask buffer of the non-flash attention path, not a parameter
        try:
            state[official_key_to_ours(key)] = value.float()
        except KeyError:
            raise CratelabError(f"{path}: unexpected key {key!r}; is this a crate_overcomplete.py or gpt.py "
                                "checkpoint?") from None
    gpt = "blocks.0.mlp.c_fc.weight" in state  # gpt.py's MLP; crate_overcomplete.py has ista.weight there
    try:
        n_embd = int(args["n_embd"])
        attn_width = state["blocks.0.attn.c_attn.weight"].shape[0]
        expected, what = (3 * n_embd, "GPT-2's q, k, v; this is not a gpt.py") if gpt else \
            (n_embd, "CRATE's shared U; this is not a crate_overcomplete")
        if attn_width != expected:
            raise CratelabError(f"{path}: attention projection has {attn_width} outputs, expected {expected} "
                                f"({what} checkpoint)")
        shape = dict(n_layer=int(args["n_layer"]), n_head=int(args["n_head"]), n_embd=n_embd,
                     vocab_size=int(args["vocab_size"]), block_size=int(args["block_size"]),
                     dropout=float(args.get("dropout", 0.0)), bias=args["bias"])
        if gpt:
            cfg = ModelConfig(arch="gpt", mlp_act="relu",
                              overcomplete=state["blocks.0.mlp.c_fc.weight"].shape[0] // n_embd, **shape)
        else:
            cfg = ModelConfig(arch="crate", qkv="shared", overcomplete=state["blocks.0.ista.weight"].shape[0] // n_embd,
                              **OFFICIAL_ISTA, **shape)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:  # not a complete crate-lm file
        what = f"no {err.args[0]!r}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        raise CratelabError(f"{path}: incomplete official checkpoint ({what} in model_args or model)") from None
    try:
        cfg.validate()
        cfg.check_fits_in_memory()
    except ConfigError as err:
        raise CratelabError(f"{path}: model_args do not describe a model this cratelab can build ({err})") from None
    model = GPT(cfg) if gpt else CRATE(cfg)
    state.setdefault("lm_head.weight", state.get("wte.weight"))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that disagree with model_args
        mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise CratelabError(f"{path}: checkpoint does not match its model_args ({mismatch[:300]})") from None
    if missing or unexpected:
        raise CratelabError(f"{path}: checkpoint does not match its model_args "
                            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()
