"""The GPT-2 baseline (nanoGPT layout): x = x + Attn(LN1(x)); x = x + MLP(LN2(x)).
The official baseline uses a ReLU MLP, so that its hidden layer's sparsity compares with CRATE's code,
and no biases (nanoGPT's bias=False, model.bias = false): the paper's GPT-2 parameter counts are those."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .base import MLP, CausalSelfAttention, LanguageModel
from .hooks import HookPoint


class GPTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, qkv="separate", qkv_bias=cfg.bias, proj_bias=cfg.bias)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias)
        self.mlp = MLP(cfg, bias=cfg.bias)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.attn(self.ln_1(x)))
        return self.hook_resid_post(x + self.mlp(self.ln_2(x)))


class GPT(LanguageModel):
    block_class = GPTBlock

    @staticmethod
    def has_bias(cfg: ModelConfig) -> bool:
        return cfg.bias
