"""``parameter_jacobian`` against a loop of ``torch.autograd.grad`` over every output element."""

import warnings

import pytest
import torch
from torch import nn

import diffops as do


def mlp(d_in: int = 2, d_out: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, d_out)).double()


def loop_reference(op: do.DifferentialOperator, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: (*batch, *op_out, *param.shape)}`` by one ``autograd.grad`` per output element."""
    params = {name: p for name, p in op.named_parameters() if p.requires_grad}
    out = op(*inputs)
    rows = []
    for element in out.reshape(-1):
        grads = torch.autograd.grad(
            element, list(params.values()), retain_graph=True, allow_unused=True, materialize_grads=True
        )
        rows.append(grads)
    return {
        name: torch.stack([row[k] for row in rows]).reshape(*out.shape, *p.shape)
        for k, (name, p) in enumerate(params.items())
    }


def assert_matches_loop(op: do.DifferentialOperator, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    got = do.parameter_jacobian(op, *inputs)
    expected = loop_reference(op, *inputs)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    return got


def test_laplacian_of_a_vector_field_with_two_batch_dimensions():
    u = mlp(d_out=2)
    x = torch.randn(2, 3, 2, dtype=torch.float64)
    got = assert_matches_loop(do.Laplacian(u), x)
    assert got["u.0.weight"].shape == (2, 3, 2, 8, 2)


def test_jacobian_operator():
    got = assert_matches_loop(do.Jacobian(mlp(d_out=2)), torch.randn(4, 2, dtype=torch.float64))
    assert got["u.2.bias"].shape == (4, 2, 2, 8)


def test_expression_with_a_learnable_coefficient_and_source():
    u = mlp()
    nu = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
    residual = do.Derivative(u, wrt=1) - nu * do.Laplacian(u) + (lambda x: x[..., :1].sin())
    weight = u[0].weight
    got = assert_matches_loop(residual, torch.randn(5, 2, dtype=torch.float64))
    assert any(value.shape == (5, 1) for value in got.values()), "the coefficient's derivative is -Δu"
    assert u[0].weight is weight, "the network shared by both terms must get its own parameters back"


def test_weight_tied_between_two_layers():
    u = mlp()
    u.insert(2, nn.Linear(8, 8).double())
    u[2].weight = u[3].weight  # the same parameter in two modules
    got = assert_matches_loop(do.Laplacian(u), torch.randn(4, 2, dtype=torch.float64))
    assert "u.3.weight" not in got, "a tied parameter is one key"


def test_custom_operator_of_two_inputs():
    class Burgers(do.DifferentialOperator):
        def forward(self, x, t):
            d = self.derivatives(x, t, u=(), u_x="x", u_xx=("x", "x"), u_t="t")
            return d["u_t"] + d["u"] * d["u_x"] - 0.01 * d["u_xx"]

    net = mlp()
    u = lambda x, t: net(torch.cat([x, t], dim=-1))  # noqa: E731
    op = Burgers(u, argnums=(0, 1), coords=("x", "t"))
    op.net = net  # registers u's parameters with the operator
    x, t = torch.rand(6, 1, dtype=torch.float64), torch.rand(6, 1, dtype=torch.float64)
    assert_matches_loop(op, x, t)


def test_frozen_parameters_are_left_out():
    u = mlp()
    u[0].requires_grad_(False)
    got = do.parameter_jacobian(do.Laplacian(u), torch.randn(3, 2, dtype=torch.float64))
    assert set(got) == {"u.2.weight", "u.2.bias", "u.4.weight", "u.4.bias"}


def test_chunked_and_no_grad_give_the_same_result():
    op = do.Laplacian(mlp())
    x = torch.randn(7, 2, dtype=torch.float64)
    whole = do.parameter_jacobian(op, x)
    with torch.no_grad():
        chunked = do.parameter_jacobian(op, x, chunk_size=3)
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name])
        assert not whole[name].requires_grad


def test_exact_estimate_of_the_laplacian():
    u = mlp()
    x = torch.randn(4, 2, dtype=torch.float64)
    estimate = do.parameter_jacobian(do.Laplacian(u, estimator="coordinates", samples=2), x)
    exact = do.parameter_jacobian(do.Laplacian(u), x)
    for name in exact:
        torch.testing.assert_close(estimate[name], exact[name])


def test_bad_arguments_raise():
    u = mlp()
    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="parameter_jacobian: op must be a diffops DifferentialOperator, got Seq"):
        do.parameter_jacobian(u, x)
    with pytest.raises(TypeError, match="returns dict"):
        do.parameter_jacobian(do.Derivatives(u, u=(), u_x=(0,)), x)
    with pytest.raises(ValueError, match="no trainable parameters"):
        do.parameter_jacobian(do.Laplacian(lambda y: y.sin().sum(-1, keepdim=True)), x)
    with pytest.raises(ValueError, match="parameter_jacobian: Δu uses method='autograd'"):
        do.parameter_jacobian(do.Laplacian(u, method="autograd") + 1.0, x)
    with pytest.raises(ValueError, match="batch shape"):
        do.parameter_jacobian(do.Laplacian(u), x, torch.ones(4, 1, dtype=torch.float64))


def test_the_taylor_engine_runs_inside_the_transforms():
    """No fallback: the fast engine's rules all work under vmap and jacrev."""
    u = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    ops = [do.Laplacian(u), do.Derivative(u, wrt=0, order=3), do.Laplacian(u, method="taylor")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = [do.parameter_jacobian(op, x) for op in ops]
    for a, b in zip(results[0].values(), results[2].values()):
        torch.testing.assert_close(a, b)


class BatchCentred(nn.Module):
    """Hidden features centred on the batch mean: each sample's output reads the others' inputs."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net[0](x)
        return self.net[1:](h - h.mean(0, keepdim=True))


def test_a_network_that_couples_the_samples_is_refused():
    """One sample alone would be centred on itself: the per-sample Jacobians are not the batch's."""
    op = do.Laplacian(BatchCentred()) + do.Derivative(mlp(), wrt=0)
    with pytest.raises(ValueError, match=r"parameter_jacobian: the network of .* couples the samples of its batch"):
        do.parameter_jacobian(op, torch.rand(6, 2, dtype=torch.float64))
