"""LLM explainers and simulators, over a backend (backends/): an OpenAI-compatible HTTP endpoint or a local model.

- explain: chat/completions, the token-activation-pair prompt, a bounded number of tokens.
- simulate, all at once: completions with `echo` and top logprobs; the expected value over the digit
  tokens at each activation slot. Servers that give no prompt logprobs get chat/completions asking for
  a JSON list of integers instead, validated (a wrong number of values is an error). simulation="auto"
  decides ONCE, before the first simulation, from one probe request (the prompts' worked example):
  logprobs if the server gives them, JSON if it says it cannot (no logprobs, or HTTP 400/404/405/422).
  The choice never changes afterwards: a later failure fails that neuron, with its reason. Every
  score row records the method (NeuronScore.simulation) and the explainer and simulator models.
- the explainer and the simulator may be different models (the paper explained with Mistral-7B-Instruct
  and simulated with LLaMA-2-7B), and their prompts may come from template files (prompts.PromptTemplates).
- a local model (backends/local.py) explains greedily, at most `max_explanation_tokens` new tokens, and
  simulates with one forward pass over the all-at-once prompt per sequence.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import CratelabError
from .activations import ActivationRecord
from .backends.endpoint import Endpoint, EndpointOptions, RequestFailed
from .backends.local import LocalLLM
from .config import BackendConfig
from .failure import NeuronFailure
from .prompts import (EXAMPLE_EXPLANATION, EXAMPLE_RECORDS, MAX_ACTIVATION, PromptTemplates, digit_probabilities,
                      expected_activation, json_simulation_messages, parse_explanation, parse_json_activations,
                      slot_positions)

log = logging.getLogger(__name__)

# statuses by which a server says it does not offer what was asked (no completions endpoint, no echo
# with logprobs, too many logprobs): simulation="auto" then simulates with JSON answers
UNSUPPORTED = (400, 404, 405, 422)


class LogprobsUnavailable(Exception):
    """The server's answer has no logprobs to read the activation slots from."""


def _first_choice(response: Any) -> dict[str, Any]:
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices in the answer")
    return choices[0]


def _message_text(response: Any) -> str:
    message = _first_choice(response).get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise ValueError("no message content in the answer")
    return content


def _slot_digit_probabilities(slots: Sequence[int], response: Any) -> list[list[float]]:
    """Per activation slot, the probabilities of the activations 0-10 (0 where not among the top tokens)."""
    logprobs = _first_choice(response).get("logprobs")
    if not isinstance(logprobs, dict) or not logprobs.get("top_logprobs") or not logprobs.get("text_offset"):
        raise LogprobsUnavailable("the server gave no prompt logprobs")
    try:
        positions = slot_positions(logprobs["text_offset"], slots)
    except ValueError as e:
        raise LogprobsUnavailable(f"the server's tokens do not match the prompt: {e}") from None
    rows = []
    for p in positions:
        top = logprobs["top_logprobs"][p] if p < len(logprobs["top_logprobs"]) else None
        if not isinstance(top, dict):
            raise LogprobsUnavailable("no top logprobs at an activation slot")
        probs = digit_probabilities({str(k): float(v) for k, v in top.items()})
        rows.append([probs.get(v, 0.0) for v in range(MAX_ACTIVATION + 1)])
    return rows


class EndpointExplainer:
    def __init__(self, endpoint: Endpoint, model: str, prompts: PromptTemplates = PromptTemplates()):
        self.endpoint, self.model, self.prompts = endpoint, model, prompts

    def explain(self, records: Sequence[ActivationRecord]) -> str:
        payload = {"model": self.model, "messages": self.prompts.explanation_messages(records),
                   "max_tokens": self.endpoint.settings.max_explanation_tokens,
                   "temperature": self.endpoint.options.temperature}
        return self.endpoint.call("/chat/completions", payload, lambda r: parse_explanation(_message_text(r)),
                                  kind="explain-1")


class EndpointSimulator:
    """All-at-once simulation, the sequences of a neuron in parallel (bounded by the endpoint).

    `simulation` is "logprobs" or "json"; with "auto" it is None until decide() has probed the server.
    """

    def __init__(self, endpoint: Endpoint, model: str, prompts: PromptTemplates = PromptTemplates()):
        self.endpoint, self.model, self.prompts = endpoint, model, prompts
        simulation = endpoint.settings.simulation
        self.simulation: str | None = None if simulation == "auto" else simulation
        self._lock = threading.Lock()

    def decide(self) -> str:
        """The simulation method of this run; with "auto", one probe request decides it, once."""
        with self._lock:  # scoring threads wait for the one probe
            if self.simulation is None:
                self.simulation = self._probe()
        return self.simulation

    def _probe(self) -> str:
        try:
            self._by_logprobs(EXAMPLE_EXPLANATION, EXAMPLE_RECORDS[0].tokens)
        except LogprobsUnavailable as e:
            reason = str(e)
        except RequestFailed as e:
            if e.status not in UNSUPPORTED:  # no answer about logprobs either way: do not guess
                raise CratelabError(
                    f"{self.endpoint.base_url}: the probe that chooses the simulation method failed ({e}); "
                    "set interp.backend.simulation to 'logprobs' or 'json' to skip it") from None
            reason = str(e)
        else:
            log.info("%s: simulating with prompt logprobs", self.endpoint.base_url)
            return "logprobs"
        log.warning("%s: no logprob simulation (%s); JSON answers for the whole run", self.endpoint.base_url, reason)
        return "json"

    def simulate(self, explanation: str, sequences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        if not sequences:
            return []
        self.decide()
        pool = ThreadPoolExecutor(min(len(sequences), self.endpoint.settings.concurrency))
        try:  # each task in a copy of this context: the neuron's deadline goes with it
            futures = [pool.submit(contextvars.copy_context().run, self._simulate_one, explanation, tokens)
                       for tokens in sequences]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(cancel_futures=True)  # a failed sequence fails the neuron: skip the queued rest

    def _simulate_one(self, explanation: str, tokens: Sequence[str]) -> np.ndarray:
        if not tokens:
            return np.zeros(0)
        if self.simulation == "json":
            return self._by_json(explanation, tokens)
        try:
            return self._by_logprobs(explanation, tokens)
        except LogprobsUnavailable as e:  # this neuron fails; the method stays as decided
            raise NeuronFailure(f"llm failed: {e}") from None

    def _by_logprobs(self, explanation: str, tokens: Sequence[str]) -> np.ndarray:
        prompt = self.prompts.simulation_prompt(explanation, tokens)
        # max_tokens=1, not 0: not every server accepts 0; the one generated token is ignored
        payload = {"model": self.model, "prompt": prompt.text, "max_tokens": 1, "temperature": 0.0,
                   "echo": True, "logprobs": self.endpoint.options.top_logprobs}
        rows = self.endpoint.call("/completions", payload, partial(_slot_digit_probabilities, prompt.slots),
                                  kind="simulate-logprobs-1")
        return np.array([expected_activation(dict(enumerate(row))) for row in rows])

    def _by_json(self, explanation: str, tokens: Sequence[str]) -> np.ndarray:
        payload = {"model": self.model, "messages": json_simulation_messages(explanation, tokens),
                   "max_tokens": 16 + 4 * len(tokens), "temperature": self.endpoint.options.temperature}
        values = self.endpoint.call(
            "/chat/completions", payload,
            lambda r: parse_json_activations(_message_text(r), len(tokens)).tolist(), kind="simulate-json-1")
        return np.asarray(values, dtype=np.float64)


def endpoint_backend(settings: BackendConfig, options: EndpointOptions, *, explainer_model: str, simulator_model: str,
                     prompts: PromptTemplates) -> tuple[EndpointExplainer, EndpointSimulator]:
    """Explainer and simulator sharing one endpoint (one concurrency bound, one cache)."""
    endpoint = Endpoint(settings, options)
    return EndpointExplainer(endpoint, explainer_model, prompts), EndpointSimulator(endpoint, simulator_model, prompts)


class LocalExplainer:
    def __init__(self, llm: LocalLLM, max_new_tokens: int = BackendConfig.max_explanation_tokens,
                 prompts: PromptTemplates = PromptTemplates(),
                 model: str = ""):
        self.llm, self.max_new_tokens, self.prompts, self.model = llm, max_new_tokens, prompts, model

    def explain(self, records: Sequence[ActivationRecord]) -> str:
        answer = self.llm.chat(self.prompts.explanation_messages(records), self.max_new_tokens, first_line=True)
        try:
            return parse_explanation(answer)
        except ValueError as e:  # greedy decoding: asking again would give the same answer
            raise NeuronFailure(f"llm failed: {e}") from None


class LocalSimulator:
    simulation = "logprobs"  # the expected value under the model's next-token probabilities of the digits

    def __init__(self, llm: LocalLLM, prompts: PromptTemplates = PromptTemplates(), model: str = ""):
        self.llm, self.prompts, self.model = llm, prompts, model

    def simulate(self, explanation: str, sequences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        out = []
        for tokens in sequences:
            try:
                slots = self.llm.slot_probabilities(self.prompts.simulation_prompt(explanation, tokens)) if tokens else []
            except ValueError as e:
                raise NeuronFailure(f"llm failed: {e}") from None
            out.append(np.array([expected_activation(p) for p in slots], dtype=np.float64))
        return out


def local_backend(path: str | Path, config: BackendConfig = BackendConfig(), *,
                  simulator_path: str | Path | None = None,
                  prompts: PromptTemplates = PromptTemplates()) -> tuple[LocalExplainer, LocalSimulator]:
    """Explainer (the model at `path`) and simulator (at `simulator_path`, default the same model, loaded once),
    with config's device, dtype and max_explanation_tokens."""
    config.validate()
    llm = LocalLLM(path, config.device, config.dtype)
    same = simulator_path is None or Path(simulator_path) == Path(path)
    simulator_llm = llm if same else LocalLLM(simulator_path, config.device, config.dtype)
    return (LocalExplainer(llm, config.max_explanation_tokens, prompts, str(path)),
            LocalSimulator(simulator_llm, prompts, str(path if same else simulator_path)))
