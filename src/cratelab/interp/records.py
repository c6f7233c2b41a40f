"""Neuron records: the data that explainers, simulators and scoring protocols share.

The schema follows OpenAI's automated-interpretability: an ActivationRecord is a window of tokens
with one neuron's activation on each token; a NeuronRecord gathers one neuron's top, random and
quantile records and its moments. LayerRecords holds the records of every neuron of a layer as
arrays (compact; saved as safetensors + JSON) and builds NeuronRecords on demand.

RecordBuilder collects LayerRecords in ONE streaming pass over batches of (token ids, activations).
Its memory does not grow with the stream, apart from the stream's token ids (4 bytes a token):
- Window activations are copied into the buffers when a position is kept, so no second pass and no
  recomputation are needed; the tokens of each window are read back from the token ids at the end.
- top: per neuron, a running top-k of window centres. Candidates are block maxima, one per aligned
  `window`-token block of a row, that beat the neighbouring blocks' maxima whenever their windows
  would overlap. So the top windows of a neuron never overlap, and explanation and scoring records
  never share tokens (the official code kept the top 50 tokens, often neighbours in one passage).
- random: per neuron, a uniform sample of positions without replacement, independent across
  neurons, by reservoir sampling (Li's Algorithm L: the work grows with log(tokens), not tokens).
  The first `n_random` members, in random order, are the random records; the rest is a pool for
  the quantile records.
- quantiles: as in the official code, the bins are equal-mass bins of the neuron's activation over
  all tokens: the eleven twelfths below the 11/12 quantile (the top twelfth is the top records' job).
  The pool is a uniform sample of (n_bins + 1) * per_bin positions, so, sorted by activation, each
  group of `per_bin` consecutive members is a sample of one twelfth (rank-based bins): one pass, and
  the boundaries are the pool's order statistics.

A record is the window centred on its position, [p - w//2, p - w//2 + w), clipped to the document:
a row is one model context (windows never cross rows), and an end-of-text token closes its document
(a window may end on it, never extend past it, and never start before the previous one's end).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save

from ..config import RecordConfig  # the config layer owns it: [interp.records]
from ..errors import CratelabError
from ..io import name_path, sha256_file

FORMAT = "cratelab-neuron-records-1"


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
    quantile_boundaries: list[float]  # n_bins + 1 edges of the bins (estimated from the pool)
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
        with open(directory / "records.safetensors", "wb") as f:
            try:
                f.write(data)
                f.flush()
            except OSError as err:
                raise name_path(err, directory / "records.safetensors")
        meta = {
            "format": FORMAT,
            "layer": self.layer,
            "seed": self.seed,
            "config": asdict(self.config),
            "eot_id": self.eot_id,
            "n_tokens": self.n_tokens,
            "n_neurons": self.n_neurons,
            "token_ids_sha256": hashlib.sha256(self.token_ids.tobytes()).hexdigest(),
            "safetensors_sha256": sha256_file(directory / "records.safetensors"),
            "vocab": self.vocab,
        }
        (directory / "records.json").write_text(json.dumps(meta, ensure_ascii=False))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> LayerRecords:
        directory = Path(directory)
        try:
            meta = json.loads((directory / "records.json").read_text())
        except FileNotFoundError:
            raise CratelabError(f"no neuron records in {directory} (records.json is missing)") from None
        if meta.get("format") != FORMAT:
            raise CratelabError(f"{directory}: unknown records format {meta.get('format')!r}")
        if sha256_file(directory / "records.safetensors") != meta["safetensors_sha256"]:
            raise CratelabError(f"{directory}/records.safetensors does not match the hash in records.json")
        t = load_file(directory / "records.safetensors")
        windows = {kind: Windows(**{n: t[f"{kind}.{n}"] for n in ("centre", "start", "length", "acts")})
                   for kind in ("top", "random", "quantile")}
        return cls(layer=meta["layer"], seed=meta["seed"], config=RecordConfig(**meta["config"]),
                   vocab=meta["vocab"], eot_id=meta["eot_id"], token_ids=t["token_ids"],
                   quantile_boundaries=t["quantile_boundaries"], max_activation=t["max_activation"],
                   mean=t["mean"], firing_rate=t["firing_rate"], **windows)


def uniform(seed: int, stream: int, neuron: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """Uniform numbers in (0, 1) that depend only on (seed, stream, neuron, draw number).

    Counter-based (SplitMix64 mixing), so a neuron's sample does not depend on how the token stream
    was cut into batches, nor on the other neurons.
    """
    def mix(z: np.ndarray) -> np.ndarray:
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = mix(np.uint64(seed & (2**64 - 1)) * golden + np.uint64(stream))
        z = mix(z + np.asarray(neuron, dtype=np.uint64) * golden)
        z = mix(z + np.asarray(draw, dtype=np.uint64) * golden)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53


class RecordBuilder:
    """Collects LayerRecords from a stream of (token_ids (B, T), activations (B, T, H)) batches.

    Each row is one model context. Activations may be numpy arrays or torch tensors on any device;
    the running buffers live on the device of the first batch.
    """

    def __init__(self, n_neurons: int, vocab: list[str], *, eot_id: int | None = None, layer: int = 0,
                 seed: int = 0, config: RecordConfig = RecordConfig(), chunk_elements: int = 1 << 24):
        self.n_neurons, self.vocab, self.eot_id = n_neurons, list(vocab), eot_id
        self.layer, self.seed, self.config = layer, seed, config
        self.chunk_elements = chunk_elements  # bounds the temporaries of one update
        self._tokens: list[np.ndarray] = []
        self._n = 0  # positions streamed so far
        self._device: torch.device | None = None
        H, R = n_neurons, config.reservoir
        # Algorithm L state per neuron (numpy: it is O(H) and drives control flow)
        self._slot_pos = np.full((H, R), -1, dtype=np.int64)
        self._w = np.zeros(H)
        self._next = np.full(H, np.iinfo(np.int64).max, dtype=np.int64)  # next position to accept
        self._draws = np.zeros(H, dtype=np.uint64)

    def _allocate(self, device: torch.device) -> None:
        self._device = device
        H, k, R, W = self.n_neurons, self.config.n_top, self.config.reservoir, self.config.window
        self._sum = torch.zeros(H, dtype=torch.float64, device=device)
        self._fires = torch.zeros(H, dtype=torch.int64, device=device)
        # top: value and window extent per rank (strongest first); the window activations stay in a
        # physical slot (_top_slot[h, rank]) so that re-ranking never copies them
        self._top_val = torch.full((H, k), -torch.inf, device=device)
        self._top_centre, self._top_start = (torch.full((H, k), -1, dtype=torch.int64, device=device)
                                             for _ in range(2))
        self._top_length = torch.zeros((H, k), dtype=torch.int32, device=device)
        self._top_slot = torch.arange(k, device=device).repeat(H, 1)
        self._top_acts = torch.zeros((H, k, W), device=device)
        self._res = Windows(centre=torch.full((H, R), -1, dtype=torch.int64, device=device),
                            start=torch.full((H, R), -1, dtype=torch.int64, device=device),
                            length=torch.zeros((H, R), dtype=torch.int32, device=device),
                            acts=torch.zeros((H, R, W), device=device))

    def add(self, token_ids: np.ndarray | torch.Tensor, activations: np.ndarray | torch.Tensor) -> None:
        tokens = token_ids.cpu().numpy() if isinstance(token_ids, torch.Tensor) else np.asarray(token_ids)
        acts = torch.as_tensor(activations).detach().float()
        if tokens.ndim != 2 or acts.shape != (*tokens.shape, self.n_neurons):
            raise CratelabError(f"expected token ids (B, T) and activations (B, T, {self.n_neurons}), "
                                f"got {tuple(tokens.shape)} and {tuple(acts.shape)}")
        if self._device is None:
            self._allocate(acts.device)
        acts = acts.to(self._device)
        B, T = tokens.shape
        rows = max(1, self.chunk_elements // max(1, T * self.n_neurons))
        for r in range(0, B, rows):
            self._add_rows(tokens[r:r + rows], acts[r:r + rows])

    def _add_rows(self, tokens: np.ndarray, acts: torch.Tensor) -> None:
        n0 = self._n
        self._tokens.append(tokens.reshape(-1).astype(np.int32))
        seg = _segments(tokens, self.eot_id, self._device)
        x = acts.reshape(-1, self.n_neurons)
        self._sum += x.sum(0).double()
        self._fires += torch.sum(x > 0, 0, dtype=torch.int32)
        self._update_top(acts, seg, n0)
        self._update_reservoir(acts, seg, n0)
        self._n += tokens.size

    def _update_top(self, acts: torch.Tensor, seg: tuple[torch.Tensor, torch.Tensor], n0: int) -> None:
        W, k = self.config.window, self.config.n_top
        B, T, H = acts.shape
        nb = -(-T // W)
        x = F.pad(acts, (0, 0, 0, nb * W - T), value=-torch.inf) if nb * W != T else acts
        blocks = x.view(B, nb, W, H)
        val = blocks.amax(dim=2)  # (B, nb, H)
        # only blocks at least as strong as the neuron's k-th best so far can enter its top: locate
        # the first maximum of those blocks only (after the first batches, few are left)
        keep = val >= self._top_val[:, -1]
        b, j, h = keep.nonzero(as_tuple=True)
        t = torch.zeros_like(val, dtype=torch.int64)
        t[b, j, h] = j * W + blocks[b, j, :, h].argmax(dim=1)
        # a block maximum stays a candidate unless a neighbouring block's maximum is at least as large
        # (ties: the earlier wins) and so close that their windows would overlap. A neighbour too weak
        # to enter is weaker than the block, so its unknown position does not matter.
        close = (t[:, 1:] - t[:, :-1]) < W
        keep[:, 1:] &= ~(close & (val[:, :-1] >= val[:, 1:]))
        keep[:, :-1] &= ~(close & (val[:, 1:] > val[:, :-1]))
        cand = val.masked_fill(~keep, -torch.inf).permute(2, 0, 1).reshape(H, B * nb)  # stream order
        merged = torch.cat([self._top_val, cand], dim=1)
        # stable sort: equal activations rank by stream position (buffer entries are all earlier)
        order = torch.sort(merged, dim=1, descending=True, stable=True).indices[:, :k]
        rank = order.clamp(max=k - 1)
        self._top_val = merged.gather(1, order)
        self._top_centre, self._top_start, self._top_length, self._top_slot = (
            a.gather(1, rank) for a in (self._top_centre, self._top_start, self._top_length, self._top_slot))
        # the physical slots no kept entry uses go to the new entries (as many, neuron by neuron)
        kept = order < k
        used = torch.zeros((H, k), dtype=torch.int32, device=acts.device)
        used.scatter_add_(1, self._top_slot, kept.int())
        h, r = (~kept).nonzero(as_tuple=True)
        free = (used == 0).nonzero(as_tuple=True)[1]
        c = order[h, r] - k
        b, j = c // nb, c % nb
        centre, start, length, window = _window(acts, seg, b, t[b, j, h], h, n0, W)
        self._top_slot[h, r] = free
        self._top_centre[h, r], self._top_start[h, r], self._top_length[h, r] = centre, start, length
        self._top_acts[h, free] = window

    def _update_reservoir(self, acts: torch.Tensor, seg: tuple[torch.Tensor, torch.Tensor], n0: int) -> None:
        B, T, H = acts.shape
        R, end = self.config.reservoir, n0 + B * T
        changed = np.zeros((H, R), dtype=bool)
        if n0 < R:  # the first R positions fill every neuron's reservoir
            fill = np.arange(n0, min(R, end))
            self._slot_pos[:, fill] = fill
            changed[:, fill] = True
            if end >= R:  # Algorithm L starts
                everyone = np.arange(H)
                self._w = np.exp(np.log(self._uniform(everyone)) / R)
                self._next = np.full(H, R - 1, dtype=np.int64)
                self._skip(everyone)
        while (hs := np.flatnonzero(self._next < end)).size:
            slot = (self._uniform(hs) * R).astype(np.int64)
            self._slot_pos[hs, slot] = self._next[hs]
            changed[hs, slot] = True
            self._w[hs] *= np.exp(np.log(self._uniform(hs)) / R)
            self._skip(hs)
        h, slot = (torch.from_numpy(a).to(self._device) for a in np.nonzero(changed))
        local = torch.from_numpy(self._slot_pos[changed] - n0).to(self._device)
        res = self._res
        res.centre[h, slot], res.start[h, slot], res.length[h, slot], res.acts[h, slot] = _window(
            acts, seg, local // T, local % T, h, n0, self.config.window)

    def _uniform(self, hs: np.ndarray) -> np.ndarray:
        u = uniform(self.seed, 0, hs, self._draws[hs])
        self._draws[hs] += np.uint64(1)
        return u

    def _skip(self, hs: np.ndarray) -> None:
        """Algorithm L: jump to the next accepted position, geometric with success probability w."""
        gap = np.floor(np.log(self._uniform(hs)) / np.log1p(-self._w[hs]))
        self._next[hs] += np.minimum(gap, 2.0**62).astype(np.int64) + 1

    def finish(self) -> LayerRecords:
        cfg, H = self.config, self.n_neurons
        R, P = cfg.reservoir, cfg.reservoir - cfg.n_random
        if self._n < R:
            raise CratelabError(f"neuron records need at least {R} tokens ({cfg.n_random} random positions + "
                                f"a quantile pool of {P}), got {self._n}")
        numpy = lambda a: a.cpu().numpy()  # noqa: E731
        top_acts = self._top_acts.gather(1, self._top_slot[..., None].expand(-1, -1, cfg.window))
        top = Windows(*map(numpy, (self._top_centre, self._top_start, self._top_length, top_acts)))
        res = Windows(*map(numpy, (self._res.centre, self._res.start, self._res.length, self._res.acts)))
        # the reservoir, shuffled: random records first, then the quantile pool
        rows = np.arange(H)[:, None]
        perm = np.argsort(uniform(self.seed, 1, rows, np.arange(R)[None, :]), axis=1)
        rank = np.argsort(perm, axis=1)  # a slot's place in the shuffled order
        pool = perm[:, cfg.n_random:]
        value = res.acts[rows, pool, res.centre[rows, pool] - res.start[rows, pool]]
        by_value = np.argsort(value, axis=1, kind="stable")
        pool = np.take_along_axis(pool, by_value, axis=1)
        boundaries = np.take_along_axis(value, by_value, axis=1)[:, ::cfg.per_bin]
        bins = pool.reshape(H, cfg.n_bins + 1, cfg.per_bin)[:, :cfg.n_bins]  # the top twelfth is dropped
        # inside a bin the members go in shuffled order, so "first 2 explain, next 2 score" is random
        bins = np.take_along_axis(bins, np.argsort(rank[rows[..., None], bins], axis=2), axis=2)
        return LayerRecords(
            layer=self.layer, seed=self.seed, config=cfg, vocab=self.vocab, eot_id=self.eot_id,
            token_ids=np.concatenate(self._tokens),
            top=top,
            random=_take_slots(res, perm[:, :cfg.n_random]),
            quantile=_take_slots(res, bins.reshape(H, -1)),
            quantile_boundaries=boundaries.astype(np.float32),
            max_activation=numpy(self._top_val[:, 0].double()),
            mean=numpy(self._sum / self._n),
            firing_rate=numpy(self._fires.double() / self._n),
        )


def _take_slots(w: Windows, idx: np.ndarray) -> Windows:
    """The windows in slots idx (H, n) of every neuron."""
    return Windows(*(np.take_along_axis(a, idx if a.ndim == 2 else idx[..., None], axis=1)
                     for a in (w.centre, w.start, w.length, w.acts)))


def _segments(tokens: np.ndarray, eot_id: int | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position, the [lo, hi) span of its document inside the row.

    An end-of-text token closes its document: it is the last token of the span that contains it.
    """
    B, T = tokens.shape
    t = np.arange(T)
    if eot_id is None:
        lo, hi = np.zeros((B, T), dtype=np.int64), np.full((B, T), T, dtype=np.int64)
    else:
        eot = tokens == eot_id
        after = np.maximum.accumulate(np.where(eot, t + 1, 0), axis=1)
        lo = np.concatenate([np.zeros((B, 1), dtype=np.int64), after[:, :-1]], axis=1)
        hi = np.minimum.accumulate(np.where(eot, t + 1, T)[:, ::-1], axis=1)[:, ::-1]
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (lo, hi))


def _window(acts: torch.Tensor, seg: tuple[torch.Tensor, torch.Tensor], b: torch.Tensor, centre: torch.Tensor,
            h: torch.Tensor, n0: int, W: int) -> tuple[torch.Tensor, ...]:
    """Windows of neurons h centred on (row b, position centre) of a batch starting at stream position n0:
    stream centre, stream start, length, and the activations (n, W), left-aligned and zero-padded."""
    T = acts.shape[1]
    lo = torch.maximum(centre - W // 2, seg[0][b, centre])
    hi = torch.minimum(centre - W // 2 + W, seg[1][b, centre])
    offsets = torch.arange(W, device=acts.device)
    idx = (lo[:, None] + offsets).clamp(max=T - 1)
    window = acts[b[:, None], idx, h[:, None]].masked_fill(offsets >= (hi - lo)[:, None], 0.0)
    return n0 + b * T + centre, n0 + b * T + lo, (hi - lo).int(), window
