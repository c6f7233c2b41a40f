"""Scoring: the paper's protocols (which records explain, which score), the pooled correlation, and
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

from ..errors import CratelabError
from .explain import NO_PATTERN, Explainer, NeuronFailure
from .prompts import EXAMPLE_EXPLANATION, EXPLANATION_PREFIX
from .records import ActivationRecord, NeuronRecord
from .simulate import Simulator


@dataclass(frozen=True)
class ScoringProtocol:
    """Indices of the records that explain a neuron and of those that score the explanation.

    Indices point into NeuronRecord's lists: top records (strongest first), random records, the
    records of every quantile bin, and snippets (cut from the top records). `short` selects the
    short-window records of the Anthropic-style protocol instead of the full windows.
    """

    name: str
    short: bool
    explain_top: tuple[int, ...]
    explain_random: tuple[int, ...] = ()
    explain_quantile: tuple[int, ...] = ()  # taken from every bin
    score_top: tuple[int, ...] = ()
    score_random: tuple[int, ...] = ()
    score_quantile: tuple[int, ...] = ()
    score_snippets: tuple[int, ...] = ()

    def required_records(self) -> dict[str, int]:
        """How many records of each kind (RecordConfig's n_top, n_random, per_bin) the protocol reads."""
        return {"n_top": max(self.explain_top + self.score_top + self.score_snippets, default=-1) + 1,
                "n_random": max(self.explain_random + self.score_random, default=-1) + 1,
                "per_bin": max(self.explain_quantile + self.score_quantile, default=-1) + 1}

    def missing_records(self, record: NeuronRecord) -> str | None:
        """Why the neuron lacks records the protocol reads, or None. The configured counts are checked
        up front (InterpConfig.validate); a short stream can still leave a neuron fewer top windows
        than asked for, as each top record needs its own stretch of text."""
        need = self.required_records()
        tops = record.top_short if self.short else record.top
        randoms = record.random_short if self.short else record.random
        have = {"n_top": min(len(tops), len(record.snippets) if self.score_snippets else len(tops)),
                "n_random": len(randoms),
                "per_bin": min((len(b) for b in record.quantiles), default=0) if need["per_bin"] else 0}
        kinds = {"n_top": "top records", "n_random": "random records", "per_bin": "records per quantile bin"}
        for name, kind in kinds.items():
            if have[name] < need[name]:
                return (f"too few {kind} ({have[name]} of the {need[name]} needed): stream more tokens "
                        "(each top record needs its own window of text)")
        return None

    def explanation_records(self, record: NeuronRecord) -> list[ActivationRecord]:
        return self._select(record, self.explain_top, self.explain_random, self.explain_quantile, ())

    def scoring_records(self, record: NeuronRecord) -> list[ActivationRecord]:
        return self._select(record, self.score_top, self.score_random, self.score_quantile, self.score_snippets)

    def _select(self, record: NeuronRecord, top: tuple[int, ...], random: tuple[int, ...],
                quantile: tuple[int, ...], snippets: tuple[int, ...]) -> list[ActivationRecord]:
        tops, randoms = (record.top_short, record.random_short) if self.short else (record.top, record.random)
        picks = [(tops, top, "top records"), (randoms, random, "random records"),
                 (record.snippets, snippets, "top records")]
        picks += [(b, quantile, "records per quantile bin") for b in record.quantiles]
        for records, indices, kind in picks:
            if indices and max(indices) >= len(records):
                raise CratelabError(
                    f"protocol {self.name!r} needs {max(indices) + 1} {kind}, neuron "
                    f"{record.layer}.{record.neuron} has {len(records)}: stream more tokens "
                    f"(each top record needs its own window of text)")
        chosen = [tops[i] for i in top] + [randoms[i] for i in random]
        chosen += [b[i] for b in record.quantiles for i in quantile]
        return chosen + [record.snippets[i] for i in snippets]


TOP_AND_RANDOM = ScoringProtocol(
    "top-and-random", short=False,
    explain_top=(0, 2, 4, 6, 8),
    score_top=(1, 3, 5, 7, 9), score_random=(0, 2, 4, 6, 8),  # random records as in the official code
)


def random_only(n_records: int = 50) -> ScoringProtocol:
    """Explain from the top records, score on random records only (the paper: 50)."""
    return ScoringProtocol("random-only", short=False, explain_top=(0, 2, 4, 6, 8),
                           score_random=tuple(range(n_records)))


ANTHROPIC = ScoringProtocol(
    "anthropic", short=True,  # 8-token records
    explain_top=tuple(range(15)), explain_quantile=(0, 1), explain_random=tuple(range(5)),
    score_top=tuple(range(15, 25)), score_quantile=(2, 3), score_random=tuple(range(5, 10)),
    score_snippets=tuple(range(25, 35)),  # 3-token out-of-context snippets of other top records
)

PROTOCOLS: dict[str, ScoringProtocol] = {p.name: p for p in (TOP_AND_RANDOM, random_only(), ANTHROPIC)}


def get_protocol(protocol: str | ScoringProtocol) -> ScoringProtocol:
    if isinstance(protocol, ScoringProtocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise CratelabError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


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
    failure: str = ""  # why score is None, a key of FAILURES; "" when scored (and in rows of older runs)
    degenerate: str = ""  # a key of DEGENERATE when the explanation says nothing (flag_degenerate adds "generic")

    def to_row(self, method: str) -> dict[str, Any]:
        """The scores.jsonl / scores.csv row (ROW_FIELDS): the one schema of a score on disk."""
        return {name: method if name == "method" else getattr(self, name) for name in ROW_FIELDS}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> NeuronScore:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: row[name] for name in names if name in row})  # older rows lack models and failure


# the fields of NeuronScore, with the run's method after the protocol (as in rows before the models were kept)
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
