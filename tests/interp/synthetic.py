"""A synthetic token stream of real words with planted neurons whose truth is known."""

from __future__ import annotations

import numpy as np

WORDS = [" the", " a", " of", " and", " to", " in", " is", " was", " he", " she", " it", " said",
         " cat", " dog", " house", " city", " river", " people", " year", " time", " new", " old",
         " great", " small", " United", " States", " Kingdom", " Nations", ".", ","]
RARE = " zebra"
EOT = "<|endoftext|>"
NEURONS = ("cat", "united-states", "noise", "dead", "zebra")


def planted_stream(n_rows: int = 64, length: int = 128, seed: int = 0) -> tuple[list[list[str]], np.ndarray]:
    """Rows of tokens and activations (n_rows, length, 5), one planted neuron per NEURONS entry:
    cat: fires on " cat"; united-states: fires on " States" right after " United" only (" States"
    also occurs elsewhere, " United" before other words); noise: relu(gaussian), no pattern;
    dead: always 0; zebra: fires on a rare token.
    """
    rng = np.random.default_rng(seed)
    vocab = np.array(WORDS + [RARE, EOT])
    p = np.full(len(vocab), 1.0)
    p[-2], p[-1] = len(WORDS) / 800, len(WORDS) / 150  # zebra ~1/800 tokens, a document end ~1/150
    ids = rng.choice(len(vocab), size=(n_rows, length), p=p / p.sum())
    united, states = WORDS.index(" United"), WORDS.index(" States")
    follow = (ids[:, :-1] == united) & (rng.random((n_rows, length - 1)) < 0.6)
    ids[:, 1:][follow] = states
    tokens = vocab[ids]
    after_united = np.zeros_like(follow, shape=ids.shape)
    after_united[:, 1:] = ids[:, :-1] == united
    acts = np.zeros((n_rows, length, len(NEURONS)), dtype=np.float32)
    jitter = rng.random((n_rows, length, 3))
    acts[..., 0] = (tokens == " cat") * (4 + jitter[..., 0])
    acts[..., 1] = ((ids == states) & after_united) * (3 + jitter[..., 1])
    acts[..., 2] = np.maximum(rng.standard_normal((n_rows, length)), 0)
    acts[..., 4] = (tokens == RARE) * (2 + jitter[..., 2])
    return tokens.tolist(), acts


def smooth_noise_stream(n_rows: int = 64, length: int = 128, n_neurons: int = 8, rho: float = 0.9,
                        seed: int = 0) -> tuple[list[list[str]], np.ndarray]:
    """The planted stream's tokens with smooth-noise neurons: relu of an AR(1) process along the token
    stream (correlation rho per token, about 1 / (1 - rho) tokens long), independent of the tokens.
    No explanation can predict them, but neighbouring tokens have nearly the same activation."""
    tokens, _ = planted_stream(n_rows, length, seed)
    noise = np.random.default_rng([seed, 1]).standard_normal((n_rows * length, n_neurons))
    x = np.zeros_like(noise)
    for i in range(1, len(noise)):
        x[i] = rho * x[i - 1] + np.sqrt(1 - rho**2) * noise[i]
    return tokens, np.maximum(x, 0).reshape(n_rows, length, n_neurons).astype(np.float32)


def relu_code_stream(n_rows: int = 256, length: int = 128, n_neurons: int = 48,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (no end of text) and ReLU-code-like activations (n_rows, length, n_neurons): a per-row
    offset plus heavy-tailed per-token noise, thresholded so that neurons fire on 3% to 90% of tokens
    (ties at zero below that)."""
    rng = np.random.default_rng([seed, 2])
    raw = rng.standard_normal((n_rows, 1, n_neurons)) + rng.standard_t(3, (n_rows, length, n_neurons))
    silent = np.linspace(0.1, 0.97, n_neurons)  # share of zeros per neuron
    threshold = np.array([np.quantile(raw[..., h], q) for h, q in enumerate(silent)])
    ids = rng.integers(0, 10, (n_rows, length))
    return ids, (np.maximum(raw - threshold, 0) ** 1.5).astype(np.float32)
