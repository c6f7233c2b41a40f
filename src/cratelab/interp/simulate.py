"""Simulators: an explanation and token sequences in, a predicted activation per token out.

Every backend implements `Simulator.simulate(explanation, sequences) -> list[np.ndarray]`, one array
per sequence. Predictions may be on any scale: the score is a correlation.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from .explain import TokenPatterns


class Simulator(Protocol):
    simulation: str | None  # how it simulates, recorded in every score row ("token-pattern", "logprobs", "json")
    model: str  # recorded in every score row

    def simulate(self, explanation: str, sequences: Sequence[Sequence[str]]) -> list[np.ndarray]: ...


class TokenPatternSimulator:
    """Applies a token-pattern explanation, read from its text: the most specific matching pattern wins."""

    simulation = model = "token-pattern"

    def simulate(self, explanation: str, sequences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        parsed = TokenPatterns.parse(explanation)
        in_context = {(p.after, p.token): p.weight for p in parsed.patterns if p.after is not None}
        alone = {p.token: p.weight for p in parsed.patterns if p.after is None}
        out = []
        for tokens in sequences:
            previous = [None, *tokens[:-1]]  # a sequence's first token has no context
            out.append(np.array([in_context.get((before, t), alone.get(t, parsed.baseline))
                                 for before, t in zip(previous, tokens)], dtype=np.float64))
        return out
