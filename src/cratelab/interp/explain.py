"""Explainers: a neuron's explanation records in, a one-line explanation out.

Every backend implements `Explainer.explain(records) -> str`. The text is all the simulator gets
(as in the paper, where an LLM simulates from the explanation alone).

`token-pattern` (offline, deterministic): the explanation is at most k token patterns with weights,
e.g. `"States" after "United" (8.2); " the" (1.1)`: a pattern is a token, or a token right after a
given token; weights are on the explainer's 0-10 scale. A token takes the weight of the most
specific pattern that matches it (context pattern, then token pattern), else the `otherwise` weight.
Patterns are chosen greedily by the variance of the explanation records they explain, so a neuron
that fires on "States" only after "United" gets the context pattern, not "States".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence

import numpy as np

from .activations import ActivationRecord

NO_PATTERN = "no token pattern"


class Explainer(Protocol):
    model: str  # recorded in every score row

    def explain(self, records: Sequence[ActivationRecord]) -> str: ...


def explainer_view(records: Sequence[ActivationRecord]) -> list[np.ndarray]:
    """The activations as the protocol shows them to an explainer: 10 * relu(a) / max over the records.

    LLM prompts floor these to the digits 0-10; the token-pattern explainer fits them unrounded.
    """
    peak = max((float(np.max(r.activations, initial=0.0)) for r in records), default=0.0)
    if peak <= 0:
        return [np.zeros(len(r.tokens)) for r in records]
    return [10.0 * np.maximum(r.activations, 0.0) / peak for r in records]


def _fmt(weight: float) -> str:
    return f"{weight:.2g}"


@dataclass(frozen=True)
class TokenPattern:
    token: str
    weight: float
    after: str | None = None  # the token right before, for a context pattern

    def __str__(self) -> str:
        context = f" after {json.dumps(self.after, ensure_ascii=False)}" if self.after is not None else ""
        return f"{json.dumps(self.token, ensure_ascii=False)}{context} ({_fmt(self.weight)})"


@dataclass(frozen=True)
class TokenPatterns:
    """The structured form of a token-pattern explanation; str() and parse() convert to and from text."""

    patterns: tuple[TokenPattern, ...]
    baseline: float = 0.0  # the weight of tokens no pattern matches

    def __str__(self) -> str:
        if not self.patterns:
            return NO_PATTERN
        items = [str(p) for p in self.patterns]
        if self.baseline != 0:
            items.append(f"otherwise ({_fmt(self.baseline)})")
        return "; ".join(items)

    @classmethod
    def parse(cls, text: str) -> TokenPatterns:
        if text == NO_PATTERN:
            return cls(())
        decode = json.JSONDecoder().raw_decode
        patterns, baseline, i = [], 0.0, 0
        try:
            while True:
                if text.startswith("otherwise (", i):
                    baseline, i = _weight(text, i + len("otherwise ("))
                else:
                    token, i = decode(text, i)
                    after = None
                    if text.startswith(" after ", i):
                        after, i = decode(text, i + len(" after "))
                    if not (isinstance(token, str) and isinstance(after, (str, type(None)))
                            and text.startswith(" (", i)):
                        raise ValueError
                    weight, i = _weight(text, i + 2)
                    patterns.append(TokenPattern(token, weight, after))
                if i == len(text):
                    return cls(tuple(patterns), baseline)
                if not text.startswith("; ", i):
                    raise ValueError
                i += 2
        except ValueError:
            raise ValueError(f"not a token-pattern explanation: {text!r}") from None


def _weight(text: str, i: int) -> tuple[float, int]:
    """Parse 'NUMBER)' at i; return the number and the index after ')'."""
    j = text.index(")", i)
    return float(text[i:j]), j + 1


def _gain(s: np.ndarray, n: np.ndarray, S: np.ndarray | float, N: np.ndarray | float) -> np.ndarray:
    """Drop in squared error when n values summing to s leave a group (sum S, count N) for their own.

    Each group is predicted by its mean, so a group's share of the error is sumsq - S^2 / N.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        moved = np.where(n > 0, s**2 / n, 0.0)
        rest = np.where(N - n > 0, (S - s) ** 2 / (N - n), 0.0)
        before = np.where(N > 0, S**2 / N, 0.0)
    return np.where(n > 0, moved + rest - before, -np.inf)


def fit_token_patterns(records: Sequence[ActivationRecord], max_patterns: int = 5,
                       min_share: float = 0.01) -> TokenPatterns:
    """Greedily choose up to `max_patterns` patterns, each explaining >= `min_share` of the variance."""
    y = np.concatenate(explainer_view(records)) if records else np.zeros(0)
    total = float(((y - y.mean()) ** 2).sum()) if y.size else 0.0
    if total <= 0:
        return TokenPatterns(())
    ids: dict[str, int] = {}
    tok = np.array([ids.setdefault(t, len(ids)) for r in records for t in r.tokens])
    prev = np.array([ids[r.tokens[i - 1]] if i else -1 for r in records for i in range(len(r.tokens))])
    names, V = list(ids), len(ids)
    uni_keys, uni = np.unique(tok, return_inverse=True)  # candidate token pattern of each position
    has_prev = prev >= 0  # the first token of a record has no context
    bi_keys, bi_inv = np.unique(prev[has_prev] * V + tok[has_prev], return_inverse=True)
    bi = np.full(y.size, -1)
    bi[has_prev] = bi_inv  # candidate context pattern of each position
    bi_uni = np.searchsorted(uni_keys, bi_keys % V)  # the token pattern a context pattern refines
    s_bi, n_bi = np.bincount(bi_inv, y[has_prev], len(bi_keys)), np.bincount(bi_inv, minlength=len(bi_keys))

    group = np.zeros(y.size, dtype=np.int64)  # 0: no pattern matches; g: the g-th chosen pattern
    sums, counts = [float(y.sum())], [y.size]
    uni_group = np.zeros(len(uni_keys), dtype=np.int64)  # group of a chosen token pattern, else 0
    chosen = []  # (is_context, key index)
    for _ in range(max_patterns):
        other = group == 0
        # a token pattern takes its unmatched tokens; a context pattern takes all its tokens, from
        # its token pattern's group if that one is chosen, else from the unmatched
        gain_u = _gain(np.bincount(uni[other], y[other], len(uni_keys)),
                       np.bincount(uni[other], minlength=len(uni_keys)), sums[0], counts[0])
        gain_u[uni_group > 0] = -np.inf
        src = uni_group[bi_uni]
        gain_b = _gain(s_bi, n_bi, np.array(sums)[src], np.array(counts)[src])
        gain_b[[k for c, k in chosen if c]] = -np.inf
        gains = np.concatenate([gain_u, gain_b])
        best = int(np.argmax(gains))
        if not gains[best] >= min_share * total:
            break
        g = len(sums)
        if best < len(uni_keys):
            take = other & (uni == best)
            uni_group[best] = g
            chosen.append((False, best))
        else:
            take = bi == best - len(uni_keys)
            chosen.append((True, best - len(uni_keys)))
        source = int(group[take][0])
        sums[source] -= float(y[take].sum())
        counts[source] -= int(take.sum())
        sums.append(float(y[take].sum()))
        counts.append(int(take.sum()))
        group[take] = g

    # weights from the final groups (not the running sums, whose round-off would show as "-5.8e-17")
    n = np.bincount(group, minlength=len(sums))
    means = np.bincount(group, y, len(sums)) / np.maximum(n, 1)
    patterns = []
    for g, (is_context, k) in enumerate(chosen, start=1):
        weight = float(_fmt(means[g]))
        if is_context:
            patterns.append(TokenPattern(names[bi_keys[k] % V], weight, after=names[bi_keys[k] // V]))
        else:
            patterns.append(TokenPattern(names[uni_keys[k]], weight))
    patterns.sort(key=lambda p: -p.weight)  # stable: equal weights keep the order of choice
    baseline = float(_fmt(means[0]))
    return TokenPatterns(tuple(patterns), baseline)


@dataclass(frozen=True)
class TokenPatternExplainer:
    max_patterns: int = 5
    min_share: float = 0.01
    model: ClassVar[str] = "token-pattern"

    def explain(self, records: Sequence[ActivationRecord]) -> str:
        return str(fit_token_patterns(records, self.max_patterns, self.min_share))
