"""The random numbers of record sampling (sampling.py): counter-based, keyed by seed, stream, neuron and draw."""

from __future__ import annotations

import numpy as np


def uniform(seed: int, stream: int, neuron: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """Uniform numbers in (0, 1) that depend only on (seed, stream, neuron, draw number).

    Counter-based (SplitMix64 mixing), so a neuron's sample does not depend on how the token stream
    was cut into batches, nor on the other neurons.
    """
    return keyed_uniform(stream_keys(seed, stream, neuron), draw)


def stream_keys(seed: int, stream: int, neuron: np.ndarray) -> np.ndarray:
    """The mixing state after (seed, stream, neuron), so that a neuron's draws cost one mixing each:
    uniform(seed, stream, neuron, draw) == keyed_uniform(stream_keys(seed, stream, neuron), draw)."""
    with np.errstate(over="ignore"):
        z = _mix(np.uint64(seed & (2**64 - 1)) * _GOLDEN + np.uint64(stream))
        return _mix(z + np.asarray(neuron, dtype=np.uint64) * _GOLDEN)


def keyed_uniform(keys: np.ndarray, draw: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = _mix(keys + np.asarray(draw, dtype=np.uint64) * _GOLDEN)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
