"""The auto rule ranks engines by the measured cost model of ``engines/choice.py``."""

from __future__ import annotations

import pytest
import torch

from diffops.engines import Request, candidates

FULL = lambda *names: Request(full=frozenset(names))  # noqa: E731
PARTIALS = lambda *indices: Request(frozenset(indices))  # noqa: E731

CASES = [
    ("laplacian d=64", FULL("laplacian"), 64, 1, "taylor"),
    ("laplacian with its gradient", Request(frozenset({(0,), (1,)}), frozenset({"laplacian"})), 2, 1, "taylor"),
    ("jacobian of a scalar, d=16", FULL("jacobian"), 16, 1, "autograd"),
    ("jacobian of 8 outputs, d=4", FULL("jacobian"), 4, 8, "taylor"),
    ("hessian d=4", FULL("hessian"), 4, 1, "autograd"),
    ("first partial", PARTIALS((0,)), 2, 1, "autograd"),
    ("second pure partial", PARTIALS((0, 0)), 2, 1, "taylor"),
    ("sixth pure partial", PARTIALS((0,) * 6), 1, 1, "taylor"),
    ("low-order mixed partial", PARTIALS((0, 0, 1)), 2, 1, "autograd"),
    ("biharmonic", PARTIALS((0, 0, 0, 0), (0, 0, 1, 1), (1, 1, 1, 1)), 2, 1, "taylor"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_auto_puts_the_measured_fastest_first(case):
    _, request, d, outputs, fastest = case
    ranked = candidates("auto", request, d, outputs)
    assert ranked[0] == fastest
    assert sorted(ranked) == ["autograd", "func", "taylor"]  # every engine stays a fallback


def test_an_explicit_method_is_the_only_candidate():
    assert candidates("func", FULL("laplacian"), 3) == ("func",)


RESIDUALS = [
    ("burgers", PARTIALS((), (0,), (0, 0), (1,)), 2, 1),
    ("heat", PARTIALS((0, 0), (1, 1), (2,)), 3, 1),
    ("poisson 3-d", PARTIALS((0, 0), (1, 1), (2, 2)), 3, 1),
    ("navier-stokes", PARTIALS((), (0,), (1,), (2,), (0, 0), (1, 1)), 3, 3),
    ("kdv", PARTIALS((), (0,), (1,), (0, 0, 0)), 2, 1),
    ("beam", PARTIALS((1, 1), (0, 0, 0, 0)), 2, 1),
]


@pytest.mark.parametrize("case", RESIDUALS, ids=[c[0] for c in RESIDUALS])
def test_auto_puts_taylor_first_on_the_measured_residuals(case):
    _, request, d, outputs = case
    assert candidates("auto", request, d, outputs)[0] == "taylor"  # see benchmarks/auto_rule.py --cases residuals


def operator_cases():
    import diffops as do

    field = lambda d: torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.Tanh(), torch.nn.Linear(8, d))  # noqa: E731
    scalar = lambda d: torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))  # noqa: E731
    return {
        "gradient": lambda: do.Gradient(scalar(2)),
        "jacobian": lambda: do.Jacobian(field(2)),
        "hessian": lambda: do.Hessian(scalar(2)),
        "laplacian": lambda: do.Laplacian(scalar(3)),
        "biharmonic": lambda: do.Biharmonic(scalar(2)),
        "first derivative": lambda: do.Derivative(scalar(2), wrt=0),
        "mixed derivative": lambda: do.Derivative(scalar(2), wrt=(0, 0, 1)),
        "divergence": lambda: do.Divergence(field(3)),
        "curl": lambda: do.Curl(field(3)),
        "derivatives": lambda: do.Derivatives(scalar(2), u=(), u_x=(0,), u_t=(1,), u_xx=(0, 0)),
        "expression": lambda: (lambda u: do.Laplacian(u) + 2.0 * do.Derivative(u, wrt=1))(scalar(2)),
    }


@pytest.mark.parametrize("name", list(operator_cases()))
def test_under_torch_compile_auto_picks_an_engine_that_compiles(name):
    """Every operator's loss step compiles to one graph with ``method="auto"``, with eager's values and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    op = operator_cases()[name]().double()
    x = torch.randn(6, 3 if name in ("laplacian", "divergence", "curl") else 2, dtype=torch.float64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        out = op(x)
        values = out.values() if isinstance(out, dict) else [out]
        return sum(v.square().sum() for v in values)

    params = list(op.parameters())
    grad = lambda value: torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)  # noqa: E731
    eager = loss(x)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)
    for a, e in zip(grad(compiled), grad(eager)):
        torch.testing.assert_close(a, e)
