"""A loopback OpenAI-compatible server for the endpoint tests: a thread on 127.0.0.1, an ephemeral port.

It answers like a tiny, perfect model that reads the prompts: it explains a neuron by the token shown
with the highest activation ('the token "cat"'), and simulates 10 on that token and 0 elsewhere, with
logprobs (/completions, echo) or as a JSON list (/chat/completions). Faults are scripted: `queue`
holds faults for the next requests in order, `fault(path, body)` may return one for any request.
A fault is an HTTP status, "timeout" (answers after the client's timeout), "hang" (no answer until the
server stops), "garbage" (not JSON), "unparseable" (a blank chat answer), "short" (one value too few),
"no-logprobs" (a completion without logprobs).

`tag` is added to every explanation, so two servers' answers can be told apart; `echo_key` makes every
explanation quote the request's Authorization header, as a careless proxy might.
"""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

TOKEN_LINE = re.compile(r"^(.*)\t(\d+|unknown)$")


def strongest_token(prompt: str) -> str:
    """The token shown with the highest activation for neuron 2 (the real one, after the example)."""
    shown = prompt[prompt.index("Neuron 2"):]
    lines = [m.groups() for line in shown.splitlines() if (m := TOKEN_LINE.match(line))]
    return max(lines, key=lambda pair: int(pair[1]))[0].strip()


def explained_token(text: str) -> str | None:
    match = re.search(r'find the token "(.*?)"', text.split("Neuron 2")[-1] if "Neuron 2" in text else text)
    return match.group(1) if match else None


class FakeLLM:
    def __init__(self, *, logprobs: bool = True, completions: bool = True, delay_s: float = 0.0, tag: str = "",
                 echo_key: bool = False):
        self.logprobs, self.completions, self.delay_s = logprobs, completions, delay_s
        self.tag, self.echo_key = tag, echo_key
        self.queue: list[Any] = []
        self.fault: Callable[[str, dict], Any] = lambda path, body: None
        self.requests: list[tuple[str, dict, dict[str, str]]] = []  # path, body, headers
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # wakes handlers that are holding a "timeout"
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                path = self.path.removeprefix("/v1")
                with fake._lock:
                    fake.requests.append((path, body, dict(self.headers)))
                    fault = fake.queue.pop(0) if fake.queue else fake.fault(path, body)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    fake._stop.wait(fake.delay_s)
                    self._answer(path, body, fault)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _answer(self, path: str, body: dict, fault: Any) -> None:
                if fault == "timeout":
                    fake._stop.wait(1.0)  # well past the tests' client timeout, bounded for shutdown
                    return self._send(200, {"choices": []})
                if fault == "hang":
                    fake._stop.wait(60.0)
                    return None
                if isinstance(fault, int):
                    return self._send(fault, {"error": {"message": f"fault {fault}; key was "
                                                       f"{self.headers.get('Authorization', '')}"}},
                                      {"Retry-After": "0"} if fault == 429 else {})
                if fault == "garbage":
                    return self._send(200, b"<html>not json")
                if path == "/completions":
                    if not fake.completions:
                        return self._send(404, {"error": {"message": "no such endpoint"}})
                    return self._send(200, completion(body["prompt"], fake.logprobs and fault != "no-logprobs"))
                tag = fake.tag + (f" (sent with {self.headers.get('Authorization', '')})" if fake.echo_key else "")
                return self._send(200, chat(body["messages"], fault, tag))

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def chat(messages: list[dict[str, str]], fault: Any, tag: str = "") -> dict:
    last = messages[-1]["content"]
    if fault == "unparseable":
        content = "  "
    elif "Tokens (" in last:  # JSON simulation
        tokens = json.loads(last.split("as a JSON list):\n", 1)[1].split("\n", 1)[0])
        word = explained_token(last)
        values = [10 if t.strip() == word else 0 for t in tokens]
        content = "```json\n" + json.dumps(values[:-1] if fault == "short" else values) + "\n```"
    else:  # explanation
        content = f' the token "{strongest_token(last)}"{tag}.'
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


def completion(prompt: str, logprobs: bool) -> dict:
    """Echo the prompt as pseudo-tokens (runs of text, tabs, newlines) with top logprobs at each slot."""
    word = explained_token(prompt)
    tokens = re.findall(r"[^\t\n]+|\t|\n", prompt)
    offsets, top, at, line_token = [], [], 0, None
    for i, tok in enumerate(tokens):
        offsets.append(at)
        if tok == "unknown" and i > 0 and tokens[i - 1] == "\t":
            fires = line_token is not None and line_token.strip() == word
            top.append({"10": math.log(0.9), "0": math.log(0.1)} if fires else
                       {"0": math.log(0.8), "1": math.log(0.1), "unknown": math.log(0.1)})
        else:
            top.append({tok: 0.0} if i else None)
        if tok not in ("\t", "\n"):
            line_token = tok if i == 0 or tokens[i - 1] == "\n" else line_token
        at += len(tok)
    choice: dict[str, Any] = {"index": 0, "text": prompt + "0"}
    choice["logprobs"] = {"tokens": tokens, "text_offset": offsets, "top_logprobs": top} if logprobs else None
    return {"choices": [choice]}
