import numpy as np
import pytest
import torch

from cratelab.data.batches import TrainBatches, eval_windows
from cratelab.errors import CratelabError

TOKENS = np.arange(1000, dtype=np.uint16)  # token i at position i: a window's values are its offsets


def test_training_windows_are_consecutive_tokens_with_shifted_targets():
    batches = TrainBatches(TOKENS, block_size=8, batch_size=4, grad_accum=3, seed=0)
    x, y = batches.next()
    assert x.shape == y.shape == (3, 4, 8) and x.dtype == torch.int64
    assert torch.equal(y[..., :-1], x[..., 1:])
    assert torch.equal(x - x[..., :1], torch.arange(8).expand_as(x))
    assert int(y.max()) <= 999


def test_processes_take_slices_of_one_global_batch():
    """Two processes with grad_accum=1 see exactly the windows of one process with grad_accum=2."""
    single = TrainBatches(TOKENS, 8, batch_size=4, grad_accum=2, seed=3)
    ranks = [TrainBatches(TOKENS, 8, batch_size=4, grad_accum=1, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):
        x, _ = single.next()
        shares = [b.next()[0] for b in ranks]
        assert torch.equal(torch.cat(shares), x)


def test_generator_state_resumes_the_stream():
    a = TrainBatches(TOKENS, 8, 4, 1, seed=1)
    a.next()
    state = {k: v.clone() for k, v in a.state_dict().items()}
    expected = a.next()[0]
    b = TrainBatches(TOKENS, 8, 4, 1, seed=99)
    b.load_state_dict(state)
    assert torch.equal(b.next()[0], expected)
    other_seed = TrainBatches(TOKENS, 8, 4, 1, seed=2)
    assert not torch.equal(other_seed.next()[0], TrainBatches(TOKENS, 8, 4, 1, seed=1).next()[0])


def test_eval_windows_are_fixed_non_overlapping_and_spread_over_the_split():
    w = eval_windows(TOKENS, block_size=9, n_tokens=45)
    assert w.shape == (5, 10)
    assert torch.equal(w, eval_windows(TOKENS, 9, 45))
    starts = w[:, 0]
    assert starts[0] == 0 and w[-1, -1] == 999  # first and last windows touch the split's ends
    assert bool((starts.diff() >= 10).all())
    assert torch.equal(w - starts[:, None], torch.arange(10).expand_as(w))


def test_eval_windows_are_capped_at_what_fits():
    w = eval_windows(TOKENS, block_size=9, n_tokens=10**6)
    assert w.shape == (100, 10)
    assert len(torch.unique(w)) == 1000  # the whole split, each token once
    assert eval_windows(TOKENS, block_size=999, n_tokens=1).shape == (1, 1000)


@pytest.mark.parametrize("make", [lambda: TrainBatches(TOKENS[:8], 8, 1, 1, seed=0),
                                  lambda: eval_windows(TOKENS[:8], 8, 100)])
def test_a_split_shorter_than_a_window_is_a_clear_error(make):
    with pytest.raises(CratelabError, match="corpus too small.*model.block_size = 8"):
        make()
