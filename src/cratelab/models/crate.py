"""CRATE (Bai & Ma 2025, the official `crate_overcomplete.py`): pre-LN blocks of

    x = x + MSSA(LN1(x))          multi-head subspace self-attention, residual
    x = ISTA(LN2(x))              one overcomplete sparse-coding step, NO residual

with the ISTA sparsity weight, step size, number of steps and dictionary size taken from the config.
The ablations of issue 11 change only the second line (the defaults are the official model):

    model.ista_residual = true    x = x + FFN(LN2(x))            (a residual around it, as GPT-2)
    model.ffn = "mlp"             FFN(z) = c_proj(ReLU(c_fc z))  (GPT-2's MLP, same width h, biases)
                                  in place of ISTA; its hidden layer is the interpreted code
                                  (``mlp.hook_post``). Without ista_residual it replaces the
                                  residual stream, exactly as ISTA does, so that only the sparse
                                  coding changes.
    model.ista_decoder = "separate"   ISTA output D A_T with a learned decoder D (d x h) instead of
                                  the tied W^T A_T (CRATE-alpha's decoupled dictionary).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from .base import MLP, CausalSelfAttention, LanguageModel
from .hooks import HookPoint
from .ista import ista_encode


class ISTA(nn.Module):
    """T unrolled ISTA steps for min_A  lambda*|A|_1 + 1/2 |x - W^T A|^2  with A >= 0, from A_0 = 0:

        A_{t+1} = ReLU(A_t + eta * (W x - W W^T A_t) - eta * lambda)

        output = W^T A_T    (ista_decoder = "tied", the official code)
        output = D A_T      (ista_decoder = "separate": D (d x h) is learned on its own; the encoder
                             still codes against W. D starts as a copy of W^T, so at initialisation
                             the model computes the tied function and only training separates them)

    W (h x d) holds the h = overcomplete*d dictionary atoms as rows. A_T is the sparse code that gets
    interpreted (hook ``ista.hook_post``).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_neurons, cfg.n_embd))
        nn.init.kaiming_uniform_(self.weight)
        self.decoder = nn.Parameter(self.weight.detach().t().clone()) if cfg.ista_decoder == "separate" else None
        self.step_size = cfg.ista_step_size
        self.lambd = cfg.ista_lambda
        self.steps = cfg.ista_steps
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self.hook_post(ista_encode(x, self.weight, self.step_size, self.lambd, self.steps))
        if self.decoder is None:
            return code @ self.weight  # decode with the same dictionary: W^T A_T
        return F.linear(code, self.decoder)  # D A_T


class CrateBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(cfg, qkv=cfg.qkv, qkv_bias=False)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=1e-5)
        self.uses_ista = cfg.ffn == "ista"
        if self.uses_ista:
            self.ista = ISTA(cfg)
        else:
            self.mlp = MLP(cfg)
        self.residual = cfg.ista_residual
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.attn(self.ln_1(x)))
        out = self.ista(self.ln_2(x)) if self.uses_ista else self.mlp(self.ln_2(x))
        return self.hook_resid_post(x + out if self.residual else out)


class CRATE(LanguageModel):
    block_class = CrateBlock
