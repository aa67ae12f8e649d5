"""Jet rules of piecewise-linear and piecewise-quadratic activations: hardtanh, ReLU6, hardsigmoid,
hardswish, the shrinks, threshold, PReLU, RReLU in eval mode, clamp; and the sawtooth functions
``frac``, ``fmod`` and ``remainder`` (``floor``, ``round`` and the other steps are constants, ``jet.CONSTANT``).

On each piece the function is a polynomial of degree at most two, so its
Taylor coefficients follow from ``f, f', f''`` at ``c_0`` alone.  At the kinks
the derivatives are the ones autograd returns there (checked order by order
against nested ``torch.autograd.grad``): the pieces that meet at a kink
are open intervals for hardtanh, ReLU6, hardsigmoid, hardswish, the shrinks
and threshold (slope 0 at their ends) and closed for clamp (slope 1 at
``min`` and ``max``); PReLU and RReLU take the negative slope at 0.
Coefficients outside a piece are selected with ``where``, never multiplied by
a zero slope, so that a NaN or infinity elsewhere in the network does not leak
through a flat piece.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..jet import Jet, rule, unsupported, valued
from .elementwise import leaky_slope, piecewise_linear, second_order

T = torch.Tensor


def masked(x: Jet, y0: torch.Tensor, inside: torch.Tensor, slope: float = 1.0) -> Jet:
    """``slope * c_k`` where ``inside``, 0 elsewhere, for every coefficient above ``c_0 = y0``."""
    scaled = (lambda c: c) if slope == 1 else (lambda c: slope * c)
    return x.like([y0] + [torch.where(inside, scaled(c), 0.0) for c in x.coefficients[1:]], x.degree)


def quadratic(x: Jet, f0: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> Jet:
    """``f(x)`` for an ``f`` that is ``f0 + f1 h + f2 h^2 / 2`` near ``c_0``:
    ``y_k = f1 x_k + f2/2 sum x_i x_(k-i)``."""
    if x.order <= 2:
        return second_order(x, [f0, f1, f2][: x.order + 1])
    step = x.like([torch.zeros_like(x.primal), *x.coefficients[1:]], x.degree)
    squares = step * step
    coefficients = [f0] + [f1 * c + (0.5 * f2) * s for c, s in zip(x.coefficients[1:], squares.coefficients[1:])]
    return x.like(coefficients)


def _inplace(func: Callable, inplace: bool) -> None:
    if inplace:
        raise unsupported(func, " with inplace=True")


@rule(F.hardtanh)
def hardtanh(func: Callable, x: Jet, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Jet:
    _inplace(func, inplace)
    x0 = x.primal
    return masked(x, F.hardtanh(x0, min_val, max_val), (x0 > min_val) & (x0 < max_val))


@rule(F.relu6)
def relu6(func: Callable, x: Jet, inplace: bool = False) -> Jet:
    return hardtanh(func, x, 0.0, 6.0, inplace)


@rule(F.hardsigmoid)
def hardsigmoid(func: Callable, x: Jet, inplace: bool = False) -> Jet:
    _inplace(func, inplace)
    x0 = x.primal
    # not F.hardsigmoid(x0): its backward scales by a float32 1/6, so the value's parameter gradients were off
    return masked(x, F.relu6(x0 + 3) / 6, (x0 > -3) & (x0 < 3), slope=1 / 6)


@rule(F.hardswish)
def hardswish(func: Callable, x: Jet, inplace: bool = False) -> Jet:
    """``x (x + 3) / 6`` on ``(-3, 3)``, 0 below, ``x`` above."""
    _inplace(func, inplace)
    x0 = x.primal
    inside = (x0 > -3) & (x0 < 3)
    zero, one = torch.zeros_like(x0), torch.ones_like(x0)
    f1 = torch.where(inside, x0 / 3 + 0.5, torch.where(x0 >= 3, one, zero))
    f2 = torch.where(inside, one / 3, zero)
    return quadratic(x, F.hardswish(x0), f1, f2)


@rule(F.softshrink)
def softshrink(func: Callable, x: Jet, lambd: float = 0.5) -> Jet:
    return masked(x, F.softshrink(x.primal, lambd), x.primal.abs() > lambd)


@rule(F.hardshrink, torch.hardshrink, T.hardshrink)
def hardshrink(func: Callable, x: Jet, lambd: float = 0.5) -> Jet:
    return masked(x, F.hardshrink(x.primal, lambd), x.primal.abs() > lambd)


@rule(F.threshold, torch.threshold)
def threshold(func: Callable, x: Jet, threshold: float, value: float, inplace: bool = False) -> Jet:
    _inplace(func, inplace)
    return masked(x, F.threshold(x.primal, threshold, value), x.primal > threshold)


@rule(F.prelu, torch.prelu)
def prelu(func: Callable, x: Jet, weight: torch.Tensor) -> Jet:
    """``max(0, x) + weight * min(0, x)``, ``weight`` per channel (dim 1) or shared; differentiable in ``weight``."""
    channels = weight.reshape(-1, *(1,) * (x.ndim - 2)) if weight.numel() > 1 else weight.reshape(())
    return piecewise_linear(x, F.prelu(x.primal, weight), leaky_slope(x.primal, channels))


@rule(F.rrelu)
def rrelu(
    func: Callable,
    x: Jet,
    lower: float = 1.0 / 8,
    upper: float = 1.0 / 3,
    training: bool = False,
    inplace: bool = False,
) -> Jet:
    """In eval mode a leaky ReLU of slope ``(lower + upper) / 2``; in training its slopes are random."""
    _inplace(func, inplace)
    if training:
        raise unsupported(func, " in training mode (random slopes); use eval()")
    slope = (lower + upper) / 2
    return piecewise_linear(x, F.leaky_relu(x.primal, slope), leaky_slope(x.primal, slope))


def clamp(x: Jet, low: Any, high: Any) -> Jet:
    """``min(max(x, low), high)``; slope 1 on the closed interval, as autograd has it."""
    for bound in (low, high):
        if isinstance(bound, Jet):
            raise unsupported(torch.clamp, " with bounds that depend on the input")
    x0 = x.primal
    inside = torch.ones_like(x0, dtype=torch.bool)
    if low is not None:
        inside &= x0 >= low
    if high is not None:
        inside &= x0 <= high
    return masked(x, torch.clamp(x0, low, high), inside)


@rule(torch.clamp, T.clamp, torch.clip, T.clip)
def clamp_rule(func: Callable, x: Jet, min: Any = None, max: Any = None) -> Jet:  # noqa: A002 - torch's names
    return clamp(x, min, max)


@rule(torch.clamp_min, T.clamp_min)
def clamp_min(func: Callable, x: Jet, min: Any) -> Jet:  # noqa: A002
    return clamp(x, min, None)


@rule(torch.clamp_max, T.clamp_max)
def clamp_max(func: Callable, x: Jet, max: Any) -> Jet:  # noqa: A002
    return clamp(x, None, max)


@rule(torch.frac, T.frac)
def frac(func: Callable, x: Jet) -> Jet:
    """``x - trunc(x)``: slope 1 everywhere, the jumps included, as autograd has it."""
    return valued(x, torch.frac(x.primal))


@rule(torch.fmod, T.fmod, torch.remainder, T.remainder, T.__mod__)
def modulo(func: Callable, x: Any, divisor: Any) -> Jet:
    """``x - divisor * trunc(x / divisor)`` (``fmod``) or ``floor`` (``remainder``, ``%``) for a divisor that
    does not depend on the input: slope 1 in ``x``; a divisor that is a parameter gets its gradient from ``c_0``."""
    if not isinstance(x, Jet) or isinstance(divisor, Jet):
        raise unsupported(func, " with a divisor that depends on the input")
    return valued(x, func(x.primal, divisor))
