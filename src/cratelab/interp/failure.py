"""A neuron an explainer or simulator gives up on (NeuronFailure), and the deadline of a neuron's LLM requests.

Below the explainers, simulators and their backends, which all raise NeuronFailure, and above nothing: the
backends (backends/) read the deadline the run sets around each neuron.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator


class NeuronFailure(Exception):
    """An explainer or simulator gave up on one neuron (e.g. an LLM request still failing after its
    retries). Scoring reports that neuron as unscorable, with this message as the reason, and goes on.

    transport: the cause was the way to the model (a timeout, a connection error, a server error, the
    neuron's deadline), not the neuron or the model's answer, so asking again may succeed.
    """

    def __init__(self, message: str, *, transport: bool = False):
        super().__init__(message)
        self.transport = transport


@dataclass(frozen=True)
class Deadline:
    seconds: float
    end: float  # time.monotonic() when it passes

    def left(self) -> float:
        return self.end - time.monotonic()


# a context variable, not an argument: the explainer and simulator protocols stay as they are, and the
# threads a simulator fans out to get it by copying their context (contextvars.copy_context)
_DEADLINE: ContextVar[Deadline | None] = ContextVar("neuron_deadline", default=None)


@contextmanager
def neuron_deadline(seconds: float | None) -> Iterator[None]:
    """Within the block, LLM requests are not sent, and not waited for, after `seconds` (None or 0: no
    deadline); a request cut short fails the neuron (a transport failure)."""
    token = _DEADLINE.set(Deadline(seconds, time.monotonic() + seconds) if seconds else None)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> Deadline | None:
    return _DEADLINE.get()
