"""An OpenAI-compatible HTTP endpoint (vLLM, OpenAI, Ollama, llama.cpp server, ...) as explainer and simulator.

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
- every request: at most `max_concurrency` in flight over all threads, a socket timeout, and up to
  `max_attempts` attempts with exponential backoff and jitter after timeouts, connection errors, 408,
  429, 5xx and malformed answers; and no request outlives the neuron's deadline (explain.neuron_deadline,
  set per neuron by the run). Then the neuron fails (RequestFailed, with the last reason, and whether
  the cause was the transport: a rerun with --retry-failed asks again) and the run goes on.
- validated answers go to an on-disk cache keyed by a hash of the endpoint's URL and the request
  (model, prompt, parameters; never the key), so reruns and resumes send nothing and two servers'
  answers never mix.
- the API key is read from an environment variable and only ever put in the Authorization header.
  Everything that comes back (every string of an answer, error texts) passes scrub_key before anything
  reads it, so a server that quotes the key gets it into no explanation, cache file, row, card or log.

Standard library only (urllib): the two endpoints need no client package.
"""

from __future__ import annotations

import contextvars
import hashlib
import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import CratelabError
from ..io import write_json
from .activations import ActivationRecord
from .config import SIMULATION_METHODS, BackendConfig
from .explain import Deadline, NeuronFailure, current_deadline
from .prompts import (EXAMPLE_EXPLANATION, EXAMPLE_RECORDS, MAX_ACTIVATION, PromptTemplates, digit_probabilities,
                      expected_activation, json_simulation_messages, parse_explanation, parse_json_activations,
                      slot_positions)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# statuses by which a server says it does not offer what was asked (no completions endpoint, no echo
# with logprobs, too many logprobs): simulation="auto" then simulates with JSON answers
UNSUPPORTED = (400, 404, 405, 422)
# statuses that say nothing about the request's prompt: the server was down, busy, too slow, or refused
# the credentials. A neuron that failed with one is worth asking again (--retry-failed); a 400 is not.
TRANSPORT_STATUSES = (401, 403, 408, 429)
KEY_MARKER = "[api key removed]"
# a shorter "key" is a placeholder (vLLM's "EMPTY", "none"), no secret: removing every occurrence of such
# a word from explanations would change them. It is still removed after "Bearer ".
MIN_SCRUBBED_KEY = 8


def scrub_key(text: str, key: str | None) -> str:
    """`text` without the API key: "Bearer KEY" and KEY itself become KEY_MARKER."""
    if not key:
        return text
    text = text.replace(f"Bearer {key}", KEY_MARKER)
    return text.replace(key, KEY_MARKER) if len(key) >= MIN_SCRUBBED_KEY else text


def scrub_answer(value: Any, key: str | None) -> Any:
    """A parsed JSON answer with scrub_key applied to every string in it (keys of objects too)."""
    if not key:
        return value
    if isinstance(value, str):
        return scrub_key(value, key)
    if isinstance(value, list):
        return [scrub_answer(v, key) for v in value]
    if isinstance(value, dict):
        return {scrub_key(k, key): scrub_answer(v, key) for k, v in value.items()}
    return value


def is_transport_status(status: int | None) -> bool:
    return status is not None and (status in TRANSPORT_STATUSES or status >= 500)


# the reasons of transport failures in score rows written before rows said their kind of failure
_OLD_TRANSPORT_REASON = re.compile(r"llm failed: (timed out|connection failed|HTTP (401|403|408|429|5\d\d)\b)")


def is_old_transport_reason(reason: str) -> bool:
    return _OLD_TRANSPORT_REASON.match(reason) is not None


def default_cache_dir() -> Path:
    """$CRATELAB_LLM_CACHE, else cratelab/llm in the user's cache directory."""
    if env := os.environ.get("CRATELAB_LLM_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cratelab" / "llm"


@dataclass(frozen=True)
class EndpointConfig:
    explainer_model: str
    simulator_model: str
    base_url: str | None = None  # None: $OPENAI_BASE_URL, else OpenAI's API
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key: keys stay out of configs
    simulation: str = "auto"  # "logprobs", "json", or "auto" (decided once per run by a probe request)
    prompts: PromptTemplates = PromptTemplates()
    top_logprobs: int = 20  # alternatives per prompt token; the digits must be among them
    max_explanation_tokens: int = BackendConfig.max_explanation_tokens
    temperature: float = 0.0  # a cached answer should be the answer
    max_concurrency: int = 8  # requests in flight at once, over all threads
    timeout_s: float = 120.0  # socket timeout of one request
    max_attempts: int = 4
    # (the per-neuron deadline is not here: the run sets it around each neuron, explain.neuron_deadline)
    backoff_s: float = 1.0  # wait before the first retry; doubles each retry, with jitter
    max_backoff_s: float = 60.0
    cache_dir: str | Path | None = field(default_factory=default_cache_dir)  # None: no cache

    def __post_init__(self) -> None:
        if not self.explainer_model or not self.simulator_model:
            raise CratelabError("the endpoint needs a model name (method 'openai:MODEL')")
        if self.simulation not in SIMULATION_METHODS:
            raise CratelabError(f"simulation must be one of {', '.join(SIMULATION_METHODS)}, got {self.simulation!r}")
        for name in ("top_logprobs", "max_explanation_tokens", "max_concurrency", "max_attempts"):
            if getattr(self, name) < 1:
                raise CratelabError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.timeout_s > 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise CratelabError("timeout_s must be > 0, backoff_s and max_backoff_s >= 0")


class RequestFailed(NeuronFailure):
    """A request that failed for good; `status` is the last HTTP status, when the server answered;
    `transport` whether no answer came for reasons of the connection or the server, not the request."""

    def __init__(self, message: str, status: int | None = None, transport: bool = False):
        super().__init__(message, transport=transport)
        self.status = status


class LogprobsUnavailable(Exception):
    """The server's answer has no logprobs to read the activation slots from."""


class _AttemptFailed(Exception):
    """One attempt failed; `retry` says whether another may succeed, `wait` what the server asked for."""

    def __init__(self, reason: str, *, retry: bool, status: int | None = None, wait: float = 0.0,
                 transport: bool = False):
        super().__init__(reason)
        self.reason, self.retry, self.status, self.wait, self.transport = reason, retry, status, wait, transport


class ResponseCache:
    """Validated answers on disk: one small JSON file per request, named by the request's hash."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @staticmethod
    def key(kind: str, url: str, payload: dict[str, Any]) -> str:
        """Hash of what determines an answer: the server (its URL) and the request; `kind` names how the
        answer was extracted from the response. (Entries written before the URL was part of the key are
        not found: they are asked again.)"""
        blob = json.dumps({"kind": kind, "url": url, "request": payload}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _file(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        try:
            return json.loads(self._file(key).read_text(encoding="utf-8"))["value"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):  # missing, or not ours: ask the server
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        file = self._file(key)
        file.parent.mkdir(parents=True, exist_ok=True)
        write_json(file, entry, indent=None)  # atomic: a crash or a concurrent run never leaves half a file


class Endpoint:
    """POSTs JSON to an OpenAI-compatible server with bounded concurrency, retries and a cache."""

    def __init__(self, config: EndpointConfig):
        self.config = config
        self.base_url = (config.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if urllib.parse.urlsplit(self.base_url).scheme not in ("http", "https"):
            raise CratelabError(f"the endpoint's base URL must be http(s)://..., got {self.base_url!r}")
        self._api_key = os.environ.get(config.api_key_env) or None
        if self._api_key is None and self.base_url == DEFAULT_BASE_URL:
            raise CratelabError(f"OpenAI's API needs a key: set {config.api_key_env} "
                                f"(or point OPENAI_BASE_URL / base_url at another server)")
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir is not None else None
        self._in_flight = threading.BoundedSemaphore(config.max_concurrency)

    def call(self, path: str, payload: dict[str, Any], extract: Callable[[Any], Any], kind: str) -> Any:
        """extract(response) for one request: from the cache, else from the server, retrying.

        extract raises ValueError (or KeyError, IndexError, TypeError) on a malformed answer, which is
        retried; its value must be JSON-serialisable, as it is what the cache keeps. A cached answer is
        returned even past the neuron's deadline (it costs nothing); a request is not sent past it.
        """
        key = ResponseCache.key(kind, self.base_url + path, payload)
        if self.cache is not None and (cached := self.cache.get(key)) is not None:
            return cached
        attempts, attempt, last = self.config.max_attempts, 1, None
        while True:
            try:
                value = self._attempt(path, payload, extract, last)
            except _AttemptFailed as failed:
                if not failed.retry:
                    raise RequestFailed(f"llm failed: {failed.reason}", failed.status, failed.transport) from None
                if attempt == attempts:
                    tries = f"{attempts} attempts" if attempts > 1 else "1 attempt"
                    raise RequestFailed(f"llm failed: {failed.reason} after {tries}", failed.status,
                                        failed.transport) from None
                delay = self._backoff(attempt, failed.wait)
                if (deadline := current_deadline()) is not None and delay >= deadline.left():
                    raise _deadline_passed(deadline, failed.reason) from None  # it would, while waiting
                last = failed.reason
                attempt += 1
                log.info("%s%s: %s; retrying in %.2f s (attempt %d of %d)", self.base_url, path, failed.reason,
                         delay, attempt, attempts)
                time.sleep(delay)
                continue
            if self.cache is not None:
                self.cache.put(key, {"kind": kind, "model": payload.get("model"), "value": value})
            return value

    def _backoff(self, attempt: int, server_wait: float) -> float:
        # exponential with "equal jitter": waits grow, and clients that failed together spread out;
        # a server's Retry-After is honoured up to max_backoff_s
        step = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** (attempt - 1))
        return max(min(server_wait, self.config.max_backoff_s), step / 2 + random.uniform(0, step / 2))

    def _attempt(self, path: str, payload: dict[str, Any], extract: Callable[[Any], Any], last: str | None) -> Any:
        response = self._post(path, payload, last)
        try:
            return extract(response)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _AttemptFailed(f"malformed answer ({self._scrub(str(e))})", retry=True) from None

    def _post(self, path: str, payload: dict[str, Any], last: str | None) -> Any:
        """The server's answer, parsed and scrubbed of the key: the one place answers enter our data."""
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.base_url + path, json.dumps(payload).encode(), headers, method="POST")
        # a request waits for a free slot, and for its answer, no longer than the neuron has left
        deadline = current_deadline()
        if not self._in_flight.acquire(timeout=None if deadline is None else max(deadline.left(), 0.0)):
            raise _deadline_passed(deadline, last)
        try:
            timeout = self.config.timeout_s
            if deadline is not None:
                if (left := deadline.left()) <= 0:
                    raise _deadline_passed(deadline, last)
                timeout = min(timeout, left)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    body = response.read()
            except urllib.error.HTTPError as e:
                raise self._http_error(e) from None
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError):
                    raise self._timed_out(deadline) from None
                raise _AttemptFailed(f"connection failed ({self._scrub(str(e.reason))})", retry=True,
                                     transport=True) from None
            except TimeoutError:
                raise self._timed_out(deadline) from None
            except (ConnectionError, http.client.HTTPException) as e:
                raise _AttemptFailed(f"connection failed ({type(e).__name__})", retry=True, transport=True) from None
        finally:
            self._in_flight.release()
        try:
            return scrub_answer(json.loads(body), self._api_key)
        except ValueError:
            raise _AttemptFailed("malformed answer (not JSON)", retry=True) from None

    @staticmethod
    def _timed_out(deadline: Deadline | None) -> _AttemptFailed | RequestFailed:
        if deadline is not None and deadline.left() <= 0:  # cut short by the neuron's deadline
            return _deadline_passed(deadline, "timed out")
        return _AttemptFailed("timed out", retry=True, transport=True)

    def _http_error(self, e: urllib.error.HTTPError) -> _AttemptFailed:
        status = e.code
        if status in (408, 429) or status >= 500:
            retry_after = e.headers.get("Retry-After", "") if e.headers else ""
            wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 0.0
            return _AttemptFailed(f"HTTP {status}", retry=True, status=status, wait=wait, transport=True)
        try:
            body = e.read(2000).decode("utf-8", "replace")
        except OSError:
            body = ""
        try:
            detail = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = body
        detail = " ".join(self._scrub(str(detail)).split())[:200] or self._scrub(str(e.reason or ""))
        return _AttemptFailed(f"HTTP {status} ({detail})", retry=False, status=status,
                              transport=is_transport_status(status))

    def _scrub(self, text: str) -> str:
        """`text` without the API key: server messages may quote it."""
        return scrub_key(text, self._api_key)


def _deadline_passed(deadline: Deadline, last: str | None) -> RequestFailed:
    return RequestFailed(f"llm failed: the neuron's deadline of {deadline.seconds:g} s passed"
                         + (f" (last attempt: {last})" if last else ""), transport=True)


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
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.model = endpoint.config.explainer_model

    def explain(self, records: Sequence[ActivationRecord]) -> str:
        cfg = self.endpoint.config
        payload = {"model": self.model, "messages": cfg.prompts.explanation_messages(records),
                   "max_tokens": cfg.max_explanation_tokens, "temperature": cfg.temperature}
        return self.endpoint.call("/chat/completions", payload, lambda r: parse_explanation(_message_text(r)),
                                  kind="explain-1")


class EndpointSimulator:
    """All-at-once simulation, the sequences of a neuron in parallel (bounded by the endpoint).

    `simulation` is "logprobs" or "json"; with "auto" it is None until decide() has probed the server.
    """

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.model = endpoint.config.simulator_model
        self.simulation: str | None = None if endpoint.config.simulation == "auto" else endpoint.config.simulation
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
        pool = ThreadPoolExecutor(min(len(sequences), self.endpoint.config.max_concurrency))
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
        cfg = self.endpoint.config
        prompt = cfg.prompts.simulation_prompt(explanation, tokens)
        # max_tokens=1, not 0: not every server accepts 0; the one generated token is ignored
        payload = {"model": self.model, "prompt": prompt.text, "max_tokens": 1, "temperature": 0.0,
                   "echo": True, "logprobs": cfg.top_logprobs}
        rows = self.endpoint.call("/completions", payload, partial(_slot_digit_probabilities, prompt.slots),
                                  kind="simulate-logprobs-1")
        return np.array([expected_activation(dict(enumerate(row))) for row in rows])

    def _by_json(self, explanation: str, tokens: Sequence[str]) -> np.ndarray:
        cfg = self.endpoint.config
        payload = {"model": self.model, "messages": json_simulation_messages(explanation, tokens),
                   "max_tokens": 16 + 4 * len(tokens), "temperature": cfg.temperature}
        values = self.endpoint.call(
            "/chat/completions", payload,
            lambda r: parse_json_activations(_message_text(r), len(tokens)).tolist(), kind="simulate-json-1")
        return np.asarray(values, dtype=np.float64)


def endpoint_backend(config: EndpointConfig) -> tuple[EndpointExplainer, EndpointSimulator]:
    """Explainer and simulator sharing one endpoint (one concurrency bound, one cache)."""
    endpoint = Endpoint(config)
    return EndpointExplainer(endpoint), EndpointSimulator(endpoint)
