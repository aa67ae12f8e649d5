"""Operator expressions: sums, scalar multiples, pointwise products and quotients, source terms.

``Laplacian(u) + 2.0 * Derivative(u, wrt=1) - f`` builds
``Sum(Sum(Laplacian, Scaled(2, Derivative)), Scaled(-1, Term(f)))``; evaluating
it runs one engine call for all leaves on the same ``u`` (see
:func:`diffops.operator.evaluate`).  Terms must have equal shapes: nothing
broadcasts silently, except a scalar.  A scalar that is a tensor (a learnable
``nn.Parameter`` or a buffer) is kept as it is and read at every evaluation,
for ``p * op`` and ``op / p`` alike, so it trains and follows ``.to()``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .engines.base import weighted_sum
from .operator import DifferentialOperator, evaluate


def is_scalar(value: Any) -> bool:
    """A Python number or a one-element tensor (which may be a learnable parameter, ``nn.Parameter(torch.ones(1))``)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _scalar(value: Any) -> Any:
    """A one-element tensor as 0-dim, so that it scales a result without reshaping it; numbers as they are."""
    return value.reshape(()) if isinstance(value, torch.Tensor) else value


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


def _number(value: Any) -> float:
    """A scalar's current value as a float, for notation (a parameter is read without its graph)."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _register(module: nn.Module, attribute: str, value: Any) -> None:
    """Keep a scalar on ``module``: a parameter as a parameter, another tensor as a buffer."""
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        module.register_buffer(attribute, value)
    else:
        setattr(module, attribute, value)


def _tensor_result(op: DifferentialOperator, value: Any) -> Any:
    if isinstance(value, dict):
        raise TypeError(f"{op} returns a dict and cannot stand in an expression; combine its entries instead")
    return value


def _check_same_shape(symbol: str, left: DifferentialOperator, a: Any, right: DifferentialOperator, b: Any) -> None:
    if isinstance(left, Constant) or isinstance(right, Constant):  # a scalar, even a 0-dim tensor, broadcasts
        return
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
        planned = shared.get(("sum", id(self)))
        if planned is not None:
            return self._planned(planned, inputs, shared)
        a, b = self._values(inputs, shared)
        _check_same_shape("+", self.terms[0], a, self.terms[1], b)
        return a + b

    def _planned(self, planned: tuple, inputs: tuple, shared: dict) -> torch.Tensor:
        """The sum as :func:`~diffops.operator.evaluate` planned it: its combinations, then its other terms."""
        combined, rest = planned
        total = weighted_sum((1.0, shared[key].results[combination]) for key, combination in combined)
        for term in rest:
            value = _tensor_result(term, term._evaluate(inputs, shared))
            _check_same_shape("+", self, total, term, value)
            total = total + value
        return total

    def _summands(self) -> list:
        summands = []
        for term in self.terms:
            inner = term._summands()
            summands += [term] if inner is None else inner
        return summands

    def _linear_form(self) -> list | None:
        left, right = (term._linear_form() for term in self.terms)
        return None if left is None or right is None else left + right

    def _symbol(self) -> str:
        left, right = self.terms
        if isinstance(right, Scaled) and _number(right.coefficient) < 0:
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


class Quotient(Expression):
    """Pointwise ``a / b``."""

    def _evaluate(self, inputs: tuple, shared: dict) -> torch.Tensor:
        a, b = self._values(inputs, shared)
        _check_same_shape("/", self.terms[0], a, self.terms[1], b)
        return a / b

    def _symbol(self) -> str:
        return "/".join(_atomic(term) for term in self.terms)


class Scaled(Expression):
    """``c * a``, or ``a / c`` with ``divide``, for a scalar ``c``.

    A one-element ``nn.Parameter`` is trained with the rest; another one-element
    tensor is a buffer.  Either is read at every evaluation, never folded into a constant.
    """

    def __init__(self, coefficient: Any, term: DifferentialOperator, divide: bool = False) -> None:
        super().__init__(term)
        if divide and not isinstance(coefficient, torch.Tensor) and coefficient == 0:
            raise ZeroDivisionError(f"cannot divide {term} by zero")
        _register(self, "coefficient", coefficient)
        self.divide = divide

    def _evaluate(self, inputs: tuple, shared: dict) -> torch.Tensor:
        (value,) = self._values(inputs, shared)
        coefficient = _scalar(self.coefficient)
        return value / coefficient if self.divide else coefficient * value

    def _linear_form(self) -> list | None:
        inner = self.terms[0]._linear_form()
        if inner is None or isinstance(self.coefficient, torch.Tensor):  # a tensor is read at each call
            return None
        scale = 1 / self.coefficient if self.divide else self.coefficient
        return [(leaf, scale * weight) for leaf, weight in inner]

    def _symbol(self, negate: bool = False) -> str:
        c = _number(self.coefficient) * (-1 if negate else 1)
        if self.divide:
            inner = _atomic(self.terms[0])
            return f"{'-' if c < 0 else ''}{inner}/{abs(c):g}"
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
        _register(self, "value", value)

    def forward(self, *inputs: Any) -> Any:
        return _scalar(self.value)

    def _symbol(self) -> str:
        return f"{_number(self.value):g}"


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


def _atomic(term: DifferentialOperator) -> str:
    """``term``'s symbol, in parentheses unless it is one unbroken symbol (``Δu``, ``2``)."""
    symbol = str(term)
    return symbol if not any(mark in symbol for mark in " /·") else f"({symbol})"
