"""Operator expressions: sums, scalar multiples, pointwise products, source terms.

``Laplacian(u) + 2.0 * Derivative(u, wrt=1) - f`` builds
``Sum(Sum(Laplacian, Scaled(2, Derivative)), Scaled(-1, Term(f)))``; evaluating
it runs one engine call for all leaves on the same ``u`` (see
:func:`diffops.operator.evaluate`).  Terms must have equal shapes: nothing
broadcasts silently, except a plain scalar.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .operator import DifferentialOperator, evaluate


def is_scalar(value: Any) -> bool:
    """A Python number or a 0-dim tensor (which may be a learnable parameter)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def as_operator(value: Any, symbol: str) -> DifferentialOperator:
    """Wrap what may stand beside an operator in an expression."""
    if isinstance(value, DifferentialOperator):
        return value
    if is_scalar(value):
        return Constant(value)
    if callable(value):
        return Term(value)
    raise TypeError(
        f"cannot combine a DifferentialOperator with {type(value).__name__} by {symbol!r}; expected an operator, "
        "a module or callable of the same inputs, or a scalar"
    )


def _tensor_result(op: DifferentialOperator, value: Any) -> Any:
    if isinstance(value, dict):
        raise TypeError(f"{op} returns a dict and cannot stand in an expression; combine its entries instead")
    return value


def _check_same_shape(symbol: str, left: DifferentialOperator, a: Any, right: DifferentialOperator, b: Any) -> None:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape != b.shape:
        raise ValueError(
            f"cannot compute {left} {symbol} {right}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ "
            "(diffops does not broadcast terms; reshape the source term to match)"
        )


class Expression(DifferentialOperator):
    """An operator built from other operators; evaluated with shared engine calls."""

    def __init__(self, *terms: DifferentialOperator) -> None:
        super().__init__()
        self.terms = nn.ModuleList(terms)

    def forward(self, *inputs: Any) -> torch.Tensor:
        return evaluate(self, inputs)

    def _leaves(self) -> Iterator[DifferentialOperator]:
        for term in self.terms:
            yield from term._leaves()

    def _values(self, inputs: tuple, shared: dict) -> list:
        return [_tensor_result(term, term._evaluate(inputs, shared)) for term in self.terms]


class Sum(Expression):
    """``a + b``."""

    def _evaluate(self, inputs: tuple, shared: dict) -> torch.Tensor:
        a, b = self._values(inputs, shared)
        _check_same_shape("+", self.terms[0], a, self.terms[1], b)
        return a + b

    def _symbol(self) -> str:
        left, right = self.terms
        if isinstance(right, Scaled) and is_scalar(right.coefficient) and float(right.coefficient) < 0:
            return f"{left} - {right._symbol(negate=True)}"
        return f"{left} + {right}"


class Product(Expression):
    """Pointwise ``a * b``."""

    def _evaluate(self, inputs: tuple, shared: dict) -> torch.Tensor:
        a, b = self._values(inputs, shared)
        _check_same_shape("*", self.terms[0], a, self.terms[1], b)
        return a * b

    def _symbol(self) -> str:
        return "·".join(_grouped(term) for term in self.terms)


class Scaled(Expression):
    """``c * a`` for a scalar ``c`` (a 0-dim ``nn.Parameter`` is trained with the rest)."""

    def __init__(self, coefficient: Any, term: DifferentialOperator) -> None:
        super().__init__(term)
        if isinstance(coefficient, nn.Parameter):
            self.coefficient = coefficient
        elif isinstance(coefficient, torch.Tensor):
            self.register_buffer("coefficient", coefficient)
        else:
            self.coefficient = coefficient

    def _evaluate(self, inputs: tuple, shared: dict) -> torch.Tensor:
        (value,) = self._values(inputs, shared)
        return self.coefficient * value

    def _symbol(self, negate: bool = False) -> str:
        c = float(self.coefficient) * (-1 if negate else 1)
        inner = _grouped(self.terms[0])
        if c == 1:
            return inner
        if c == -1:
            return f"-{inner}"
        return f"{c:g}·{inner}"


class Constant(DifferentialOperator):
    """A scalar term in an expression."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    def forward(self, *inputs: Any) -> Any:
        return self.value

    def _symbol(self) -> str:
        return f"{float(self.value):g}"


class Term(DifferentialOperator):
    """A module or callable ``f(*inputs)`` standing as a source term in an expression."""

    def __init__(self, f: Callable) -> None:
        super().__init__()
        self.f = f

    def forward(self, *inputs: Any) -> Any:
        return self.f(*inputs)

    def _symbol(self) -> str:
        name = getattr(self.f, "__name__", None)
        if name is None:
            return type(self.f).__name__
        return "f" if name == "<lambda>" else name


def _grouped(term: DifferentialOperator) -> str:
    return f"({term})" if isinstance(term, Sum) else str(term)
