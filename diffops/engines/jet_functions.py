"""Jet rules of elementwise functions, from the ordinary differential equations they satisfy.

A function with ``y' = z x'`` has Taylor coefficients

    y_k = (1/k) sum_(j=1..k) j x_j z_(k-j),

so each coefficient costs O(k) products once ``z`` is known to order k - 1:
``tanh' = 1 - tanh^2``, ``sigmoid' = sigmoid (1 - sigmoid)``, ``exp' = exp``,
``sin' = cos`` and ``cos' = -sin`` jointly; ``softplus' = sigmoid``,
``log' = 1/x`` and ``Phi' = phi`` take ``z`` from a jet of lower order.
Composites are written with jets: ``silu = x sigmoid(x)``, ``gelu = x Phi(x)``.
Piecewise-linear functions (ReLU) scale every coefficient by their slope at
``c_0``: their higher derivatives are zero, as autograd has them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch._C._functorch import peek_interpreter_stack

from .jet import Jet, rule, unsupported
from .jet_products import convolution, reciprocal, series_product

T = torch.Tensor
Slope = Callable[[int, list], torch.Tensor]


def integral_coefficient(x: Jet, z: list[torch.Tensor], k: int) -> torch.Tensor:
    """``y_k`` of ``y' = z x'`` from ``z_0 .. z_(k-1)``, skipping the ``x_j`` known to be zero."""
    head = z[0] * x.coefficients[k] if k <= x.degree else None
    last, weight = min(k - 1, x.degree), (lambda j: j / k)
    if x.collapses(k) or head is None:
        return x.combine(k, head, convolution(x.coefficients, z, k, weight, last))
    return convolution(x.coefficients, z, k, weight, last, total=head)


def solve(x: Jet, y0: torch.Tensor, slope: Slope) -> Jet:
    """The jet of ``y`` with ``y(c_0) = y0`` and ``y' = z x'``; ``slope(k, ys)`` is ``z_k`` from ``ys[:k+1]``."""
    ys: list[torch.Tensor] = [y0]
    z: list[torch.Tensor] = []
    for k in range(1, x.order + 1):
        z.append(slope(k - 1, ys))
        ys.append(integral_coefficient(x, z, k))
    return x.like(ys)


def second_order(x: Jet, y0: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor) -> Jet:
    """A jet of order <= 2 from ``f'`` and ``f''`` at ``c_0``: the forward Laplacian's rule

    ``y_1 = f' x_1``, ``y_2 = f' x_2 + f''/2 x_1^2``, whose collapsed top needs
    only ``sum_r x_1^2``: three passes over the directions, and no more saved.
    """
    # the custom backward is not written for torch.func transforms (parameter_jacobian vmaps over samples)
    if x.order == 2 and x.collapses(2) and peek_interpreter_stack() is None:
        x2 = x.coefficients[2] if x.degree >= 2 else None
        return x.like([y0, *_CollapsedSecondOrder.apply(d1, 0.5 * d2, x.coefficients[1], x2)])
    ys = [y0]
    if x.order >= 1:
        x1 = x.coefficients[1]
        ys.append(d1 * x1)
    if x.order == 2:
        square = x1 * x1  # (a product differentiates faster than a power)
        top = (0.5 * d2) * (square.sum(0) if x.collapses(2) else square)
        ys.append(top + d1 * x.coefficients[2] if x.degree >= 2 else top)
    return x.like(ys)


class _CollapsedSecondOrder(torch.autograd.Function):
    """The collapsed rule of :func:`second_order` with a hand-written backward.

    Forward: ``d1, half_d2: (N, *f)``, ``x1: (R, N, *f)``, ``x2: (N, *f)`` or None
    (known zero) to ``y1 = d1 x1: (R, N, *f)`` and ``y2 = d1 x2 + half_d2 sum_r x1^2:
    (N, *f)``.  Autograd's backward of the same ops differentiates the square and
    the broadcast products separately, with more passes over the ``(R, N, *f)``
    tensors; this one makes three (``d1 g1 + x1 (2 half_d2 g2)`` and ``sum_r g1 x1``)
    and is written in torch ops, so it can itself be differentiated.
    """

    @staticmethod
    def forward(ctx, d1, half_d2, x1, x2):
        squares = (x1 * x1).sum(0)  # (N, *f)
        y2 = half_d2 * squares
        if x2 is not None:
            y2 = torch.addcmul(y2, d1, x2)
        ctx.save_for_backward(d1, half_d2, x1, x2, squares)
        ctx.set_materialize_grads(False)  # an unused y1 (the last layer's, for a Laplacian) costs nothing
        return d1 * x1, y2

    @staticmethod
    def backward(ctx, g1, g2):
        d1, half_d2, x1, x2, squares = ctx.saved_tensors
        if torch.is_grad_enabled():  # a differentiable backward: the saved sum is not tracked back to x1
            squares = (x1 * x1).sum(0)
        need_d1, need_half_d2, need_x1, need_x2 = ctx.needs_input_grad
        grad_d1 = grad_half_d2 = grad_x1 = grad_x2 = None
        if g1 is not None:
            grad_x1 = d1 * g1 if need_x1 else None  # (R, N, *f)
            grad_d1 = (g1 * x1).sum(0) if need_d1 else None
        if g2 is not None:
            if need_x1:
                top = 2 * half_d2 * g2  # (N, *f)
                grad_x1 = x1 * top if grad_x1 is None else torch.addcmul(grad_x1, x1, top)
            if need_d1 and x2 is not None:
                grad_d1 = g2 * x2 if grad_d1 is None else torch.addcmul(grad_d1, g2, x2)
            grad_half_d2 = g2 * squares if need_half_d2 else None
            grad_x2 = g2 * d1 if need_x2 and x2 is not None else None
        return grad_d1, grad_half_d2, grad_x1, grad_x2


def elementwise(x: Jet, y0: torch.Tensor, low: Callable[[], tuple], high: Callable[[], Jet]) -> Jet:
    """``f(x)``: from ``low() = (f', f'')`` at ``c_0`` up to order 2, else from ``high()``, the recurrence."""
    return second_order(x, y0, *low()) if x.order <= 2 else high()


def lower_series(x: Jet, build: Callable[[Jet], Jet]) -> list[torch.Tensor]:
    """Coefficients of ``build(x)`` to order K - 1, the derivative series a ``solve`` needs."""
    return build(x.truncate(max(x.order - 1, 0))).coefficients


def _inplace(func: Callable, inplace: bool) -> None:
    if inplace:
        raise unsupported(func, " with inplace=True")


@rule(torch.tanh, T.tanh, F.tanh)
def tanh(func: Callable, x: Jet) -> Jet:
    y0 = torch.tanh(x.primal)
    d1, twice_first = 1 - y0 * y0, -2 * y0  # the first reused by every order of 1 - y^2
    slope = lambda k, y: d1 if k == 0 else series_product(y, y, k, -1.0, twice_first)  # noqa: E731
    return elementwise(x, y0, lambda: (d1, twice_first * d1), lambda: solve(x, y0, slope))


@rule(torch.sigmoid, T.sigmoid, F.sigmoid)
def sigmoid(func: Callable, x: Jet) -> Jet:
    y0 = torch.sigmoid(x.primal)
    d1 = y0 * (1 - y0)
    slope = lambda k, y: d1 if k == 0 else y[k] - series_product(y, y, k)  # noqa: E731
    return elementwise(x, y0, lambda: (d1, d1 * (1 - 2 * y0)), lambda: solve(x, y0, slope))


@rule(torch.exp, T.exp)
def exp(func: Callable, x: Jet) -> Jet:
    y0 = torch.exp(x.primal)
    return elementwise(x, y0, lambda: (y0, y0), lambda: solve(x, y0, lambda k, y: y[k]))


@rule(torch.expm1, T.expm1)
def expm1(func: Callable, x: Jet) -> Jet:
    y0 = torch.expm1(x.primal)
    slope = lambda k, y: y[0] + 1 if k == 0 else y[k]  # noqa: E731
    return elementwise(x, y0, lambda: (y0 + 1, y0 + 1), lambda: solve(x, y0, slope))


def _pair(x: Jet, f0: torch.Tensor, g0: torch.Tensor, sign: float) -> tuple[Jet, Jet]:
    """``(f, g)`` with ``f' = g x'`` and ``g' = sign f x'``: sin/cos (sign -1), sinh/cosh (+1)."""
    f, g = [f0], [g0]
    for k in range(1, x.order + 1):
        f.append(integral_coefficient(x, g, k))
        g.append(sign * integral_coefficient(x, f, k))
    return x.like(f), x.like(g)


def _trigonometric(x: Jet, f: Callable, g: Callable, sign: float) -> Jet:
    """``f(x)`` for ``f' = g``, ``g' = sign f``: sin and cos (sign -1), sinh and cosh (+1)."""
    f0, g0 = f(x.primal), g(x.primal)
    return elementwise(x, f0, lambda: (g0, sign * f0), lambda: _pair(x, f0, g0, sign)[0])


@rule(torch.sin, T.sin)
def sin(func: Callable, x: Jet) -> Jet:
    return _trigonometric(x, torch.sin, torch.cos, -1.0)


@rule(torch.cos, T.cos)
def cos(func: Callable, x: Jet) -> Jet:
    return _trigonometric(x, torch.cos, lambda t: -torch.sin(t), -1.0)


@rule(torch.sinh, T.sinh)
def sinh(func: Callable, x: Jet) -> Jet:
    return _trigonometric(x, torch.sinh, torch.cosh, 1.0)


@rule(torch.cosh, T.cosh)
def cosh(func: Callable, x: Jet) -> Jet:
    return _trigonometric(x, torch.cosh, torch.sinh, 1.0)


def _with_derivative(x: Jet, y0: torch.Tensor, derivative: Callable[[Jet], Jet]) -> Jet:
    """``y`` from ``y(c_0) = y0`` and ``y' = derivative(x) x'``."""
    z = lower_series(x, derivative)
    return solve(x, y0, lambda k, y: z[k])


@rule(torch.log, T.log)
def log(func: Callable, x: Jet) -> Jet:
    return _with_derivative(x, torch.log(x.primal), reciprocal)


@rule(torch.log1p, T.log1p)
def log1p(func: Callable, x: Jet) -> Jet:
    return _with_derivative(x, torch.log1p(x.primal), lambda t: reciprocal(t + 1))


@rule(torch.atan, T.atan, torch.arctan)
def atan(func: Callable, x: Jet) -> Jet:
    return _with_derivative(x, torch.atan(x.primal), lambda t: reciprocal(t * t + 1))


@rule(torch.erf, T.erf, torch.special.erf)
def erf(func: Callable, x: Jet) -> Jet:
    return _with_derivative(x, torch.erf(x.primal), lambda t: torch.exp(-(t * t)) * (2 / math.sqrt(math.pi)))


def normal_cdf(x: Jet) -> Jet:
    """``Phi(x)``, with ``Phi' = phi = exp(-x^2 / 2) / sqrt(2 pi)``."""
    y0 = 0.5 * (1 + torch.erf(x.primal / math.sqrt(2)))
    return _with_derivative(x, y0, lambda t: torch.exp(t * t * -0.5) * (1 / math.sqrt(2 * math.pi)))


@rule(F.softplus)
def softplus(func: Callable, x: Jet, beta: float = 1.0, threshold: float = 20.0) -> Jet:
    """``log(1 + exp(beta x)) / beta``, linear where ``beta x > threshold`` (as torch has it)."""
    y0, s = F.softplus(x.primal, beta, threshold), torch.sigmoid(x.primal * beta)
    general = lambda: _with_derivative(x, y0, lambda t: torch.sigmoid(t * beta))  # noqa: E731
    y = elementwise(x, y0, lambda: (s, beta * s * (1 - s)), general)
    linear = x.primal * beta > threshold
    return y.like([y.primal] + [torch.where(linear, a, b) for a, b in zip(x.coefficients[1:], y.coefficients[1:])])


@rule(F.silu)
def silu(func: Callable, x: Jet, inplace: bool = False) -> Jet:
    _inplace(func, inplace)
    x0 = x.primal
    s = torch.sigmoid(x0)
    derivatives = lambda: (s * (1 + x0 * (1 - s)), s * (1 - s) * (2 + x0 * (1 - 2 * s)))  # noqa: E731
    return elementwise(x, x0 * s, derivatives, lambda: x * torch.sigmoid(x))


@rule(F.mish)
def mish(func: Callable, x: Jet, inplace: bool = False) -> Jet:
    _inplace(func, inplace)
    return x * torch.tanh(F.softplus(x))


@rule(F.gelu)
def gelu(func: Callable, x: Jet, approximate: str = "none") -> Jet:
    if approximate == "tanh":
        inner = (x + 0.044715 * x * x * x) * math.sqrt(2 / math.pi)
        return 0.5 * x * (1 + torch.tanh(inner))
    x0 = x.primal
    cdf, density = 0.5 * (1 + torch.erf(x0 / math.sqrt(2))), torch.exp(-0.5 * x0 * x0) / math.sqrt(2 * math.pi)
    derivatives = lambda: (cdf + x0 * density, density * (2 - x0 * x0))  # noqa: E731
    return elementwise(x, x0 * cdf, derivatives, lambda: x * normal_cdf(x))


def piecewise_linear(x: Jet, y0: torch.Tensor, slope: torch.Tensor) -> Jet:
    """Every coefficient above ``c_0`` times the slope at ``c_0``."""
    return x.like([y0] + [slope * c for c in x.coefficients[1:]], x.degree)


@rule(torch.relu, T.relu, F.relu)
def relu(func: Callable, x: Jet, inplace: bool = False) -> Jet:
    _inplace(func, inplace)
    return piecewise_linear(x, torch.relu(x.primal), (x.primal > 0).to(x.dtype))


@rule(F.leaky_relu)
def leaky_relu(func: Callable, x: Jet, negative_slope: float = 0.01, inplace: bool = False) -> Jet:
    _inplace(func, inplace)
    slope = torch.where(x.primal > 0, 1.0, negative_slope).to(x.dtype)
    return piecewise_linear(x, F.leaky_relu(x.primal, negative_slope), slope)


@rule(torch.abs, T.abs, T.__abs__)
def abs_(func: Callable, x: Jet) -> Jet:
    return piecewise_linear(x, torch.abs(x.primal), torch.sgn(x.primal))
