"""The same checks on a CUDA device (skipped without one)."""

from __future__ import annotations

import pytest
import torch

import diffops as do
from diffops.engines import METHODS

from . import reference as ref
from .nets import mlp

pytestmark = pytest.mark.cuda

OPERATORS = {
    "laplacian": (lambda u, m: do.Laplacian(u, method=m), ref.laplacian),
    "hessian": (lambda u, m: do.Hessian(u, method=m), ref.hessian),
    "jacobian": (lambda u, m: do.Jacobian(u, method=m), ref.jacobian),
    "d4": (lambda u, m: do.Derivative(u, wrt=1, order=4, method=m), lambda u, x: ref.partial(u, x, (1,) * 4)),
    "mixed3": (lambda u, m: do.Derivative(u, wrt=(0, 1, 1), method=m), lambda u, x: ref.partial(u, x, (0, 1, 1))),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_cuda_matches_cpu_reference(method, operator):
    make, expected_fn = OPERATORS[operator]
    u = mlp(3, 2)
    x = torch.randn(16, 3, dtype=torch.float64)
    expected = expected_fn(u, x)
    expected_grads = ref.parameter_gradients(u, expected)
    op = make(u, method).to("cuda")
    actual = op(x.cuda())
    assert actual.device.type == "cuda"
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-10, atol=1e-12)
    for a, e in zip(ref.parameter_gradients(u, actual), expected_grads):
        torch.testing.assert_close(a.cpu(), e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_cuda_float32_training_step(method):
    u = mlp(2).float().cuda()
    op = do.Laplacian(u, method=method, chunk_size=100)
    x = torch.rand(256, 2, device="cuda")
    op(x).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in list(u.parameters())[:-1])
