"""The auto rule ranks engines by the measured cost model of ``engines/choice.py``."""

from __future__ import annotations

import pytest

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
