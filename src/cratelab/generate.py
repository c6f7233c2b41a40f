"""Sampling from a model, optionally while hooks overwrite activations (neuron steering)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from .errors import CratelabError
from .models import LanguageModel
from .models.hooks import HookFn

# the smallest temperature the float32 logits can be divided by (float32's smallest normal number); 0 is greedy
MIN_TEMPERATURE = torch.finfo(torch.float32).tiny
# the largest value a hook may set an activation to (activations are float32: beyond it, inf)
MAX_SET_VALUE = torch.finfo(torch.float32).max


def _next_logits(model: LanguageModel, idx: torch.Tensor,
                 fwd_hooks: Sequence[tuple[str, HookFn]] = ()) -> torch.Tensor:
    """The logits of the token after the last position of each sequence in idx (B, T), checked to be finite:
    text sampled from NaN logits (a steered activation too large for the model) would be noise."""
    with model.hooks(fwd_hooks):
        logits = model(idx[:, -model.config.block_size:])[:, -1, :].float()
    if not torch.isfinite(logits).all():
        raise CratelabError("the model's next-token logits are not finite (NaN or inf)" + (
            ": the activations set by the hooks (--set-neuron) are too large for it; use a smaller value"
            if fwd_hooks else ""))
    return logits


@torch.no_grad()
def next_token_distribution(model: LanguageModel, idx: torch.Tensor,
                            fwd_hooks: Iterable[tuple[str, HookFn]] = ()) -> torch.Tensor:
    """Probabilities of the token after the last position of each sequence in idx (B, T)."""
    model.eval()
    return torch.softmax(_next_logits(model, idx, list(fwd_hooks)), dim=-1)


@torch.no_grad()
def generate(model: LanguageModel, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             fwd_hooks: Iterable[tuple[str, HookFn]] = ()) -> torch.Tensor:
    """Extend idx (B, T) by max_new_tokens tokens; temperature 0 means greedy decoding, else at least
    MIN_TEMPERATURE."""
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
        raise CratelabError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:.3g}, "
                            f"got {temperature}")
    model.eval()
    fwd_hooks = list(fwd_hooks)
    for _ in range(max_new_tokens):
        logits = _next_logits(model, idx, fwd_hooks)
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            # the largest logit becomes 0 and the others <= 0 before the division: a tiny temperature sends
            # them to -inf (probability 0), never to inf - inf = NaN
            logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_id = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        idx = torch.cat([idx, next_id], dim=1)
    return idx
