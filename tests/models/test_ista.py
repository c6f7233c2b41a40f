import pytest
import torch

from cratelab.models.ista import ista_encode


def plain_ista(x, W, eta, lam, steps):
    """The equations with plain autograd."""
    code = torch.relu(eta * (x @ W.t()) - eta * lam)
    for _ in range(steps - 1):
        code = torch.relu(code + eta * (x @ W.t() - (code @ W) @ W.t()) - eta * lam)
    return code


def inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 8, dtype=dtype, generator=g).requires_grad_()
    W = (torch.randn(32, 8, dtype=dtype, generator=g) * 0.5).requires_grad_()
    return x, W


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_gradcheck_against_finite_differences(steps):
    x, W = inputs(torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: ista_encode(a, b, 0.3, 0.2, steps), (x, W))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_matches_plain_autograd(steps):
    x, W = inputs(torch.float32, seed=steps)
    x2, W2 = x.detach().clone().requires_grad_(), W.detach().clone().requires_grad_()
    code = ista_encode(x, W, 0.3, 0.2, steps)
    ref = plain_ista(x2, W2, 0.3, 0.2, steps)
    torch.testing.assert_close(code, ref)
    assert 0.1 < (ref == 0).float().mean() < 0.9
    upstream = torch.randn_like(ref)
    (code * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(W.grad, W2.grad)


def test_runs_in_the_autocast_dtype_and_returns_gradients_in_the_parameter_dtype():
    x, W = inputs(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        code = ista_encode(x, W, 0.3, 0.2, 2)
    assert code.dtype == torch.bfloat16
    code.float().sum().backward()
    assert W.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    torch.testing.assert_close(code.float(), plain_ista(x, W, 0.3, 0.2, 2), atol=0.05, rtol=0.05)
