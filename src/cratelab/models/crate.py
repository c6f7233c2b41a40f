"""CRATE (Bai & Ma 2025, the official `crate_overcomplete.py`): pre-LN blocks of

    x = x + MSSA(LN1(x))          multi-head subspace self-attention, residual
    x = ISTA(LN2(x))              one overcomplete sparse-coding step, NO residual

with the ISTA sparsity weight, step size, number of steps and dictionary size taken from the config.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .base import CausalSelfAttention, LanguageModel
from .hooks import HookPoint
from .ista import ista_encode


class ISTA(nn.Module):
    """T unrolled ISTA steps for min_A  lambda*|A|_1 + 1/2 |x - D A|^2  with A >= 0, from A_0 = 0:

        A_{t+1} = ReLU(A_t + eta * (W x - W W^T A_t) - eta * lambda),   output = W^T A_T

    W (h x d) holds the h = overcomplete*d dictionary atoms as rows (D = W^T). A_T is the sparse
    code that gets interpreted (hook ``ista.hook_post``).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.overcomplete * cfg.n_embd, cfg.n_embd))
        nn.init.kaiming_uniform_(self.weight)
        self.step_size = cfg.ista_step_size
        self.lambd = cfg.ista_lambda
        self.steps = cfg.ista_steps
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self.hook_post(ista_encode(x, self.weight, self.step_size, self.lambd, self.steps))
        return code @ self.weight  # decode with the same dictionary: D A_T


class CrateBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(cfg, qkv=cfg.qkv, qkv_bias=False)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.ista = ISTA(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.attn(self.ln_1(x)))
        return self.hook_resid_post(self.ista(self.ln_2(x)))


class CRATE(LanguageModel):
    block_class = CrateBlock
