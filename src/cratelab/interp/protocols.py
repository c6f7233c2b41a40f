"""The paper's scoring protocols as data: which records of a neuron explain it and which score the explanation,
and how many records of each kind a protocol reads (what InterpConfig.validate checks [interp.records] against).

It imports no other interp module: interp/config.py validates [interp.records] against these protocols and
activations.py builds on that config, so importing it here would close a loop. The methods take activations.py's
NeuronRecord (and return its ActivationRecords); their annotations name those classes without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CratelabError


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
