"""Sampling neuron records from a stream of activations: the RecordBuilder (records' schema: activations.py).

RecordBuilder collects LayerRecords in TWO streaming passes over the same batches of (token ids,
activations): `add` every batch, then `count` every batch again, then `finish`. Its memory does not
grow with the stream, apart from the stream's token ids (4 bytes a token):
- Window activations are copied into the buffers when a position is kept, so no recomputation is
  needed; the tokens of each window are read back from the token ids at the end.
- top: per neuron, a running top-k of window centres. With `top = "distinct"` (the default),
  candidates are block maxima, one per aligned `window`-token block of a row, that beat the
  neighbouring blocks' maxima whenever their windows would overlap. So the top windows of a neuron
  never overlap, and explanation and scoring records never share tokens. With `top = "paper"` every
  token is a candidate, as in the official code: the top `n_top` tokens, often neighbours in one
  passage, whose windows overlap (near-duplicate explanation and scoring records).
- random: per neuron, a uniform sample of positions without replacement, independent across
  neurons, by reservoir sampling (Li's Algorithm L: the work grows with log(tokens), not tokens).
  The first `n_random` members, in random order, are the random records; the rest is a pool of
  POOL_PER_BIN * per_bin uniformly sampled positions per bin for the quantile records.
- quantiles: as in the official code, the bins are equal-mass bins of the neuron's activation over
  all tokens: the eleven twelfths below the 11/12 quantile (the top twelfth is the top records'
  job). The first pass also keeps the activations of VALUE_SAMPLE uniformly sampled positions
  (shared by all neurons); their order statistics place a grid of GRID_CELLS cells per neuron. The
  second pass (`count`) counts every token of every neuron into that grid, exactly, so the true
  rank range of every cell is known. A bin's records are then drawn from the pool members whose cell
  lies inside the bin's true rank range (a cell holding a single tied value, such as the zeros of a
  ReLU code, counts for every bin it overlaps, in proportion), so they come from their true twelfth;
  only members of the two cells that straddle a bin's edges are left out (about 2 / 16 of a bin's
  mass), and used only when a bin would otherwise be short of records.

A record is the window centred on its position, [p - w//2, p - w//2 + w), clipped to the document:
a row is one model context (windows never cross rows), and an end-of-text token closes its document
(a window may end on it, never extend past it, and never start before the previous one's end).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CratelabError
from .activations import LayerRecords, Windows
from .config import RecordConfig
from .rng import keyed_uniform, stream_keys, uniform

VALUE_SAMPLE = 4096  # positions whose activations place each neuron's quantile grid
GRID_CELLS = 192  # cells of that grid (a twelfth spans about 16): exact counts per cell in the second pass
VALUE_SAMPLE_STREAM, QUANTILE_STREAM = 2, 3  # streams of `uniform` (0: reservoir, 1: its shuffle)
POOL_PER_BIN = 4  # quantile pool: POOL_PER_BIN * per_bin uniform positions per bin, to draw per_bin inside it


def reservoir_size(config: RecordConfig) -> int:
    """Uniformly sampled positions kept per neuron: the random records, then the quantile pool."""
    return config.n_random + POOL_PER_BIN * (config.n_bins + 1) * config.per_bin


class RecordBuilder:
    """Collects LayerRecords from a stream of (token_ids (B, T), activations (B, T, H)) batches, read
    twice: `add` each batch, then `count` each batch again (same batches, same order), then `finish`.
    With ``config.quantiles = "sample"`` the stream is read once (no `count`): the quantile bins' ranks
    are estimated from the value sample instead of counted.

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
        self._counted = 0  # positions of the second pass so far
        self._grid: torch.Tensor | None = None  # (H, GRID_CELLS + 1) quantile grid edges, from the first pass
        self._device: torch.device | None = None
        H, R = n_neurons, reservoir_size(config)
        # Algorithm L state per neuron (numpy: it is O(H) and drives control flow)
        self._slot_pos = np.full((H, R), -1, dtype=np.int64)
        self._w = np.zeros(H)
        self._next = np.full(H, np.iinfo(np.int64).max, dtype=np.int64)  # next position to accept
        self._draws = np.zeros(H, dtype=np.uint64)
        self._keys = stream_keys(seed, 0, np.arange(H))  # stream 0: the reservoir's draws

    def _allocate(self, device: torch.device) -> None:
        self._device = device
        H, k, R, W = self.n_neurons, self.config.n_top, reservoir_size(self.config), self.config.window
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
        # uniform sample of positions (shared by the neurons) for the quantile grid: the VALUE_SAMPLE
        # smallest keys seen; unfilled entries have key +inf
        self._sample_key = torch.full((VALUE_SAMPLE,), torch.inf, dtype=torch.float64, device=device)
        self._sample_val = torch.zeros((VALUE_SAMPLE, H), device=device)
        # second pass, per neuron and grid edge: tokens below the edge, and at or below it
        self._below, self._at_or_below = (torch.zeros((H, GRID_CELLS + 1), dtype=torch.int64, device=device)
                                          for _ in range(2))
        self._res = Windows(centre=torch.full((H, R), -1, dtype=torch.int64, device=device),
                            start=torch.full((H, R), -1, dtype=torch.int64, device=device),
                            length=torch.zeros((H, R), dtype=torch.int32, device=device),
                            acts=torch.zeros((H, R, W), device=device))

    def add(self, token_ids: np.ndarray | torch.Tensor, activations: np.ndarray | torch.Tensor) -> None:
        """First pass: one batch of the stream."""
        if self._grid is not None:
            raise CratelabError("add() after count(): the first pass must stream every batch before the second")
        tokens, acts = self._batch(token_ids, activations)
        for r in range(0, len(tokens), rows := self._rows_per_chunk(tokens.shape[1])):
            self._add_rows(tokens[r:r + rows], acts[r:r + rows])

    def count(self, token_ids: np.ndarray | torch.Tensor, activations: np.ndarray | torch.Tensor) -> None:
        """Second pass: the same batches as `add`, in the same order. Counts every activation into its
        cell of the quantile grid, so that the quantile bins are the true ones."""
        if self._n == 0:
            raise CratelabError("count() before add(): the first pass must stream every batch first")
        if not self.second_pass:
            raise CratelabError('count() with interp.records.quantiles = "sample": the stream is read once')
        if self._grid is None:
            self._tokens = [np.concatenate(self._tokens)]
            self._grid = self._quantile_grid()
        tokens, acts = self._batch(token_ids, activations)
        flat = tokens.reshape(-1)
        if not np.array_equal(self._tokens[0][self._counted:self._counted + flat.size], flat):
            raise CratelabError(f"the second pass must stream the same tokens as the first, in the same order "
                                f"(they differ after {self._counted:,} tokens)")
        x = acts.reshape(-1, self.n_neurons)
        for r in range(0, len(x), rows := self._rows_per_chunk(1)):
            # sorting the chunk makes the counts one binary search per edge, not one per token
            ordered = x[r:r + rows].T.contiguous().sort(dim=1).values
            self._below += torch.searchsorted(ordered, self._grid)
            self._at_or_below += torch.searchsorted(ordered, self._grid, right=True)
        self._counted += flat.size

    @property
    def second_pass(self) -> bool:
        """Whether the stream must be read a second time (`count`) before `finish`."""
        return self.config.quantiles == "exact"

    def _batch(self, token_ids: np.ndarray | torch.Tensor,
               activations: np.ndarray | torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        tokens = token_ids.cpu().numpy() if isinstance(token_ids, torch.Tensor) else np.asarray(token_ids)
        acts = torch.as_tensor(activations).detach().float()
        if tokens.ndim != 2 or acts.shape != (*tokens.shape, self.n_neurons):
            raise CratelabError(f"expected token ids (B, T) and activations (B, T, {self.n_neurons}), "
                                f"got {tuple(tokens.shape)} and {tuple(acts.shape)}")
        if self._device is None:
            self._allocate(acts.device)
        return tokens, acts.to(self._device)

    def _rows_per_chunk(self, T: int) -> int:
        return max(1, self.chunk_elements // max(1, T * self.n_neurons))

    def _add_rows(self, tokens: np.ndarray, acts: torch.Tensor) -> None:
        n0 = self._n
        self._tokens.append(tokens.reshape(-1).astype(np.int32))
        seg = _segments(tokens, self.eot_id, self._device)
        x = acts.reshape(-1, self.n_neurons)
        self._sum += x.sum(0).double()
        self._fires += torch.sum(x > 0, 0, dtype=torch.int32)
        self._update_top(acts, seg, n0)
        self._update_reservoir(acts, seg, n0)
        self._update_value_sample(x, n0)
        self._n += tokens.size

    def _update_value_sample(self, x: torch.Tensor, n0: int) -> None:
        # bottom-k by a counter-based key: a uniform sample of positions, whatever the batching
        key = torch.from_numpy(uniform(self.seed, VALUE_SAMPLE_STREAM, 0, np.arange(n0, n0 + len(x))))
        new = (key.to(self._device) < self._sample_key.max()).nonzero(as_tuple=True)[0]
        if new.numel():
            keys = torch.cat([self._sample_key, key.to(self._device)[new]])
            best = torch.topk(keys, VALUE_SAMPLE, largest=False, sorted=False).indices
            self._sample_key = keys[best]
            self._sample_val = torch.cat([self._sample_val, x[new]])[best]

    def _quantile_grid(self) -> torch.Tensor:
        """(H, GRID_CELLS + 1) edges: order statistics of the value sample at GRID_CELLS + 1 even ranks."""
        values = self._sample_val[torch.isfinite(self._sample_key)].sort(dim=0).values
        ranks = torch.linspace(0, len(values) - 1, GRID_CELLS + 1, device=self._device).round().long()
        return values[ranks].T.contiguous()

    def _update_top(self, acts: torch.Tensor, seg: tuple[torch.Tensor, torch.Tensor], n0: int) -> None:
        # candidates per row, in stream order: val (B, n, H) and, where it can enter, its position t
        if self.config.top == "paper":
            val, t, keep = self._token_candidates(acts)
        else:
            val, t, keep = self._block_candidates(acts)
        W, k = self.config.window, self.config.n_top
        B, n, H = val.shape
        cand = val.masked_fill(~keep, -torch.inf).permute(2, 0, 1).reshape(H, B * n)  # stream order
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
        b, j = c // n, c % n
        centre, start, length, window = _window(acts, seg, b, t[b, j, h], h, n0, W)
        self._top_slot[h, r] = free
        self._top_centre[h, r], self._top_start[h, r], self._top_length[h, r] = centre, start, length
        self._top_acts[h, free] = window

    def _token_candidates(self, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """top = "paper": every token is a candidate (as the official code), so neighbouring tokens of one
        passage give overlapping, near-duplicate windows."""
        B, T, H = acts.shape
        t = torch.arange(T, device=acts.device)[None, :, None].expand(B, T, H)
        return acts, t, acts >= self._top_val[:, -1]

    def _block_candidates(self, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """top = "distinct": the maximum of each aligned `window`-token block, unless an overlapping
        neighbour block's maximum beats it."""
        W = self.config.window
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
        return val, t, keep

    def _update_reservoir(self, acts: torch.Tensor, seg: tuple[torch.Tensor, torch.Tensor], n0: int) -> None:
        B, T, H = acts.shape
        R, end = reservoir_size(self.config), n0 + B * T
        changed = np.zeros((H, R), dtype=bool)
        if n0 < R:  # the first R positions fill every neuron's reservoir
            fill = np.arange(n0, min(R, end))
            self._slot_pos[:, fill] = fill
            changed[:, fill] = True
            if end >= R:  # Algorithm L starts
                everyone = np.arange(H)
                u_weight, u_skip = self._uniforms(everyone, 2)
                self._w = np.exp(np.log(u_weight) / R)
                self._next = np.full(H, R - 1, dtype=np.int64)
                self._skip(everyone, u_skip)
        while (hs := np.flatnonzero(self._next < end)).size:
            u_slot, u_weight, u_skip = self._uniforms(hs, 3)
            slot = (u_slot * R).astype(np.int64)
            self._slot_pos[hs, slot] = self._next[hs]
            changed[hs, slot] = True
            self._w[hs] *= np.exp(np.log(u_weight) / R)
            self._skip(hs, u_skip)
        h, slot = (torch.from_numpy(a).to(self._device) for a in np.nonzero(changed))
        local = torch.from_numpy(self._slot_pos[changed] - n0).to(self._device)
        res = self._res
        res.centre[h, slot], res.start[h, slot], res.length[h, slot], res.acts[h, slot] = _window(
            acts, seg, local // T, local % T, h, n0, self.config.window)

    def _uniforms(self, hs: np.ndarray, k: int) -> np.ndarray:
        """The next k draws of each neuron in hs, (k, len(hs)): a neuron's draws are numbered in the order
        they are used, so one call for a round's k uses gives the numbers k calls would."""
        draws = self._draws[hs] + np.arange(k, dtype=np.uint64)[:, None]
        self._draws[hs] += np.uint64(k)
        return keyed_uniform(self._keys[hs], draws)

    def _skip(self, hs: np.ndarray, u: np.ndarray) -> None:
        """Algorithm L: jump to the next accepted position, geometric with success probability w (u: a
        uniform draw per neuron)."""
        gap = np.floor(np.log(u) / np.log1p(-self._w[hs]))
        self._next[hs] += np.minimum(gap, 2.0**62).astype(np.int64) + 1

    def finish(self) -> LayerRecords:
        cfg, H = self.config, self.n_neurons
        R, P = reservoir_size(cfg), reservoir_size(cfg) - cfg.n_random
        if self._n < R:
            raise CratelabError(f"neuron records need at least {R} tokens ({cfg.n_random} random positions + "
                                f"a quantile pool of {P}), got {self._n}")
        if not self.second_pass:
            self._estimate_counts()
        elif self._counted != self._n:
            raise CratelabError(f"finish() needs the second pass: count() every batch again "
                                f"({self._counted:,} of {self._n:,} tokens counted)")
        numpy = lambda a: a.cpu().numpy()  # noqa: E731
        top_acts = self._top_acts.gather(1, self._top_slot[..., None].expand(-1, -1, cfg.window))
        top = Windows(*map(numpy, (self._top_centre, self._top_start, self._top_length, top_acts)))
        res = Windows(*map(numpy, (self._res.centre, self._res.start, self._res.length, self._res.acts)))
        # the reservoir, shuffled: random records first, then the quantile pool
        rows = np.arange(H)[:, None]
        perm = np.argsort(uniform(self.seed, 1, rows, np.arange(R)[None, :]), axis=1)
        pool = perm[:, cfg.n_random:]
        value = res.acts[rows, pool, res.centre[rows, pool] - res.start[rows, pool]]
        bins = self._quantile_bins(pool, value)
        return LayerRecords(
            layer=self.layer, seed=self.seed, config=cfg, vocab=self.vocab, eot_id=self.eot_id,
            token_ids=self._tokens[0],
            top=top,
            random=_take_slots(res, perm[:, :cfg.n_random]),
            quantile=_take_slots(res, bins.reshape(H, -1)),
            quantile_boundaries=self._quantile_boundaries(),
            max_activation=numpy(self._top_val[:, 0].double()),
            mean=numpy(self._sum / self._n),
            firing_rate=numpy(self._fires.double() / self._n),
        )

    def _estimate_counts(self) -> None:
        """quantiles = "sample": the tokens below and at-or-below each grid edge, scaled from the value sample."""
        self._tokens = [np.concatenate(self._tokens)]
        self._grid = self._quantile_grid()
        sample = self._sample_val[torch.isfinite(self._sample_key)].T.contiguous().sort(dim=1).values
        scale = self._n / sample.shape[1]
        self._below, self._at_or_below = (
            (torch.searchsorted(sample, self._grid, right=right).double() * scale).round().long()
            for right in (False, True))

    def _cell_ranks(self, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact rank range [lo, hi) of the grid cells `code` (H, n) of every neuron (see _cells)."""
        N, i = self._n, code // 2
        below, at_or_below = self._below.cpu().numpy(), self._at_or_below.cpu().numpy()
        pad = lambda a, value, side: np.pad(a, [(0, 0), side], constant_values=value)  # noqa: E731
        # cell 2i holds the tokens strictly between edges i - 1 and i; cell 2i + 1 those equal to edge i
        lo = np.where(code % 2 == 1, np.take_along_axis(pad(below, N, (0, 1)), i, axis=1),
                      np.take_along_axis(pad(at_or_below, 0, (1, 0)), i, axis=1))
        hi = np.where(code % 2 == 1, np.take_along_axis(pad(at_or_below, N, (0, 1)), i, axis=1),
                      np.take_along_axis(pad(below, N, (0, 1)), i, axis=1))
        return lo, np.maximum(hi, lo)

    def _quantile_bins(self, pool: np.ndarray, value: np.ndarray) -> np.ndarray:
        """(H, n_bins, per_bin) pool slots: per bin, per_bin members drawn from the bin's true rank range.

        Bin j holds ranks [j N / m, (j + 1) N / m) with m = n_bins + 1. A member is drawn with
        probability proportional to the share of its cell's tokens inside the bin (Efraimidis-Spirakis
        keys, without replacement), which is uniform over the bin's tokens. Members of cells that
        straddle a bin edge may lie on either side of it: they are drawn only if a bin has too few
        members otherwise, and members of no cell overlapping the bin only as a last resort."""
        cfg, H, N, m = self.config, self.n_neurons, self._n, self.config.n_bins + 1
        rows, slots = np.arange(H)[:, None], np.arange(pool.shape[1])[None, :]
        code = _cells(self._grid, torch.from_numpy(value).to(self._device)).cpu().numpy()
        lo, hi = self._cell_ranks(code)
        tied = code % 2 == 1  # a cell of one value (a grid edge): every bin it overlaps may take it
        used = np.zeros(pool.shape, dtype=bool)
        picks = []
        for j in range(cfg.n_bins):  # the top twelfth is the top records' job
            overlap = np.clip(np.minimum(hi, (j + 1) * N / m) - np.maximum(lo, j * N / m), 0, None)
            inside = tied | ((lo >= j * N / m) & (hi <= (j + 1) * N / m))
            tier = np.where(used, 3, np.where(overlap > 0, np.where(inside, 0, 1), 2))
            weight = np.where(overlap > 0, overlap / np.maximum(hi - lo, 1), 1.0)
            key = -np.log(uniform(self.seed, QUANTILE_STREAM + j, rows, slots)) / weight
            # per_bin members in key order: random, so "first 2 explain, next 2 score" is a random split
            order = np.lexsort((key, tier), axis=-1)[:, :cfg.per_bin]
            used[rows, order] = True
            picks.append(np.take_along_axis(pool, order, axis=1))
        return np.stack(picks, axis=1)

    def _quantile_boundaries(self) -> np.ndarray:
        """(H, n_bins + 1) bin edges: the grid edges nearest in exact rank to j / (n_bins + 1)."""
        edges, below = self._grid.cpu().numpy(), self._below.cpu().numpy()  # tokens below each edge
        targets = np.arange(self.config.n_bins + 1) * self._n / (self.config.n_bins + 1)
        nearest = np.abs(below[:, :, None] - targets).argmin(axis=1)
        return np.take_along_axis(edges, nearest, axis=1).astype(np.float32)

def _cells(grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Grid cell of each activation, per neuron: grid (H, G + 1) sorted edges, x (H, n) -> (H, n) codes.

    Code 2i: strictly between edges i - 1 and i (2 * (G + 1): above the last); code 2i + 1: equal to
    edge i, the first of any tied edges, so a tied value such as the zeros of a ReLU code is a cell
    of its own. Codes grow with the value."""
    left = torch.searchsorted(grid, x)  # the first edge >= x
    return 2 * left + (grid.gather(1, left.clamp(max=grid.shape[1] - 1)) == x)


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
