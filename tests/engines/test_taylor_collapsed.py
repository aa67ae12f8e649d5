"""The collapsed jet under torch.compile (``taylor/collapsed.py``) against the ordinary rules and the reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diffops as do
from diffops.engines.taylor import collapsed
from diffops.engines.taylor.collapsed import TracedCollapsed
from diffops.engines.taylor.jet import Jet
from diffops.engines.taylor.stacked import FEW_FEATURES

from .. import reference as ref
from ..nets import Residual, mlp
from .test_taylor_fast_paths import Gated, assert_close

ACTIVATIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "sin": torch.sin,
    "softplus": F.softplus,
    "silu": F.silu,
}
FEATURES = {"the coordinates": (3, 4), "a hidden layer": (FEW_FEATURES + 1, FEW_FEATURES + 2), "one output": (9, 1)}


def _collapsed_jet(directions: int, sample: tuple, features: int, weighted: bool) -> Jet:
    """An ordinary collapsed jet of order 2 with random coefficients that require grad."""
    c0 = torch.randn(*sample, features, dtype=torch.float64, requires_grad=True)
    c1 = torch.randn(directions, *sample, features, dtype=torch.float64, requires_grad=True)
    c2 = torch.randn(*sample, features, dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([1.0, -4.0, 0.5][:directions], dtype=torch.float64) if weighted else None
    return Jet([c0, c1, c2], Jet.COLLAPSED, weights=weights)


def _stored(x: Jet) -> torch.Tensor:
    """``(F, S, *sample)``: the coefficients of ``x`` features first."""
    c0, c1, c2 = x.coefficients
    return torch.cat([c0[None], c1, c2[None]]).movedim(-1, 0).contiguous()


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("sample", [(5,), (3, 2)])
def test_a_layer_equals_the_ordinary_rules(activation, features, bias, weighted, sample):
    """``f(Linear(x))`` as one :class:`collapsed.CollapsedLayer`: the coefficients, and the gradients in the
    input's coefficients, the weight and the bias, equal autograd through the ordinary rules."""
    torch.manual_seed(0)
    f_in, f_out = FEATURES[features]
    x = _collapsed_jet(3, sample, f_in, weighted)
    weight = torch.randn(f_out, f_in, dtype=torch.float64, requires_grad=True)
    b = torch.randn(f_out, dtype=torch.float64, requires_grad=True) if bias else None
    f = ACTIVATIONS[activation]
    expected = f(F.linear(x, weight, b)).coefficients
    layer = f(F.linear(TracedCollapsed(_stored(x), x.weights), weight, b))
    assert type(layer) is TracedCollapsed and layer.pending is None  # one layer, not the ordinary rules
    actual = layer.coefficients
    inputs = [*x.coefficients, weight] + ([b] if bias else [])
    cotangents = [torch.randn_like(e) for e in expected]
    for a, e in zip(actual, expected):
        assert_close(a, e)
    grads = lambda out: torch.autograd.grad(out, inputs, cotangents)  # noqa: E731
    for a, e in zip(grads(actual), grads(expected)):
        assert_close(a, e)


def test_a_pending_linear_read_by_another_rule_is_applied_first():
    """A ``Linear`` that no activation takes (the output layer, a residual connection) is applied on reading."""
    torch.manual_seed(0)
    x = _collapsed_jet(2, (4,), FEW_FEATURES + 1, weighted=True)
    weight, b = torch.randn(3, FEW_FEATURES + 1, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    pending = F.linear(TracedCollapsed(_stored(x), x.weights), weight, b)
    assert type(pending) is TracedCollapsed and pending.shape == (4, 3) and pending.dim() == 2
    expected = F.linear(x, weight, b)
    for a, e in zip((pending + 1.0).coefficients, (expected + 1.0).coefficients):
        assert_close(a, e)
    twice = F.linear(pending, weight[:, :3], None)  # a Linear after a Linear: the first applied, the second pending
    for a, e in zip(twice.coefficients, F.linear(expected, weight[:, :3]).coefficients):
        assert_close(a, e)


def test_a_first_layer_read_by_another_rule_is_the_ordinary_layer_in_rows():
    """The layer on the coordinates keeps its features-first output for the next layer, and other rules read
    it as the ordinary rules compute it in rows (the compiler drops the unread one); later layers have no such
    copy."""
    torch.manual_seed(0)
    x = _collapsed_jet(2, (4,), 3, weighted=True)
    weight, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    entered = TracedCollapsed.entering(x, weight, b, lambda: F.linear(x, weight, b))
    for a, e in zip(entered.coefficients, F.linear(x, weight, b).coefficients):  # a Linear read by another rule
        assert_close(a, e)
    first = torch.tanh(TracedCollapsed.entering(x, weight, b, lambda: F.linear(x, weight, b)))
    expected = torch.tanh(F.linear(x, weight, b)).coefficients
    assert first.in_rows is not None
    stored = (first.store[:, 0], first.store[:, 1:-1], first.store[:, -1])
    for a, e, features_first in zip(first.coefficients, expected, stored):
        assert_close(a, e)
        assert_close(features_first.movedim(0, -1), e)
    second = torch.tanh(F.linear(first, torch.randn(5, 5, dtype=torch.float64)))
    assert type(second) is TracedCollapsed and second.in_rows is None


def test_only_a_compiled_jet_on_the_coordinates_enters():
    """Eagerly, or on a wide jet in rows that other rules left, the ordinary rules run."""
    x = _collapsed_jet(2, (4,), 3, weighted=False)
    weight = torch.randn(5, 3, dtype=torch.float64)
    assert not collapsed.enters(x, weight, None)  # eager
    assert type(F.linear(x, weight)) is Jet


class Attention(nn.Module):
    """Features split into two tokens that attend to each other (scaled dot-product), between tanh layers."""

    def __init__(self, d: int, m: int) -> None:
        super().__init__()
        self.first, self.qkv, self.out = nn.Linear(d, 10), nn.Linear(10, 30), nn.Linear(10, m)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.first(x))
        q, k, v = (t.unflatten(-1, (2, 5)) for t in torch.tanh(self.qkv(h)).chunk(3, dim=-1))
        return self.out(F.scaled_dot_product_attention(q, k, v).flatten(-2))


NETS = {
    "tanh, width 7 (multiply-adds)": lambda d, m: mlp(d, m, width=7, depth=3),
    "tanh, width 12": lambda d, m: mlp(d, m, width=12, depth=3),
    "sin": lambda d, m: mlp(d, m, width=10, activation="sin"),
    "silu": lambda d, m: mlp(d, m, width=10, activation="silu"),
    "residual": lambda d, m: Residual(d, m),
    "modified MLP": lambda d, m: Gated(d, m, width=10),
    "attention": lambda d, m: Attention(d, m),
    "every activation with derivatives": lambda d, m: nn.Sequential(
        nn.Linear(d, 10), nn.Sigmoid(), nn.Linear(10, 10), nn.Softplus(), nn.Linear(10, 10), nn.SiLU(),
        nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, m)
    ).double(),
    "layer norm": lambda d, m: nn.Sequential(
        nn.Linear(d, 10), nn.Tanh(), nn.Linear(10, 10), nn.LayerNorm(10), nn.Tanh(), nn.Linear(10, m)
    ).double(),
}
# Layers that run as one: those from the coordinates on, until a rule other than a Linear + activation reads a
# layer's output (the residual's sum, the modified MLP's products, the layer norm)
LAYERS = {"tanh, width 7 (multiply-adds)": 3, "tanh, width 12": 3, "sin": 2, "silu": 2, "residual": 2,
          "modified MLP": 3, "attention": 2, "every activation with derivatives": 4, "layer norm": 1}  # fmt: skip
_LAYERS: list = []  # module-level: compiled, dynamo dropped appends to a test's local list from a patched method

COMBINATIONS = {
    "heat": ({"u_x": "x", "r": {"t": 1.0, ("x", "x"): -0.1, ("y", "y"): -0.1}}, 1),
    "wave (weighted), three outputs": ({"r": {("t", "t"): 1.0, ("x", "x"): -4.0, ("y", "y"): -4.0}}, 3),
}


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("case", COMBINATIONS)
def test_compiled_laplacian_likes_run_the_layers_and_match_the_reference(net, case, monkeypatch):
    """Compiled (``fullgraph=True``), a Laplacian-like combination runs each ``Linear`` + activation as one
    layer; values and parameter gradients equal the float64 reference."""
    torch.manual_seed(0)
    spec, outputs = COMBINATIONS[case]
    u, x = NETS[net](3, outputs), torch.rand(6, 3, dtype=torch.float64)
    _LAYERS.clear()
    activated = TracedCollapsed.activated
    monkeypatch.setattr(TracedCollapsed, "activated", lambda self, *a: _LAYERS.append(1) or activated(self, *a))
    op = do.Derivatives(u, coords=("x", "y", "t"), method="taylor", **spec)
    torch._dynamo.reset()
    out = torch.compile(lambda x: op(x), backend="aot_eager", fullgraph=True)(x)
    assert len(_LAYERS) == LAYERS[net]
    coords, expected = ("x", "y", "t"), {}
    for name, what in spec.items():
        weights = what if isinstance(what, dict) else {what: 1.0}
        expected[name] = sum(w * ref.partial(u, x, tuple(sorted(map(coords.index, k)))) for k, w in weights.items())
        assert_close(out[name], expected[name])
    total = lambda values: sum((1 + i) * values[name] for i, name in enumerate(spec))  # noqa: E731 - one backward
    for a, e in zip(ref.parameter_gradients(u, total(out)), ref.parameter_gradients(u, total(expected))):
        assert_close(a, e)


def test_in_float32_the_ordinary_rules_run(monkeypatch):
    """In float32 the products in rows ran as fast as features first, and the compiled steps faster."""
    u, x = mlp(2, 1, width=12).float(), torch.rand(6, 2)
    _LAYERS.clear()
    activated = TracedCollapsed.activated
    monkeypatch.setattr(TracedCollapsed, "activated", lambda self, *a: _LAYERS.append(1) or activated(self, *a))
    torch._dynamo.reset()
    out = torch.compile(do.Laplacian(u, method="taylor"), backend="aot_eager", fullgraph=True)(x)
    assert not _LAYERS
    torch.testing.assert_close(out, ref.laplacian(u.double(), x.double()).float(), rtol=1e-4, atol=1e-5)


def test_inductor_compiles_the_laplacian_exactly():
    """The same through inductor, the backend users compile with: a training step's loss and gradients."""
    torch.manual_seed(0)
    u, x = mlp(2, 1, width=12, depth=3), torch.rand(8, 2, dtype=torch.float64)
    op = do.Laplacian(u, method="taylor")
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: op(x).square().mean(), fullgraph=True)
    expected = ref.laplacian(u, x).square().mean()
    assert_close(compiled(x), expected)
    for a, e in zip(ref.parameter_gradients(u, compiled(x)), ref.parameter_gradients(u, expected)):
        assert_close(a, e)
