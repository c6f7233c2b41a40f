"""Records collected from a real (tiny, random-weight) model equal a brute-force dense computation."""

import numpy as np
import pytest
import torch

from cratelab.config import ModelConfig
from cratelab.interp import RecordConfig
from cratelab.interp.collect import collect_records, window_offsets
from cratelab.models import build_model, neuron_hook_name

from .test_records import dense_top, document

VOCAB, EOT, T = 40, 39, 24
CFG = RecordConfig(window=8, short_window=4, snippet=3, n_top=10, n_random=6, n_bins=2, per_bin=2)


def stream(n: int = 1500, seed: int = 0) -> np.ndarray:
    """A 'validation split': token ids with an end-of-text token about every 30 tokens."""
    ids = np.random.default_rng(seed).integers(0, VOCAB - 1, n)
    ids[np.random.default_rng(seed + 1).random(n) < 1 / 30] = EOT
    return ids.astype(np.uint16)


@pytest.fixture(scope="module", params=["crate", "gpt"])
def model(request):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=request.param, n_layer=2, n_head=2, n_embd=8, block_size=T,
                                   vocab_size=VOCAB)).eval()


def dense(model, tokens, offsets, layer):
    """Brute force: the whole (windows, T, H) activation tensor of a layer from one plain forward pass."""
    ids = torch.from_numpy(tokens[offsets[:, None] + np.arange(T)].astype(np.int64))
    _, cache = model.run_with_cache(ids, names_filter=[neuron_hook_name(model.config, layer)])
    return ids.numpy(), cache[neuron_hook_name(model.config, layer)].numpy()


def test_window_offsets_spread_over_the_split_without_overlap():
    offsets = window_offsets(1000, 24, 240)
    assert len(offsets) == 10 and offsets[0] == 0 and offsets[-1] == 1000 - 24
    assert np.all(np.diff(offsets) >= 24)
    assert len(window_offsets(1000, 24, 10**9)) == 1000 // 24  # capped at what the split holds
    np.testing.assert_array_equal(window_offsets(96, 24, 96), [0, 24, 48, 72])


def test_top_records_equal_brute_force(model):
    tokens = stream()
    offsets = window_offsets(len(tokens), T, 1200)
    vocab = [f"t{i}" for i in range(VOCAB)]
    records = collect_records(model, tokens, vocab, layers=[0, 1], n_tokens=1200, eot_id=EOT, seed=0,
                              config=CFG, batch_size=7)
    for layer in (0, 1):
        ids, acts = dense(model, tokens, offsets, layer)
        rec, flat = records[layer], acts.reshape(-1, acts.shape[2])
        np.testing.assert_array_equal(rec.token_ids, ids.ravel())
        for h in (0, 5, 17, 31):  # a few neurons, brute force per neuron
            expected = dense_top(acts[..., h:h + 1], CFG.window, CFG.n_top)[0]
            n = int((rec.top.length[h] > 0).sum())
            got = [(-float(flat[p, h]), int(p)) for p in rec.top.centre[h, :n]]
            assert [p for _, p in got] == [p for _, p in expected]
            np.testing.assert_allclose([v for v, _ in got], [v for v, _ in expected], rtol=1e-5, atol=1e-6)
            for i in range(n):  # each window holds the dense activations of its document's tokens
                c, s, length = (int(rec.top.centre[h, i]), int(rec.top.start[h, i]), int(rec.top.length[h, i]))
                lo, hi = document(ids, c, eot=EOT)
                assert (s, s + length) == (max(c - CFG.window // 2, lo), min(c - CFG.window // 2 + CFG.window, hi))
                np.testing.assert_allclose(rec.top.acts[h, i, :length], flat[s:s + length, h], rtol=1e-5, atol=1e-6)
            assert rec.max_activation[h] == pytest.approx(float(flat[:, h].max()), rel=1e-5)
        np.testing.assert_allclose(rec.firing_rate, (flat > 0).mean(0))


def test_same_records_whatever_the_batch_size_and_layer_selection(model):
    tokens = stream()
    vocab = [f"t{i}" for i in range(VOCAB)]
    run = lambda layers, bs: collect_records(model, tokens, vocab, layers=layers, n_tokens=1200,  # noqa: E731
                                             eot_id=EOT, seed=3, config=CFG, batch_size=bs)
    a, b, c = run([0, 1], 1), run([0, 1], 50), run([1], 4)
    for kind in ("top", "random", "quantile"):
        for field in ("centre", "start", "length"):
            np.testing.assert_array_equal(getattr(getattr(a[1], kind), field), getattr(getattr(b[1], kind), field))
            np.testing.assert_array_equal(getattr(getattr(a[1], kind), field), getattr(getattr(c[1], kind), field))
        np.testing.assert_allclose(getattr(a[1], kind).acts, getattr(c[1], kind).acts, rtol=1e-5, atol=1e-6)


def test_the_pass_stops_after_the_last_interpreted_layer(model):
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *_: calls.append(1))
    try:
        collect_records(model, stream(), [f"t{i}" for i in range(VOCAB)], layers=[0], n_tokens=600, eot_id=EOT,
                        config=CFG)
    finally:
        handle.remove()
    assert calls == []  # neither the later layer nor the LM head ran
