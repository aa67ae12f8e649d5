"""The result shapes of the contract, for every output shape and batch rank."""

from __future__ import annotations

import pytest
import torch

import diffops as do

from .nets import Squeezed, TwoInputs, mlp

D = 3
BATCHES = [(5,), (2, 3), (2, 1, 3)]


def scalar_nets() -> dict[str, torch.nn.Module]:
    return {"(B, 1)": mlp(D), "(B,)": Squeezed(D)}


@pytest.mark.parametrize("batch", BATCHES, ids=str)
@pytest.mark.parametrize("net", ["(B, 1)", "(B,)"])
def test_scalar_output_shapes(batch, net):
    u = scalar_nets()[net]
    x = torch.randn(*batch, D, dtype=torch.float64)
    out = u(x).shape[len(batch) :]
    assert do.Jacobian(u)(x).shape == (*batch, *out, D)
    assert do.Gradient(u)(x).shape == (*batch, D)
    assert do.Hessian(u)(x).shape == (*batch, *out, D, D)
    assert do.Laplacian(u)(x).shape == (*batch, *out)
    assert do.Derivative(u, wrt=2, order=3)(x).shape == (*batch, *out)
    assert do.Derivative(u, wrt=(0, 1))(x).shape == (*batch, *out)
    assert do.Derivative(u, wrt=0, order=0)(x).shape == (*batch, *out)


@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_vector_output_shapes(batch):
    m = 4
    u = mlp(D, m)
    x = torch.randn(*batch, D, dtype=torch.float64)
    assert do.Jacobian(u)(x).shape == (*batch, m, D)
    assert do.Hessian(u)(x).shape == (*batch, m, D, D)
    assert do.Laplacian(u)(x).shape == (*batch, m)
    assert do.Derivative(u, wrt=1, order=2)(x).shape == (*batch, m)
    derivatives = do.Derivatives(u, u=(), u_x=(0,))(x)
    assert {k: v.shape for k, v in derivatives.items()} == {"u": (*batch, m), "u_x": (*batch, m)}


@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_field_shapes(batch):
    x = torch.randn(*batch, D, dtype=torch.float64)
    field = mlp(D, D)
    assert do.Divergence(field)(x).shape == (*batch, 1)
    assert do.Curl(field)(x).shape == (*batch, 3)


@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_several_inputs_with_argnums(batch):
    u = TwoInputs(2, 1, d_out=2)
    x, t = torch.randn(*batch, 2, dtype=torch.float64), torch.randn(*batch, 1, dtype=torch.float64)
    assert do.Jacobian(u, argnums=(0, 1))(x, t).shape == (*batch, 2, 3)
    assert do.Jacobian(u, argnums=1)(x, t).shape == (*batch, 2, 1)
    assert do.Hessian(u, argnums=0)(x, t).shape == (*batch, 2, 2, 2)
    assert do.Laplacian(u, argnums=(1, 0))(x, t).shape == (*batch, 2)
    u_t = do.Derivative(u, wrt="t", argnums=(0, 1), coords=("x", "y", "t"))(x, t)
    assert u_t.shape == (*batch, 2)


def test_batch_dimensions_are_independent_samples():
    """A (2, 3, d) batch gives the same numbers as the same points flattened to (6, d)."""
    u = mlp(D)
    x = torch.randn(2, 3, D, dtype=torch.float64)
    torch.testing.assert_close(do.Hessian(u)(x).reshape(6, 1, D, D), do.Hessian(u)(x.reshape(6, D)))


@pytest.mark.parametrize("method", ["func", "autograd"])
def test_chunk_size_gives_the_same_result(method):
    u = mlp(D, 2)
    x = torch.randn(4, 5, D, dtype=torch.float64)
    whole = do.Laplacian(u, method=method)(x)
    chunked = do.Laplacian(u, method=method, chunk_size=3)(x)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    parts = do.Derivatives(u, u=(), u_xy=(0, 1), chunk_size=7, method=method)(x)
    torch.testing.assert_close(parts["u_xy"], do.Derivative(u, wrt=(0, 1), method=method)(x))
