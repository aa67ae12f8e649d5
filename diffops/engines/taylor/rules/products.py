"""Jet rules of products, quotients and powers.

A bilinear map ``f`` (elementwise product, matrix product, ``F.linear``) of two
series is their Cauchy product, ``c_k = sum_j f(a_j, b_(k-j))``; with one
constant operand it is linear and maps each coefficient.  Quotients and powers
follow from the Taylor recurrences of ``1/x`` and ``x^p``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch._C._functorch import peek_interpreter_stack

from ..collapsed import TracedCollapsed, enters
from ..jet import Jet, map_coefficients, primal, rule, unsupported, valued
from ..stacked import linear_on_coordinates
from .linear import align

T = torch.Tensor


def series_product(
    a: list[torch.Tensor], b: list[torch.Tensor], k: int, factor: float = 1.0, twice_first: Any = None
) -> torch.Tensor:
    """``factor * sum_(j=0..k) a_j * b_(k-j)`` for coefficient lists with no collapsed top at ``k``.

    The factor is folded into the cheap shared ``c_0`` terms and into fused adds.
    ``twice_first``: ``2 * factor * a_0`` of a square, computed once by a caller
    that needs every ``k``.
    """
    if k == 0:
        return (factor * a[0]) * b[0]
    if a is b:  # a square: each cross term twice
        total = (2 * factor * a[0] if twice_first is None else twice_first) * a[k]
        pairs = [(j, 2 * factor) for j in range(1, (k + 1) // 2)] + [(k // 2, factor)] * (k % 2 == 0)
    else:
        total = (factor * a[0]) * b[k] + a[k] * (factor * b[0])
        pairs = [(j, factor) for j in range(1, k)]
    for j, weight in pairs:
        total = accumulate(total, a[j], b[k - j], weight)
    return total


def accumulate(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``total + weight * a * b`` in one fused pass, for a ``total`` that the caller created.

    In place, which saves an allocation per term and is safe for autograd (no
    backward needs the sum's old value); out of place inside torch.func
    transforms, which have no batching rule for ``addcmul_``.
    """
    if peek_interpreter_stack() is None:
        return total.addcmul_(a, b, value=weight)
    return torch.addcmul(total, a, b, value=weight)


def _apply(func: Callable, broadcasts: bool, a: Jet, i: int, b: Jet, j: int) -> torch.Tensor:
    """``func(a_i, b_j)``, vmapped over the direction axis of whichever has one."""
    per_a, per_b = not a.shared(i), not b.shared(j)
    x, y = a.coefficients[i], b.coefficients[j]
    if broadcasts:
        ndim = max(a.primal.dim(), b.primal.dim())
        return func(align(a, i, x, ndim), align(b, j, y, ndim))
    if not (per_a or per_b):
        return func(x, y)
    return torch.vmap(func, in_dims=(0 if per_a else None, 0 if per_b else None))(x, y)


def product(func: Callable, a: Any, b: Any, broadcasts: bool = False) -> Jet:
    """``func(a, b)`` for a bilinear ``func``; ``broadcasts``: ``func`` handles the direction axis itself."""
    if not isinstance(a, Jet) or not isinstance(b, Jet):
        return map_coefficients(func, (a, b), {}, batched=broadcasts, zero_constants=False)
    coefficients = [func(a.primal, b.primal)]
    for k in range(1, a.order + 1):
        head = _apply(func, broadcasts, a, 0, b, k) + _apply(func, broadcasts, a, k, b, 0)
        lower = None
        for j in range(1, k):
            term = _apply(func, broadcasts, a, j, b, k - j)
            lower = term if lower is None else lower + term
        coefficients.append(a.combine(k, head, lower))
    return a.like(coefficients)


def scale(jet: Jet, factor: Any) -> Jet:
    """``jet * factor`` for a constant tensor or number ``factor``."""
    ndim = factor.dim() if isinstance(factor, torch.Tensor) else 0
    return jet.like([align(jet, k, c, ndim) * factor for k, c in enumerate(jet.coefficients)], jet.degree)


@rule(torch.mul, T.mul, T.__mul__, torch.multiply)
def mul(func: Callable, a: Any, b: Any) -> Jet:
    if isinstance(a, Jet) and isinstance(b, Jet):
        return product(torch.mul, a, b, broadcasts=True)
    return scale(a, b) if isinstance(a, Jet) else scale(b, a)


@rule(torch.prod, T.prod)
def prod(func: Callable, x: Jet, dim: int | None = None, keepdim: bool = False, *, dtype: Any = None) -> Jet:
    """A product along ``dim``: the Cauchy products of its slices, one after another."""
    if dtype is not None:
        raise unsupported(func, " with a dtype argument")
    factors = (x.reshape(-1) if dim is None else x).unbind(0 if dim is None else dim)
    result = factors[0]
    for factor in factors[1:]:
        result = result * factor
    return result.unsqueeze(dim) if keepdim and dim is not None else result


@rule(F.linear)
def linear(func: Callable, x: Any, weight: Any, bias: Any = None) -> Jet:
    """``x @ weight.T + bias``; bilinear when the weight is a jet too."""
    if isinstance(x, TracedCollapsed) and isinstance(weight, torch.Tensor) and not isinstance(bias, Jet):
        return x.then_linear(weight, bias)
    if enters(x, weight, bias):
        return TracedCollapsed.entering(x, weight, bias, lambda: linear_by_coefficient(x, weight, bias))
    if isinstance(x, Jet) and not isinstance(weight, Jet) and not isinstance(bias, Jet):
        return linear_by_coefficient(x, weight, bias)
    out = product(F.linear, x, weight)
    return out if bias is None else out + bias


def linear_by_coefficient(x: Jet, weight: torch.Tensor, bias: torch.Tensor | None) -> Jet:
    """``F.linear(x, weight, bias)`` of an ordinary jet, each coefficient mapped in rows (the bias on ``c_0``)."""
    primal = linear_on_coordinates(x.primal, weight, bias)
    coefficients = [primal] + [
        _linear_rows(c, weight, batch_axis=0 if x.shared(k) else 1) if k <= x.degree else x.zero(k, primal.shape)
        for k, c in enumerate(x.coefficients[1:], start=1)
    ]
    return x.like(coefficients, x.degree)


def _linear_rows(c: torch.Tensor, weight: torch.Tensor, batch_axis: int) -> torch.Tensor:
    """``F.linear(c, weight)``, once per distinct row when ``c`` repeats one row over the batch.

    The input directions are the same for every sample, so the first layer maps
    R vectors instead of R N.
    """
    if c.dim() > batch_axis + 1 and c.shape[batch_axis] > 1 and c.stride(batch_axis) == 0:
        return F.linear(c.narrow(batch_axis, 0, 1), weight).expand(*c.shape[:-1], weight.shape[0])
    return F.linear(c, weight)


@rule(torch.matmul, T.matmul, T.__matmul__, torch.mm, T.mm, torch.bmm, T.bmm)
def matmul(func: Callable, a: Any, b: Any) -> Jet:
    if func is T.matmul and not isinstance(a, Jet) and torch.compiler.is_compiling():
        a, b = _written_order(a, b)
    return product(func, a, b)


@rule(torch.linalg.cross, torch.cross, T.cross)
def cross(func: Callable, a: Any, b: Any, dim: int | None = None, *, out: Any = None) -> Jet:
    """The cross product along ``dim`` (``torch.cross`` without one: the first of size 3), bilinear."""
    if out is not None:
        raise unsupported(func, " with out=")
    shape = torch.broadcast_shapes(primal(a).shape, primal(b).shape)
    if dim is None:
        dim = -1 if func is torch.linalg.cross else next(i for i, size in enumerate(shape) if size == 3)
    axis = dim - len(shape) if dim >= 0 else dim  # negative: the same axis of c_0 and of each direction's c_k
    return product(lambda p, q: torch.linalg.cross(p, q, dim=axis), a, b)


@rule(torch.addmm, T.addmm, torch.baddbmm, T.baddbmm)
def addmm(func: Callable, base: Any, a: Any, b: Any, *, beta: Any = 1, alpha: Any = 1) -> Jet:
    """``beta base + alpha a @ b`` (``base`` not read where ``beta`` is 0, as torch has it); the value torch's."""
    value = func(primal(base), primal(a), primal(b), beta=beta, alpha=alpha)
    scaled = torch.matmul(a, b) if alpha == 1 else alpha * torch.matmul(a, b)
    total = scaled if beta == 0 else (base if beta == 1 else beta * base) + scaled
    return valued(total, value) if isinstance(total, Jet) else value  # beta = 0 drops the only jet


def _written_order(tensor: torch.Tensor, jet: Jet) -> tuple[Any, Any]:
    """The operands of ``Tensor.matmul(tensor, jet)`` while compiling, in the order the network wrote them.

    Dynamo passes ``jet @ tensor`` on as ``Tensor.matmul(tensor, jet)`` too (it swaps the operands of an
    object that is not a tensor for the reflected method, and has none for matmul), so the call cannot
    tell the two apart; the shapes can, unless they multiply both ways: then it refuses.
    """
    as_written, swapped = _multiply(tensor.shape, jet.shape), _multiply(jet.shape, tensor.shape)
    if as_written and swapped:
        raise unsupported(T.matmul, f" under torch.compile of a tensor {tuple(tensor.shape)} and a jet "
                          f"{tuple(jet.shape)} that multiply in both orders: dynamo passes `jet @ tensor` as "
                          "`tensor @ jet`; write torch.matmul(...)")  # fmt: skip
    return (tensor, jet) if as_written else (jet, tensor)


def _multiply(first: torch.Size, second: torch.Size) -> bool:
    """Whether ``first @ second`` is defined for operands of these shapes."""
    if len(first) == 0 or len(second) == 0:
        return False
    inner = first[-1] == (second[0] if len(second) == 1 else second[-2])
    if not inner or len(first) <= 2 and len(second) <= 2:
        return inner
    try:
        torch.broadcast_shapes(first[:-2], second[:-2])
    except RuntimeError:
        return False
    return True


@rule(torch.einsum)
def einsum(func: Callable, equation: str, *operands: Any) -> Jet:
    """One jet operand: linear; two operands that are both jets: a Cauchy product."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    contract = lambda *tensors: torch.einsum(equation, *tensors)  # noqa: E731
    jets = sum(isinstance(o, Jet) for o in operands)
    if jets == 1:
        return map_coefficients(contract, operands, {}, batched=False, zero_constants=False)
    if len(operands) == 2:
        return product(contract, *operands)
    raise unsupported(func, " of three or more operands with several depending on the input")


@rule(F.bilinear)
def bilinear(func: Callable, x1: Any, x2: Any, weight: Any, bias: Any = None) -> Jet:
    """``x1^T W_k x2 + b_k``: linear in each input, a Cauchy product where both depend on the input."""
    if isinstance(weight, Jet) or isinstance(bias, Jet):
        raise unsupported(func, " with a weight or bias that depends on the input")
    mapped = torch.einsum("...i,kij->...kj", x1, weight)  # (..., out, in2)
    out = torch.einsum("...kj,...j->...k", mapped, x2)
    out = out if bias is None else out + bias
    return valued(out, func(primal(x1), primal(x2), weight, bias))


def reciprocal(x: Jet) -> Jet:
    """``1 / x``: ``r_k = -r_0 sum_(j=1..k) x_j r_(k-j)``."""
    r0 = torch.reciprocal(x.primal)
    coefficients = [r0]
    for k in range(1, x.order + 1):
        head = -(r0 * r0) * x.coefficients[k]
        lower = convolution(x.coefficients, coefficients, k, lambda j: 1)
        coefficients.append(x.combine(k, head, lower, scale=-r0))
    return x.like(coefficients)


def convolution(
    x: list, y: list, k: int, weight: Callable[[int], Any], last: int | None = None, total: Any = None
) -> torch.Tensor | None:
    """``total + sum_(j=1..last) weight(j) x_j y_(k-j)``, ``last = k - 1`` by default.

    The terms of an order-k coefficient below the top, with number weights
    fused into the additions.
    """
    for j in range(1, (k - 1 if last is None else last) + 1):
        w = weight(j)
        if total is not None and not isinstance(w, torch.Tensor):
            total = accumulate(total, x[j], y[k - j], w)
            continue
        term = x[j] * y[k - j]
        term = term if not isinstance(w, torch.Tensor) and w == 1 else w * term
        total = term if total is None else total + term
    return total


@rule(torch.div, T.div, T.__truediv__, torch.true_divide, torch.divide)
def div(func: Callable, a: Any, b: Any, *, rounding_mode: str | None = None) -> Any:
    if rounding_mode is not None:
        raise unsupported(func, f" with rounding_mode={rounding_mode!r}")
    if isinstance(b, Jet):
        return mul(torch.mul, a, reciprocal(b))
    ndim = b.dim() if isinstance(b, torch.Tensor) else 0
    return a.like([align(a, k, c, ndim) / b for k, c in enumerate(a.coefficients)], a.degree)


@rule(torch.reciprocal, T.reciprocal)
def reciprocal_rule(func: Callable, x: Jet) -> Jet:
    return reciprocal(x)


def power(x: Jet, p: Any) -> Jet:
    """``x ** p`` for a constant exponent: by squaring for a small natural ``p``, else Faa di Bruno's formula.

    With ``s(t) = sum_(j>=1) x_j t^j``, ``(x_0 + s)^p = sum_m C(p, m) x_0^(p-m) s^m``, so
    ``y_k = sum_(m=1..k) C(p, m) x_0^(p-m) [t^k] s^m``.  Unlike the recurrence
    ``k x_0 y_k = sum_j ((p + 1) j - k) x_j y_(k-j)`` it never divides by ``x_0``: at
    ``x_0 = 0`` (``|x|^3.5`` at a boundary point) each term is autograd's own
    ``C(p, m) 0^(p-m)``, 0 below the order ``p`` and infinite above, where the
    recurrence gave NaN.  A term with ``C(p, m) = 0`` (a natural ``p < m``) is left
    out, as autograd's zero rule for ``x^0`` has it.
    """
    if isinstance(p, numbers.Real) and float(p).is_integer() and 1 <= p <= 8:
        p = int(p)
        result, base = None, x
        while True:
            if p & 1:
                result = base if result is None else mul(torch.mul, result, base)
            p >>= 1
            if not p:
                return result
            base = mul(torch.mul, base, base)
    x0, order = x.primal, x.order
    binomials = [1]
    for m in range(1, order + 1):
        binomials.append(binomials[-1] * (p - (m - 1)) / m)
    scaled = [torch.pow(x0, p)] + [
        None if isinstance(c, numbers.Number) and c == 0 else c * torch.pow(x0, p - m)
        for m, c in enumerate(binomials[1:], start=1)
    ]
    # s_powers[m][k] = [t^k] s^m, per direction (the top order's terms read only lower ones); None: known zero
    s_powers = {1: {j: x.coefficients[j] for j in range(1, order) if j <= x.degree}}
    coefficients = [scaled[0]]
    for k in range(1, order + 1):
        head = None if scaled[1] is None or k > x.degree else scaled[1] * x.coefficients[k]
        lower = None
        for m in range(2, k + 1):
            term = _power_coefficient(s_powers, m, k)
            s_powers.setdefault(m, {})[k] = term
            if term is not None and scaled[m] is not None:
                lower = scaled[m] * term if lower is None else lower + scaled[m] * term
        known_zero = head is None and lower is None
        coefficients.append(x.zero(k, x0.shape) if known_zero else x.combine(k, head, lower))
    return x.like(coefficients)


def _power_coefficient(s_powers: dict, m: int, k: int) -> torch.Tensor | None:
    """``[t^k] s^m = sum_j s_j [t^(k-j)] s^(m-1)`` from the lower powers; None if every term is known zero."""
    total = None
    for j, s_j in s_powers[1].items():
        below = s_powers[m - 1].get(k - j)
        if below is not None:
            total = s_j * below if total is None else total + s_j * below
    return total


@rule(torch.pow, T.pow, T.__pow__)
def pow_rule(func: Callable, base: Any, exponent: Any) -> Any:
    if not isinstance(exponent, Jet):
        return power(base, exponent)
    log_base = math.log(base) if isinstance(base, numbers.Number) else torch.log(base)
    return torch.exp(exponent * log_base)


@rule(torch.square, T.square)
def square(func: Callable, x: Jet) -> Jet:
    return mul(torch.mul, x, x)


@rule(torch.sqrt, T.sqrt)
def sqrt(func: Callable, x: Jet) -> Jet:
    return power(x, 0.5)


@rule(torch.rsqrt, T.rsqrt)
def rsqrt(func: Callable, x: Jet) -> Jet:
    return power(x, -0.5)
