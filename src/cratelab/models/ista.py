"""The unrolled ISTA encoder as one autograd function, for speed and memory.

    A_1 = ReLU(eta W x - eta lambda)
    A_{t+1} = ReLU(A_t + eta W x - eta lambda - eta W (W^T A_t))

Written with plain autograd this makes several temporaries of the code's size per step and saves
most of them for the backward pass. Here `eta W x - eta lambda` is computed once, the scale and the
residual ride along in the matrix products (addmm's alpha and beta), the ReLUs work in place, and the
backward pass is written out by hand, saving only x, the codes A_t and the projections W^T A_t.
Checked against autograd on the equations by `gradcheck` (tests/models/test_ista.py).
"""

from __future__ import annotations

import torch


def _relu_grad(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.threshold_backward(grad, output, 0)  # grad where output > 0, in one pass


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Under autocast the products run in its low precision; autocast itself is off inside the function."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _ISTAEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eta: float, threshold: float, steps: int):
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            x2, W = x.reshape(-1, x.shape[-1]).to(dtype), weight.to(dtype)
            shifted = torch.mm(x2, W.t()).mul_(eta).sub_(threshold)  # eta W x - eta lambda
            code = torch.relu(shifted)
            codes, projections = [code], []
            for _ in range(steps - 1):
                projection = torch.mm(code, W)  # W^T A, shape (N, d)
                code = torch.addmm(code + shifted, projection, W.t(), alpha=-eta).relu_()
                codes.append(code)
                projections.append(projection)
        ctx.save_for_backward(x2, W, *codes, *projections)
        ctx.eta, ctx.steps, ctx.x_shape, ctx.x_dtype, ctx.w_dtype = eta, steps, x.shape, x.dtype, weight.dtype
        return code.view(*x.shape[:-1], W.shape[0])

    @staticmethod
    def backward(ctx, grad_code: torch.Tensor):
        x2, W, *saved = ctx.saved_tensors
        eta, steps = ctx.eta, ctx.steps
        codes, projections = saved[:steps], saved[steps:]
        with torch.autocast(x2.device.type, enabled=False):
            g = _relu_grad(grad_code.reshape(-1, W.shape[0]).to(W.dtype), codes[-1])  # d loss / d pre-activation
            g_shifted = g if steps == 1 else g.clone()  # `shifted` enters every step
            grad_w = torch.zeros_like(W)
            for t in reversed(range(steps - 1)):  # from the pre-activation of A_{t+2} back to that of A_{t+1}
                g_projection = torch.mm(g, W)  # W^T g
                grad_w.addmm_(g.t(), projections[t], alpha=-eta).addmm_(codes[t].t(), g_projection, alpha=-eta)
                g = _relu_grad(torch.addmm(g, g_projection, W.t(), alpha=-eta), codes[t])
                g_shifted += g
            grad_x = torch.mm(g_shifted, W).mul_(eta)
            grad_w.addmm_(g_shifted.t(), x2, alpha=eta)
        return grad_x.view(ctx.x_shape).to(ctx.x_dtype), grad_w.to(ctx.w_dtype), None, None, None


def ista_encode(x: torch.Tensor, weight: torch.Tensor, step_size: float, lambd: float, steps: int) -> torch.Tensor:
    """The sparse code A_T of x (..., d) under the dictionary W = weight (h, d): shape (..., h)."""
    return _ISTAEncode.apply(x, weight, step_size, step_size * lambd, steps)
