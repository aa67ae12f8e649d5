"""Linear combinations of partials with their first-order terms folded into a top coefficient.

Along the curve ``x(t) = x + t v + t^K b`` the order-K Taylor coefficient of
``u(x(t))`` is

    c_K = D^K u[v, .., v] / K! + grad u . b,

since ``b`` enters at order K and above only, and linearly at K.  So the
linear part of a PINN residual needs no direction for its first partials:
Burgers' ``u_t - nu u_xx`` is ``-2 nu c_2`` along ``v = e_x`` with
``b = e_t / (-2 nu)``, three coefficients a layer (``c_0``, ``c_1`` and ``c_2``
along ``e_x``) where ``u_t`` and ``u_xx`` apart take four.  In general a
:class:`~diffops.engines.base.Combination` of order K >= 2 is read as

    sum_r beta_r c_K(v_r) + (its terms of orders 0 and 2 .. K-1, read as partials),

where ``v_r`` are the directions of :mod:`.interpolation` for its order-K terms
and ``beta_r`` their recipes' weights times the combination's; the first-order
terms ``sum_i w_i d_i u`` ride on one direction ``v_s`` with ``beta_s != 0``, as
``b = w / beta_s``.  That direction's coefficients of order K and above must
be read by nothing else (another partial, another combination), so a
combination that finds none is summed from its partials instead.  The result
is the same derivative, exactly: only the order of the additions changes.

Compiled, a combination of pure second partials along two axes or more
(:class:`Collapse`: heat, wave, Poisson, Navier-Stokes) runs instead as one
*collapsed* jet, whose top is the weighted sum over the axes, with the first
partials folded into its input the same way: ``d + 2`` coefficients a layer
where stacked jets take ``2d + 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

from ..base import Combination, MultiIndex, weighted_sum
from .interpolation import Direction, Interpolation, Truncation, combination, memoised, truncate
from .stacked import traced


@dataclass(frozen=True)
class Fold:
    """``combination = sum_i weights[i] * c_order[rows[i]] + sum_(index, w) in rest  w * d^index u``."""

    combination: Combination
    order: int
    rows: tuple[int, ...]
    weights: tuple[float, ...]
    rest: tuple[tuple[MultiIndex, float], ...]

    def read(self, coefficients: list[torch.Tensor], partials: dict) -> torch.Tensor:
        """``(N, *f)`` from the jets' ``coefficients`` and the partials already read (``()`` among them)."""
        top = coefficients[self.order]
        tops = [(weight, top[row]) for row, weight in zip(self.rows, self.weights)]
        return weighted_sum([*tops, *((weight, partials[index]) for index, weight in self.rest)])


@dataclass(frozen=True)
class FoldedPlan:
    """One forward pass for partials and combinations.

    ``truncation``: the directions, each to its order, and the recipes of the
    partials read off them; ``tops``: ``(K, row, b)``, the input's order-K
    coefficient ``b: (d,)`` of a direction (zero elsewhere); ``folds``: how each
    folded combination is read; ``summed``: the combinations summed from partials.
    """

    truncation: Truncation
    tops: tuple[tuple[int, int, tuple[float, ...]], ...]
    folds: tuple[Fold, ...]
    summed: tuple[Combination, ...]
    tensors: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def degree(self) -> int:
        """The highest order of the input's coefficients (1: ``x + t v``)."""
        return max([1, *(order for order, _, _ in self.tops)])


def _reads(indices: Iterable[MultiIndex], d: int) -> dict[Direction, int]:
    """``{direction: highest order read}`` over the recipes of ``indices`` of order >= 2."""
    reads: dict[Direction, int] = {}
    for index in indices:
        if len(index) >= 2:
            for v in combination(index, d):
                reads[v] = max(reads.get(v, 0), len(index))
    return reads


def _top_weights(c: Combination, d: int) -> dict[Direction, Fraction]:
    """``beta``: the order-K terms of ``c`` as ``{direction: weight}`` over the order-K coefficients."""
    beta: dict[Direction, Fraction] = {}
    for index, weight in c.terms:
        if len(index) == c.order:
            for v, w in combination(index, d).items():
                beta[v] = beta.get(v, Fraction(0)) + Fraction(weight) * w
    return {v: w for v, w in beta.items() if w != 0}


def _carrier(c: Combination, others: list, taken: set, d: int) -> Direction | None:
    """A direction of ``c``'s order-K terms that no other reader reads at order K or above, if any."""
    if c.order < 2 or not any(len(index) == 1 for index, _ in c.terms):
        return None
    reads = _reads(others, d)
    for v in sorted(_top_weights(c, d)):
        if reads.get(v, 0) < c.order and v not in taken:
            return v
    return None


@memoised
def fold(partials: frozenset[MultiIndex], combinations: frozenset[Combination], d: int) -> FoldedPlan:
    """The plan for ``partials`` (order >= 1) and ``combinations`` on ``d`` coordinates, worked out once."""
    ordered = sorted(combinations, key=lambda c: c.terms)
    carriers: dict[Combination, Direction] = {}
    for c in ordered:
        others = [*partials, *(index for o in ordered if o is not c for index, _ in o.terms)]
        v = _carrier(c, others, set(carriers.values()), d)
        if v is not None:
            carriers[c] = v
    read = set(partials)  # the partials read off the coefficients
    for c in ordered:
        if c in carriers:  # its first partials ride on its carrier, its order-K terms are read together
            read |= {index for index, _ in c.terms if len(index) != 1 and len(index) < c.order}
        else:
            read |= {index for index, _ in c.terms}
    read.discard(())
    needed = read | {index for c in carriers for index, _ in c.terms if len(index) == c.order}
    plan = truncate(frozenset(needed), d)
    position = {v: row for row, v in enumerate(plan.interpolation.directions)}
    tops, folds = [], []
    for c, carrier in carriers.items():
        beta = _top_weights(c, d)
        first = [0.0] * d
        for index, weight in c.terms:
            if len(index) == 1:
                first[index[0]] = float(Fraction(weight) / beta[carrier])
        tops.append((c.order, position[carrier], tuple(first)))
        rest = tuple((index, weight) for index, weight in c.terms if len(index) != 1 and len(index) < c.order)
        rows = tuple(position[v] for v in beta)
        folds.append(Fold(c, c.order, rows, tuple(float(w) for w in beta.values()), rest))
    recipes = {index: recipe for index, recipe in plan.interpolation.recipes.items() if index in read}
    truncation = Truncation(Interpolation(plan.interpolation.directions, recipes), plan.counts)
    summed = tuple(c for c in ordered if c not in carriers)
    return FoldedPlan(truncation, tuple(tops), tuple(folds), summed)


@dataclass(frozen=True)
class Collapse:
    """``sum_(i in axes) w_i d_ii u + grad u . g + w_0 u`` as one collapsed jet of order two.

    Along the unit vectors of ``axes``, with the top weighted by ``weights`` (None
    where they are equal, ``weight`` then) and the top input ``top``, the collapsed
    ``c_2`` is ``sum_i w_i d_ii u / 2 + grad u . top``: the combination is
    ``2 weight c_2 + w_0 c_0``, in ``len(axes) + 2`` coefficients a layer.
    """

    combination: Combination
    axes: tuple[int, ...]
    weights: tuple[float, ...] | None
    weight: float
    top: tuple[float, ...]
    value: float
    tensors: dict = field(default_factory=dict, compare=False, repr=False)

    def constants(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``top: (d,)`` and ``weights: (R,)`` (or None) as tensors of ``like``'s dtype and device."""

        def make() -> tuple[torch.Tensor, torch.Tensor | None]:
            as_tensor = lambda values: torch.tensor(values, dtype=like.dtype, device=like.device)  # noqa: E731
            return as_tensor(self.top), None if self.weights is None else as_tensor(self.weights)

        return _kept(self.tensors, like, make)


def _kept(cache: dict, like: torch.Tensor, make: Callable[[], Any]) -> Any:
    """``make()``, kept in a plan's ``cache`` per dtype and device of ``like``; made afresh while compiling."""
    if torch.compiler.is_compiling():
        return make()
    key = (like.dtype, like.device)
    if key not in cache:
        cache[key] = make()
    return cache[key]


@memoised
def collapse(partials: frozenset[MultiIndex], combinations: frozenset[Combination], d: int) -> Collapse | None:
    """The collapsed pass for a request of one Laplacian-like combination, if that pass gives all of it.

    Laplacian-like: pure second partials along two axes or more, of any weights (the heat,
    wave, Poisson and Navier-Stokes operators), first partials and the value; the other
    partials asked must be the value or first partials along its axes, which the pass
    reads off ``c_1``.
    """
    if len(combinations) != 1:
        return None
    (c,) = combinations
    second = {index: w for index, w in c.terms if len(index) == 2}
    if c.order != 2 or any(i != j for i, j in second):
        return None
    axes = tuple(sorted(i for i, _ in second))
    if len(axes) < 2 or any(len(p) > 1 or (len(p) == 1 and p[0] not in axes) for p in partials):
        return None  # (along one axis the stacked jets' fold takes as few coefficients)
    weights = tuple(second[(i, i)] for i in axes)
    equal = len(set(weights)) == 1
    weight = weights[0] if equal else 1.0  # equal weights scale the plain sum once, after it
    top = [0.0] * d
    for index, w in c.terms:
        if len(index) == 1:
            top[index[0]] = w / (2 * weight)
    value = sum(w for index, w in c.terms if not index)
    return Collapse(c, axes, None if equal else weights, weight, tuple(top), value)


def input_stack(plan: FoldedPlan, x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``(S, N, d)``: ``x``, the directions ``(R_1, d)`` and the input's higher coefficients, zero but the tops.

    Traced by torch.compile it is stored ``(d, S, N)`` (feature-major), as the
    compiled layers lay out their stacks: the first layer's kernel then reads
    each coordinate contiguous, where it gathered them from rows of ``d``
    again for every feature (0.27 against 0.42 ms, Allen-Cahn, 4 x 64, batch
    2,000; 1.00-1.09x the compiled step, ``benchmarks/compiled_products.py``).
    """
    n, d = x.shape
    slots = [x[None], directions[:, None, :].expand(len(directions), n, d)]
    if plan.tops:
        higher = _kept(plan.tensors, x, lambda: _higher_coefficients(plan, x))
        slots.append(higher.expand(higher.shape[0], n, d))
    if not traced():
        return torch.cat(slots)
    return torch.cat([slot.movedim(-1, 0) for slot in slots], dim=1).movedim(0, -1)


def _higher_coefficients(plan: FoldedPlan, x: torch.Tensor) -> torch.Tensor:
    """``(sum(R_2 .. R_degree), 1, d)``: the input's coefficients of orders 2 .. degree, zero but the tops."""
    counts = plan.truncation.counts
    higher = torch.zeros(sum(counts[1 : plan.degree]), 1, x.shape[1], dtype=x.dtype, device=x.device)
    for order, row, b in plan.tops:
        higher[sum(counts[1 : order - 1]) + row, 0] = torch.tensor(b, dtype=x.dtype, device=x.device)
    return higher
