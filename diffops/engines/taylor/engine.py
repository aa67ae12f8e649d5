"""The fast engine: ``method="taylor"``, forward propagation of truncated Taylor series.

One forward pass of the network on a :class:`~diffops.engines.taylor.jet.Jet` gives
the Taylor coefficients of ``t -> u(x + t v)`` along R directions at once, at
O(K^2) elementwise work per layer for order K, instead of the 2^K passes of
nested differentiation.  What each request reads off the jets:

* partials of any order (pure and mixed), the Jacobian and the Hessian: the
  univariate coefficients along the directions of :mod:`.interpolation`;
* the Laplacian: one *collapsed* jet of order 2 along the d unit vectors, whose
  top coefficient is the sum over directions (d + 2 vectors per layer), so its
  cost grows like the Jacobian's rather than the Hessian's;
* a linear combination of partials: its order-K terms off the top coefficients,
  its first partials folded into them (:mod:`.folding`).
"""

from __future__ import annotations

import math

import torch

from ..base import BatchedFn, EngineUnsupported, MultiIndex, Request, compute_along, entered
from ..compiling import dispatch_functionals, open_tuples, trace_object_matmul
from . import rules  # noqa: F401 - register the jet rules
from .folding import Collapse, FoldedPlan, collapse, fold, input_stack
from .interpolation import Direction, Interpolation
from .jet import Jet
from .rules import fused, sums  # noqa: F401 - after the ordinary rules, which they hand every other case
from .stacked import Stacked


def propagate(
    fn: BatchedFn,
    x: torch.Tensor,
    directions: torch.Tensor,
    order: int,
    collapse: bool = False,
    top: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Taylor coefficients of ``t -> fn(x + t v)``: ``x: (N, d)``, ``directions: (R, N, d)``.

    Returns ``[c_0: (N, *f), c_1 .. c_K: (R, N, *f)]``; with ``collapse`` the top
    coefficient is summed over the directions, ``(N, *f)``, with ``weights: (R,)`` if
    given.  ``top``: ``(d,)``, the input's collapsed top coefficient, ``x + t v + t^K top``
    (:class:`.folding.Collapse`).
    """
    r = directions.shape[0]
    form = Jet.SINGLE if r == 1 else Jet.COLLAPSED if collapse else Jet.DIRECTIONS
    v = (directions[0] if form == Jet.SINGLE else directions).to(x.dtype)
    zero = torch.zeros((), dtype=x.dtype, device=x.device).expand(v.shape)  # x + t v has no higher terms
    inputs = [x] + ([v] + [zero] * (order - 1) if order else [])
    if form == Jet.COLLAPSED:
        inputs[-1] = inputs[-1].sum(0)
    if top is not None:
        inputs[-1] = top.to(x.dtype).expand(x.shape)
    out = _run(fn, Jet(inputs, form, min(order, 1) if top is None else order, weights if collapse else None))
    if not isinstance(out, Jet):  # the output does not depend on x
        out = Jet([out] + [torch.zeros_like(out)] * order, Jet.SINGLE)
    primal = out.primal
    coefficients = [primal]
    for k, c in enumerate(out.coefficients[1:], start=1):
        if primal.requires_grad and not c.requires_grad:  # known zero: still a function of the parameters
            c = c + 0 * primal
        top = collapse and k == order
        coefficients.append(c.expand(r, *c.shape) if out.shared(k) and not top else c)
    return coefficients


def propagate_truncated(fn: BatchedFn, x: torch.Tensor, folded: FoldedPlan) -> list[torch.Tensor]:
    """``[c_0: (N, *f), c_1: (R_1, N, *f), .., c_K: (R_K, N, *f)]`` along the plan's directions, each to its order.

    The network runs on a :class:`~.stacked.Stacked` jet; where it leaves the
    fused rules the ordinary ones take over, and the ``c_k`` come back padded
    to ``R_1`` directions (the rows read are the first ``R_k`` either way).
    The input is ``x + t v`` along each direction, plus the plan's ``t^K b`` terms.
    """
    plan = folded.truncation
    v, _ = readout(plan.interpolation, x)  # (R, d)
    stack = input_stack(folded, x, v)  # (S, N, d)
    out = _run(fn, Stacked(stack, plan.counts, degree=folded.degree))
    if isinstance(out, Stacked):
        coefficients = out.pieces()
    elif isinstance(out, Jet):
        coefficients = [c if k == 0 or not out.shared(k) else c.expand(plan.counts[0], *c.shape)
                        for k, c in enumerate(out.coefficients)]  # fmt: skip
    else:  # the output does not depend on x
        coefficients = [out] + [torch.zeros_like(out).expand(r, *out.shape) for r in plan.counts]
    primal = coefficients[0]
    if primal.requires_grad:  # known zeros: still functions of the parameters
        coefficients = [c if c.requires_grad else c + 0 * primal for c in coefficients]
    return coefficients


def _run(fn: BatchedFn, jet: Jet):
    """``fn(jet)``; a network that treats its input as more than a tensor is unsupported."""
    if torch.compiler.is_compiling():
        dispatch_functionals()  # F.tanh and three more reach the jet's rules, as they do eagerly
        trace_object_matmul()  # and jet @ jet
        open_tuples()  # and torch.cat((x, t), 1) of jets
    try:
        return entered(fn)(jet)
    except (TypeError, AttributeError) as error:
        why = f"{type(error).__name__}: {error}"
        raise EngineUnsupported(f"Taylor mode cannot run this network on jets: {why}") from error


def along(directions: tuple[Direction, ...], x: torch.Tensor) -> torch.Tensor:
    """``(R, N, d)``: integer direction vectors, the same for every row of ``x``."""
    v = torch.tensor(directions, dtype=x.dtype, device=x.device).reshape(len(directions), 1, x.shape[1])
    return v.expand(len(directions), *x.shape)


def readout(interpolation: Interpolation, like: torch.Tensor) -> tuple[torch.Tensor, list[tuple]]:
    """The directions ``(R, d)`` and, per order, ``(indices, rows: (P, W), weights: (P, W))`` of the recipes.

    Built once per dtype and device and kept on ``interpolation`` (built afresh
    while compiling, where the graph holds them as constants).
    """
    key = (like.dtype, like.device)
    cached = None if torch.compiler.is_compiling() else interpolation.tensors.get(key)
    if cached is not None:
        return cached
    by_order: dict[int, list] = {}
    for index, recipe in interpolation.recipes.items():
        by_order.setdefault(recipe.order, []).append((index, recipe))
    orders = []
    for order, items in by_order.items():
        width = max(len(recipe.rows) for _, recipe in items)
        rows = torch.tensor([_padded(r.rows, width, 0) for _, r in items], device=like.device)
        weights = torch.tensor([_padded(r.weights, width, 0.0) for _, r in items], dtype=like.dtype, device=like.device)
        orders.append((order, tuple(index for index, _ in items), rows, weights))
    directions = torch.tensor(interpolation.directions, dtype=like.dtype, device=like.device)
    cached = (directions, orders)
    if not torch.compiler.is_compiling():
        interpolation.tensors[key] = cached
    return cached


def read_partials(coefficients: list[torch.Tensor], interpolation: Interpolation) -> dict[MultiIndex, torch.Tensor]:
    """``{index: (N, *f)}``: each recipe's combination of one order's coefficients.

    A partial along one direction (``u_t``, ``u_xx``) is that direction's
    coefficient times a number: read off directly, without the gather and
    product of the general combination (two autograd nodes fewer a partial).
    """
    results = {}
    for order, indices, rows, weights in readout(interpolation, coefficients[0])[1]:
        if all(len(interpolation.recipes[index].rows) == 1 for index in indices):
            for index in indices:
                recipe = interpolation.recipes[index]
                (row,), (weight,) = recipe.rows, recipe.weights
                coefficient = coefficients[order][row]
                results[index] = coefficient if weight == 1 else weight * coefficient
            continue
        combined = torch.einsum("pw,pw...->p...", weights, coefficients[order][rows])  # (P, N, *f)
        results.update(zip(indices, combined.unbind(0)))
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


def collapsed_pass(
    fn: BatchedFn,
    x: torch.Tensor,
    axes: tuple[int, ...],
    top: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """``[c_0, c_1: (len(axes), N, *f), c_2]``: one collapsed order-2 jet along the unit vectors of ``axes``.

    Along a unit vector, ``c_1`` is the partial in that coordinate, so first
    partials are read off directly; ``top`` and ``weights`` as for :func:`propagate`.
    """
    units = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)[list(axes), None, :]
    return propagate(fn, x, units.expand(len(axes), *x.shape), 2, collapse=True, top=top, weights=weights)


def laplacian(fn: BatchedFn, x: torch.Tensor, first: set[MultiIndex]) -> tuple[torch.Tensor, dict]:
    """The Laplacian from one collapsed order-2 pass, plus the value and the ``first`` partials."""
    coefficients = collapsed_pass(fn, x, tuple(range(x.shape[1])))
    results = {index: coefficients[1][index[0]] for index in first}
    results[()] = coefficients[0]
    return 2 * coefficients[2], results


def collapsed(fn: BatchedFn, x: torch.Tensor, plan: Collapse) -> dict:
    """The value, the first partials along ``plan.axes`` and the combination, from one collapsed pass."""
    c = collapsed_pass(fn, x, plan.axes, *plan.constants(x))
    results = {(i,): c[1][r] for r, i in enumerate(plan.axes)}
    combination = 2 * plan.weight * c[2]
    results[plan.combination] = combination + plan.value * c[0] if plan.value else combination
    results[()] = c[0]
    return results


# A Laplacian-like combination along this many axes or more runs as one collapsed jet eagerly too
# (compiled, along two or more).  Compiled, the collapsed jet's ordinary rules fuse as well as the
# stacked layers, with fewer coefficients: the 4 x 64 heat step took 13.0 ms against 17.7 folded on
# stacked jets, Poisson 3-D 20.6 against 41.8.  Eager, the stacked jets' fused layers make up for
# their 2d + 1 coefficients against d + 2 at few axes.  Training steps of u_t - 0.1 (sum of u_ii),
# float32, batch 2,000, stacked / collapsed: two axes 0.86 (8 x 20), 1.07 (4 x 64); three 0.82,
# 1.16, 0.91 (modified MLP); four 0.88 (8 x 20); five 1.17, 1.24, 1.04.
EAGER_AXES = 5


class TaylorEngine:
    """``method="taylor"``."""

    name = "taylor"
    per_sample = True

    def compiled_refusal(self, u: object) -> EngineUnsupported | None:
        return None  # its rules refuse, compiled too

    def compute(self, fn: BatchedFn, x: torch.Tensor, request: Request) -> dict:
        if request.along:
            return compute_along(self, fn, x, request)
        d = x.shape[1]
        partials = requested_partials(request, d)
        plan = collapse(frozenset(partials), request.combinations, d) if request.combinations else None
        if plan is not None and not request.full and (torch.compiler.is_compiling() or len(plan.axes) >= EAGER_AXES):
            results = collapsed(fn, x, plan)
            return {key: results[key] for key in ((), *request.partials, *request.combinations)}
        results: dict = {}
        if "laplacian" in request.full and "hessian" not in request.full:
            first = {index for index in partials if len(index) == 1}
            results["laplacian"], read = laplacian(fn, x, first)
            results.update(read)
            partials -= first
        if partials or request.combinations:
            plan = fold(frozenset(partials), request.combinations, d)
            if plan.truncation.counts:
                coefficients = propagate_truncated(fn, x, plan)
                results.update(read_partials(coefficients, plan.truncation.interpolation))
            else:  # combinations of the value alone
                coefficients = propagate(fn, x, along((), x), 0)
            results[()] = coefficients[0]
            results.update((f.combination, f.read(coefficients, results)) for f in plan.folds)
            results.update((c, c.evaluate(results)) for c in plan.summed)
        elif not results:
            results[()] = propagate(fn, x, along((), x), 0)[0]
        self._assemble(results, request, d)
        return {key: results[key] for key in ((), *request.partials, *request.full, *request.combinations)}

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
        coefficients = propagate(fn, x, directions, order)
        if order == 0:
            return coefficients[0].expand(directions.shape[0], *coefficients[0].shape)
        return math.factorial(order) * coefficients[order]

    def along(
        self, fn: BatchedFn, x: torch.Tensor, directions: torch.Tensor, order: int, summed: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One jet along the R directions; summed, the collapsed jet of :func:`laplacian` (R + 2 vectors a layer)."""
        coefficients = propagate(fn, x, directions, order, collapse=summed)
        r, value = directions.shape[0], coefficients[0]
        if order == 0:
            return value, r * value if summed else value.expand(r, *value.shape)
        return value, math.factorial(order) * coefficients[order]
