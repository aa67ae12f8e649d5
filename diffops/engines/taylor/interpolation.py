"""Mixed partials from univariate Taylor coefficients (Griewank, Utke and Walther, 2000).

Along a direction ``v`` the order-k Taylor coefficient of ``t -> u(x + t v)`` is

    c_k(v) = sum_(|a| = k) v^a / a! * d^a u,

a linear combination of the order-k partials (``a`` a vector of counts).  For a
partial ``d^b u`` of order k on the coordinates S, the directions ``v = a`` for
every count vector ``a`` of order k supported in S make that a square,
invertible system in the partials supported in S, which gives ``d^b u`` as a
fixed combination of the ``c_k(v)``.  Pure partials ``d^k u / dx_i^k = k! c_k(e_i)``
need one direction; a Hessian needs ``e_i`` and ``e_i + e_j``.  Directions are
scaled to coprime integers and shared across partials and orders, so one
forward pass of R univariate jets of order ``max |b|`` serves a whole request.
The combinations are solved once per request, exactly in rationals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import reduce, wraps
from typing import Any

import torch

from ..base import MultiIndex

Direction = tuple[int, ...]  # an integer vector with one entry per coordinate


@dataclass(frozen=True)
class Recipe:
    """``d^index u = sum_i weights[i] * c_order(directions[rows[i]])``."""

    order: int
    rows: tuple[int, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class Interpolation:
    """The directions of one forward pass and how each requested partial is read off it.

    ``tensors`` keeps, per dtype and device, the tensors the engine builds from
    them (see ``engine.readout``), so that a training step makes none.
    """

    directions: tuple[Direction, ...]
    recipes: dict
    tensors: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def order(self) -> int:
        return max([0, *(recipe.order for recipe in self.recipes.values())])


def count_vectors(order: int, size: int) -> list[Direction]:
    """Every vector of ``size`` natural numbers that sum to ``order``."""
    if size == 1:
        return [(order,)]
    return [(first, *rest) for first in range(order, -1, -1) for rest in count_vectors(order - first, size - 1)]


def primitive(vector: Direction) -> Direction:
    """The vector divided by the gcd of its entries."""
    divisor = reduce(math.gcd, vector)
    return tuple(c // divisor for c in vector)


def monomial(v: Direction, a: Direction) -> Fraction:
    """``v^a / a!``."""
    value = Fraction(1)
    for vi, ai in zip(v, a):
        value *= Fraction(vi**ai, math.factorial(ai))
    return value


def solve_exact(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """``matrix @ x = rhs`` by Gaussian elimination in rationals (``matrix`` invertible)."""
    n = len(rhs)
    rows = [list(row) + [b] for row, b in zip(matrix, rhs)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                ratio = rows[r][col] / rows[col][col]
                rows[r] = [a - ratio * b for a, b in zip(rows[r], rows[col])]
    return [rows[i][n] / rows[i][i] for i in range(n)]


def memoised(function: Callable) -> Callable:
    """``function`` with its results kept in a plain dict (at most 256, then cleared).

    Not ``functools.lru_cache``: torch.compile traces through that wrapper with a
    warning on every compiled operator, where it reads a dict as it is.  While
    compiling the dict is not read: a graph traced with the key missing guards on
    its absence, and the next call, which finds the key, compiled the graph again.
    """
    results: dict = {}

    @wraps(function)
    def lookup(*key: Any) -> Any:
        if torch.compiler.is_compiling():
            return function(*key)
        if key not in results:
            if len(results) >= 256:  # requests are few in practice; the bound keeps a long-running process small
                results.clear()
            results[key] = function(*key)
        return results[key]

    return lookup


@memoised
def local_combination(counts: Direction) -> tuple[tuple[Direction, Fraction], ...]:
    """The combination for the partial with these (positive) counts, on its support's coordinates."""
    exponents = count_vectors(sum(counts), len(counts))
    directions = [primitive(a) for a in exponents]
    # sum_r w_r c_k(v_r) = d^b u  <=>  sum_r w_r v_r^a / a! = [a == b] for every exponent a
    matrix = [[monomial(v, a) for v in directions] for a in exponents]
    weights = solve_exact(matrix, [Fraction(int(a == counts)) for a in exponents])
    return tuple((v, w) for v, w in zip(directions, weights) if w != 0)


def combination(index: MultiIndex, d: int) -> dict[Direction, Fraction]:
    """``d^index u`` as ``{direction: weight}`` over the order-k coefficients along the directions."""
    support = sorted(set(index))
    terms = local_combination(tuple(index.count(i) for i in support))
    embed = lambda v: tuple(v[support.index(i)] if i in support else 0 for i in range(d))  # noqa: E731
    return {embed(v): w for v, w in terms}


@memoised
def interpolate(partials: frozenset[MultiIndex], d: int) -> Interpolation:
    """Directions and recipes for every partial of order >= 1 in ``partials``, solved once per request."""
    directions: list[Direction] = []
    position: dict[Direction, int] = {}
    recipes = {}
    for index in sorted(partials, key=lambda i: (len(i), i)):
        if not index:
            continue
        terms = combination(index, d)
        for v in terms:
            if v not in position:
                position[v] = len(directions)
                directions.append(v)
        rows = tuple(position[v] for v in terms)
        recipes[index] = Recipe(len(index), rows, tuple(float(w) for w in terms.values()))
    return Interpolation(tuple(directions), recipes)


@dataclass(frozen=True)
class Truncation:
    """An :class:`Interpolation` with its directions ordered by the order each is needed to.

    ``counts[k - 1]``: how many directions (the first ones) reach order k, so a
    direction needed only for a first partial (``e_t`` in Burgers' ``u_t``) is
    carried to order one while others go on to order K.
    """

    interpolation: Interpolation
    counts: tuple[int, ...]


@memoised
def truncate(partials: frozenset[MultiIndex], d: int) -> Truncation:
    """The directions of ``interpolate(partials, d)``, highest needed order first, and the recipes' rows renumbered."""
    plan = interpolate(partials, d)
    needed = [0] * len(plan.directions)
    for recipe in plan.recipes.values():
        for row in recipe.rows:
            needed[row] = max(needed[row], recipe.order)
    order = sorted(range(len(needed)), key=lambda row: -needed[row])  # stable: ties keep their order
    position = {row: i for i, row in enumerate(order)}
    recipes = {
        index: Recipe(recipe.order, tuple(position[row] for row in recipe.rows), recipe.weights)
        for index, recipe in plan.recipes.items()
    }
    counts = tuple(sum(n >= k for n in needed) for k in range(1, plan.order + 1))
    return Truncation(Interpolation(tuple(plan.directions[row] for row in order), recipes), counts)
