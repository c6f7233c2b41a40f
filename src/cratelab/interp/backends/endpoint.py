"""An OpenAI-compatible HTTP endpoint (vLLM, OpenAI, Ollama, llama.cpp server, ...): the client the LLM
explainer and simulator (llm.py) send their requests through.

- every request: at most `concurrency` in flight over all threads, a socket timeout, and up to
  `retries + 1` attempts with exponential backoff and jitter after timeouts, connection errors, 408,
  429, 5xx and malformed answers; and no request outlives the neuron's deadline (failure.neuron_deadline,
  set per neuron by the run). Then the neuron fails (RequestFailed, with the last reason, and whether
  the cause was the transport: a rerun with --retry-failed asks again) and the run goes on.
- validated answers go to the response cache (cache.py), so reruns and resumes send nothing.
- the API key is read from an environment variable and only ever put in the Authorization header.
  Everything that comes back (every string of an answer, error texts) passes scrub_key before anything
  reads it, so a server that quotes the key gets it into no explanation, cache file, row, card or log.

Standard library only (urllib): the two endpoints need no client package.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...errors import CratelabError
from ..config import BackendConfig
from ..failure import Deadline, NeuronFailure, current_deadline
from .cache import ResponseCache, default_cache_dir

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
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


@dataclass(frozen=True)
class EndpointOptions:
    """What the Python API may set beyond [interp.backend] (BackendConfig, the endpoint's URL, key, concurrency,
    timeout and retries): where answers are cached, the waits between retries, and the sampling of answers."""

    cache_dir: str | Path | None = field(default_factory=default_cache_dir)  # None: no cache
    backoff_s: float = 1.0  # wait before the first retry; doubles each retry, with jitter
    max_backoff_s: float = 60.0
    top_logprobs: int = 20  # alternatives per prompt token; the digits must be among them
    temperature: float = 0.0  # a cached answer should be the answer

    def __post_init__(self) -> None:
        if self.top_logprobs < 1:
            raise CratelabError(f"top_logprobs must be >= 1, got {self.top_logprobs}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise CratelabError("backoff_s and max_backoff_s must be >= 0")


class RequestFailed(NeuronFailure):
    """A request that failed for good; `status` is the last HTTP status, when the server answered;
    `transport` whether no answer came for reasons of the connection or the server, not the request."""

    def __init__(self, message: str, status: int | None = None, transport: bool = False):
        super().__init__(message, transport=transport)
        self.status = status


class _AttemptFailed(Exception):
    """One attempt failed; `retry` says whether another may succeed, `wait` what the server asked for."""

    def __init__(self, reason: str, *, retry: bool, status: int | None = None, wait: float = 0.0,
                 transport: bool = False):
        super().__init__(reason)
        self.reason, self.retry, self.status, self.wait, self.transport = reason, retry, status, wait, transport


class Endpoint:
    """POSTs JSON to an OpenAI-compatible server with bounded concurrency, retries and a cache."""

    def __init__(self, settings: BackendConfig, options: EndpointOptions = EndpointOptions()):
        self.settings, self.options = settings, options
        self.base_url = (settings.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if urllib.parse.urlsplit(self.base_url).scheme not in ("http", "https"):
            raise CratelabError(f"the endpoint's base URL must be http(s)://..., got {self.base_url!r}")
        self._api_key = os.environ.get(settings.api_key_env) or None
        if self._api_key is None and self.base_url == DEFAULT_BASE_URL:
            raise CratelabError(f"OpenAI's API needs a key: set {settings.api_key_env} "
                                f"(or point OPENAI_BASE_URL / base_url at another server)")
        self.cache = ResponseCache(options.cache_dir) if options.cache_dir is not None else None
        self._in_flight = threading.BoundedSemaphore(settings.concurrency)

    def call(self, path: str, payload: dict[str, Any], extract: Callable[[Any], Any], kind: str) -> Any:
        """extract(response) for one request: from the cache, else from the server, retrying.

        extract raises ValueError (or KeyError, IndexError, TypeError) on a malformed answer, which is
        retried; its value must be JSON-serialisable, as it is what the cache keeps. A cached answer is
        returned even past the neuron's deadline (it costs nothing); a request is not sent past it.
        """
        key = ResponseCache.key(kind, self.base_url + path, payload)
        if self.cache is not None and (cached := self.cache.get(key)) is not None:
            return cached
        attempts, attempt, last = self.settings.retries + 1, 1, None
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
        step = min(self.options.max_backoff_s, self.options.backoff_s * 2 ** (attempt - 1))
        return max(min(server_wait, self.options.max_backoff_s), step / 2 + random.uniform(0, step / 2))

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
            timeout = self.settings.timeout_s
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
