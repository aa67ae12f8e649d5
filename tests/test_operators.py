"""Every operator and every method against the float64 nested-autograd reference."""

from __future__ import annotations

import pytest
import torch

import diffops as do
from diffops.engines import METHODS

from . import reference as ref
from .nets import Residual, TwoInputs, mlp, networks

RTOL, ATOL = 1e-10, 1e-12
D = 3


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


def check_against_reference(op: do.DifferentialOperator, u: torch.nn.Module, x: torch.Tensor, expected_fn) -> None:
    """Values and parameter gradients of ``op(x)`` equal the reference's."""
    actual = op(x)
    expected = expected_fn(u, x)
    assert_close(actual, expected)
    for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
        assert_close(a, e)


def _biharmonic(u, x):
    return sum(ref.partial(u, x, (i, i, j, j)) for i in range(D) for j in range(D))


def _pure(index):
    return lambda u, x: ref.partial(u, x, index)


SCALAR_OPERATORS = {
    "jacobian": (do.Jacobian, {}, ref.jacobian),
    "gradient": (do.Gradient, {}, lambda u, x: ref.jacobian(u, x).reshape(x.shape[0], -1)),
    "hessian": (do.Hessian, {}, ref.hessian),
    "laplacian": (do.Laplacian, {}, ref.laplacian),
    "biharmonic": (do.Biharmonic, {}, _biharmonic),
    "value": (do.Derivative, {"wrt": 1, "order": 0}, _pure(())),
    "d1": (do.Derivative, {"wrt": 2}, _pure((2,))),
    "d3": (do.Derivative, {"wrt": 0, "order": 3}, _pure((0, 0, 0))),
    "d4": (do.Derivative, {"wrt": 1, "order": 4}, _pure((1, 1, 1, 1))),
    "mixed2": (do.Derivative, {"wrt": (0, 1)}, _pure((0, 1))),
    "mixed3": (do.Derivative, {"wrt": (1, 0, 0)}, _pure((0, 0, 1))),
    "mixed4": (do.Derivative, {"wrt": (2, 0, 1, 1)}, _pure((0, 1, 1, 2))),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("net", sorted(networks(D)))
@pytest.mark.parametrize("operator", sorted(SCALAR_OPERATORS))
def test_scalar_network(method, net, operator):
    u = networks(D)[net]
    cls, kwargs, expected = SCALAR_OPERATORS[operator]
    x = torch.randn(6, D, dtype=torch.float64)
    check_against_reference(cls(u, method=method, **kwargs), u, x, expected)


def _divergence(u, x):
    return ref.jacobian(u, x).diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)


def _curl(u, x):
    j = ref.jacobian(u, x)
    return torch.stack([j[:, 2, 1] - j[:, 1, 2], j[:, 0, 2] - j[:, 2, 0], j[:, 1, 0] - j[:, 0, 1]], dim=-1)


FIELD_OPERATORS = {
    "jacobian": (do.Jacobian, ref.jacobian),
    "hessian": (do.Hessian, ref.hessian),
    "laplacian": (do.Laplacian, ref.laplacian),
    "mixed3": (lambda u, **kw: do.Derivative(u, wrt=(0, 2, 2), **kw), _pure((0, 2, 2))),
    "divergence": (do.Divergence, _divergence),
    "curl": (do.Curl, _curl),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("net", ["mlp-tanh", "residual"])
@pytest.mark.parametrize("operator", sorted(FIELD_OPERATORS))
def test_vector_field(method, net, operator):
    u = networks(3, d_out=3)[net]
    make, expected = FIELD_OPERATORS[operator]
    x = torch.randn(5, 3, dtype=torch.float64)
    check_against_reference(make(u, method=method), u, x, expected)


@pytest.mark.parametrize("method", METHODS)
def test_derivatives_share_one_computation_and_match(method):
    u = Residual(2)
    x = torch.randn(7, 2, dtype=torch.float64)
    spec = {"u": (), "u_x": (0,), "u_xx": (0, 0), "u_t": (1,), "u_xxt": (0, 0, 1), "u_xxxx": (0, 0, 0, 0)}
    out = do.Derivatives(u, spec, method=method)(x)
    assert list(out) == list(spec)
    for name, index in spec.items():
        assert_close(out[name], ref.partial(u, x, index))


@pytest.mark.parametrize("method", METHODS)
def test_derivatives_keyword_form_with_coordinate_names(method):
    u = TwoInputs(1, 1)
    x, t = torch.randn(5, 1, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    op = do.Derivatives(u, u=(), u_x="x", u_xt=("x", "t"), argnums=(0, 1), coords=("x", "t"), method=method)
    out = op(x, t)
    joint = lambda xt: u(xt[:, :1], xt[:, 1:])
    xt = torch.cat([x, t], dim=-1)
    assert_close(out["u"], joint(xt))
    assert_close(out["u_x"], ref.partial(joint, xt, (0,)))
    assert_close(out["u_xt"], ref.partial(joint, xt, (0, 1)))


@pytest.mark.parametrize("method", METHODS)
def test_argnums_selects_one_input(method):
    u = TwoInputs(2, 1)
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    lap_t = do.Derivative(u, wrt=0, order=2, argnums=1, method=method)(x, t)
    assert_close(lap_t, ref.partial(lambda tt: u(x, tt), t, (0, 0)))
    lap_x = do.Laplacian(u, argnums=0, method=method)(x, t)
    assert_close(lap_x, ref.laplacian(lambda xx: u(xx, t), x))


@pytest.mark.parametrize("method", METHODS)
def test_gradient_with_respect_to_inputs(method):
    """Operator outputs are differentiable w.r.t. the inputs too (e.g. for a penalty on them)."""
    u = mlp(2)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    (actual,) = torch.autograd.grad(do.Laplacian(u, method=method)(x).sum(), x)
    y = x.detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(ref.laplacian(u, y).sum(), y)
    assert_close(actual, expected)
