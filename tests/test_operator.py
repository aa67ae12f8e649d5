"""The operator around the engines: empty batches, errors of u itself, auto's first call, settings cached."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import diffops as do
from diffops.engines import ENGINES, METHODS, Request, candidates

from . import reference as ref
from .nets import TwoInputs, mlp

D = 3


class Burgers(do.DifferentialOperator):
    """A custom operator built from ``self.derivatives``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.derivatives(x, u=(), u_x=(0,), u_xx=(0, 0), u_t=(2,))
        return d["u_t"] + d["u"] * d["u_x"] - 0.01 * d["u_xx"]


def record_engines(monkeypatch) -> list[str]:
    """The names of the engines that ``compute`` from now on, in order."""
    tried: list[str] = []
    for name, engine in ENGINES.items():
        original = engine.compute
        monkeypatch.setattr(
            engine,
            "compute",
            lambda fn, x, request, name=name, original=original: tried.append(name) or original(fn, x, request),
        )
    return tried


# name: (operator on a u with D inputs and two outputs (vector-valued) or one, per-sample result shape)
EMPTY_CASES = {
    "jacobian": (lambda u, m: do.Jacobian(u, method=m), 2, (2, D)),
    "gradient": (lambda u, m: do.Gradient(u, method=m), 1, (D,)),
    "hessian": (lambda u, m: do.Hessian(u, method=m), 2, (2, D, D)),
    "laplacian": (lambda u, m: do.Laplacian(u, method=m), 2, (2,)),
    "derivative order 3": (lambda u, m: do.Derivative(u, wrt=1, order=3, method=m), 2, (2,)),
    "mixed partial": (lambda u, m: do.Derivative(u, wrt=(0, 2), method=m), 2, (2,)),
    "biharmonic": (lambda u, m: do.Biharmonic(u, method=m), 1, (1,)),
    "divergence": (lambda u, m: do.Divergence(u, method=m), D, (1,)),
    "curl": (lambda u, m: do.Curl(u, method=m), D, (3,)),
    "hutchinson": (lambda u, m: do.Laplacian(u, estimator="hutchinson", samples=4, method=m), 2, (2,)),
    "sampled coordinates": (lambda u, m: do.Laplacian(u, estimator="coordinates", samples=2, method=m), 1, (1,)),
    "stde": (lambda u, m: do.Biharmonic(u, estimator="stde", samples=3, method=m), 1, (1,)),
    "expression": (lambda u, m: do.Laplacian(u, method=m) + 2.0 * do.Derivative(u, wrt=1, method=m) - u, 2, (2,)),
    "quotient": (lambda u, m: do.Laplacian(u, method=m) / do.Derivative(u, order=0, method=m), 1, (1,)),
    "custom operator": (lambda u, m: Burgers(u, method=m), 1, (1,)),
    "weighted laplacian": (lambda u, m: do.Laplacian(u, sigma=torch.ones(D, 2).double(), method=m), 2, (2,)),
    "weighted hutchinson": (
        lambda u, m: do.Laplacian(u, sigma=lambda x: x[..., None], estimator="hutchinson", samples=3, method=m),
        1,
        (1,),
    ),
    "directional derivative": (lambda u, m: do.DirectionalDerivative(u, lambda x: -x, order=2, method=m), 2, (2,)),
    "hutchinson divergence": (lambda u, m: do.Divergence(u, estimator="hutchinson", samples=3, method=m), D, (1,)),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(EMPTY_CASES))
@pytest.mark.parametrize("batch", [(0,), (3, 0), (0, 5)], ids=str)
def test_an_empty_batch_gives_an_empty_result_and_changes_nothing(case, method, batch):
    make, outputs, per_sample = EMPTY_CASES[case]
    u = mlp(D, outputs)
    op = make(u, method)
    x = torch.randn(*batch, D, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no engine falls back on an empty batch
        result = op(x)
    assert result.shape == (*batch, *per_sample)
    assert result.dtype == torch.float64
    for leaf in op.modules():
        if isinstance(leaf, do.DifferentialOperator):
            assert leaf._failed_engines == set() and leaf._outputs is None
    # still in the graph of u's parameters: a loss over no sample backpropagates zeros
    result.pow(2).sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in u.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_an_empty_batch_of_derivatives_and_of_several_inputs(method):
    u = TwoInputs(2, 1, d_out=2)
    x, t = torch.randn(0, 2, dtype=torch.float64), torch.randn(0, 1, dtype=torch.float64)
    op = do.Derivatives(u, u=(), u_x=(0,), u_xt=(0, 2), argnums=(0, 1), method=method)
    result = op(x, t)
    assert {key: value.shape for key, value in result.items()} == dict.fromkeys(("u", "u_x", "u_xt"), (0, 2))
    assert op._failed_engines == set() and op._outputs is None


@pytest.mark.parametrize("make", [do.Hessian, do.Laplacian, do.Jacobian], ids=lambda make: make.__name__)
def test_an_empty_batch_does_not_disturb_the_next_call(make, monkeypatch):
    u = mlp(D)
    op = make(u, method="auto")
    op(torch.randn(0, D, dtype=torch.float64))
    tried = record_engines(monkeypatch)
    x = torch.randn(5, D, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = op(x)
    assert tried == [candidates("auto", op._request(D), D, 1)[0]]  # the engine auto ranks first, not a fallback
    expected = {"Hessian": ref.hessian, "Laplacian": ref.laplacian, "Jacobian": ref.jacobian}[make.__name__]
    torch.testing.assert_close(value, expected(u, x), rtol=1e-10, atol=1e-12)


def test_an_empty_batch_still_checks_the_operator_settings():
    with pytest.raises(ValueError, match=r"Derivative: coordinate index 5 is out of range for d=3"):
        do.Derivative(mlp(D), wrt=5)(torch.randn(0, D, dtype=torch.float64))


def test_an_empty_batch_under_no_grad_is_detached():
    with torch.no_grad():
        result = do.Laplacian(mlp(D))(torch.randn(0, D, dtype=torch.float64))
    assert result.shape == (0, 1) and not result.requires_grad


# -- errors raised by u itself --------------------------------------------------------


class Raising(nn.Module):
    """A network that rejects its input with an error of its own."""

    def __init__(self):
        super().__init__()
        self.net = mlp(D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != D:
            raise ValueError(f"expected {D} coordinates")
        return self.net(x)


OWN_ERRORS = {
    "wrong last dimension": (lambda: mlp(2), torch.randn(8, 3, dtype=torch.float64), RuntimeError,
                             r"Laplacian: u itself raised RuntimeError on inputs of shape \(8, 3\) float64: "
                             r"mat1 and mat2 shapes cannot be multiplied"),
    "float32 input to a float64 net": (lambda: mlp(2), torch.randn(4, 5, 2), RuntimeError,
                                       r"Laplacian: u itself raised RuntimeError on inputs of shape \(4, 5, 2\) "
                                       r"float32: mat1 and mat2 must have the same dtype"),
    "an error of the network's own": (Raising, torch.randn(6, 2, dtype=torch.float64), ValueError,
                                      r"Laplacian: u itself raised ValueError on inputs of shape \(6, 2\) float64: "
                                      r"expected 3 coordinates"),
}  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(OWN_ERRORS))
def test_an_error_of_u_itself_is_raised_once_with_the_operator_and_shapes(case, method, monkeypatch):
    make, x, error, message = OWN_ERRORS[case]
    tried = record_engines(monkeypatch)
    op = do.Laplacian(make(), method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: no other engine is tried
        with pytest.raises(error, match=message) as raised:
            op(x)
    assert "method='autograd'" not in str(raised.value)
    assert len(tried) == 1
    assert op._failed_engines == set()


def test_after_an_error_of_u_the_operator_still_takes_its_first_engine(monkeypatch):
    u = mlp(2)
    op = do.Derivative(u, wrt=0, order=2)
    with pytest.raises(RuntimeError, match="u itself raised"):
        op(torch.randn(4, 2))  # float32 input to a float64 network
    tried = record_engines(monkeypatch)
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(op(x), ref.partial(u, x, (0, 0)), rtol=1e-10, atol=1e-12)
    assert tried == [candidates("auto", Request(frozenset({(0, 0)})), 2, 1)[0]]


def test_a_network_that_differentiates_its_input_is_not_taken_for_a_broken_one():
    """A gradient field fails on jets and under vmap, but not plainly: auto falls back to nested autograd."""
    potential = mlp(2)

    def field(x: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(potential(x).sum(), x, create_graph=True)
        return g

    x = torch.randn(5, 2, dtype=torch.float64)
    with pytest.warns(UserWarning, match="method='auto' uses 'autograd'"):
        value = do.Laplacian(field)(x)
    torch.testing.assert_close(value, ref.laplacian(field, x), rtol=1e-10, atol=1e-12)


def test_auto_names_the_operator_when_no_engine_can_differentiate(monkeypatch):
    for name, engine in ENGINES.items():

        def refuse(fn, x, request, name=name):
            fn(x)
            raise RuntimeError(f"{name} cannot do this")

        monkeypatch.setattr(engine, "compute", refuse)
    op = do.Laplacian(mlp(2))
    with pytest.raises(RuntimeError) as raised:
        op(torch.randn(4, 2, dtype=torch.float64))
    message = str(raised.value)
    assert message.startswith("Laplacian: method='auto' found no method that can differentiate this network")
    assert all(f"'{name}' failed: {name} cannot do this" in message for name in ENGINES)


# -- auto's first call ----------------------------------------------------------------

# requests whose ranking depends on the output size under the cost model of engines/choice.py
FIRST_CALL_CASES = {
    "first partial": (lambda u: do.Derivative(u, wrt=0), Request(frozenset({(0,)}))),
    "navier-stokes fields": (
        lambda u: do.Derivatives(u, u=(), u_x=(0,), u_y=(1,), u_t=(2,), u_xx=(0, 0), u_yy=(1, 1)),
        Request(frozenset({(), (0,), (1,), (2,), (0, 0), (1, 1)})),
    ),
    "jacobian": (lambda u: do.Jacobian(u), Request(full=frozenset({"jacobian"}))),
    "mixed partial": (lambda u: do.Derivative(u, wrt=(0, 1)), Request(frozenset({(0, 1)}))),
}
OUTPUTS = 3


def test_the_first_call_cases_depend_on_the_output_size():
    """At least one case above is ranked differently for one output and for three: the test below can fail."""
    differing = [
        case for case, (_, request) in FIRST_CALL_CASES.items()
        if candidates("auto", request, D, 1)[0] != candidates("auto", request, D, OUTPUTS)[0]
    ]  # fmt: skip
    assert differing


@pytest.mark.parametrize("case", sorted(FIRST_CALL_CASES))
def test_auto_ranks_for_the_output_size_of_u_on_its_first_call(case, monkeypatch):
    make, request = FIRST_CALL_CASES[case]
    u = mlp(D, OUTPUTS)
    tried = record_engines(monkeypatch)
    op = make(u)
    x = torch.randn(5, D, dtype=torch.float64)
    op(x)
    assert tried[0] == candidates("auto", request, D, OUTPUTS)[0]


def test_the_first_call_leaves_the_random_numbers_of_a_seeded_run_alone():
    """Finding u's output size on the first call draws no random numbers of its own."""

    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp(D, OUTPUTS)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) * (1 + 0 * torch.rand(()))  # draws one number per call

    u = Noisy()
    x = torch.randn(5, D, dtype=torch.float64)
    warm = do.Derivative(u, wrt=0)
    warm(x)
    torch.manual_seed(1)
    warm(x)
    after_warm = torch.rand(())
    torch.manual_seed(1)
    do.Derivative(u, wrt=0)(x)
    assert torch.rand(()) == after_warm


# -- settings-only work is done once ------------------------------------------------------


def test_settings_are_validated_and_ranked_once_per_call_shape(monkeypatch):
    import diffops.operator as operator_module

    ranked = []
    original = operator_module.candidates
    monkeypatch.setattr(operator_module, "candidates", lambda *a: ranked.append(a) or original(*a))
    u = mlp(2)
    op = do.Derivatives(u, u=(), u_x=(0,), u_xx=(0, 0), u_t=(1,))
    for _ in range(3):
        op(torch.randn(4, 2, dtype=torch.float64))
    calls = len(ranked)
    for _ in range(3):
        values = op(torch.randn(4, 2, dtype=torch.float64))
    assert len(ranked) == calls  # nothing ranked again once the output size is known
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(op(x)["u_xx"], ref.partial(u, x, (0, 0)), rtol=1e-10, atol=1e-12)
    assert set(values) == {"u", "u_x", "u_xx", "u_t"}
    with pytest.raises(ValueError, match="coordinate index 2 is out of range for d=2"):
        do.Derivative(u, wrt=2)(x)  # a cached plan is per d, so a new d is checked again
    op3 = do.Derivative(mlp(3), wrt=2)
    op3(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="coordinate index 2 is out of range for d=2"):
        op3(torch.randn(2, 2, dtype=torch.float64))
    assert math.prod(op(x)["u"].shape) == 4


@pytest.mark.parametrize(
    "make",
    [
        lambda u: do.DirectionalDerivative(u, lambda x: -x),
        lambda u: do.Laplacian(u, sigma=torch.ones(D, 2).double()),
        lambda u: do.Laplacian(u) + do.DirectionalDerivative(u, torch.ones(D).double()),
    ],
    ids=["directional", "weighted", "expression"],
)
def test_the_engine_choice_is_cached_once_for_requests_with_directions(make):
    op = make(mlp(D))
    for _ in range(4):
        op(torch.randn(5, D, dtype=torch.float64))
    leaves = [leaf for leaf in op.modules() if isinstance(leaf, do.DifferentialOperator) and leaf._plans]
    assert leaves and all(len(leaf._plans) == 1 for leaf in leaves)  # bound directions differ per call; plans do not


def test_an_error_of_the_device_is_raised_as_it_is_not_as_an_engine_failure(monkeypatch):
    if not hasattr(torch, "AcceleratorError"):
        pytest.skip("torch without AcceleratorError")
    op = do.Laplacian(mlp(D), method="auto")
    broken = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

    def fail(*args, **kwargs):
        raise broken

    for engine in ENGINES.values():
        monkeypatch.setattr(engine, "compute", fail)
    with pytest.raises(torch.AcceleratorError) as raised:
        op(torch.randn(3, D, dtype=torch.float64))
    assert raised.value is broken and op._failed_engines == set()


class _BurgersWithViscosity(do.DifferentialOperator):
    """Burgers with ``nu`` an attribute, read inside ``forward`` as users write it."""

    def __init__(self, u: nn.Module, nu: float) -> None:
        super().__init__(u, coords=("x", "t"))
        self.nu = nu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.derivatives(x, u=(), u_x="x", r={"t": 1.0, ("x", "x"): -self.nu})
        return d["r"] + d["u"] * d["u_x"]


def test_a_combination_weighted_by_an_attribute_compiles_with_dynamic_shapes():
    """With ``dynamic=True`` dynamo reads a float attribute as a symbol, which the weight check could not
    read (the graph broke); the weight is a constant of the graph, and a new ``nu`` recompiles."""
    torch.manual_seed(0)
    u = mlp(2)
    op = _BurgersWithViscosity(u, 0.01)
    torch._dynamo.reset()
    compiled = torch.compile(op, fullgraph=True, dynamic=True, backend="aot_eager")
    for n, nu in [(5, 0.01), (9, 0.01), (9, 0.2)]:
        op.nu = nu
        x = torch.randn(n, 2, dtype=torch.float64)
        expected = ref.partial(u, x, (1,)) - nu * ref.partial(u, x, (0, 0)) + u(x) * ref.partial(u, x, (0,))
        actual = compiled(x)
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
        for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
