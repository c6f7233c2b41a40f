"""The on-disk form of the simulated activations of an `interpret` run folder (its file names and format tag
are in cratelab.layout)."""

from __future__ import annotations

import base64
from typing import Any, Sequence

import numpy as np

def encode_simulation(arrays: Sequence[np.ndarray]) -> dict[str, Any]:
    """Simulated activations, compactly: record lengths and float16 values (3 significant digits, plenty
    for predictions on a 0-10 scale), base64. JSON lists of floats cost more time than the scoring."""
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    return {"lengths": [len(a) for a in arrays],
            "float16": base64.b64encode(flat.astype("<f2").tobytes()).decode("ascii")}


def decode_simulation(row: dict[str, Any]) -> list[np.ndarray]:
    flat = np.frombuffer(base64.b64decode(row["float16"]), dtype="<f2").astype(np.float64)
    return np.split(flat, np.cumsum(row["lengths"])[:-1]) if row["lengths"] else []
