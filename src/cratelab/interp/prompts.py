"""Prompts of the LLM explainer and simulator (after Bills et al. 2023), and the parsing of answers.

Pure functions shared by every LLM backend (local transformers model, OpenAI-compatible endpoint).

Explainer: the explanation records as "token<TAB>activation" lines, activations discretised to
floor(10 * relu(a) / max) with max over the shown records; the model completes "the main thing this
neuron does is find ...". One worked example comes first.

Simulator, all at once: the explanation and the record's tokens as "token<TAB>unknown" lines. A
causal LM's next-token distribution at each "unknown" (an activation slot) is its belief about that
token's activation; the simulation is the expected value over the digit tokens "0".."10" there,
renormalised over the digits. A slot is a character offset into the prompt, so any tokenizer's
tokens can be matched to it (by their start offsets). When no logprobs are available the model
instead answers with a JSON list of integers, which is parsed and validated.
"""

from __future__ import annotations

import bisect
import json
import math
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import CratelabError
from .activations import ActivationRecord
from .explain import explainer_view

EXPLANATION_PREFIX = "the main thing this neuron does is find"
MAX_ACTIVATION = 10
UNKNOWN = "unknown"
DIGITS = {str(v): v for v in range(MAX_ACTIVATION + 1)}  # the answers a simulator may give

INTRO = ("You are helping to interpret the neurons of a language model. A neuron responds to one "
         "specific feature of the text it reads.")
FORMAT = ("Each line gives a token, a tab, and how strongly the neuron responded to that token, as an "
          "integer from 0 (not at all) to 10 (its strongest response). Every text starts with <start> and "
          "ends with <end>.")

# The worked example shown before the real neuron (made up for these prompts).
EXAMPLE_EXPLANATION = "days of the week"
EXAMPLE_RECORDS = (
    ActivationRecord([" We", " met", " on", " Monday", " and", " again", " on", " Friday", "."],
                     [0, 0, 0, 9.5, 0, 0, 0.6, 8.1, 0]),
    ActivationRecord([" The", " shop", " is", " closed", " every", " Sunday", " morning", "."],
                     [0, 0, 0, 0, 1.2, 10.0, 0.4, 0]),
)

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


def discretize(records: Sequence[ActivationRecord]) -> list[np.ndarray]:
    """floor(10 * relu(a) / max), max over the records shown: the integers 0-10 an LLM sees."""
    return [np.floor(v).astype(np.int64) for v in explainer_view(records)]


def show_token(token: str) -> str:
    """A token as written into a prompt line.

    Raw newlines and tabs would break the one-token-a-line format; markers such as <|endoftext|>
    would be read as control tokens by the LLM's own tokenizer.
    """
    escaped = token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return escaped.replace("<|", "<").replace("|>", ">")


def _record_lines(tokens: Sequence[str], values: Sequence[object]) -> str:
    lines = [f"{show_token(t)}\t{v}" for t, v in zip(tokens, values)]
    return "<start>\n" + "\n".join(lines) + "\n<end>"


def _explain_request(index: int, records: Sequence[ActivationRecord]) -> str:
    digits = discretize(records)
    parts = [f"Neuron {index}", "Activations:"]
    parts += [_record_lines(r.tokens, d.tolist()) for r, d in zip(records, digits)]
    n_tokens = sum(len(r.tokens) for r in records)
    n_firing = sum(int((d > 0).sum()) for d in digits)
    if 0 < n_firing < 0.2 * n_tokens:
        # as in Bills et al.: when few tokens fire, repeat them alone so they stand out
        parts.append("Same activations, non-zero only:")
        parts += [_record_lines([t for t, v in zip(r.tokens, d) if v > 0], [int(v) for v in d if v > 0])
                  for r, d in zip(records, digits) if (d > 0).any()]
    parts.append(f"Explanation of neuron {index} behavior: {EXPLANATION_PREFIX}")
    return "\n".join(parts)


def explanation_messages(records: Sequence[ActivationRecord]) -> list[Message]:
    """Chat messages asking for an explanation of the neuron that produced `records`."""
    system = (f"{INTRO} From the tokens it responds to, say in one short phrase what that feature is."
              f"\n\n{FORMAT}")
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": _explain_request(1, EXAMPLE_RECORDS)},
        {"role": "assistant", "content": f" {EXAMPLE_EXPLANATION}."},
        {"role": "user", "content": _explain_request(2, records)},
    ]


def parse_explanation(text: str) -> str:
    """The explanation in a model's answer: its first line, without the prefix or a final period."""
    lines = text.strip().splitlines()
    line = lines[0].strip() if lines else ""
    if line.lower().startswith(EXPLANATION_PREFIX):
        line = line[len(EXPLANATION_PREFIX):].strip()
    line = line.rstrip(".").strip()
    if not line:
        raise ValueError("empty explanation")
    return line


def _explanation_line(index: int, explanation: str) -> str:
    one_line = " ".join(explanation.split())  # a newline would end the line the prompt relies on
    return f"Explanation of neuron {index} behavior: {EXPLANATION_PREFIX} {one_line}."


@dataclass(frozen=True)
class SimulationPrompt:
    """A completion prompt and the character offset of each token's activation slot in it."""

    text: str
    slots: tuple[int, ...]


def simulation_prompt(explanation: str, tokens: Sequence[str]) -> SimulationPrompt:
    """All-at-once simulation prompt: the worked example with its activations, then `tokens` with unknowns."""
    head = [f"{INTRO} Given an explanation of that feature, predict the neuron's response to each token.",
            "", f'{FORMAT} "{UNKNOWN}" marks a response to predict. Most responses are 0.', "",
            "Neuron 1", _explanation_line(1, EXAMPLE_EXPLANATION), "Activations:"]
    head += [_record_lines(r.tokens, d.tolist()) for r, d in zip(EXAMPLE_RECORDS, discretize(EXAMPLE_RECORDS))]
    head += ["", "Neuron 2", _explanation_line(2, explanation), "Activations:", "<start>", ""]
    text = "\n".join(head)
    slots = []
    for token in tokens:
        text += show_token(token) + "\t"
        slots.append(len(text))
        text += UNKNOWN + "\n"
    return SimulationPrompt(text + "<end>\n", tuple(slots))


def slot_positions(token_starts: Sequence[int], slots: Sequence[int]) -> list[int]:
    """Index of the token that starts at each slot, given the prompt's token start offsets (ascending).

    Raises ValueError when a slot falls inside a token: the model never predicted that activation
    on its own, so its distribution there means nothing.
    """
    positions = []
    for slot in slots:
        i = bisect.bisect_left(token_starts, slot)
        if i == len(token_starts) or token_starts[i] != slot:
            raise ValueError(f"no token of the prompt starts at activation slot {slot}")
        positions.append(i)
    return positions


def digit_probabilities(top_logprobs: Mapping[str, float]) -> dict[int, float]:
    """Probabilities of the activations 0-10 among a position's top tokens (token text -> logprob)."""
    probs: dict[int, float] = {}
    for token, logprob in top_logprobs.items():
        value = DIGITS.get(token.strip())  # "5" and " 5" both say 5
        if value is not None:
            probs[value] = probs.get(value, 0.0) + math.exp(logprob)
    return probs


def expected_activation(probabilities: Mapping[int, float]) -> float:
    """Expected activation under the digit probabilities renormalised over the digits.

    0 when no digit is among them: no evidence of firing, and most activations are 0.
    """
    total = sum(probabilities.values())
    if total <= 0:
        return 0.0
    return sum(v * p for v, p in probabilities.items()) / total


def json_simulation_messages(explanation: str, tokens: Sequence[str]) -> list[Message]:
    """Chat messages asking for the activations as a JSON list of integers (no logprobs needed)."""
    system = (f"{INTRO} Given an explanation of that feature, predict the neuron's response to each token "
              f"of a text, as an integer from 0 (not at all) to 10 (its strongest response). Most responses "
              f"are 0. Answer with only a JSON list of integers, one per token, in order.")

    def ask(index: int, explanation: str, tokens: Sequence[str]) -> str:
        return (f"{_explanation_line(index, explanation)}\nTokens ({len(tokens)}, as a JSON list):\n"
                f"{json.dumps(list(tokens), ensure_ascii=False)}\n"
                f"Answer with a JSON list of exactly {len(tokens)} integers.")

    example = EXAMPLE_RECORDS[0]
    answer = json.dumps(discretize([example])[0].tolist())
    return [{"role": "system", "content": system},
            {"role": "user", "content": ask(1, EXAMPLE_EXPLANATION, example.tokens)},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": ask(2, explanation, tokens)}]


def parse_json_activations(text: str, n_tokens: int) -> np.ndarray:
    """The n_tokens activations in a JSON answer (a list, possibly inside a code fence or an object).

    Raises ValueError when the answer is not such a list, has the wrong length or a value outside 0-10.
    """
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end < start:
        raise ValueError("no JSON list in the answer")
    try:
        values = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        raise ValueError("the answer's list is not valid JSON") from None
    if not isinstance(values, list):
        raise ValueError("the answer is not a JSON list")
    if len(values) != n_tokens:
        raise ValueError(f"expected {n_tokens} activations, got {len(values)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= MAX_ACTIVATION
               for v in values):
        raise ValueError(f"activations must be numbers from 0 to {MAX_ACTIVATION}")
    return np.asarray(values, dtype=np.float64)


# ---------------------------------------------------------------- prompt templates from files

def _template(path: Path, name: str) -> string.Template:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CratelabError(f"{name}: cannot read the prompt template {path}: {err}") from None
    return _valid(string.Template(text), name, path)


def _valid(template: string.Template, name: str, path: Path) -> string.Template:
    if not template.is_valid():
        raise CratelabError(f"{name}: {path} is not a valid template ($name placeholders, $$ for a dollar sign)")
    return template


def _check_placeholders(template: string.Template, allowed: set[str], required: set[str], name: str,
                        path: Path) -> None:
    used = set(template.get_identifiers())
    if unknown := used - allowed:
        raise CratelabError(f"{name}: {path} uses unknown placeholder(s) {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(allowed))})")
    if missing := required - used:
        raise CratelabError(f"{name}: {path} must contain {', '.join('$' + m for m in sorted(missing))}")


def activation_lines(records: Sequence[ActivationRecord]) -> str:
    """The records as an explainer sees them: "<start>", one "token<TAB>digit" line a token, "<end>"."""
    return "\n".join(_record_lines(r.tokens, d.tolist()) for r, d in zip(records, discretize(records)))


@dataclass(frozen=True)
class PromptTemplates:
    """The explainer's chat messages and the logprob simulator's completion prompt: ours (None), or templates.

    explainer: a JSON file, a list of {"role", "content"} chat messages; `$records` in a content is
    replaced by the neuron's explanation records (activation_lines). simulator: a text file with
    `$explanation` and, once, `$records`, replaced by the tokens as "token<TAB>unknown" lines (the
    activation slots are found in the result). The JSON-answer simulation always uses our prompt.
    """

    explainer: tuple[Message, ...] | None = None
    simulator: str | None = None

    @classmethod
    def load(cls, explainer_path: str | Path | None, simulator_path: str | Path | None) -> PromptTemplates:
        explainer = simulator = None
        if explainer_path:
            path = Path(explainer_path)
            name = "interp.backend.explainer_prompt"
            try:
                messages = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as err:
                raise CratelabError(f"{name}: {path} is not a readable JSON list of chat messages ({err})") from None
            if not (isinstance(messages, list) and messages and all(
                    isinstance(m, dict) and set(m) == {"role", "content"} and isinstance(m["content"], str)
                    and m["role"] in ("system", "user", "assistant") for m in messages)):
                raise CratelabError(f"{name}: {path} must be a JSON list of {{\"role\": system|user|assistant, "
                                    "\"content\": text}} messages")
            # the messages read as one template: the checks see every placeholder, $records once or more
            _check_placeholders(_valid(string.Template("\n".join(m["content"] for m in messages)), name, path),
                                {"records"}, {"records"}, name, path)
            explainer = tuple(messages)
        if simulator_path:
            path, name = Path(simulator_path), "interp.backend.simulator_prompt"
            template = _template(path, name)
            _check_placeholders(template, {"explanation", "records"}, {"explanation", "records"}, name, path)
            if template.template.count("$records") != 1:
                raise CratelabError(f"{name}: {path} must contain $records exactly once")
            simulator = template.template
        return cls(explainer, simulator)

    def explanation_messages(self, records: Sequence[ActivationRecord]) -> list[Message]:
        if self.explainer is None:
            return explanation_messages(records)
        shown = activation_lines(records)
        return [{"role": m["role"], "content": string.Template(m["content"]).substitute(records=shown)}
                for m in self.explainer]

    def simulation_prompt(self, explanation: str, tokens: Sequence[str]) -> SimulationPrompt:
        if self.simulator is None:
            return simulation_prompt(explanation, tokens)
        head, tail = self.simulator.split("$records")
        one_line = " ".join(explanation.split())
        text = string.Template(head).substitute(explanation=one_line)
        slots = []
        for token in tokens:
            text += show_token(token) + "\t"
            slots.append(len(text))
            text += UNKNOWN + "\n"
        return SimulationPrompt(text + string.Template(tail).substitute(explanation=one_line), tuple(slots))
