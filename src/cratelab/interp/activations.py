"""Neuron records: the data that explainers, simulators and scoring protocols share.

The schema follows OpenAI's automated-interpretability: an ActivationRecord is a window of tokens
with one neuron's activation on each token; a NeuronRecord gathers one neuron's top, random and
quantile records and its moments. LayerRecords holds the records of every neuron of a layer as
arrays (compact; saved as safetensors + JSON) and builds NeuronRecords on demand.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from ..errors import CratelabError
from ..io import name_path, sha256_file
from ..layout import RECORDS_ARRAYS, RECORDS_FORMAT, RECORDS_JSON
from .config import RecordConfig



@dataclass
class ActivationRecord:
    """A window of tokens and one neuron's raw activation on each of them."""

    tokens: list[str]
    activations: np.ndarray

    def __post_init__(self) -> None:
        self.activations = np.asarray(self.activations, dtype=np.float64)
        if self.activations.shape != (len(self.tokens),):
            raise ValueError(f"{len(self.tokens)} tokens but activations of shape {self.activations.shape}")


@dataclass
class NeuronRecord:
    """One neuron's records as the protocols use them, and its moments over all streamed tokens."""

    layer: int
    neuron: int
    top: list[ActivationRecord]  # `window` tokens around each top position, strongest first
    random: list[ActivationRecord]  # `window` tokens around uniformly random positions
    top_short: list[ActivationRecord]  # `short_window` tokens around the same top positions
    random_short: list[ActivationRecord]  # `short_window` tokens around the same random positions
    quantiles: list[list[ActivationRecord]]  # `short_window` tokens, `per_bin` per bin, bins ascending
    quantile_boundaries: list[float]  # n_bins + 1 edges of the bins (grid edges nearest in exact rank)
    snippets: list[ActivationRecord]  # `snippet` tokens centred on each top position
    max_activation: float
    mean: float
    firing_rate: float  # share of tokens with activation > 0


@dataclass
class Windows:
    """Windows of one kind for every neuron: arrays (H, n) and activations (H, n, window)."""

    centre: np.ndarray  # int64: stream position the window is centred on
    start: np.ndarray  # int64: stream position of its first token
    length: np.ndarray  # int32: tokens in the window; 0 marks an empty slot
    acts: np.ndarray  # float32: activations, left-aligned, zero after `length`


@dataclass
class LayerRecords:
    """The records of every neuron of one layer, with the token stream they point into."""

    layer: int
    seed: int
    config: RecordConfig
    vocab: list[str]  # token id -> readable string
    eot_id: int | None
    token_ids: np.ndarray  # int32 (n_tokens,): the whole stream, rows one after another
    top: Windows  # (H, n_top), strongest first; fewer (empty slots) if the stream had fewer blocks
    random: Windows  # (H, n_random), in random order
    quantile: Windows  # (H, n_bins * per_bin): bins ascending, per_bin consecutive slots per bin
    quantile_boundaries: np.ndarray  # float32 (H, n_bins + 1)
    max_activation: np.ndarray  # float64 (H,)
    mean: np.ndarray
    firing_rate: np.ndarray

    @property
    def n_neurons(self) -> int:
        return self.top.centre.shape[0]

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @cached_property
    def _vocab_array(self) -> np.ndarray:
        return np.asarray(self.vocab, dtype=object)

    def neuron(self, h: int) -> NeuronRecord:
        cfg = self.config
        cut = lambda w, i, width: self._record(w, h, i, width)  # noqa: E731
        n_top = int((self.top.length[h] > 0).sum())
        n_rand = self.random.centre.shape[1]
        quantiles = [[cut(self.quantile, b * cfg.per_bin + j, cfg.short_window) for j in range(cfg.per_bin)]
                     for b in range(cfg.n_bins)]
        return NeuronRecord(
            layer=self.layer,
            neuron=h,
            top=[cut(self.top, i, cfg.window) for i in range(n_top)],
            random=[cut(self.random, i, cfg.window) for i in range(n_rand)],
            top_short=[cut(self.top, i, cfg.short_window) for i in range(n_top)],
            random_short=[cut(self.random, i, cfg.short_window) for i in range(n_rand)],
            quantiles=quantiles,
            quantile_boundaries=self.quantile_boundaries[h].tolist(),
            snippets=[cut(self.top, i, cfg.snippet) for i in range(n_top)],
            max_activation=float(self.max_activation[h]),
            mean=float(self.mean[h]),
            firing_rate=float(self.firing_rate[h]),
        )

    def _record(self, w: Windows, h: int, i: int, width: int) -> ActivationRecord:
        # the stored window is clipped to its document, so the narrower window centred on the same
        # position is the same clip of [centre - width//2, centre - width//2 + width)
        start, length, centre = int(w.start[h, i]), int(w.length[h, i]), int(w.centre[h, i])
        lo = max(centre - width // 2, start)
        hi = min(centre - width // 2 + width, start + length)
        return ActivationRecord(self._vocab_array[self.token_ids[lo:hi]].tolist(),
                                w.acts[h, i, lo - start:hi - start])

    def save(self, directory: str | Path) -> Path:
        """Write records.safetensors (arrays) and records.json (metadata, vocabulary, hashes)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"token_ids": self.token_ids, "quantile_boundaries": self.quantile_boundaries,
                   "max_activation": self.max_activation, "mean": self.mean,
                   "firing_rate": self.firing_rate}
        for kind in ("top", "random", "quantile"):
            for f in fields(Windows):
                tensors[f"{kind}.{f.name}"] = getattr(getattr(self, kind), f.name)
        # serialized here and written by Python: safetensors' own file writing reports a full disk as a
        # SafetensorError rather than the OSError it is
        data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
        with open(directory / RECORDS_ARRAYS, "wb") as f:
            try:
                f.write(data)
                f.flush()
            except OSError as err:
                raise name_path(err, directory / RECORDS_ARRAYS)
        meta = {
            "format": RECORDS_FORMAT,
            "layer": self.layer,
            "seed": self.seed,
            "config": asdict(self.config),
            "eot_id": self.eot_id,
            "n_tokens": self.n_tokens,
            "n_neurons": self.n_neurons,
            "token_ids_sha256": hashlib.sha256(self.token_ids.tobytes()).hexdigest(),
            "safetensors_sha256": sha256_file(directory / RECORDS_ARRAYS),
            "vocab": self.vocab,
        }
        (directory / RECORDS_JSON).write_text(json.dumps(meta, ensure_ascii=False))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> LayerRecords:
        directory = Path(directory)
        try:
            meta = json.loads((directory / RECORDS_JSON).read_text())
        except FileNotFoundError:
            raise CratelabError(f"no neuron records in {directory} ({RECORDS_JSON} is missing)") from None
        if meta.get("format") != RECORDS_FORMAT:
            raise CratelabError(f"{directory}: unknown records format {meta.get('format')!r}")
        if sha256_file(directory / RECORDS_ARRAYS) != meta["safetensors_sha256"]:
            raise CratelabError(f"{directory / RECORDS_ARRAYS} does not match the hash in {RECORDS_JSON}")
        t = load_file(directory / RECORDS_ARRAYS)
        windows = {kind: Windows(**{n: t[f"{kind}.{n}"] for n in ("centre", "start", "length", "acts")})
                   for kind in ("top", "random", "quantile")}
        return cls(layer=meta["layer"], seed=meta["seed"], config=RecordConfig(**meta["config"]),
                   vocab=meta["vocab"], eot_id=meta["eot_id"], token_ids=t["token_ids"],
                   quantile_boundaries=t["quantile_boundaries"], max_activation=t["max_activation"],
                   mean=t["mean"], firing_rate=t["firing_rate"], **windows)
