"""The fused layer under torch.compile (``rules/traced.py``) against the plain series and the float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd

from diffops.engines import Request
from diffops.engines.base import Combination
from diffops.engines.taylor import folding
from diffops.engines.taylor.engine import readout
from diffops.engines.taylor.folding import fold, input_stack
from diffops.engines.taylor.rules import fused, traced
from diffops.engines.taylor.rules.traced import TracedLayer
from diffops.engines.taylor.stacked import FEW_FEATURES, Stacked, feature_major, linear_on_coordinates

from .. import reference as ref
from .test_taylor_fast_paths import NETS, REQUESTS, TAYLOR, assert_close, assert_matches_reference

SHAPES = {  # counts, degree of the input, sample shape
    "burgers": ((2, 1), 1, (5,)),
    "burgers, inner layer": ((2, 1), 2, (5,)),
    "order four": ((3, 2, 2, 1), 4, (4,)),
    "two sample dimensions": ((2, 2, 1), 3, (3, 2)),
}


FEATURES = {  # in, out: the coordinates' products run as multiply-adds, a hidden layer's as matrix products
    "the coordinates": (3, 4),
    "a hidden layer": (FEW_FEATURES + 1, FEW_FEATURES + 2),
}


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "sin"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("linear", ["weight and bias", "weight", "none"])
@pytest.mark.parametrize("features", FEATURES)
def test_the_traced_layer_matches_the_plain_series(activation, shape, linear, features):
    """Values, and gradients in the stack, weight and bias, equal autograd through :func:`fused.layer`."""
    torch.manual_seed(0)
    counts, degree, sample = SHAPES[shape]
    f_in, f_out = FEATURES[features]
    f_out = f_out if linear != "none" else f_in
    stack = torch.randn(1 + sum(counts[:degree]), *sample, f_in, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(f_out, f_in, dtype=torch.float64, requires_grad=True) if linear != "none" else None
    bias = torch.randn(f_out, dtype=torch.float64, requires_grad=True) if linear == "weight and bias" else None
    act = fused.ACTIVATIONS[activation]
    actual = TracedLayer.apply(stack, weight, bias, act, counts, degree)
    expected = fused.layer(act, counts, degree, stack, weight, bias)
    assert_close(actual, expected)
    assert feature_major(actual)  # stored features first, read by the next layer without a copy
    inputs = [t for t in (stack, weight, bias) if t is not None]
    cotangent = torch.randn_like(expected)
    for a, e in zip(torch.autograd.grad(actual, inputs, cotangent), torch.autograd.grad(expected, inputs, cotangent)):
        assert_close(a, e)


def _compiled_partials(u, x, partials, monkeypatch) -> tuple[dict, int]:
    """``TAYLOR.compute`` under ``torch.compile(fullgraph=True)``, and how many layers ran the traced layer."""
    calls = []

    def counted(*args):
        calls.append(1)
        return traced.traced_layer(*args)

    monkeypatch.setattr(fused, "traced_layer", counted)
    torch._dynamo.reset()
    compute = torch.compile(lambda x: TAYLOR.compute(u, x, Request(partials)), backend="aot_eager", fullgraph=True)
    return compute(x), len(calls)


UNFUSED = {"silu (ordinary rules)", "ansatz"}  # SiLU has no fused rule
CASES = [(net, "burgers", 1) for net in NETS] + [
    ("tanh", "kdv", 1),
    ("sin", "beam", 1),
    ("gated", "mixed to order four", 1),
    ("sigmoid", "navier-stokes", 3),
]


@pytest.mark.parametrize("net, request_name, d_out", CASES)
def test_compiled_values_and_parameter_gradients_match_the_reference(net, request_name, d_out, monkeypatch):
    torch.manual_seed(0)
    u = NETS[net](3, d_out)
    x = torch.randn(5, 3, dtype=torch.float64)
    partials = frozenset(REQUESTS[request_name])
    results, calls = _compiled_partials(u, x, partials, monkeypatch)
    assert (calls > 0) == (net not in UNFUSED)
    assert_matches_reference(u, x, results)


def test_under_vmap_inside_torch_compile_the_plain_series_runs(monkeypatch):
    """torch.func transforms inside a compiled function take the plain series (the traced layer has no vmap rule)."""
    torch.manual_seed(0)
    u = NETS["tanh"](2, 1)
    xs = torch.randn(3, 4, 2, dtype=torch.float64)
    calls = []
    monkeypatch.setattr(fused, "traced_layer", lambda *args: calls.append(1) or traced.traced_layer(*args))
    torch._dynamo.reset()
    second = lambda x: TAYLOR.compute(u, x, Request(frozenset({(0, 0)})))[(0, 0)]  # noqa: E731
    out = torch.compile(lambda xs: torch.func.vmap(second)(xs), backend="aot_eager", fullgraph=True)(xs)
    assert not calls
    for i in range(len(xs)):
        assert_close(out[i], ref.partial(u, xs[i], (0, 0)))


@pytest.mark.slow
def test_inductor_compiles_the_traced_layer_exactly():
    torch.manual_seed(0)
    u = NETS["tanh"](2, 1)
    x = torch.randn(6, 2, dtype=torch.float64)
    partials = frozenset(REQUESTS["burgers"])
    torch._dynamo.reset()
    results = torch.compile(lambda x: TAYLOR.compute(u, x, Request(partials)), fullgraph=True)(x)
    assert_matches_reference(u, x, results)


def test_other_rules_read_a_chain_start_in_rows_as_the_plain_series_computes_it():
    """A traced layer fed by the coordinates keeps its features-first stack for the next fused layer;
    any other rule reads the layer computed again in rows (the compiler drops the unread one)."""
    torch.manual_seed(0)
    x = Stacked(torch.randn(3, 5, 2, dtype=torch.float64), (2, 1), degree=1)
    wide = FEW_FEATURES  # the hidden layers' width: fewer are read as coordinates
    weight, bias = torch.randn(wide, 2, dtype=torch.float64), torch.randn(wide, dtype=torch.float64)
    act = fused.ACTIVATIONS["tanh"]
    out = traced.traced_layer(act, x, weight, bias)
    assert feature_major(out.stack)
    rows = out.resolved().stack
    assert rows.is_contiguous() and not feature_major(rows)
    assert_close(rows, fused.layer(act, x.counts, x.degree, x.stack, weight, bias))
    assert_close(out.stack, rows)
    inner_weight = torch.randn(wide, wide, dtype=torch.float64)
    inner = traced.traced_layer(act, Stacked(out.stack, out.counts, out.degree), inner_weight, None)
    assert feature_major(inner.stack) and type(inner) is Stacked  # inside a chain: read through the usual transpose


@pytest.mark.parametrize("features", [1, 3, FEW_FEATURES])
@pytest.mark.parametrize("with_bias", [True, False])
def test_a_linear_on_the_coordinates_compiled_equals_f_linear(features, with_bias):
    """Compiled, the multiply-adds over the coordinates give ``F.linear``'s value and gradients."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, features, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, features, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True) if with_bias else None
    torch._dynamo.reset()
    compiled = torch.compile(linear_on_coordinates, backend="aot_eager", fullgraph=True)
    actual, expected = compiled(x, weight, bias), torch.nn.functional.linear(x, weight, bias)
    assert_close(actual, expected)
    inputs = [t for t in (x, weight, bias) if t is not None]
    cotangent = torch.randn_like(expected)
    for a, e in zip(torch.autograd.grad(actual, inputs, cotangent), torch.autograd.grad(expected, inputs, cotangent)):
        assert_close(a, e)


def _graph_ops(fn, *args) -> set:
    """The ops of ``fn``'s graph as AOTAutograd traces it (forward), and the compiled result."""
    ops = set()

    def backend(gm, inputs):
        def record(graph, _inputs):
            ops.update(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
            return graph

        return aot_autograd(fw_compiler=record)(gm, inputs)

    torch._dynamo.reset()
    return ops, torch.compile(fn, backend=backend, fullgraph=True)(*args)


@pytest.mark.parametrize("by_sigmoid", [True, False])
def test_compiled_tanh_on_the_cpu_is_the_sigmoid_form_within_float32_roundoff(by_sigmoid, monkeypatch):
    """Compiled on the CPU, ``tanh_value`` runs ``2 sigmoid(2a) - 1`` (the switch off: ``tanh``), within
    2.4e-7 of tanh in float32; saturated, infinite and NaN inputs give tanh's ``+-1`` and NaN."""
    monkeypatch.setattr(fused, "TANH_BY_SIGMOID", by_sigmoid)
    a = torch.cat([torch.linspace(-12, 12, 20001), torch.tensor([-1e30, 1e30, -math.inf, math.inf, 0.0])])
    ops, value = _graph_ops(fused.tanh_value, a)
    assert ("aten.sigmoid.default" in ops) == by_sigmoid and ("aten.tanh.default" in ops) != by_sigmoid
    expected = torch.tanh(a.double())
    assert (value.double() - expected).abs().max() <= 2.4e-7
    assert value[-5:-1].tolist() == [-1.0, 1.0, -1.0, 1.0] and value[-1] == 0
    assert torch.isnan(torch.compile(fused.tanh_value, backend="aot_eager")(torch.tensor([math.nan]))).all()
    assert torch.equal(fused.tanh_value(a), torch.tanh(a))  # eagerly tanh itself


def test_compiled_the_coordinates_stack_is_stored_features_first(monkeypatch):
    """Traced, the input stack is stored ``(d, S, N)``, the layout of the compiled layers, with the same values;
    its first fused layer is still a chain start, which other rules read in rows."""
    burgers = Combination.of({(1,): 1.0, (0, 0): -0.01})  # u_t - nu u_xx: u_t rides on a top coefficient
    plan = fold(frozenset({(0,)}), frozenset({burgers}), 2)
    x = torch.randn(5, 2, dtype=torch.float64)
    directions, _ = readout(plan.truncation.interpolation, x)
    rows = input_stack(plan, x, directions)
    assert plan.tops and rows.shape == (1 + sum(plan.truncation.counts[: plan.degree]), 5, 2)
    monkeypatch.setattr(folding, "traced", lambda: True)
    stored = input_stack(plan, x, directions)
    assert not feature_major(rows) and feature_major(stored) and stored.movedim(-1, 0).is_contiguous()
    assert torch.equal(stored, rows)
    weight = torch.randn(4, 2, dtype=torch.float64)
    counts, degree, tanh = plan.truncation.counts, plan.degree, fused.ACTIVATIONS["tanh"]
    out = traced.traced_layer(tanh, Stacked(stored, counts, degree=degree), weight, None)
    assert type(out) is not Stacked and feature_major(out.stack)
    assert_close(out.resolved().stack, fused.layer(tanh, counts, degree, rows, weight, None))
