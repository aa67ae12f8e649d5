"""The fast engine: ``method="taylor"``, forward propagation of truncated Taylor series.

One forward pass of the network on a :class:`~diffops.engines.jet.Jet` gives
the Taylor coefficients of ``t -> u(x + t v)`` along R directions at once, at
O(K^2) elementwise work per layer for order K, instead of the 2^K passes of
nested differentiation.  What each request reads off the jets:

* partials of any order (pure and mixed), the Jacobian and the Hessian: the
  univariate coefficients along the directions of :mod:`.interpolation`;
* the Laplacian: one *collapsed* jet of order 2 along the d unit vectors, whose
  top coefficient is the sum over directions (d + 2 vectors per layer), so its
  cost grows like the Jacobian's rather than the Hessian's.
"""

from __future__ import annotations

import math

import torch

from . import jet_functions, jet_linear, jet_products  # noqa: F401 - register the jet rules
from .base import BatchedFn, EngineUnsupported, MultiIndex, Request
from .interpolation import Direction, Interpolation, interpolate
from .jet import Jet


def propagate(fn: BatchedFn, x: torch.Tensor, directions: torch.Tensor, order: int, collapse: bool = False) -> Jet:
    """``fn`` on the jet of ``x + t v``: ``x: (N, d)``, ``directions: (R, N, d)``; the output jet.

    With ``collapse`` the top coefficient is summed over the directions.
    """
    coefficients = [x]
    if order >= 1:
        coefficients.append(directions.to(x.dtype))
        coefficients += [torch.zeros_like(coefficients[1])] * (order - 1)
    if collapse:
        coefficients[-1] = coefficients[-1].sum(0)
    try:
        out = fn(Jet(coefficients, collapse))
    except (TypeError, AttributeError) as error:  # the network treats its input as more than a tensor
        raise EngineUnsupported(
            f"Taylor mode cannot run this network on jets: {type(error).__name__}: {error}"
        ) from error
    if isinstance(out, Jet):
        return out
    constant = [out] + [torch.zeros_like(out).expand(directions.shape[0], *out.shape)] * order
    if collapse:
        constant[-1] = torch.zeros_like(out)
    return Jet(constant, collapse)


def along(directions: tuple[Direction, ...], x: torch.Tensor) -> torch.Tensor:
    """``(R, N, d)``: integer direction vectors, the same for every row of ``x``."""
    v = torch.tensor(directions, dtype=x.dtype, device=x.device).reshape(len(directions), 1, x.shape[1])
    return v.expand(len(directions), *x.shape)


def read_partials(out: Jet, interpolation: Interpolation) -> dict[MultiIndex, torch.Tensor]:
    """``{index: (N, *f)}``: each recipe's combination of one order's coefficients."""
    results = {}
    by_order: dict[int, list] = {}
    for index, recipe in interpolation.recipes.items():
        by_order.setdefault(recipe.order, []).append((index, recipe))
    for order, items in by_order.items():
        width = max(len(recipe.rows) for _, recipe in items)
        coefficient = out.coefficients[order]  # (R, N, *f)
        rows = torch.tensor([_padded(r.rows, width, 0) for _, r in items], device=coefficient.device)
        weights = torch.tensor(
            [_padded(r.weights, width, 0.0) for _, r in items], dtype=coefficient.dtype, device=coefficient.device
        )
        combined = torch.einsum("pw,pw...->p...", weights, coefficient[rows])  # (P, N, *f)
        results.update(zip((index for index, _ in items), combined.unbind(0)))
    return results


def _padded(values: tuple, width: int, fill) -> list:
    return list(values) + [fill] * (width - len(values))


def requested_partials(request: Request, d: int) -> set[MultiIndex]:
    """The partials of order >= 1 that ``request`` needs, its whole tensors spelled out."""
    partials = {index for index in request.partials if index}
    if "jacobian" in request.full:
        partials |= {(i,) for i in range(d)}
    if "hessian" in request.full:
        partials |= {(i, j) for i in range(d) for j in range(i, d)}
    return partials


def laplacian(fn: BatchedFn, x: torch.Tensor, first: set[MultiIndex]) -> tuple[torch.Tensor, dict]:
    """The Laplacian from one collapsed order-2 pass, plus the value and the ``first`` partials."""
    d = x.shape[1]
    units = tuple(tuple(int(i == j) for j in range(d)) for i in range(d))
    interpolation = interpolate(frozenset(first), d, units)
    out = propagate(fn, x, along(units, x), order=2, collapse=True)
    results = read_partials(out, interpolation)
    results[()] = out.primal
    return 2 * out.coefficients[2], results


class TaylorEngine:
    """``method="taylor"``."""

    name = "taylor"

    def compute(self, fn: BatchedFn, x: torch.Tensor, request: Request) -> dict:
        d = x.shape[1]
        partials = requested_partials(request, d)
        results: dict = {}
        if "laplacian" in request.full and "hessian" not in request.full:
            first = {index for index in partials if len(index) == 1}
            results["laplacian"], read = laplacian(fn, x, first)
            results.update(read)
            partials -= first
        if partials or not results:
            interpolation = interpolate(frozenset(partials), d)
            out = propagate(fn, x, along(interpolation.directions, x), interpolation.order)
            results.update(read_partials(out, interpolation))
            results[()] = out.primal
        self._assemble(results, request, d)
        return {key: results[key] for key in ((), *request.partials, *request.full)}

    @staticmethod
    def _assemble(results: dict, request: Request, d: int) -> None:
        """Add the Jacobian, Hessian and (from the Hessian) Laplacian built from the partials."""
        if "jacobian" in request.full:
            results["jacobian"] = torch.stack([results[(i,)] for i in range(d)], dim=-1)
        if "hessian" in request.full:
            rows = [torch.stack([results[tuple(sorted((i, j)))] for j in range(d)], dim=-1) for i in range(d)]
            results["hessian"] = torch.stack(rows, dim=-2)
            if "laplacian" in request.full:
                results["laplacian"] = sum(results[(i, i)] for i in range(d))

    def directional(self, fn: BatchedFn, x: torch.Tensor, directions: torch.Tensor, order: int) -> torch.Tensor:
        out = propagate(fn, x, directions, order)
        if order == 0:
            return out.primal.expand(directions.shape[0], *out.primal.shape)
        return math.factorial(order) * out.coefficients[order]
