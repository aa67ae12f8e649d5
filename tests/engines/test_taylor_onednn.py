"""The compiled layers' large float32 products through oneDNN (``taylor/onednn.py``)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn

import diffops as do
from diffops.engines.taylor import onednn

from .. import reference as ref

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


@contextlib.contextmanager
def matmul_precision(precision: str):
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


LARGE_SIDE = 1 << 13  # 64 x 64 x 2^13 = 2^25 multiply-adds: the smallest product that takes oneDNN


@needs_onednn
def test_large_float32_cpu_products_at_full_precision_take_onednn():
    like = torch.empty(0)
    assert onednn.pays(64, 64, LARGE_SIDE, like)
    assert not onednn.pays(64, 64, LARGE_SIDE - 1, like)  # too few multiply-adds
    assert not onednn.pays(20, 20, 1 << 20, like)  # too narrow: slower there
    assert not onednn.pays(64, 64, LARGE_SIDE, like.double())  # oneDNN has no float64 product
    with matmul_precision("medium"):  # the user's reduced precision is torch.mm's to apply
        assert not onednn.pays(64, 64, LARGE_SIDE, like)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_products_stay_with_torch():
    assert not onednn.pays(64, 64, LARGE_SIDE, torch.empty(0, device="cuda"))


@needs_onednn
@pytest.mark.parametrize("transposed", [False, True])
def test_the_products_equal_torch_mm(transposed):
    """``weight @ cols`` and ``grad @ cols.T``, on contiguous operands and on the transposed weight of a backward."""
    torch.manual_seed(0)
    weight = torch.randn(48, 40).T if transposed else torch.randn(40, 48)
    cols, grad = torch.randn(48, 300), torch.randn(40, 300)
    product, weight_grad = onednn.columns_product(weight, cols), onednn.samples_product(grad, cols)
    assert product.shape == (40, 300) and weight_grad.shape == (40, 48)
    torch.testing.assert_close(product, weight @ cols, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight_grad, grad @ cols.T, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_the_custom_ops_are_registered_correctly():
    """Schema, fake tensors and dispatch as ``torch.compile`` needs them (``torch.library.opcheck``)."""
    torch.manual_seed(0)
    weight, cols, grad = torch.randn(40, 48), torch.randn(48, 70), torch.randn(40, 70)
    torch.library.opcheck(onednn.columns_product, (weight, cols))
    torch.library.opcheck(onednn.samples_product, (grad, cols))


class Burgers(do.DifferentialOperator):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.derivatives(x, u=(), u_x="x", r={"t": 1.0, ("x", "x"): -0.01})
        return d["r"] + d["u"] * d["u_x"]


def _burgers_by_reference(u: nn.Module, x: torch.Tensor) -> torch.Tensor:
    u_xx = ref.partial(u, x, (1, 1))
    return ref.partial(u, x, (0,)) - 0.01 * u_xx + ref.partial(u, x, ()) * ref.partial(u, x, (1,))


@needs_onednn
@pytest.mark.slow
def test_a_compiled_float32_step_through_onednn_matches_the_float64_reference_with_inductor():
    assert _compiled_step_calls("inductor", nn.Tanh) == {"columns_product": 4, "samples_product": 2}


class Sin(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sin(h)


@needs_onednn
@pytest.mark.parametrize("activation", [nn.Tanh, nn.Sigmoid, Sin])  # the activations of the traced layers
def test_a_compiled_float32_step_through_onednn_matches_the_float64_reference(activation):
    """Two hidden layers, each a forward product, an input gradient and a weight gradient through oneDNN."""
    assert _compiled_step_calls("aot_eager", activation) == {"columns_product": 4, "samples_product": 2}


def _compiled_step_calls(backend: str, activation: type[nn.Module]) -> dict[str, int]:
    """A 64-wide net's compiled Burgers loss and parameter gradients, float32 against the float64 reference.

    Returns how many times each oneDNN product ran in the step.
    """
    torch.manual_seed(0)
    u = nn.Sequential(nn.Linear(2, 64), activation(), nn.Linear(64, 64), activation(), nn.Linear(64, 64), activation())
    u.append(nn.Linear(64, 1))
    x = torch.rand(3000, 2)  # three coefficients of 3,000 samples: (64, 64) @ (64, 9,000) takes oneDNN
    torch._dynamo.reset()
    residual = Burgers(u, coords=("t", "x"), method="taylor")
    loss = torch.compile(lambda x: residual(x).square().mean(), backend=backend, fullgraph=True)
    torch.autograd.grad(loss(x), list(u.parameters()))  # compiled outside the profile
    with torch.profiler.profile() as profile:
        value = loss(x)
        grads = torch.autograd.grad(value, list(u.parameters()))
    u64 = u.double()
    expected = _burgers_by_reference(u64, x.double()).square().mean()
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=0)
    for actual, wanted in zip(grads, torch.autograd.grad(expected, list(u64.parameters()))):
        torch.testing.assert_close(actual.double(), wanted, rtol=1e-4, atol=1e-6 * wanted.abs().max().item())
    events = {event.key: event.count for event in profile.key_averages()}
    return {name: events.get(f"diffops::{name}", 0) for name in ("columns_product", "samples_product")}
