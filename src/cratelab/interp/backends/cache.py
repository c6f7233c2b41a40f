"""The response cache of the HTTP endpoint: validated answers on disk, keyed by a hash of the endpoint's URL
and the request (model, prompt, parameters; never the key), so that two servers' answers never mix."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ...io import write_json


def default_cache_dir() -> Path:
    """$CRATELAB_LLM_CACHE, else cratelab/llm in the user's cache directory."""
    if env := os.environ.get("CRATELAB_LLM_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cratelab" / "llm"


class ResponseCache:
    """Validated answers on disk: one small JSON file per request, named by the request's hash."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @staticmethod
    def key(kind: str, url: str, payload: dict[str, Any]) -> str:
        """Hash of what determines an answer: the server (its URL) and the request; `kind` names how the
        answer was extracted from the response."""
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
