"""Linear combinations of partials (``engines/taylor/folding.py``) against the float64 reference.

A combination's first-order terms ride on the top coefficient of one of its
directions; every engine must give the combination of the reference partials,
values and parameter gradients, whichever way it computes it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import diffops as do
from diffops.engines import ENGINES, METHODS, EngineUnsupported, Request
from diffops.engines.base import Combination
from diffops.engines.taylor.engine import collapsed
from diffops.engines.taylor.folding import collapse, fold

from .. import reference as ref
from ..nets import Ansatz, Residual, mlp
from .test_taylor_fast_paths import Gated, Scaled

RTOL, ATOL = 1e-10, 1e-12
TAYLOR = ENGINES["taylor"]

# (name, {multi-index: weight}) on three coordinates (x, y, t) = (0, 1, 2)
BURGERS = {(2,): 1.0, (0, 0): -0.0032}
BURGERS_2D = {(1,): 1.0, (0, 0): -0.0032}  # on (x, t)
HEAT = {(2,): 1.0, (0, 0): -0.1, (1, 1): -0.1}
KDV = {(2,): 1.0, (0, 0, 0): 0.0025}
EVERYTHING = {(): 0.5, (0,): 2.0, (2,): -1.0, (0, 1): 0.3, (0, 0): 0.7, (0, 0, 0): 0.02, (1, 1, 1): -0.04}
WAVE = {(2, 2): 1.0, (0, 0): -4.0, (1, 1): -4.0}  # no first-order term: summed
FIRST_ORDER = {(0,): 1.0, (2,): -3.0}  # order one: summed
MIXED_TOP = {(2,): 1.0, (0, 1): -0.5}  # the carrier is one of the mixed partial's directions
COMBINATIONS = {
    "burgers": BURGERS, "heat": HEAT, "kdv": KDV, "everything": EVERYTHING,
    "wave": WAVE, "first-order": FIRST_ORDER, "mixed-top": MIXED_TOP,
}  # fmt: skip


def reference(u: nn.Module, x: torch.Tensor, weights: dict) -> torch.Tensor:
    return sum(w * ref.partial(u, x, index) for index, w in weights.items())


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def assert_matches(u: nn.Module, x: torch.Tensor, results: dict, expected: dict) -> None:
    """Each result against its reference, and the parameter gradients of one loss over all of them."""
    for key, value in expected.items():
        assert_close(results[key], value)
    keys = sorted(expected, key=str)
    total = sum(results[key] * (1 + i) for i, key in enumerate(keys))
    wanted = sum(expected[key] * (1 + i) for i, key in enumerate(keys))
    for a, e in zip(ref.parameter_gradients(u, total), ref.parameter_gradients(u, wanted)):
        assert_close(a, e)


NETS = {
    "tanh": lambda: mlp(3, 1, depth=3),
    "sin-2-outputs": lambda: mlp(3, 2, activation="sin"),
    "silu": lambda: mlp(3, 1, activation="silu"),
    "gated": lambda: Gated(3),
    "scaled": lambda: Scaled(3),
    "residual": lambda: Residual(3, 1),
    "ansatz": lambda: Ansatz(3, 1),
}


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_a_combination_equals_the_sum_of_its_reference_partials(net, name):
    u, x = NETS[net](), torch.rand(5, 3, dtype=torch.float64)
    combination = Combination.of(COMBINATIONS[name])
    results = TAYLOR.compute(u, x, Request(frozenset({(0,)}), combinations=frozenset({combination})))
    assert_matches(u, x, results, {combination: reference(u, x, COMBINATIONS[name]), (0,): ref.partial(u, x, (0,))})


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_the_combination_with_partials_beside_it(method):
    """Burgers' ``u_t - nu u_xx`` beside ``u`` and ``u_x``; ``u_xx`` asked as well takes the carrier away
    from ``e_x``, and two combinations on one direction are summed: all three plans, every method."""
    u, x = mlp(3, 1, depth=3), torch.rand(6, 3, dtype=torch.float64)
    op = do.Derivatives(
        u, coords=("x", "y", "t"), method=method,
        u=(), u_x="x", u_xx=("x", "x"), burgers={"t": 1.0, ("x", "x"): -0.0032},
        heat={"t": 1.0, ("x", "x"): -0.1, ("y", "y"): -0.1}, kdv={"t": 1.0, ("x", "x", "x"): 0.0025},
    )  # fmt: skip
    out = op(x)
    expected = {
        "u": u(x), "u_x": ref.partial(u, x, (0,)), "u_xx": ref.partial(u, x, (0, 0)),
        "burgers": reference(u, x, BURGERS), "heat": reference(u, x, HEAT), "kdv": reference(u, x, KDV),
    }  # fmt: skip
    assert_matches(u, x, out, expected)


def test_the_plans_fold_first_partials_into_a_direction_no_other_partial_reads():
    plan = fold(frozenset({(0,)}), frozenset({Combination.of(BURGERS_2D)}), 2)  # u_x, u_t - nu u_xx on (x, t)
    assert plan.truncation.counts == (1, 1)  # c_0, c_1 and c_2 along e_x: three slots, where four were
    ((order, row, b),) = plan.tops
    assert order == 2 and plan.truncation.interpolation.directions[row] == (1, 0)
    assert b == pytest.approx((0.0, 1 / (2 * -0.0032)))  # c_2 = u_xx / 2 + b . grad u, times -2 nu
    heat = Combination.of(HEAT)
    assert fold(frozenset(), frozenset({heat}), 3).truncation.counts == (2, 2)  # e_t needs no direction
    taken = fold(frozenset({(0, 0)}), frozenset({heat}), 3)  # u_xx read apart: the carrier is e_y
    assert taken.truncation.interpolation.directions[taken.tops[0][1]] == (0, 1, 0)
    kdv = fold(frozenset({(0,)}), frozenset({Combination.of(KDV)}), 3)
    assert kdv.truncation.counts == (1, 1, 1) and kdv.degree == 3
    for weights in (WAVE, FIRST_ORDER):
        plan = fold(frozenset(), frozenset({Combination.of(weights)}), 3)
        assert not plan.folds and len(plan.summed) == 1
    both = fold(frozenset(), frozenset({Combination.of(BURGERS), Combination.of({(1,): 1.0, (0, 0): 2.0})}), 3)
    assert not both.folds and len(both.summed) == 2  # each would spoil the other's c_2 along e_x


@pytest.mark.parametrize("method", ["taylor", "auto"])
def test_float32_chunks_and_names_match_the_float64_reference(method):
    u = mlp(2, 1, depth=3)
    x = torch.rand(9, 2, dtype=torch.float64)
    weights = {(1,): 1.0, (0, 0): -1e-4, (): -5.0}  # Allen-Cahn's linear part: a small weight on the top
    expected = reference(u, x, weights)
    r = {"t": 1.0, ("x", "x"): -1e-4, (): -5}
    op = do.Derivatives(u.float(), coords=("x", "t"), method=method, chunk_size=4, r=r)
    out = op(x.float())["r"]
    assert out.dtype == torch.float32
    assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_a_custom_operator_trains_on_a_folded_residual_as_on_its_partials():
    """One optimiser step on Burgers' residual written with a combination and with its partials apart."""

    class Folded(do.DifferentialOperator):
        def forward(self, x):
            d = self.derivatives(x, u=(), u_x="x", r={"t": 1.0, ("x", "x"): -0.0032})
            return d["r"] + d["u"] * d["u_x"]

    class Apart(do.DifferentialOperator):
        def forward(self, x):
            d = self.derivatives(x, u=(), u_x="x", u_t="t", u_xx=("x", "x"))
            return d["u_t"] + d["u"] * d["u_x"] - 0.0032 * d["u_xx"]

    torch.manual_seed(1)
    nets = [mlp(2, 1, depth=3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.rand(16, 2, dtype=torch.float64)
    for net, kind in zip(nets, (Folded, Apart)):
        optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
        kind(net, coords=("x", "t"), method="taylor")(x).pow(2).mean().backward()
        optimiser.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert_close(a, b)


def test_the_collapsed_plan_takes_laplacian_like_combinations_only():
    heat = Combination.of(HEAT)
    plan = collapse(frozenset({(0,), (1,)}), frozenset({heat}), 3)
    assert plan.axes == (0, 1) and plan.weight == -0.1 and plan.weights is None
    assert plan.top == (0.0, 0.0, 1 / (2 * -0.1))
    poisson = collapse(frozenset(), frozenset({Combination.of({(0, 0): 1.0, (1, 1): 1.0, (): 2.0})}), 2)
    assert poisson.axes == (0, 1) and poisson.value == 2.0 and poisson.top == (0.0, 0.0)
    wave = collapse(frozenset(), frozenset({Combination.of(WAVE)}), 3)  # signs differ: a weighted top
    assert wave.axes == (0, 1, 2) and wave.weights == (-4.0, -4.0, 1.0) and wave.weight == 1.0
    assert collapse(frozenset({(2,)}), frozenset({heat}), 3) is None  # u_t is no first partial along an axis
    assert collapse(frozenset({(0, 0)}), frozenset({heat}), 3) is None  # a second partial needs its own pass
    for weights in (KDV, MIXED_TOP, BURGERS):
        assert collapse(frozenset(), frozenset({Combination.of(weights)}), 3) is None
    assert collapse(frozenset(), frozenset({Combination.of(HEAT), Combination.of(BURGERS)}), 3) is None


COMPILED = {
    "burgers (folded on stacked jets)": ({"u": (), "r": {"t": 1.0, ("x", "x"): -0.0032}}, 1),
    "heat (collapsed)": ({"u_x": "x", "r": {"t": 1.0, ("x", "x"): -0.1, ("y", "y"): -0.1}}, 1),
    "poisson (collapsed)": ({"r": {("x", "x"): 1.0, ("y", "y"): 1.0, (): 3.0}}, 1),
    "navier-stokes (collapsed, three outputs)": (
        {"u": (), "u_x": "x", "u_y": "y", "r": {"t": 1.0, ("x", "x"): -0.01, ("y", "y"): -0.01}}, 3
    ),
    "wave (collapsed, weighted)": ({"r": {("t", "t"): 1.0, ("x", "x"): -4.0, ("y", "y"): -4.0}}, 1),
    "anisotropic (collapsed, weighted)": ({"u_y": "y", "r": {"t": 2.0, ("x", "x"): 0.5, ("y", "y"): -1.5}}, 1),
}


@pytest.mark.parametrize("net", ["tanh", "gated"])
@pytest.mark.parametrize("case", sorted(COMPILED))
def test_compiled_combinations_match_the_reference(case, net):
    """Under torch.compile(fullgraph=True), values and parameter gradients; the gated network's ``1 - z``
    on plain jets was refused compiled before (a reflected operator)."""
    spec, outputs = COMPILED[case]
    u = mlp(3, outputs, depth=3) if net == "tanh" else Gated(3, outputs)
    x = torch.rand(7, 3, dtype=torch.float64)
    op = do.Derivatives(u, coords=("x", "y", "t"), method="taylor", **spec)
    torch._dynamo.reset()  # each case its own graph
    compiled = torch.compile(lambda x: op(x), backend="aot_eager", fullgraph=True)
    out = compiled(x)
    expected = {}
    for name, what in spec.items():
        weights = what if isinstance(what, dict) else {what: 1.0}
        expected[name] = sum(w * ref.partial(u, x, named_index(key)) for key, w in weights.items())
    assert_matches(u, x, out, expected)


def named_index(key) -> tuple[int, ...]:
    """``"t"``, ``("x", "x")`` or ``()`` on the coordinates (x, y, t) as a sorted multi-index."""
    letters = key if isinstance(key, tuple) else (key,) if key else ()
    return tuple(sorted(("x", "y", "t").index(c) for c in letters))


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("name", ["heat", "wave", "anisotropic"])
def test_the_collapsed_pass_equals_the_reference_eagerly(net, name):
    """The compiled path's collapsed pass, run eagerly: every rule's weighted collapsed top (the elementwise
    rules, products, the gated network's sums), values and parameter gradients."""
    weights = {"heat": HEAT, "wave": WAVE, "anisotropic": {(2,): 2.0, (0, 0): 0.5, (1, 1): -1.5, (): 0.25}}[name]
    u, x = NETS[net](), torch.rand(5, 3, dtype=torch.float64)
    plan = collapse(frozenset({(), (1,)}), frozenset({Combination.of(weights)}), 3)
    results = collapsed(u, x, plan)
    expected = {plan.combination: reference(u, x, weights), (1,): ref.partial(u, x, (1,)), (): u(x)}
    assert_matches(u, x, results, expected)


def test_compiled_laplacian_of_a_gated_network():
    u, x = Gated(2), torch.rand(6, 2, dtype=torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(do.Laplacian(u, method="taylor"), backend="aot_eager", fullgraph=True)
    assert_close(compiled(x), ref.laplacian(u, x))



def test_an_all_zero_combination_is_zero_and_stays_in_the_graph():
    u, x = mlp(2, 1), torch.rand(4, 2, dtype=torch.float64)
    for method in METHODS:
        out = do.Derivatives(u, method=method, r={(0,): 0.0})(x)["r"]
        assert out.shape == (4, 1) and not out.any() and out.requires_grad


def test_the_symbol_reads_as_the_equation():
    op = do.Derivatives(mlp(2, 1), coords=("x", "t"), r={("x", "x"): -0.5, "t": 1, (): 2})
    assert str(op) == "{r: 2·u + ∂u/∂t - 0.5·∂²u/∂x²}"


def test_a_laplacian_like_combination_along_five_axes_or_more_collapses_eagerly(monkeypatch):
    from diffops.engines.taylor import engine

    calls = []
    original = engine.collapsed
    monkeypatch.setattr(engine, "collapsed", lambda fn, x, plan: calls.append(plan) or original(fn, x, plan))
    u, x = mlp(6, 1), torch.rand(5, 6, dtype=torch.float64)
    weights = {(5,): 1.0, **{(i, i): -0.1 * (1 + i) for i in range(engine.EAGER_AXES)}}
    out = do.Derivatives(u, method="taylor", r=weights)(x)["r"]
    assert len(calls) == 1 and calls[0].axes == tuple(range(engine.EAGER_AXES))
    assert_matches(u, x, {"r": out}, {"r": reference(u, x, weights)})
    fewer = {(5,): 1.0, **{(i, i): -0.1 for i in range(engine.EAGER_AXES - 1)}}
    do.Derivatives(u, method="taylor", r=fewer)(x)
    assert len(calls) == 1  # along fewer axes, eagerly: the stacked jets' fold


@pytest.mark.parametrize("method", METHODS)
def test_a_combination_takes_two_inputs_batch_dimensions_chunks_no_grad_and_empty_batches(method):
    from ..nets import TwoInputs

    u = TwoInputs(2, 1)
    x, t = torch.rand(4, 3, 2, dtype=torch.float64), torch.rand(4, 3, 1, dtype=torch.float64)
    weights = {"t": 1.0, ("x", "x"): -0.1, ("y", "y"): -0.2, (): 0.5}
    op = do.Derivatives(u, argnums=(0, 1), coords=("x", "y", "t"), method=method, chunk_size=5, r=weights)
    out = op(x, t)["r"]
    joint = lambda xt: u(xt[..., :2], xt[..., 2:])  # noqa: E731
    rows = torch.cat([x, t], dim=-1).reshape(-1, 3)
    expected = reference(joint, rows, {named_index(k): w for k, w in weights.items()}).reshape(4, 3, 1)
    assert_close(out, expected)
    with torch.no_grad():
        assert not op(x, t)["r"].requires_grad
    empty = op(x[:0], t[:0])["r"]
    assert empty.shape == (0, 3, 1) and empty.requires_grad


def _blocks() -> list[str]:
    from .. import test_conformance

    return sorted(test_conformance.BLOCKS)


@pytest.mark.parametrize("block", _blocks())
def test_the_weighted_collapsed_pass_is_exact_or_refuses_on_every_building_block(block):
    """A collapsed top with unequal weights (``u_xx - 3 u_yy``, the first partials folded in) through each
    block of the conformance matrix: the reference's values and parameter gradients, or a refusal."""
    from .. import test_conformance as conformance

    u, x = conformance.make(block)
    weights = {(0, 0): 1.0, (1, 1): -3.0, (1,): 0.5, (): 0.25}
    plan = collapse(frozenset({(0,)}), frozenset({Combination.of(weights)}), 2)
    assert plan.weights == (1.0, -3.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            actual = collapsed(u, x, plan)[plan.combination]
    except EngineUnsupported:
        return
    expected = reference(u, x, weights)
    tolerance = conformance.tolerances(actual.dtype)
    torch.testing.assert_close(actual.double(), expected.double(), **tolerance)
    for a, e in zip(conformance.gradients(u, actual), conformance.gradients(u, expected)):
        torch.testing.assert_close(a, e, **tolerance)
