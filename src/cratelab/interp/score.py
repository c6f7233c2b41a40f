"""Scoring under the paper's protocols (protocols.py): the pooled correlation, per-neuron scores and
layer summaries with bootstrap confidence intervals.

Score of a neuron = ONE Pearson correlation between the simulated and the raw activations over all
tokens of all scoring records pooled (not a mean of per-record correlations). It is undefined when
either side is constant, or when the explainer or simulator gave up on the neuron (NeuronFailure, e.g. an
LLM request that kept failing); such a neuron gets score None, a reason and the kind of failure
(FAILURES), and summaries count it.

An explanation that says nothing about its neuron (DEGENERATE: empty, a copy of the prompt, a phrase
repeated, the same text as most neurons) is scored as any other, and flagged: the row's `degenerate`
names the kind, and the cards and summaries show it.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .activations import NeuronRecord
from .explain import NO_PATTERN, Explainer
from .failure import NeuronFailure
from .prompts import EXAMPLE_EXPLANATION, EXPLANATION_PREFIX
from .protocols import ScoringProtocol
from .simulate import Simulator


def pooled_correlation(real: Sequence[np.ndarray], simulated: Sequence[np.ndarray]) -> tuple[float | None, str | None]:
    """Pearson correlation over all tokens of all records pooled; (None, reason) when undefined."""
    x = np.concatenate([np.asarray(a, dtype=np.float64) for a in real]) if real else np.zeros(0)
    y = np.concatenate([np.asarray(a, dtype=np.float64) for a in simulated]) if simulated else np.zeros(0)
    if x.shape != y.shape:
        raise ValueError(f"{x.size} real activations but {y.size} simulated ones")
    if x.size < 2 or np.ptp(x) == 0:
        return None, "real activations are constant on the scoring records (dead or silent neuron)"
    if np.ptp(y) == 0:
        return None, "simulated activations are constant (the explanation predicts no variation)"
    x, y = x - x.mean(), y - y.mean()
    r = float(x @ y / np.sqrt((x @ x) * (y @ y)))
    return float(np.clip(r, -1.0, 1.0)), None


# why a score is None (NeuronScore.failure; "" when there is a score)
FAILURES = {
    "transport": "no answer from the LLM: a timeout, a connection error, HTTP 401/403/408/429/5xx or the neuron's "
                 "deadline (interpret --retry-failed asks again)",
    "answer": "the LLM's answer could not be used: malformed after the retries, the request refused (HTTP 4xx), "
              "no logprobs",
    "unscorable": "the score is undefined: too few records, or constant real or simulated activations",
}


# why an explanation says nothing about its neuron (the row's `degenerate`; "" for none of these)
DEGENERATE = {
    "empty": "a blank explanation",
    "prompt": f"a copy of the prompt: its worked example ({EXAMPLE_EXPLANATION!r}, alone or within) or its "
              "token<TAB>activation lines and headings",
    "repetition": "a phrase repeated three times or more in a row, or the prompt's own prefix repeated",
    "generic": "the same explanation as most of the run's neurons under this protocol",
}
# the prompt's lines that an explainer may copy: "token<TAB>digit", <start>/<end>, its headings
_PROMPT_TEXT = re.compile(r"\t\s*\d|<start>|<end>|non-zero only|\bneuron \d|^activations", re.IGNORECASE)
GENERIC_MIN_NEURONS = 3  # "most" of two neurons says little


def degenerate_reason(explanation: str) -> str:
    """The DEGENERATE kind of one explanation on its own ("generic" needs the run's rows: flag_degenerate).
    The token-pattern method's NO_PATTERN is a finding (a dead or patternless neuron), never degenerate."""
    text = " ".join(explanation.split()).strip(" .").lower()
    if text == NO_PATTERN:
        return ""
    if not text:
        return "empty"
    if EXAMPLE_EXPLANATION in text or _PROMPT_TEXT.search(explanation):  # "the number of days of the week" too
        return "prompt"
    words = re.findall(r"\w+", text)
    for n in range(1, len(words) // 3 + 1):  # an n-word phrase three times in a row
        if any(words[i:i + n] == words[i + n:i + 2 * n] == words[i + 2 * n:i + 3 * n]
               for i in range(len(words) - 3 * n + 1)):
            return "repetition"
    return "repetition" if EXPLANATION_PREFIX in text else ""


def flag_degenerate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The score rows with `degenerate` set: each explanation's own kind, else "generic" when one text is
    the explanation of most neurons (and at least GENERIC_MIN_NEURONS) of a protocol."""
    def norm(row: dict[str, Any]) -> str:
        return " ".join(str(row.get("explanation") or "").split()).strip(" .").lower()

    out = [{**row, "degenerate": degenerate_reason(str(row["explanation"])) if row.get("explanation") else ""}
           for row in rows]
    for protocol in {row["protocol"] for row in out}:
        explained = [row for row in out if row["protocol"] == protocol and norm(row) not in ("", NO_PATTERN)]
        counts = Counter(map(norm, explained))
        text, n = counts.most_common(1)[0] if counts else ("", 0)
        if n >= GENERIC_MIN_NEURONS and 2 * n > len(explained):
            for row in explained:
                if norm(row) == text and not row["degenerate"]:
                    row["degenerate"] = "generic"
    return out


@dataclass
class NeuronScore:
    layer: int
    neuron: int
    protocol: str
    score: float | None  # None when unscorable; see reason
    explanation: str
    reason: str | None
    firing_rate: float
    max_activation: float
    simulation: str = ""  # how the activations were simulated: "token-pattern" | "logprobs" | "json"
    explainer_model: str = ""
    simulator_model: str = ""
    failure: str = ""  # why score is None, a key of FAILURES; "" when scored
    degenerate: str = ""  # a key of DEGENERATE when the explanation says nothing (flag_degenerate adds "generic")

    def to_row(self, method: str) -> dict[str, Any]:
        """The scores.jsonl / scores.csv row (ROW_FIELDS): the one schema of a score on disk."""
        return {name: method if name == "method" else getattr(self, name) for name in ROW_FIELDS}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> NeuronScore:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: row[name] for name in names})


# the fields of NeuronScore, with the run's method after the protocol
ROW_FIELDS = ("layer", "neuron", "protocol", "method", "score", "explanation", "firing_rate", "max_activation",
              "reason", "simulation", "explainer_model", "simulator_model", "failure", "degenerate")


def score_neuron(record: NeuronRecord, protocol: ScoringProtocol, explainer: Explainer,
                 simulator: Simulator, simulated_out: list[np.ndarray] | None = None) -> NeuronScore:
    """The neuron's score under the protocol; unscorable (score None, with the reason) when it lacks the
    records the protocol reads, when the explainer or simulator gave up on it, or when a side is constant.

    simulated_out, when given, receives the simulated activations of the scoring records (for the cards).
    """
    # getattr: explainers and simulators written for score_records before the rows named them still work
    def result(score: float | None, explanation: str, reason: str | None, simulated: bool,
               failure: str = "unscorable") -> NeuronScore:
        simulation = (getattr(simulator, "simulation", "") or "") if simulated else ""  # "" when never asked
        return NeuronScore(record.layer, record.neuron, protocol.name, score, explanation, reason,
                           record.firing_rate, record.max_activation, simulation,
                           getattr(explainer, "model", ""), getattr(simulator, "model", ""),
                           "" if score is not None else failure, degenerate_reason(explanation) if explanation else "")

    def failed(failure: NeuronFailure) -> str:
        return "transport" if failure.transport else "answer"

    if (missing := protocol.missing_records(record)) is not None:
        return result(None, "", missing, simulated=False)
    explaining, scoring = protocol.explanation_records(record), protocol.scoring_records(record)
    try:
        explanation = explainer.explain(explaining)
    except NeuronFailure as failure:
        return result(None, "", str(failure), simulated=False, failure=failed(failure))
    try:
        simulated = simulator.simulate(explanation, [r.tokens for r in scoring])
    except NeuronFailure as failure:
        return result(None, explanation, str(failure), simulated=True, failure=failed(failure))
    if simulated_out is not None:
        simulated_out[:] = simulated
    score, reason = pooled_correlation([r.activations for r in scoring], simulated)
    return result(score, explanation, reason, simulated=True)


@dataclass
class LayerSummary:
    layer: int
    protocol: str
    mean: float | None  # mean score over the scorable neurons (the paper's layer score)
    mean_all_neurons: float | None  # mean over all neurons, an unscorable one counting as 0
    ci_low: float | None  # bootstrap confidence interval of the mean, over neurons
    ci_high: float | None
    n_neurons: int
    n_scored: int
    n_unscorable: int
    unscorable_reasons: dict[str, int]


def summarize_layer(scores: Sequence[NeuronScore], *, n_bootstrap: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> LayerSummary:
    """Layer mean with a percentile bootstrap interval over neurons; unscorable neurons are counted, and
    also enter a second mean as 0 (an explanation that predicts nothing then lowers the score)."""
    keys = {(s.layer, s.protocol) for s in scores}
    if len(keys) != 1:
        raise ValueError(f"summarize one layer and protocol at a time, got {sorted(keys)}")
    (layer, protocol), = keys
    values = np.array([s.score for s in scores if s.score is not None], dtype=np.float64)
    reasons = Counter(s.reason for s in scores if s.score is None)
    mean = low = high = None
    mean_all = float(values.sum() / len(scores)) if scores else None
    if values.size:
        rng = np.random.default_rng(seed)
        boot = values[rng.integers(0, values.size, (n_bootstrap, values.size))].mean(axis=1)
        tail = 100 * (1 - confidence) / 2
        mean, low, high = float(values.mean()), float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))
    return LayerSummary(layer, protocol, mean, mean_all, low, high, len(scores), int(values.size),
                        len(scores) - int(values.size), dict(reasons))
