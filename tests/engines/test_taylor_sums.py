"""Sums and products of stacked jets kept as polynomials and factored (``engines/taylor/rules/sums.py``)."""

from __future__ import annotations

import operator
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from diffops.engines import ENGINES, Request
from diffops.engines.taylor.rules import fused, sums
from diffops.engines.taylor.stacked import COLUMNS, Stacked, feature_major

from .. import reference as ref
from .test_taylor_fast_paths import (
    REQUESTS,
    Gated,
    assert_close,
    assert_matches_reference,
    assert_parameter_gradients_under_torch_func_match,
)

TAYLOR = ENGINES["taylor"]


class Expression(nn.Module):
    """Three stacked jets ``z, u, v`` of the input (and the input ``x``), combined by ``expression``, then read
    by a ``Linear``: ``expression(z, u, v, x)`` gives one tensor or several, each read by its own layer."""

    def __init__(self, d: int, expression: Callable, d_out: int = 2, width: int = 5) -> None:
        super().__init__()
        self.z, self.u, self.v = nn.Linear(d, width), nn.Linear(d, width), nn.Linear(d, width)
        self.reads = nn.ModuleList([nn.Linear(width, d_out) for _ in range(3)])
        self.expression, self.d = expression, d
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, u, v = torch.tanh(self.z(x)), torch.sin(self.u(x)), torch.sigmoid(self.v(x))
        out = self.expression(z, u, v, x.narrow(-1, 0, 1).expand(*x.shape[:-1], z.shape[-1]))
        outputs = out if isinstance(out, tuple) else (out,)
        return sum(read(h) for read, h in zip(self.reads, outputs))


def _read_twice(z, u, v, x):
    product = z * u  # taken over by the sum below, and read by a layer of its own as well
    return product + v, product


def _read_by_two_sums(z, u, v, x):
    gate = (1 - z) * u
    return gate + z * v, gate - 2 * v


EXPRESSIONS = {
    "gate": lambda z, u, v, x: (1 - z) * u + z * v,
    "one factor in three products": lambda z, u, v, x: z * u + z * v - 3 * z * x,
    "no shared factor": lambda z, u, v, x: z * u + v * x,
    "square": lambda z, u, v, x: z * z - 2 * z + 1,
    "product of sums": lambda z, u, v, x: (z + 1) * (u - 2 * v),
    "three factors": lambda z, u, v, x: (z * u) * v + u,
    "product of two products": lambda z, u, v, x: (z * u) * (v * x),
    "numbers on either side": lambda z, u, v, x: 3 - 0.5 * (z * u) + 2 * v * 4 - 1.5,
    "alpha": lambda z, u, v, x: torch.sub(z * u, v, alpha=2) + torch.add(u, z * v, alpha=0.5),
    "the input, of degree one": lambda z, u, v, x: x * z + x * x - x,
    "a difference to zero": lambda z, u, v, x: z * u - u * z + v,
    "a product read twice": _read_twice,
    "a gate read by two sums": _read_by_two_sums,
    "then an activation": lambda z, u, v, x: torch.tanh(z * u + v) * v,
}


@pytest.mark.parametrize("request_name", ["burgers", "kdv", "mixed to order four"])
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_values_and_parameter_gradients_match_the_reference(expression, request_name):
    torch.manual_seed(0)
    u = Expression(3, EXPRESSIONS[expression])
    x = torch.randn(5, 3, dtype=torch.float64)
    assert_matches_reference(u, x, TAYLOR.compute(u, x, Request(frozenset(REQUESTS[request_name]))))


def test_sums_and_products_wait_until_read():
    z, u, v = (Stacked(torch.randn(4, 3, 5, dtype=torch.float64), (2, 1), degree=2) for _ in range(3))
    h = (1 - z) * u + z * v
    assert h.deferred is not None and h.unread is h.deferred
    assert h.shape == (3, 5) and h.dtype == torch.float64 and h.degree == 2
    p = h.deferred
    named = {frozenset(id(p.atoms[i]) for i in m): c for m, c in p.terms.items()}
    assert named == {frozenset({id(u)}): 1, frozenset({id(z), id(u)}): -1, frozenset({id(z), id(v)}): 1}
    complement = torch.cat([(1 - z.stack[0])[None], -z.stack[1:]])  # 1 - z: the 1 on c_0 only
    expected = sums.cauchy_product(complement, u.stack, (2, 1), 2, 2) + sums.cauchy_product(
        z.stack, v.stack, (2, 1), 2, 2
    )
    assert_close(h.stack, expected)
    assert h.unread is None


def test_the_gates_of_the_modified_mlp_run_one_product_each_and_share_v_minus_u(monkeypatch):
    products, sums_of_atoms = [], []
    product, sum_of_atoms = sums._Product.apply, sums._sum_of_atoms
    monkeypatch.setattr(sums._Product, "apply", lambda *args: products.append(1) or product(*args))
    monkeypatch.setattr(sums, "_sum_of_atoms", lambda p, w: sums_of_atoms.append(len(w)) or sum_of_atoms(p, w))
    torch.manual_seed(0)
    u = Gated(2, 1)  # two gates
    x = torch.randn(6, 2, dtype=torch.float64)
    results = TAYLOR.compute(u, x, Request(frozenset(REQUESTS["burgers"])))
    assert len(products) == 2  # written as two products a gate
    assert sums_of_atoms.count(2) == 1  # v - u, for both gates
    assert_matches_reference(u, x, results)


def test_the_gates_run_on_stacks_as_the_chains_leave_them_feature_major(monkeypatch):
    """No copy into rows between the chains and the gates, either way: the products read, write and take
    gradients feature-major, and the chain after a gate multiplies its weight from the left."""
    layouts: dict[str, list] = {"product": [], "factor gradient": [], "chain": []}
    product, factor_grad, chain = sums._Product.apply, sums._factor_grad, fused._FusedChain.apply

    def recorded_product(counts, da, db, a, b):
        out = product(counts, da, db, a, b)
        layouts["product"].append((feature_major(a), feature_major(b), feature_major(out)))
        return out

    def recorded_factor_grad(grad, other, counts, degrees):
        out = factor_grad(grad, other, counts, degrees)
        layouts["factor gradient"].append((feature_major(grad), feature_major(other), feature_major(out)))
        return out

    def recorded_chain(activations, counts, degree, layout, stack, *params):
        layouts["chain"].append(layout)
        return chain(activations, counts, degree, layout, stack, *params)

    monkeypatch.setattr(sums._Product, "apply", recorded_product)
    monkeypatch.setattr(sums, "_factor_grad", recorded_factor_grad)
    monkeypatch.setattr(fused._FusedChain, "apply", recorded_chain)
    torch.manual_seed(0)
    u = Gated(2, 1)
    x = torch.randn(6, 2, dtype=torch.float64)
    results = TAYLOR.compute(u, x, Request(frozenset(REQUESTS["burgers"])))
    assert_matches_reference(u, x, results)
    assert layouts["product"] == [(True, True, True)] * 2
    assert layouts["factor gradient"] == [(True, True, True)] * 4
    assert set(layouts["chain"]) == {COLUMNS}


def test_under_torch_func_and_without_grad_the_polynomials_run_as_plain_ops():
    torch.manual_seed(0)
    u = Expression(2, EXPRESSIONS["gate"])
    x = torch.randn(4, 2, dtype=torch.float64)
    assert_parameter_gradients_under_torch_func_match(u, x)
    partials = frozenset({(0, 0), (1,)})
    with torch.no_grad():
        results = TAYLOR.compute(u, x, Request(partials))
    for index in partials:
        assert_close(results[index], ref.partial(u, x, index))


def test_jets_of_two_dtypes_run_at_once_and_promote_as_tensors_do():
    z = Stacked(torch.randn(4, 3, 5, dtype=torch.float64), (2, 1), degree=2)
    u = Stacked(torch.randn(4, 3, 5), (2, 1), degree=2)
    product = z * u
    assert product.deferred is None and product.dtype == torch.float64
    assert_close(product.stack, sums.cauchy_product(z.stack, u.stack.double(), (2, 1), 2, 2))


OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
LEAVES = st.sampled_from(["z", "u", "v", "x"]) | st.integers(-3, 3).map(lambda k: k / 2)
TREES = st.recursive(LEAVES, lambda inner: st.tuples(st.sampled_from(sorted(OPERATIONS)), inner, inner), max_leaves=7)


def _evaluate(tree, jets: dict):
    if isinstance(tree, tuple):
        name, left, right = tree
        return OPERATIONS[name](_evaluate(left, jets), _evaluate(right, jets))
    return jets[tree] if isinstance(tree, str) else tree


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=TREES, request_name=st.sampled_from(["burgers", "kdv"]), seed=st.integers(0, 2**16))
def test_random_sums_and_products_match_the_reference(tree, request_name, seed):
    """Any expression of sums, differences and products of jets and numbers, deferred and factored, is exact."""

    def expression(z, u, v, x):
        value = _evaluate(tree, {"z": z, "u": u, "v": v, "x": x})
        return value + z if isinstance(value, float) else value  # a number alone: no jet to read

    torch.manual_seed(seed)
    u = Expression(3, expression)
    x = torch.randn(4, 3, dtype=torch.float64)
    assert_matches_reference(u, x, TAYLOR.compute(u, x, Request(frozenset(REQUESTS[request_name]))))
