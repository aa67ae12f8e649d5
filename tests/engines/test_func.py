"""The ``func`` engine: its audit of upstream forward-mode rules, and compiled training steps."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import diffops as do
from diffops.engines import EngineUnsupported, decompositions
from diffops.engines.audit import FORWARD_MODE_FAILURES, FORWARD_MODE_HANDLERS, NORMALISATION_HANDLERS

from .. import reference as ref
from .test_autograd import _CumulativeLogSumExp as CumulativeLogSumExp

LAYER_NORM_NET = lambda: nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 1)).double()  # noqa: E731


class Determinant(nn.Module):
    """A determinant of 2 x 2 orbitals, as in determinant wavefunctions."""

    def __init__(self):
        super().__init__()
        self.orbitals = nn.Linear(2, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(torch.tanh(self.orbitals(x)).reshape(-1, 2, 2)).unsqueeze(-1)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_composition_equals_the_fused_kernel(affine):
    x = torch.randn(5, 3, 8, dtype=torch.float64)
    weight, bias = (torch.randn(3, 8, dtype=torch.float64) for _ in range(2)) if affine else (None, None)
    expected = F.layer_norm(x, (3, 8), weight, bias, 1e-5)
    torch.testing.assert_close(decompositions.layer_norm(x, (3, 8), weight, bias, 1e-5), expected)


def test_instance_norm_composition_equals_the_fused_kernel():
    x = torch.randn(5, 3, 7, dtype=torch.float64)
    weight, bias = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    expected = F.instance_norm(x, weight=weight, bias=bias)
    torch.testing.assert_close(decompositions.instance_norm(x, weight=weight, bias=bias), expected)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_func_is_exact_on_layer_norm(order):
    """The fused kernel's forward-mode rule is wrong here; the engine's composition is not."""
    u, x = LAYER_NORM_NET(), torch.randn(6, 2, dtype=torch.float64)
    actual = do.Derivative(u, wrt=0, order=order, method="func")(x)
    h = 1e-4  # against finite differences of the (exact) lower orders of nested autograd
    shifted = [x + torch.tensor([s * h, 0.0], dtype=x.dtype) for s in (1, -1)]
    lower = [ref.partial(u, z, (0,) * (order - 1)) for z in shifted]
    torch.testing.assert_close(actual, (lower[0] - lower[1]) / (2 * h), rtol=1e-6, atol=1e-7)


def test_func_refuses_a_determinant_and_names_it():
    with pytest.raises(EngineUnsupported, match=r"torch\.linalg\.det.*aten::_linalg_det"):
        do.Laplacian(Determinant(), method="func")(torch.randn(4, 2, dtype=torch.float64))


def test_auto_moves_past_a_refusal_to_an_exact_engine():
    u, x = Determinant(), torch.randn(4, 2, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        actual = do.Hessian(u)(x)
    torch.testing.assert_close(actual, ref.hessian(u, x), rtol=1e-10, atol=1e-12)


class AtenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func._schema.name)
        return func(*args, **(kwargs or {}))


CALLS = {
    "F.layer_norm": (lambda h: F.layer_norm(h, (4,)), "aten::native_layer_norm"),
    "F.instance_norm": (lambda h: F.instance_norm(h.reshape(1, 2, 2)), "aten::native_batch_norm"),
    "torch.linalg.det": (lambda h: torch.linalg.det(h.reshape(1, 2, 2)), "aten::_linalg_det"),
    "Tensor.logdet": (lambda h: (h.reshape(2, 2) @ h.reshape(2, 2).T + 1).logdet(), "aten::_linalg_slogdet"),
    "torch.linalg.solve": (lambda h: torch.linalg.solve(h.reshape(2, 2) + 3, h[:2]), "aten::_linalg_solve_ex"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_audited_calls_are_the_ways_into_the_defective_aten_ops(call):
    """What the audit intercepts by name really runs the aten op the scan found wrong."""
    f, aten = CALLS[call]
    with AtenOps() as ops:
        f(torch.randn(2, 4, dtype=torch.float64)[0])
    assert aten in ops.seen
    callable_ = eval(call.replace("Tensor.", "torch.Tensor."), {"torch": torch, "F": F})  # noqa: S307
    assert callable_ in FORWARD_MODE_HANDLERS or callable_ in FORWARD_MODE_FAILURES
    if "norm" in call:
        assert callable_ in NORMALISATION_HANDLERS


# -- torch.compile of a training step under method="auto" -------------------------------------


class Burgers(do.DifferentialOperator):
    """A custom PDE term built from ``derivatives``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.derivatives(x, u=(), u_x=(0,), u_xx=(0, 0), u_t=(1,))
        return d["u_t"] + d["u"] * d["u_x"] - 0.01 * d["u_xx"]


COMPILED = {
    "derivative": lambda u: do.Derivative(u, wrt=0),
    "hessian": do.Hessian,
    "jacobian": do.Jacobian,
    "mixed": lambda u: do.Derivative(u, wrt=(0, 1)),
    "laplacian": do.Laplacian,
    "custom": Burgers,
}


@pytest.mark.parametrize(
    "operator",
    [pytest.param(name, marks=pytest.mark.slow) if name == "laplacian" else name for name in sorted(COMPILED)],
)  # the Laplacian takes the longest to compile and compiled before the fix too
def test_compiled_training_step_equals_eager(operator):
    """``torch.compile(fullgraph=True)`` with inductor: the loss and the parameters' gradients of eager.

    Forward mode under inductor used to fail in the backward pass ("ZeroTensors are immutable").
    """
    torch._dynamo.reset()
    torch.manual_seed(0)
    u = nn.Sequential(
        nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3 if operator == "jacobian" else 1)
    )
    op, x = COMPILED[operator](u), torch.randn(64, 2)

    def step(x: torch.Tensor) -> torch.Tensor:
        return (op(x) - 1.0).square().mean()

    def gradients(loss: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(loss, list(u.parameters()), allow_unused=True, materialize_grads=True))

    eager = step(x)
    compiled = torch.compile(step, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for a, e in zip(gradients(compiled), gradients(eager)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


# -- results that torch.func knows to be zero -------------------------------------------------


class Constant(nn.Module):
    """An output that does not depend on the input."""

    def __init__(self):
        super().__init__()
        self.c = nn.Parameter(torch.tensor([[1.5]], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c.expand(x.shape[0], 1) * torch.ones_like(x[:, :1])


PIECEWISE_LINEAR = {
    "hardtanh": lambda: nn.Sequential(nn.Linear(2, 6), nn.Hardtanh(-0.5, 0.5), nn.Linear(6, 1)).double(),
    "leaky_relu": lambda: nn.Sequential(nn.Linear(2, 6), nn.LeakyReLU(0.1), nn.Linear(6, 1)).double(),
    "constant": Constant,
}


@pytest.mark.parametrize("net", sorted(PIECEWISE_LINEAR))
@pytest.mark.parametrize("operator", ["hessian", "laplacian", "derivative", "along", "estimate"])
def test_known_zeros_stay_in_the_graph_as_with_nested_autograd(net, operator):
    """torch.func hands back a zero tangent without a graph; a training step must still backward through it."""
    u, x = PIECEWISE_LINEAR[net](), torch.randn(4, 2, dtype=torch.float64)
    make = {
        "hessian": lambda: do.Hessian(u, method="func"),
        "laplacian": lambda: do.Laplacian(u, method="func"),
        "derivative": lambda: do.Derivative(u, wrt=(0, 1), method="func"),
        "along": lambda: do.Laplacian(u, sigma=torch.eye(2, dtype=torch.float64), method="func"),
        "estimate": lambda: do.Laplacian(u, estimator="hutchinson", samples=3, method="func"),
    }
    result = make[operator]()(x)
    assert result.requires_grad
    torch.testing.assert_close(result, torch.zeros_like(result), rtol=0, atol=0)
    (result**2).mean().backward()
    assert all(p.grad is None or not p.grad.any() for p in u.parameters())  # as nested autograd's: none or zero


@pytest.mark.parametrize("activation", [nn.SiLU, nn.Mish])
def test_func_without_gradients_gives_the_values_with_them(activation):
    """Under ``torch.no_grad()`` nested ``jvp`` through SiLU and Mish failed from order 2 ("cannot differentiate
    aten::silu_backward"): the engine runs with gradients on and the operator detaches its results."""
    torch.manual_seed(0)
    u = nn.Sequential(nn.Linear(2, 8), activation(), nn.Linear(8, 1)).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    for operator in (do.Laplacian(u, method="func"), do.Derivative(u, wrt=(0, 1, 1), method="func")):
        with_gradients = operator(x)
        with torch.no_grad():
            without = operator(x)
        assert not without.requires_grad
        torch.testing.assert_close(without, with_gradients.detach(), rtol=0, atol=0)


class RisingLogCumSumExp(CumulativeLogSumExp):
    """``logcumsumexp`` of features that rise by about 12 each: every prefix lies 12-48 below the next ones."""

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.stem.bias.copy_(12.0 * torch.arange(5.0))


def test_upstream_forward_mode_rule_of_logcumsumexp_loses_digits_where_values_spread():
    """If this fails, PyTorch fixed ``logcumsumexp``'s ``jvp``; the composition can then go."""
    x, tangent = torch.tensor([0.0, 1.0, 29.0], dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    _, upstream = torch.func.jvp(lambda x: torch.logcumsumexp(x, 0), (x,), (tangent,))
    _, composed = torch.func.jvp(lambda x: decompositions.logcumsumexp(x, 0), (x,), (tangent,))
    exact = torch.tensor([1.0, 1 / (1 + math.e), 1 / (1 + math.e + math.exp(29.0))], dtype=torch.float64)
    assert (upstream - exact).abs().max() > 0.1  # d L_0 / d x_0 = 1, upstream 0.72
    torch.testing.assert_close(composed, exact, rtol=1e-14, atol=0)
    values = torch.randn(3, 7, 4, dtype=torch.float64) * 30
    composed_values = decompositions.logcumsumexp(values, 1)
    torch.testing.assert_close(composed_values, torch.logcumsumexp(values, 1), rtol=1e-15, atol=0)


@pytest.mark.parametrize("method", ["func", "auto", "taylor", "autograd"])
def test_logcumsumexp_is_exact_where_its_values_spread(method):
    """Values and parameter gradients of derivatives to order 3 against the composition, on every engine."""
    torch.manual_seed(0)
    u, x = RisingLogCumSumExp(), torch.randn(4, 2, dtype=torch.float64)
    for order in (1, 2, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # auto may announce a fallback
            actual = do.Derivative(u, wrt=0, order=order, method=method)(x)
        expected = ref.partial(u.composed, x, (0,) * order)
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11)
        for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)
