"""The Taylor engine's fast path (stacked jets, truncated directions, fused layers) against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diffops as do
from diffops.engines import ENGINES, EngineUnsupported, Request
from diffops.engines.taylor.interpolation import interpolate, truncate
from diffops.engines.taylor.stacked import Stacked, feature_major

from .. import reference as ref
from ..nets import Ansatz, Residual, TwoInputs, mlp

RTOL, ATOL = 1e-10, 1e-12
TAYLOR = ENGINES["taylor"]


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


def assert_matches_reference(u: nn.Module, x: torch.Tensor, results: dict) -> None:
    """Every partial in ``results`` and the parameter gradients of one loss over all of them, against the reference.

    One loss over every partial, so that each parameter's gradient sums the paths through all of them.
    """
    partials = sorted(index for index in results if isinstance(index, tuple))
    for index in partials:
        assert_close(results[index], ref.partial(u, x, index))
    total = sum(results[index] * (1 + i) for i, index in enumerate(partials))
    expected = sum(ref.partial(u, x, index) * (1 + i) for i, index in enumerate(partials))
    for a, e in zip(ref.parameter_gradients(u, total), ref.parameter_gradients(u, expected)):
        assert_close(a, e)


class Gated(nn.Module):
    """The modified MLP: ``h <- (1 - z) U + z V``, ``z = tanh(W h + b)``; sums and products of stacked jets."""

    def __init__(self, d: int, d_out: int = 1, width: int = 8, activation=torch.tanh) -> None:
        super().__init__()
        self.u, self.v, self.first = nn.Linear(d, width), nn.Linear(d, width), nn.Linear(d, width)
        self.second, self.out = nn.Linear(width, width), nn.Linear(width, d_out)
        self.activation = activation
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.activation(self.u(x)), torch.sigmoid(self.v(x))
        h = x
        for layer in (self.first, self.second):
            z = self.activation(layer(h))
            h = (1 - z) * u + z * v
        return 2.0 * self.out(h) - 0.5


class Shared(nn.Module):
    """One ``Linear`` used twice, the second time on a product that depends on its first use: a chain whose
    input is a function of the chain's own weight."""

    def __init__(self, d: int, d_out: int = 1, width: int = 6) -> None:
        super().__init__()
        self.first, self.shared, self.out = nn.Linear(d, width), nn.Linear(width, width), nn.Linear(width, d_out)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.tanh(self.first(x))
        h = torch.tanh(self.shared(u))
        return self.out(torch.tanh(self.shared(h * u)))


class Scaled(nn.Module):
    """A network with constants added and multiplied between fused layers, and a bias-free layer."""

    def __init__(self, d: int, d_out: int = 1) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, 6), nn.Linear(6, 6, bias=False)
        self.out = nn.Linear(6, d_out)
        self.shift = nn.Parameter(torch.linspace(-1, 1, 6))
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sin(self.a(x)) * 1.5 + self.shift
        return self.out(torch.tanh(self.b(h)) - h)


def sigmoid_mlp(d: int, d_out: int) -> nn.Module:
    layers = [nn.Linear(d, 7), nn.Sigmoid(), nn.Linear(7, 7), nn.Sigmoid(), nn.Linear(7, d_out)]
    return nn.Sequential(*layers).double()


NETS = {
    "tanh": lambda d, m: mlp(d, m, width=7, depth=3),
    "sin": lambda d, m: mlp(d, m, width=7, activation="sin"),
    "sigmoid": sigmoid_mlp,
    "silu (ordinary rules)": lambda d, m: mlp(d, m, width=7, activation="silu"),
    "gated": lambda d, m: Gated(d, m),
    "constants": lambda d, m: Scaled(d, m),
    "residual": lambda d, m: Residual(d, m),
    "ansatz": lambda d, m: Ansatz(d, m),
}

REQUESTS = {
    "burgers": {(), (0,), (0, 0), (1,)},
    "kdv": {(), (0,), (1,), (0, 0, 0)},
    "beam": {(1, 1), (0, 0, 0, 0)},
    "navier-stokes": {(), (0,), (1,), (2,), (0, 0), (1, 1)},
    "mixed to order four": {(0, 0, 1, 2), (0, 1), (2,), (1, 1, 1, 1), (0, 0, 2, 2)},
}


def test_directions_are_truncated_at_the_order_each_is_needed_to():
    plan = truncate(frozenset({(0,), (0, 0), (1,)}), 2)
    assert plan.interpolation.directions == ((1, 0), (0, 1))
    assert plan.counts == (2, 1)  # e_t to order one only
    kdv = truncate(frozenset({(1,), (0, 0, 0)}), 2)
    assert kdv.interpolation.directions[0] == (1, 0) and kdv.counts == (2, 1, 1)


def test_truncation_keeps_every_recipe():
    partials = frozenset({(0, 0, 1, 2), (0, 1), (2,), (1, 1, 1, 1)})
    plan, full = truncate(partials, 3), interpolate(partials, 3)
    assert sorted(plan.interpolation.directions) == sorted(full.directions)
    for index, recipe in plan.interpolation.recipes.items():
        assert all(row < plan.counts[recipe.order - 1] for row in recipe.rows)
        original = full.recipes[index]
        moved = {plan.interpolation.directions[r]: w for r, w in zip(recipe.rows, recipe.weights)}
        assert moved == {full.directions[r]: w for r, w in zip(original.rows, original.weights)}


@pytest.mark.parametrize("request_name", REQUESTS)
@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("d_out", [1, 3])
def test_values_and_parameter_gradients_match_the_reference(net, request_name, d_out):
    torch.manual_seed(0)
    u = NETS[net](3, d_out)
    x = torch.randn(5, 3, dtype=torch.float64)
    partials = frozenset(REQUESTS[request_name])
    assert_matches_reference(u, x, TAYLOR.compute(u, x, Request(partials)))


def test_the_fused_rules_handle_the_whole_network():
    """A Linear/activation network, and the gated one, never leave the stacked form."""
    for u in (mlp(2, 3, width=5, depth=3), Gated(2, 2)):
        x = Stacked(torch.randn(3, 4, 2, dtype=torch.float64), (2, 1), degree=1)
        out = u(x)
        assert isinstance(out, Stacked) and out._plain is None


def test_a_chain_runs_feature_major_from_the_coordinates_and_rows_where_others_feed_it():
    """A fused layer on the coordinates (degree 1, or with folded top coefficients) or on a
    feature-major stack stores its output feature-major; fed by wide rows of higher degree (the
    output of another rule), or alone and read by another rule, it returns rows."""
    layer = nn.Sequential(nn.Linear(2, 4), nn.Tanh()).double()
    coordinates = Stacked(torch.randn(3, 5, 2, dtype=torch.float64), (2, 1), degree=1)
    out = layer(coordinates)
    assert feature_major(out.stack)
    assert feature_major(nn.Sequential(nn.Linear(4, 4), nn.Tanh()).double()(out).stack)
    folded = Stacked(torch.randn(4, 5, 2, dtype=torch.float64), (2, 1), degree=2)
    assert feature_major(layer(folded).stack)
    wide = nn.Sequential(nn.Linear(8, 4), nn.Tanh()).double()
    rows = Stacked(torch.randn(4, 5, 8, dtype=torch.float64), (2, 1), degree=2)
    assert not feature_major(wide(rows).stack)
    assert out.resolved().stack.is_contiguous()  # what every other rule reads
    read_by_another_rule = layer(coordinates)
    read_by_another_rule.resolved()  # a single layer that no fused layer reads runs in rows: nothing to transpose
    assert not feature_major(read_by_another_rule.stack)
    torch.testing.assert_close(read_by_another_rule.stack, out.resolved().stack, rtol=1e-14, atol=1e-14)


class Pointwise(nn.Module):
    """A fused chain on a 3-D stack, ``(N, d, 8)``: every coordinate through the same small network."""

    def __init__(self) -> None:
        super().__init__()
        self.chain = nn.Sequential(
            nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Tanh()
        )
        self.out = nn.Linear(8, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.chain(x.unsqueeze(-1)).sum(-2))


def test_a_feature_major_chain_on_more_sample_dimensions_matches_the_reference():
    torch.manual_seed(0)
    u, x = Pointwise(), torch.randn(5, 3, dtype=torch.float64)
    partials = frozenset({(), (0,), (0, 1), (1, 1, 1)})
    results = TAYLOR.compute(u, x, Request(partials))
    assert_matches_reference(u, x, results)


@pytest.mark.parametrize("net", ["tanh", "gated", "shared"])
def test_the_fused_backward_is_differentiable(net):
    """Gradients of a residual's gradient in x (a gradient-enhanced loss) go through the fused backwards:
    the chains', and the products' (the gated network uses one jet in two products, the shared one feeds
    a chain with a function of its own weight)."""
    torch.manual_seed(1)
    u = Shared(2, 1) if net == "shared" else NETS[net](2, 1)
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    partials = frozenset({(0,), (0, 0), (1,)})

    def enhanced(values: dict) -> torch.Tensor:
        residual = values[(1,)] + values[()] * values[(0,)] - 0.1 * values[(0, 0)]
        (dx,) = torch.autograd.grad(residual.sum(), x, create_graph=True)
        return dx.square().sum() + residual.square().sum()

    actual = enhanced(TAYLOR.compute(u, x, Request(partials | {()})))
    expected = enhanced({index: ref.partial(u, x, index) for index in partials | {()}})
    assert_close(actual, expected)
    params = list(u.parameters())
    for a, e in zip(torch.autograd.grad(actual, params), torch.autograd.grad(expected, params)):
        assert_close(a, e)


@pytest.mark.parametrize("net", ["tanh", "gated", "shared"])
def test_gradients_in_the_inputs_match_the_reference(net):
    """The backward to ``x`` through chains in either layout and through products, without create_graph."""
    torch.manual_seed(4)
    u = Shared(2, 1) if net == "shared" else NETS[net](2, 1)
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    partials = frozenset({(), (0,), (0, 0), (1,)})
    results = TAYLOR.compute(u, x, Request(partials))
    for index in sorted(partials):
        (actual,) = torch.autograd.grad(results[index].sum(), x, retain_graph=True)
        (expected,) = torch.autograd.grad(ref.partial(u, x, index).sum(), x)
        assert_close(actual, expected)


@pytest.mark.parametrize("net", ["gated", "shared"])
def test_parameter_gradients_taken_with_create_graph_match_the_reference(net):
    """The differentiable backwards give the parameter gradients themselves right (as for a Hessian-vector product)."""
    torch.manual_seed(2)
    u = Shared(2, 1) if net == "shared" else NETS[net](2, 1)
    x = torch.randn(5, 2, dtype=torch.float64)
    partials = frozenset({(), (0,), (0, 0), (1,)})
    results = TAYLOR.compute(u, x, Request(partials))
    loss = sum((1 + i) * results[index].square().sum() for i, index in enumerate(sorted(partials)))
    expected = sum((1 + i) * ref.partial(u, x, index).square().sum() for i, index in enumerate(sorted(partials)))
    params = list(u.parameters())
    actual_grads = torch.autograd.grad(loss, params, create_graph=True)
    for a, e in zip(actual_grads, torch.autograd.grad(expected, params, create_graph=True)):
        assert_close(a, e)
    vector = [torch.randn_like(p) for p in params]
    hvp = torch.autograd.grad(actual_grads, params, vector)
    expected_hvp = torch.autograd.grad(torch.autograd.grad(expected, params, create_graph=True), params, vector)
    for a, e in zip(hvp, expected_hvp):
        assert_close(a, e)


@pytest.mark.parametrize("counts", [(3, 2, 1), (6, 6, 2)])
@pytest.mark.parametrize("degrees", [(2, 2), (1, 2), (2, 1), (1, 1), (3, 1)])
def test_the_product_node_matches_the_product_as_plain_ops(degrees, counts):
    """The Cauchy product node and its backwards against autograd through the plain product, any two degrees."""
    from diffops.engines.taylor.rules.sums import _Product, cauchy_product

    torch.manual_seed(3)
    da, db = degrees
    a = torch.randn(1 + sum(counts[:da]), 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1 + sum(counts[:db]), 4, 5, dtype=torch.float64, requires_grad=True)
    expected, actual = cauchy_product(a, b, counts, da, db), _Product.apply(counts, da, db, a, b)
    assert_close(actual, expected)
    grad = torch.randn_like(expected)
    for create_graph in (False, True):
        got = torch.autograd.grad(actual, (a, b), grad, retain_graph=True, create_graph=create_graph)
        want = torch.autograd.grad(expected, (a, b), grad, retain_graph=True, create_graph=create_graph)
        for g, w in zip(got, want):
            assert_close(g, w)
    square, grad = _Product.apply(counts, da, da, a, a), torch.randn_like(cauchy_product(a, a, counts, da, da))
    for create_graph in (False, True):  # a jet times itself: both factors' gradients land on one tensor
        (got,) = torch.autograd.grad(square, a, grad, retain_graph=True, create_graph=create_graph)
        (want,) = torch.autograd.grad(cauchy_product(a, a, counts, da, da), a, grad, create_graph=create_graph)
        assert_close(got, want)


def test_several_inputs_are_split_and_concatenated_as_stacked_jets():
    u = TwoInputs(2, 1)
    x = Stacked(torch.randn(4, 5, 3, dtype=torch.float64), (2, 1), degree=1)
    first, second = x.split((2, 1), dim=-1)
    out = u(first, second)
    assert isinstance(out, Stacked) and out._plain is None


def test_several_inputs_stay_exact():
    u = TwoInputs(1, 1)
    op = do.Derivatives(u, {"u": (), "u_x": 0, "u_xx": (0, 0), "u_t": 1}, argnums=(0, 1), method="taylor")
    x, t = torch.randn(5, 1, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    out = op(x, t)
    joined = lambda z: u(z[:, :1], z[:, 1:])  # noqa: E731
    for name, index in {"u": (), "u_x": (0,), "u_xx": (0, 0), "u_t": (1,)}.items():
        assert_close(out[name], ref.partial(joined, torch.cat([x, t], 1), index))


def test_inside_torch_func_the_series_runs_as_plain_ops():
    assert_parameter_gradients_under_torch_func_match(mlp(2, width=5, depth=2), torch.randn(4, 2, dtype=torch.float64))


def assert_parameter_gradients_under_torch_func_match(u: nn.Module, x: torch.Tensor) -> None:
    """``torch.func.grad`` of a loss of Taylor mode's partials, in ``u``'s parameters, against the reference."""
    params = dict(u.named_parameters())
    partials = frozenset({(0, 0), (1,)})

    def loss(p: dict) -> torch.Tensor:
        fn = lambda z: torch.func.functional_call(u, p, (z,))  # noqa: E731
        values = TAYLOR.compute(fn, x, Request(partials))
        return (values[(0, 0)] * values[(1,)]).sum()

    grads = torch.func.grad(loss)(params)
    expected = (ref.partial(u, x, (0, 0)) * ref.partial(u, x, (1,))).sum()
    reference = torch.autograd.grad(expected, list(params.values()), allow_unused=True, materialize_grads=True)
    for name, g in zip(params, reference):
        assert_close(grads[name], g)


def test_float32_inputs():
    u = mlp(2, width=6, depth=2).float()
    x = torch.randn(8, 2)
    results = TAYLOR.compute(u, x, Request(frozenset({(0, 0, 0), (1,)})))
    reference = ref.partial(u.double(), x.double(), (0, 0, 0))
    assert results[(0, 0, 0)].dtype == torch.float32
    torch.testing.assert_close(results[(0, 0, 0)].double(), reference, rtol=1e-4, atol=1e-4)


class Burgers(do.DifferentialOperator):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.derivatives(x, u=(), u_x="x", u_xx=("x", "x"), u_t="t")
        return d["u_t"] + d["u"] * d["u_x"] - 0.01 * d["u_xx"]


@pytest.mark.parametrize("net", ["tanh", "gated"])
def test_a_compiled_custom_residual_is_one_graph_and_matches_eager(net):
    torch._dynamo.reset()
    u = NETS[net](2, 1)
    op = Burgers(u, coords=("x", "t"))
    x = torch.randn(8, 2, dtype=torch.float64)
    loss = lambda x: op(x).square().mean()  # noqa: E731
    params = list(u.parameters())
    eager = loss(x)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)(x)
    assert_close(compiled, eager)
    grad = lambda loss: torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)  # noqa: E731
    for a, e in zip(grad(compiled), grad(eager)):
        assert_close(a, e)


def test_a_chain_of_fused_layers_runs_as_one_autograd_node():
    """Linear + activation pairs wait as a chain and run, when read, as one node over all their parameters."""
    u = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 5), nn.Sigmoid(), nn.Linear(5, 4), nn.Tanh()).double()
    out = u(Stacked(torch.randn(3, 6, 2, dtype=torch.float64), (2, 1), degree=1))
    assert out.lazy and out.shape == (6, 4) and out.dtype == torch.float64
    node = out.stack.grad_fn
    assert type(node).__name__ == "_FusedChainBackward"
    leaves = [fn.variable for fn, _ in node.next_functions if type(fn).__name__ == "AccumulateGrad"]
    assert {id(p) for p in leaves} == {id(p) for p in u.parameters()}


@pytest.mark.parametrize("d_out", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_the_output_layer_is_the_chains_last_link_and_stays_exact(d_out, bias):
    """A ``Linear`` with no activation after it runs inside the chain's node, whose gradients match the reference."""
    torch.manual_seed(0)
    u = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, d_out, bias=bias)).double()
    out = u(Stacked(torch.randn(3, 5, 2, dtype=torch.float64), (2, 1), degree=1)).resolved()
    node = out.stack.grad_fn
    while type(node).__name__ != "_FusedChainBackward":  # past the views that lay the output out in rows
        node = node.next_functions[0][0]
    leaves = [fn.variable for fn, _ in node.next_functions if type(fn).__name__ == "AccumulateGrad"]
    assert {id(p) for p in leaves} == {id(p) for p in u.parameters()}
    x = torch.randn(5, 2, dtype=torch.float64)
    assert_matches_reference(u, x, TAYLOR.compute(u, x, Request(frozenset({(), (0,), (0, 0), (1,)}))))


class Branched(nn.Module):
    """One fused layer read by two others, a product of the branches, and a layer run without grad."""

    def __init__(self, d: int, d_out: int = 1, frozen: bool = False) -> None:
        super().__init__()
        self.first, self.left, self.right = nn.Linear(d, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.out = nn.Linear(6, d_out)
        self.frozen = frozen
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            h = torch.tanh(self.first(x))
        return self.out(torch.tanh(self.left(h)) * torch.sigmoid(self.right(h)))


def test_a_link_read_by_two_layers_runs_once_and_the_branches_stay_exact(monkeypatch):
    from diffops.engines.taylor.rules import fused

    layers_run = []
    forward = fused._FusedChain.forward

    def counted(ctx, activations, *args):
        layers_run.append(len(activations))
        return forward(ctx, activations, *args)

    monkeypatch.setattr(fused._FusedChain, "forward", staticmethod(counted))
    torch.manual_seed(0)
    u, x = Branched(3), torch.randn(5, 3, dtype=torch.float64)
    partials = frozenset({(), (0,), (0, 0), (1,), (1, 2)})
    results = TAYLOR.compute(u, x, Request(partials))
    assert sum(layers_run) == 3
    assert_matches_reference(u, x, results)


def test_a_layer_run_without_grad_is_refused_and_auto_matches_nested_autograd():
    """To autograd, what a ``no_grad`` section computes is a constant, in ``x`` too; the jet would differentiate it."""
    torch.manual_seed(0)
    u, x = Branched(2, frozen=True), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(EngineUnsupported, match="gradients turned off inside the network"):
        TAYLOR.compute(u, x, Request(frozenset({(), (0,), (0, 0)})))
    with pytest.warns(UserWarning, match="because 'taylor' failed"):
        actual = do.Derivative(u, wrt=(0, 0))(x)
    torch.testing.assert_close(actual, ref.partial(u, x, (0, 0)))
