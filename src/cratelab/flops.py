"""Analytic FLOP counts of the matrix products each model must do (multiply-add = 2 FLOPs).

Only matrix products are counted; elementwise work, softmax and LayerNorm are overhead. Training
does each product three times (forward, and two in the backward pass: for the input and the weight).
Attention counts the causal half of the score and value products. CRATE's ISTA does 2*steps
products with the dictionary per token (W x once, two per extra step, the decode): that is real work.
"""

from __future__ import annotations

from .config import ModelConfig


def forward_flops_per_token(cfg: ModelConfig, context: int | None = None) -> float:
    d, h, T, V = cfg.n_embd, cfg.n_neurons, context or cfg.block_size, cfg.vocab_size
    qkv_width = d if (cfg.arch == "crate" and cfg.qkv == "shared") else 3 * d
    attention = 2 * d * qkv_width + 2 * d * d + 2 * d * T  # projections + causal (T/2) QK^T and AV
    if cfg.arch == "crate" and cfg.ffn == "ista":  # (a separate decoder costs what the tied one does)
        sparse_coding = 2 * cfg.ista_steps * (2 * d * h)
    else:
        sparse_coding = 2 * (2 * d * h)  # MLP up and down
    return cfg.n_layer * (attention + sparse_coding) + 2 * d * V


def training_flops_per_token(cfg: ModelConfig, context: int | None = None) -> float:
    return 3 * forward_flops_per_token(cfg, context)
