"""The trunk shared by CRATE and the GPT baseline: embeddings, a stack of blocks, final LayerNorm,
and an LM head tied to the token embedding (nanoGPT layout). The models differ only in the block."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ConfigError, ModelConfig
from .hooks import HookedModel, HookPoint


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with either one projection used as query, key and value
    (CRATE's MSSA: softmax(w w^T / sqrt(d_head)) w per head) or separate q, k, v (GPT-2)."""

    def __init__(self, cfg: ModelConfig, qkv: str, qkv_bias: bool, proj_bias: bool = True):
        super().__init__()
        self.n_head = cfg.n_head
        self.shared = qkv == "shared"
        width = cfg.n_embd if self.shared else 3 * cfg.n_embd
        self.c_attn = nn.Linear(cfg.n_embd, width, bias=qkv_bias)  # U (shared) or [W_q W_k W_v]
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=proj_bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.hook_z = HookPoint()  # heads concatenated, before the output projection
        self.hook_out = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        heads = lambda t: t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # noqa: E731
        if self.shared:
            w = heads(self.c_attn(x))
            q = k = v = w
        else:
            q, k, v = map(heads, self.c_attn(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = self.hook_z(y.transpose(1, 2).reshape(B, T, C))
        return self.hook_out(self.resid_dropout(self.c_proj(y)))


class MLP(nn.Module):
    """x -> c_proj(act(c_fc x)), hidden width h = overcomplete * n_embd: the GPT-2 MLP, also CRATE's with ffn = "mlp"."""

    def __init__(self, cfg: ModelConfig, bias: bool = True):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.overcomplete * cfg.n_embd, bias=bias)
        self.act = F.relu if cfg.mlp_act == "relu" else F.gelu
        self.c_proj = nn.Linear(cfg.overcomplete * cfg.n_embd, cfg.n_embd, bias=bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()  # the interpreted neurons

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hook_post(self.act(self.hook_pre(self.c_fc(x))))
        return self.dropout(self.c_proj(hidden))


class LanguageModel(HookedModel):
    """Token + position embeddings -> blocks -> ln_f -> tied LM head."""

    block_class: type[nn.Module]

    @staticmethod
    def has_bias(cfg: ModelConfig) -> bool:
        """Whether the trunk's LayerNorm has a bias: CRATE's always (the official code ignores its bias flag)."""
        return True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size < 1:
            raise ConfigError("model.vocab_size", "must be set (>= 1) to build a model")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([self.block_class(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=self.has_bias(cfg))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of the residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; like the paper (and nanoGPT), position embeddings are left out by default."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds model.block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.hook_embed(self.drop(self.wte(idx) + self.wpe(pos)))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss
