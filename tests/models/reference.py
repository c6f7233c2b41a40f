"""A float64 reference of the official CRATE equations (paper-facts section 1), written from the
equations with plain tensor algebra, on state dicts that use the OFFICIAL key names; extended with
the ablation options of issue 11 (an MLP in place of ISTA, a residual around it, a separate decoder),
whose extra weights use the keys `transformer.h.{i}.ista.decoder` and `transformer.h.{i}.mlp.*`;
and the official GPT-2 baseline (crate-lm's gpt.py: nanoGPT names, ReLU MLP, with or without biases)."""

from __future__ import annotations

import math

import torch


def layer_norm(x, weight, bias, eps=1e-5):
    """bias None: a LayerNorm without bias (nanoGPT's bias=False)."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * weight
    return y if bias is None else y + bias


def linear(x, weight, bias=None):
    return x @ weight.T if bias is None else x @ weight.T + bias


def attention(x, c_attn, proj_w, proj_b, n_head, separate, attn_b=None):
    B, T, C = x.shape
    hs = C // n_head
    w = linear(x, c_attn, attn_b)
    q, k, v = (w.split(C, dim=-1) if separate else (w, w, w))
    split = lambda t: t.reshape(B, T, n_head, hs).permute(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v
    y = y.permute(0, 2, 1, 3).reshape(B, T, C)
    return linear(y, proj_w, proj_b)


def ista(x, W, eta, lam, steps, D=None):
    """A_{t+1} = ReLU(A_t + eta (W x - W W^T A_t) - eta lam), A_0 = 0; returns (W^T A_T or D A_T, A_T)."""
    A = torch.zeros(*x.shape[:-1], W.shape[0], dtype=x.dtype)
    for _ in range(steps):
        A = torch.relu(A + eta * (x @ W.T - (A @ W) @ W.T) - eta * lam)
    return (A @ W if D is None else A @ D.T), A


def mlp(x, fc_w, fc_b, proj_w, proj_b):
    """c_proj(ReLU(c_fc x)); returns (output, hidden). Biases None: none (bias=False)."""
    hidden = torch.relu(linear(x, fc_w, fc_b))
    return linear(hidden, proj_w, proj_b), hidden


def crate_forward(sd, idx, n_layer, n_head, eta=0.1, lam=0.1, steps=2, separate=False,
                  ffn="ista", residual=False, decoder="tied"):
    """Logits and per-layer interpreted codes; `sd` uses official names, float64 tensors."""
    T = idx.shape[1]
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    codes = []
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        h = layer_norm(x, sd[p + "prenorm_1.weight"], sd[p + "prenorm_1.bias"])
        x = x + attention(h, sd[p + "attn.c_attn.weight"], sd[p + "attn.c_proj.weight"],
                          sd[p + "attn.c_proj.bias"], n_head, separate)
        h = layer_norm(x, sd[p + "prenorm_2.weight"], sd[p + "prenorm_2.bias"])
        if ffn == "mlp":
            out, code = mlp(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"],
                            sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        else:
            out, code = ista(h, sd[p + "ista.weight"], eta, lam, steps,
                             D=sd[p + "ista.decoder"] if decoder == "separate" else None)
        x = x + out if residual else out
        codes.append(code)
    x = layer_norm(x, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
    return x @ sd["lm_head.weight"].T, codes


def random_official_state_dict(n_layer, n_embd, vocab, block, overcomplete=4, separate=False, seed=0,
                               ffn="ista", decoder="tied"):
    """Random weights under the official key names (scaled so activations are non-trivial); the
    separate decoder is drawn independently of W, so that a model decoding with W^T would not match."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g, dtype=torch.float64) * s  # noqa: E731
    sd = {"transformer.wte.weight": r(vocab, n_embd, s=1.0), "transformer.wpe.weight": r(block, n_embd, s=0.5),
          "transformer.ln_f.weight": 1 + r(n_embd), "transformer.ln_f.bias": r(n_embd)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        sd.update({
            p + "prenorm_1.weight": 1 + r(n_embd), p + "prenorm_1.bias": r(n_embd),
            p + "attn.c_attn.weight": r((3 if separate else 1) * n_embd, n_embd),
            p + "attn.c_proj.weight": r(n_embd, n_embd), p + "attn.c_proj.bias": r(n_embd),
            p + "prenorm_2.weight": 1 + r(n_embd), p + "prenorm_2.bias": r(n_embd),
        })
        h = overcomplete * n_embd
        if ffn == "mlp":
            sd.update({p + "mlp.c_fc.weight": r(h, n_embd), p + "mlp.c_fc.bias": r(h),
                       p + "mlp.c_proj.weight": r(n_embd, h, s=0.1), p + "mlp.c_proj.bias": r(n_embd)})
        else:
            sd[p + "ista.weight"] = r(h, n_embd, s=0.3)
            if decoder == "separate":
                sd[p + "ista.decoder"] = r(n_embd, h, s=0.3)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def gpt_forward(sd, idx, n_layer, n_head):
    """Logits and per-layer MLP hidden layers of the official GPT baseline (gpt.py):
    x = x + Attn(LN1 x); x = x + MLP(LN2 x) with q, k, v from one (3d x d) c_attn and a ReLU MLP.
    A bias absent from `sd` is absent from the model (bias=False)."""
    T = idx.shape[1]
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    codes = []
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        h = layer_norm(x, sd[p + "ln_1.weight"], sd.get(p + "ln_1.bias"))
        x = x + attention(h, sd[p + "attn.c_attn.weight"], sd[p + "attn.c_proj.weight"], sd.get(p + "attn.c_proj.bias"),
                          n_head, separate=True, attn_b=sd.get(p + "attn.c_attn.bias"))
        h = layer_norm(x, sd[p + "ln_2.weight"], sd.get(p + "ln_2.bias"))
        out, code = mlp(h, sd[p + "mlp.c_fc.weight"], sd.get(p + "mlp.c_fc.bias"),
                        sd[p + "mlp.c_proj.weight"], sd.get(p + "mlp.c_proj.bias"))
        x = x + out
        codes.append(code)
    x = layer_norm(x, sd["transformer.ln_f.weight"], sd.get("transformer.ln_f.bias"))
    return x @ sd["lm_head.weight"].T, codes


def random_official_gpt_state_dict(n_layer, n_embd, vocab, block, bias=False, seed=0):
    """Random weights of the official GPT baseline under gpt.py's key names; with bias=False (train.py's
    default) no Linear or LayerNorm has a bias, as in the checkpoints the paper's GPT-2 counts come from."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g, dtype=torch.float64) * s  # noqa: E731
    sd = {"transformer.wte.weight": r(vocab, n_embd, s=1.0), "transformer.wpe.weight": r(block, n_embd, s=0.5),
          "transformer.ln_f.weight": 1 + r(n_embd)}
    biases = {"transformer.ln_f.bias": r(n_embd)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        sd.update({p + "ln_1.weight": 1 + r(n_embd), p + "attn.c_attn.weight": r(3 * n_embd, n_embd),
                   p + "attn.c_proj.weight": r(n_embd, n_embd), p + "ln_2.weight": 1 + r(n_embd),
                   p + "mlp.c_fc.weight": r(4 * n_embd, n_embd), p + "mlp.c_proj.weight": r(n_embd, 4 * n_embd, s=0.1)})
        biases.update({p + "ln_1.bias": r(n_embd), p + "attn.c_attn.bias": r(3 * n_embd),
                       p + "attn.c_proj.bias": r(n_embd), p + "ln_2.bias": r(n_embd),
                       p + "mlp.c_fc.bias": r(4 * n_embd), p + "mlp.c_proj.bias": r(n_embd)})
    if bias:
        sd.update(biases)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd
