"""The nested-autograd engine where PyTorch's own reverse-mode rules fall short."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diffops as do
from diffops.engines import EngineUnsupported, Request
from diffops.engines.audit import request_order

from .. import reference as ref


def transformer() -> nn.Module:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(2, 12)
            self.layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)
            self.head = nn.Linear(12, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.embed(x).reshape(x.shape[0], 3, 4)
            return self.head(self.layer(tokens).flatten(1))

    return Net().double().eval()


def test_attention_runs_on_the_math_kernel():
    """The fused CPU attention kernel has no double backward; the engine's Laplacian still comes out."""
    u, x = transformer(), torch.randn(5, 2, dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="not implemented"):  # torch's default kernel
        (gradient,) = torch.autograd.grad(u(leaf).sum(), leaf, create_graph=True)
        torch.autograd.grad(gradient[:, 0].sum(), leaf)
    expected = ref.laplacian(u, x)  # the reference runs attention on the math kernel
    torch.testing.assert_close(do.Laplacian(u, method="autograd")(x), expected, rtol=1e-10, atol=1e-12)


def test_layer_norm_parameter_gradients_of_a_laplacian():
    """They are third derivatives, where the fused layer_norm's rule is wrong: finite differences decide."""
    u = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 1)).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    loss = do.Laplacian(u, method="autograd")(x).sum()
    bias = u[0].bias
    (gradient,) = torch.autograd.grad(loss, bias)
    h, finite = 1e-5, torch.empty_like(bias)
    with torch.no_grad():
        for i in range(bias.numel()):
            values = []
            for sign in (1, -1):
                bias[i] += sign * h
                with torch.enable_grad():
                    values.append(ref.laplacian(u, x).sum())
                bias[i] -= sign * h
            finite[i] = (values[0] - values[1]) / (2 * h)
    torch.testing.assert_close(gradient, finite, rtol=1e-6, atol=1e-7)


def test_hardsigmoid_laplacian_trains():
    """aten::hardsigmoid_backward has no derivative; the engine's composition does."""
    u = nn.Sequential(nn.Linear(2, 8), nn.Hardsigmoid(), nn.Linear(8, 1)).double()
    value = do.Derivative(u, wrt=0, method="autograd")(torch.randn(6, 2, dtype=torch.float64))
    value.square().sum().backward()
    assert u[0].weight.grad is not None and u[2].weight.grad is not None


@pytest.mark.parametrize(
    ("request_", "order"),
    [
        (Request(), 0),
        (Request(frozenset({(0,)})), 1),
        (Request(full=frozenset({"jacobian"})), 1),
        (Request(full=frozenset({"laplacian"})), 2),
        (Request(frozenset({(0, 0, 1)}), frozenset({"hessian"})), 3),
    ],
)
def test_request_order(request_, order):
    assert request_order(request_) == order


class _Cube(torch.autograd.Function):
    """x^3 with a backward that PyTorch cannot differentiate again."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad


class _TwiceDifferentiableCube(_Cube):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad


def test_a_once_differentiable_backward_is_refused_not_read_as_zeros():
    u = lambda x: _Cube.apply(x).sum(-1, keepdim=True)  # noqa: E731
    x = torch.randn(5, 2, dtype=torch.float64)
    expected = (6 * x).sum(-1, keepdim=True)
    with pytest.raises(EngineUnsupported, match="_Cube.*once_differentiable"):
        do.Laplacian(u, method="autograd")(x)
    with pytest.raises(EngineUnsupported, match="_Cube.*once_differentiable"):
        do.Derivative(u, wrt=0, method="autograd")(x)  # its parameters' gradients would need the second
    # Taylor mode would differentiate the Function's forward, not its backward, and torch.func needs a
    # setup_context: no engine can, and auto says so
    with pytest.raises(RuntimeError, match="found no method"):  # torch.func's own error makes it no refusal
        do.Laplacian(u, method="auto")(x)
    # a backward that can be differentiated again is exact under nested autograd
    twice = lambda x: _TwiceDifferentiableCube.apply(x).sum(-1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(do.Laplacian(twice, method="autograd")(x), expected, rtol=1e-12, atol=1e-12)


class _CumulativeLogSumExp(nn.Module):
    """``logcumsumexp`` over 5 hidden features; :meth:`composed` is the same as log-sum-exps of prefixes."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Linear(2, 5).double(), nn.Linear(5, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.logcumsumexp(self.stem(x), -1))

    def composed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)  # logsumexp's rules are right at every order
        return self.head(torch.stack([h[:, : k + 1].logsumexp(-1) for k in range(h.shape[1])], dim=-1))


def assert_value_and_gradients(u: nn.Module, actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11)
    for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


def test_logcumsumexp_runs_composed_from_the_order_its_double_backward_gives_nan():
    u, x = _CumulativeLogSumExp(), torch.randn(4, 2, dtype=torch.float64)
    first = do.Derivative(u, wrt=0, method="autograd")(x)  # torch's own rules, exact below order 2
    assert_value_and_gradients(u, first, ref.partial(u.composed, x, (0,)))
    leaf = x.clone().requires_grad_(True)  # upstream (the reference runs it composed): the parameter
    (first_plain,) = torch.autograd.grad(u(leaf).sum(), leaf, create_graph=True)  # gradients of the second
    (second_plain,) = torch.autograd.grad(first_plain[:, 0].sum(), leaf, create_graph=True)  # derivative: NaN
    assert any(g.isnan().any() for g in ref.parameter_gradients(u, second_plain[:, 0]))
    for order in (2, 3):  # before: refused, naming aten::logcumsumexp
        actual = do.Derivative(u, wrt=0, order=order, method="autograd")(x)
        assert_value_and_gradients(u, actual, ref.partial(u.composed, x, (0,) * order))
    expected = ref.partial(u.composed, x, (0, 0)) + ref.partial(u.composed, x, (1, 1))
    assert_value_and_gradients(u, do.Laplacian(u, method="autograd")(x), expected)
