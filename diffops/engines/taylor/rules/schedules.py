"""Schedules: the kernels of an eager fused layer's series, their operands worked out once per request.

A fused layer (:mod:`.fused`) writes an activation's series, and the backward
of a series or of a product, into stacks (:mod:`..stacked`) with a dozen
``mul`` and ``addcmul`` kernels.  Which kernels, and which slots of which
stack each one reads, depends only on the request (the directions kept per
order) and the degrees, not on the numbers.  At PINN widths picking them in
Python each call cost about as much as the kernels themselves: the forward and
backward of an 8 x 20 tanh chain took 1.45 ms at batch 8, where there is next to
no arithmetic, against 5.5 ms at batch 2,000.  A :class:`Schedule` is that choice
made once: a list of views and a list of kernels on them, which
:meth:`Schedule.run` replays.

Operands are named by stack and slot range: ``(stack, first slot, slots)``,
where ``slots == 0`` is a single slot, sample-shaped (``stack[first]``).
:class:`Builder` turns a coefficient ``(stack, order k, directions n)`` into
that range from the request's ``counts`` (slot 0 is ``c_0``, then ``c_1``'s
``R_1`` directions, ``c_2``'s ``R_2``, ...).
"""

from __future__ import annotations

import torch

Coefficient = tuple[str, int, int]  # (stack, order k, first n directions); k = 0: c_0
Term = tuple[float, Coefficient, Coefficient]  # weight * a * b

_MUL, _ADD_PRODUCT, _PRODUCT_PLUS, _SUM = range(4)


class Schedule:
    """Kernels on views of a fixed set of stacks: ``run(stacks, zero)`` executes them in order.

    ``names``: the stacks in the order ``run`` takes them; ``views``: ``(stack index,
    first slot, slots)``; ``ops``: ``(kind, out, base, a, b, weight)``, indices into the views
    (``base`` -1: the 0-d ``zero``).
    """

    __slots__ = ("names", "views", "ops", "touched")

    def __init__(self, names: tuple[str, ...], views: tuple, ops: tuple) -> None:
        self.names, self.views, self.ops = names, views, ops
        self.touched = frozenset(names[s] for s, _, _ in views)

    def reads(self, stack: str) -> bool:
        """Whether any kernel touches ``stack`` (one it does not may be passed as None)."""
        return stack in self.touched

    def run(self, stacks: tuple[torch.Tensor, ...], zero: torch.Tensor | None = None) -> None:
        """The kernels on ``stacks`` (one per name), in place; ``zero``: a 0-d tensor of their dtype where needed."""
        views = [stacks[s][first] if not slots else stacks[s].narrow(0, first, slots) for s, first, slots in self.views]
        for kind, out, base, a, b, weight in self.ops:
            if kind == _MUL:
                torch.mul(views[a], views[b], out=views[out])
            elif kind == _ADD_PRODUCT:
                views[out].addcmul_(views[a], views[b], value=weight)
            elif kind == _PRODUCT_PLUS:
                torch.addcmul(zero if base < 0 else views[base], views[a], views[b], value=weight, out=views[out])
            else:
                torch.sum(views[a], 0, out=views[out])


class Builder:
    """Records a :class:`Schedule` on the stacks ``names``, laid out for the request ``counts``."""

    def __init__(self, names: tuple[str, ...], counts: tuple[int, ...]) -> None:
        self.names, self.counts = names, counts
        self.views: dict[tuple[int, int, int], int] = {}
        self.ops: list[tuple] = []

    def slots(self, stack: str, first: int, slots: int) -> tuple[int, int, int]:
        """The slots ``first .. first + slots - 1`` of ``stack``; a single slot sample-shaped (``slots`` 0).

        A single slot is read as ``stack[first]``, which took half the time of
        ``narrow`` (0.85 against 1.7 us), and broadcasts as the one direction did.
        """
        return self.names.index(stack), first, 0 if slots == 1 else slots

    def coefficient(self, c: Coefficient) -> tuple[int, int, int]:
        """The first ``n`` directions of ``c_k`` in its stack."""
        stack, k, n = c
        return self.slots(stack, 0, 0) if k == 0 else self.slots(stack, 1 + sum(self.counts[: k - 1]), n)

    def _index(self, view: tuple[int, int, int]) -> int:
        return self.views.setdefault(view, len(self.views))

    def mul(self, out: tuple, a: tuple, b: tuple) -> None:
        """``out = a * b`` (views as :meth:`slots` gives them)."""
        self.ops.append((_MUL, self._index(out), -1, self._index(a), self._index(b), 1))

    def sum_directions(self, out: tuple, a: tuple) -> None:
        """``out = a.sum(0)``, ``a`` of two slots or more."""
        assert a[2] > 1, "a single direction is summed by writing it into out"
        self.ops.append((_SUM, self._index(out), -1, self._index(a), -1, 1))

    def add_product(self, out: tuple, a: tuple, b: tuple, weight: float = 1) -> None:
        """``out += weight a b``."""
        self.ops.append((_ADD_PRODUCT, self._index(out), -1, self._index(a), self._index(b), weight))

    def total(self, out: Coefficient, base: Coefficient | str | None, terms: list[Term]) -> None:
        """``out = base + sum_i w_i a_i b_i`` over coefficients; ``base`` None: 0; ``"out"``: what ``out`` holds."""
        target, coefficient = self.coefficient(out), self.coefficient
        (weight, a, b), rest = terms[0], terms[1:]
        if base == "out":
            self.add_product(target, coefficient(a), coefficient(b), weight)
        elif base is None and weight == 1:
            self.mul(target, coefficient(a), coefficient(b))
        else:
            where = -1 if base is None else self._index(coefficient(base))
            self.ops.append((_PRODUCT_PLUS, self._index(target), where, self._index(coefficient(a)),
                             self._index(coefficient(b)), weight))
        for weight, a, b in rest:
            self.add_product(target, coefficient(a), coefficient(b), weight)

    def build(self) -> Schedule:
        return Schedule(self.names, tuple(self.views), tuple(self.ops))
