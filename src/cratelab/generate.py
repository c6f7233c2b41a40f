"""Sampling from a model, optionally while hooks overwrite activations (neuron steering)."""

from __future__ import annotations

from typing import Iterable

import torch

from .models import LanguageModel
from .models.hooks import HookFn


@torch.no_grad()
def next_token_distribution(model: LanguageModel, idx: torch.Tensor,
                            fwd_hooks: Iterable[tuple[str, HookFn]] = ()) -> torch.Tensor:
    """Probabilities of the token after the last position of each sequence in idx (B, T)."""
    model.eval()
    with model.hooks(fwd_hooks):
        logits = model(idx[:, -model.config.block_size:])
    return torch.softmax(logits[:, -1, :].float(), dim=-1)


@torch.no_grad()
def generate(model: LanguageModel, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             fwd_hooks: Iterable[tuple[str, HookFn]] = ()) -> torch.Tensor:
    """Extend idx (B, T) by max_new_tokens tokens; temperature 0 means greedy decoding."""
    model.eval()
    fwd_hooks = list(fwd_hooks)
    for _ in range(max_new_tokens):
        with model.hooks(fwd_hooks):
            logits = model(idx[:, -model.config.block_size:])[:, -1, :].float()
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_id = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        idx = torch.cat([idx, next_id], dim=1)
    return idx
