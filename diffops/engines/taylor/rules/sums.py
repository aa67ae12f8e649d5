"""Sums and products of stacked jets, kept as a polynomial and factored before they run.

The modified MLP's gate ``h = (1 - z) u + z v`` is, as written, a complement,
two Cauchy products and a sum: each a pass over every coefficient, and more in
the backward.  Here sums and products of stacked jets are kept as a
:class:`Polynomial` of degree two at most in the jets they read (the gate:
``u - z u + z v``) until a rule reads the stack.  It then runs with the
products that share a factor taken together, ``u + z (v - u)``: one Cauchy
product instead of two, and no ``1 - z``; ``v - u``, the same in every layer, is
computed once.  The modified MLP's Taylor steps ran 1.12-1.33x faster so
(paired, ``docs/performance/residuals.md``).

A Cauchy product runs as :class:`_Product`: one autograd node that writes the
truncated product into one stack, with a hand-written backward; under
``torch.compile`` and torch.func transforms, as plain ops.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..stacked import Stacked, empty_stack_like, pad_stack
from .fused import (
    Pieces,
    T,
    _mutable,
    _override,
    _partials,
    _plain,
    _rows,
    _series_backward,
    _split,
    _sum_of_products,
    padded,
)

Monomial = tuple  # the positions of a product's atoms in the polynomial's list, sorted; () is the constant term


class Polynomial:
    """``sum_m c_m prod(m)`` over monomials ``m`` of up to two stacked jets (its atoms), not run yet.

    ``terms``: ``{monomial: c_m}``; ``atoms``: the jets the monomials name by
    position, each with a stack of its own to read (positions, not ids, since
    ``torch.compile`` cannot order ids).  ``shape``, ``dtype``, ``device``: those of the stack
    it writes, ``(S, *sample)``; ``grad``: the grad mode it was written in, and
    runs in; ``taken``: whether a later polynomial took its terms over.
    """

    __slots__ = ("terms", "atoms", "counts", "degree", "shape", "dtype", "device", "grad", "taken")

    def __init__(self, terms: dict[Monomial, float], atoms: list[Stacked], like: Stacked) -> None:
        self.terms, self.atoms, self.counts = terms, atoms, like.counts
        self.degree = max(self.degree_of(m) for m in terms)
        self.shape = torch.Size((1 + sum(self.counts[: self.degree]), *like.shape))
        self.dtype, self.device = like.dtype, like.device
        self.grad = torch.is_grad_enabled()
        self.taken = False

    def degree_of(self, monomial: Monomial) -> int:
        return min(len(self.counts), sum(self.atoms[i].degree for i in monomial))

    @property
    def rank(self) -> int:
        """The most atoms in one monomial."""
        return max(map(len, self.terms))

    def evaluate(self) -> torch.Tensor:
        """The stack, ``(S, *sample)`` in rows, in the grad mode the polynomial was written in."""
        with torch.set_grad_enabled(self.grad):
            return _run(self)


# -- building: each sum or product of stacked jets a new polynomial ---------------------------------------


def _atom(x: Stacked) -> Polynomial:
    return Polynomial({(0,): 1.0}, [x], x)


def _operand(x: Stacked, rank: int) -> Polynomial:
    """``x`` as a polynomial: its own terms when it is one not run, of rank ``rank`` or less, else ``x`` as an atom.

    A polynomial's terms are taken over once: a second reader (and ``x``'s own
    stack, if read) would run them again.
    """
    p = x.deferred
    if x.unread is p and p is not None and not p.taken and p.rank <= rank and p.grad == torch.is_grad_enabled():
        p.taken = True
        return p
    return _atom(x)


def _merged(p: Polynomial, q: Polynomial) -> tuple[list[Stacked], Callable[[Monomial], Monomial]]:
    """The atoms of both, ``p``'s first, and the map of ``q``'s monomials onto that list."""
    atoms, where = list(p.atoms), []
    for atom in q.atoms:
        position = len(atoms)
        for i, known in enumerate(atoms):
            if known is atom:
                position = i
                break
        if position == len(atoms):
            atoms.append(atom)
        where.append(position)
    return atoms, lambda m: tuple(sorted(where[i] for i in m))


def _linear_sum(p: Polynomial, alpha: float, q: Polynomial, beta: float, like: Stacked) -> Polynomial:
    atoms, rename = _merged(p, q)
    terms = {m: alpha * c for m, c in p.terms.items()}
    for m, c in q.terms.items():
        key = rename(m)
        terms[key] = terms.get(key, 0.0) + beta * c
    return Polynomial(terms, atoms, like)


def _scaled(p: Polynomial, c: float, like: Stacked) -> Polynomial:
    return Polynomial({m: c * value for m, value in p.terms.items()}, p.atoms, like)


def _product(p: Polynomial, q: Polynomial, like: Stacked) -> Polynomial:
    atoms, rename = _merged(p, q)
    terms: dict[Monomial, float] = {}
    for m, c in p.terms.items():
        for n, d in q.terms.items():
            key = tuple(sorted(m + rename(n)))
            terms[key] = terms.get(key, 0.0) + c * d
    return Polynomial(terms, atoms, like)


def _deferred(p: Polynomial) -> Stacked:
    return Stacked(None, p.counts, p.degree, deferred=p)


def _number(value) -> bool:
    return isinstance(value, (int, float))


def _deferrable(a, b) -> Stacked | None:
    """A stacked jet of ``a, b`` when both are stacked jets of one layout and dtype or one is a number."""
    jets = [x for x in (a, b) if isinstance(x, Stacked)]
    if not all(isinstance(x, Stacked) or _number(x) for x in (a, b)):
        return None
    same = len(jets) == 1 or (_compatible(*jets) and jets[0].dtype == jets[1].dtype)  # a polynomial has one dtype
    return jets[0] if same else None


def _constant_polynomial(value: float, like: Stacked) -> Polynomial:
    return Polynomial({(): float(value)}, [], like)


def _add(a, b, *, alpha=1) -> Stacked | None:
    return _combination(a, 1, b, alpha)


def _sub(a, b, *, alpha=1) -> Stacked | None:
    return _combination(a, 1, b, -alpha)


def _combination(a, alpha: float, b, beta: float) -> Stacked | None:
    """``alpha * a + beta * b``, deferred where it can be."""
    like = _deferrable(a, b) if _number(beta) else None
    if like is None:
        return _combination_now(a, alpha, b, beta)
    pa, pb = (_operand(x, 2) if isinstance(x, Stacked) else _constant_polynomial(x, like) for x in (a, b))
    return _deferred(_linear_sum(pa, alpha, pb, beta, like))


def _mul(a, b) -> Stacked | None:
    """``a * b``, deferred where it can be: a product of two polynomials of rank one at most."""
    like = _deferrable(a, b)
    if like is None:
        return _mul_now(a, b)
    if not (isinstance(a, Stacked) and isinstance(b, Stacked)):
        x, c = (a, b) if isinstance(a, Stacked) else (b, a)
        return _deferred(_scaled(_operand(x, 2), c, like))
    return _deferred(_product(_operand(a, 1), _operand(b, 1), like))


# -- running: products that share a factor as one ----------------------------------------------------------


class Part(NamedTuple):
    """A stack of some ``degree``; ``fresh``: written here, so it may be added to in place."""

    stack: torch.Tensor
    degree: int
    fresh: bool


def _run(p: Polynomial) -> torch.Tensor:
    """The stack of ``p``: ``sum_j x_j * (sum_i c_ij y_i) + sum_i c_i y_i + c``, with ``x_j`` the most shared atoms."""
    products = {m: c for m, c in p.terms.items() if len(m) == 2}
    total = None
    while products:
        pivot = _most_shared(products)
        partners: dict[int, float] = {}
        for m in [m for m in products if pivot in m]:
            partner = m[1] if m[0] == pivot else m[0]
            partners[partner] = partners.get(partner, 0.0) + products.pop(m)
        factor = _weighted_sum(p, partners)
        atom = p.atoms[pivot]
        total = _plus(p, total, _cauchy(p.counts, Part(atom.laid_out(), atom.degree, False), factor))
    linear = {m[0]: c for m, c in p.terms.items() if len(m) == 1}
    if linear:
        total = _plus(p, total, _weighted_sum(p, linear))
    constant = p.terms.get((), 0.0)  # (total is not None: every polynomial has a term with a jet)
    return _shifted(total.stack, constant) if constant else total.stack


def _shifted(stack: torch.Tensor, constant: float, scale: float = 1.0) -> torch.Tensor:
    """``scale * stack`` with ``constant`` added to ``c_0`` only, through a shift of one slot: one kernel."""
    shift = stack.new_zeros(stack.shape[0], *[1] * (stack.dim() - 1))
    shift[0] = constant
    return torch.add(shift, stack, alpha=scale)


def _most_shared(products: dict[Monomial, float]) -> int:
    """The atom in the most products (the first such, in the order written)."""
    uses: dict[int, int] = {}
    for m in products:
        for i in set(m):
            uses[i] = uses.get(i, 0) + 1
    return max(uses, key=uses.__getitem__)


def _weighted_sum(p: Polynomial, weights: dict[int, float]) -> Part:
    """``sum_i c_i y_i`` over the atoms ``y_i``: an atom's own stack where that is all it is.

    A sum of several is kept on its first atom and read again by later gates:
    the modified MLP's ``v - u`` is the same in every layer.
    """
    first, *others = (p.atoms[i] for i in weights)
    if not others or torch.compiler.is_compiling():  # compiled, the graph is the place to share it
        return _sum_of_atoms(p, weights)
    key = (tuple((id(p.atoms[i]), c) for i, c in weights.items()), torch.is_grad_enabled())
    kept = (first.sums or {}).get(key)
    if kept is not None and all(ref() is atom for ref, atom in zip(kept[0], others)):  # ids may be reused
        return kept[1]
    total = _sum_of_atoms(p, weights)._replace(fresh=False)  # no longer this polynomial's alone to add to
    # the others held weakly: jets that hold each other are a reference cycle, their stacks kept until the
    # garbage collector runs
    first.sums = {**(first.sums or {}), key: (tuple(weakref.ref(atom) for atom in others), total)}
    return total


def _sum_of_atoms(p: Polynomial, weights: dict[int, float]) -> Part:
    degree = max(p.atoms[i].degree for i in weights)
    total = None
    for i, c in weights.items():
        atom = p.atoms[i]
        stack = pad_stack(atom.laid_out(), atom.counts, atom.degree, degree)
        if total is None:
            total = Part(stack, degree, False) if c == 1 else Part(stack * c, degree, True)
        elif total.fresh and _mutable():
            total = Part(total.stack.add_(stack, alpha=c), degree, True)
        else:
            total = Part(torch.add(total.stack, stack, alpha=c), degree, True)
    return total


def _plus(p: Polynomial, total: Part | None, part: Part) -> Part:
    """``total + part``, into ``total`` where it is fresh and as high a degree."""
    if total is None:
        return part
    if total.fresh and total.degree >= part.degree and _mutable():
        slots = part.stack.shape[0]
        target = total.stack if slots == total.stack.shape[0] else total.stack.narrow(0, 0, slots)
        target.add_(part.stack)
        return total
    degree = max(total.degree, part.degree)
    padded_total = pad_stack(total.stack, p.counts, total.degree, degree)
    return Part(padded_total + pad_stack(part.stack, p.counts, part.degree, degree), degree, True)


def _cauchy(counts: tuple, a: Part, b: Part) -> Part:
    """The truncated Cauchy product of two stacks."""
    degree = min(len(counts), a.degree + b.degree)
    if _plain() or a.stack.dtype != b.stack.dtype:  # the node writes into one stack: one dtype
        return Part(cauchy_product(a.stack, b.stack, counts, a.degree, b.degree), degree, True)
    return Part(_Product.apply(counts, a.degree, b.degree, a.stack, b.stack), degree, True)


# -- at once: with tensor constants, and the product node itself ------------------------


def _constant(value, x: Stacked) -> bool:
    """A number, or a plain tensor that broadcasts to ``x``'s sample shape."""
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, torch.Tensor) and torch.broadcast_shapes(value.shape, x.shape) == x.shape


def _compatible(a: Stacked, b: Stacked) -> bool:
    return a.counts == b.counts and a.shape == b.shape


def _with_primal(x: Stacked, primal: torch.Tensor) -> Stacked:
    stack = x.resolved().stack
    return Stacked(torch.cat([primal[None], stack[1:]]), x.counts, x.degree)


def _combination_now(a, alpha: float, b, beta: float) -> Stacked | None:
    """``alpha * a + beta * b`` at once: stacked jets of one layout, or one a constant (it moves ``c_0`` only)."""
    if isinstance(a, Stacked) and isinstance(b, Stacked):
        if not _compatible(a, b):
            return None
        degree = max(a.degree, b.degree)
        sa, sb = padded(a, degree), padded(b, degree)
        total = sa + sb if alpha == 1 and beta == 1 else torch.add(alpha * sa, sb, alpha=beta)
        return Stacked(total, a.counts, degree)
    (x, scale), (c, weight) = ((a, alpha), (b, beta)) if isinstance(a, Stacked) else ((b, beta), (a, alpha))
    if not _constant(c, x):
        return None
    x = x.resolved()
    if isinstance(c, (int, float)):
        return Stacked(_shifted(x.stack, weight * c, scale), x.counts, x.degree)
    stack = x.stack if scale == 1 else scale * x.stack
    return _with_primal(Stacked(stack, x.counts, x.degree), stack[0] + weight * c)


def _mul_now(a, b) -> Stacked | None:
    """``a * b`` at once: the truncated Cauchy product of two stacked jets, or every coefficient times a constant."""
    if not (isinstance(a, Stacked) and isinstance(b, Stacked)):
        x, c = (a, b) if isinstance(a, Stacked) else (b, a)
        if not _constant(c, x):
            return None
        x = x.resolved()
        return Stacked(x.stack * c, x.counts, x.degree)
    if not _compatible(a, b):
        return None
    a, b = a.resolved(), b.resolved()
    product = _cauchy(a.counts, Part(a.stack, a.degree, False), Part(b.stack, b.degree, False))
    return Stacked(product.stack, a.counts, product.degree)


def _product_terms(k: int, pa: Pieces, pb: Pieces, da: int, db: int, n: int) -> list:
    """The terms ``a_j b_(k-j)`` of ``(ab)_k`` on ``n`` directions (``a_j`` above ``da``, ``b_j`` above ``db``: 0)."""
    return [(1, _rows(pa, j, n), _rows(pb, k - j, n)) for j in range(max(0, k - db), min(k, da) + 1)]


def cauchy_product(a: torch.Tensor, b: torch.Tensor, counts: tuple, da: int, db: int) -> torch.Tensor:
    """The stack of ``a * b`` from the stacks of ``a`` (degree ``da``) and ``b`` (``db``), as plain ops."""
    pa, pb = _split(a, counts, da), _split(b, counts, db)
    pieces = [pa[0] * pb[0]]
    for k in range(1, min(len(counts), da + db) + 1):
        pieces.append(_sum_of_products(_product_terms(k, pa, pb, da, db, counts[k - 1]), None))
    return torch.cat([pieces[0][None], *pieces[1:]])


class _Product(torch.autograd.Function):
    """:func:`cauchy_product` written into one stack, with the backward ``d(ab)_k / da_j = b_(k-j)``.

    A product as plain ops left autograd a ``cat`` to split, a ``split`` per
    factor to concatenate again, and a zero tensor filled for every row cut: the
    modified MLP's training steps ran 1.16-1.25x faster with this node instead.
    """

    @staticmethod
    def forward(ctx, counts, da, db, a, b):
        degree = min(len(counts), da + db)
        out = empty_stack_like(a, 1 + sum(counts[:degree]))
        pa, pb, pieces = _split(a, counts, da), _split(b, counts, db), _split(out, counts, degree)
        for k in range(degree + 1):
            _sum_of_products(_product_terms(k, pa, pb, da, db, counts[k - 1] if k else 1), pieces[k])
        ctx.counts, ctx.degrees = counts, (da, db)
        ctx.save_for_backward(a, b)
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        (da, db), counts = ctx.degrees, ctx.counts
        if grad is None:
            return None, None, None, None, None
        if torch.is_grad_enabled():  # a differentiable backward: the product again under autograd
            product = lambda a, b: cauchy_product(a, b, counts, da, db)  # noqa: E731
            return None, None, None, *_partials(product, (a, b), ctx.needs_input_grad[3:], grad)
        degree = min(len(counts), da + db)
        ga = _factor_grad(grad, b, counts, (da, degree, db)) if ctx.needs_input_grad[3] else None
        gb = _factor_grad(grad, a, counts, (db, degree, da)) if ctx.needs_input_grad[4] else None
        return None, None, None, ga, gb


def _factor_grad(grad: torch.Tensor, other: torch.Tensor, counts: tuple, degrees: tuple) -> torch.Tensor:
    """The gradient in one factor of a product, ``d(ab)_k / da_j = b_(k-j)``: :func:`_series_backward` with ``b``."""
    out = empty_stack_like(grad, 1 + sum(counts[: degrees[0]]))
    _series_backward(grad, other, counts, degrees, out)
    return out


_override((torch.add, T.add, T.__add__), _add)
_override((torch.sub, T.sub, T.__sub__, torch.subtract), _sub)
_override((torch.mul, T.mul, T.__mul__, torch.multiply), _mul)
