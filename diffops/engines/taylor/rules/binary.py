"""Jet rules of elementwise functions of two tensors: atan2, hypot, maximum and minimum, logaddexp,
lerp, addcmul, addcdiv and xlogy.

Each is written with other jet rules and takes its value, ``c_0``, from torch's
own function, so the value and its parameter gradients are torch's to the last
bit.  Where a formula is well conditioned on part of the domain only (the
arctangent of a ratio, the log of one plus an exponential), both forms are
built from jets *selected* by a mask of ``c_0`` before they are divided or
exponentiated, so no branch that is thrown away can overflow.  At ties
(``a == b``) maximum and minimum split their coefficients half and half, as
autograd splits the gradient.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from ..jet import Jet, primal, rule, unsupported, valued
from .reductions import extremum

T = torch.Tensor


@rule(torch.atan2, T.atan2, torch.arctan2, T.arctan2)
def atan2(func: Any, y: Any, x: Any) -> Jet:
    """``atan2(y, x)``: above ``c_0`` the coefficients of ``atan(y / x)`` where ``|y_0| <= |x_0|`` and of
    ``-atan(x / y)`` elsewhere (the two differ by a constant), so the ratio never exceeds one."""
    y0, x0 = primal(y), primal(x)
    steep = y0.abs() > x0.abs()
    ratio = torch.where(steep, -x, y) / torch.where(steep, y, x)
    return valued(torch.atan(ratio), torch.atan2(y0, x0))


@rule(torch.hypot, T.hypot)
def hypot(func: Any, a: Any, b: Any) -> Jet:
    """``sqrt(a^2 + b^2)``."""
    return valued(torch.sqrt(a * a + b * b), torch.hypot(primal(a), primal(b)))


@rule(torch.maximum, T.maximum, torch.max, T.max)
def maximum(func: Any, a: Any, b: Any = None, *args: Any, **kwargs: Any) -> Any:
    return _extreme(func, torch.maximum, torch.amax, a, b, args, kwargs)


@rule(torch.minimum, T.minimum, torch.min, T.min)
def minimum(func: Any, a: Any, b: Any = None, *args: Any, **kwargs: Any) -> Any:
    return _extreme(func, torch.minimum, torch.amin, a, b, args, kwargs)


def _extreme(func: Any, pick: Any, reduce: Any, a: Any, b: Any, args: tuple, kwargs: dict) -> Any:
    """``pick(a, b)`` (``torch.maximum``/``minimum``): ``a`` where it wins at ``c_0``, ``b`` where ``b`` does,
    their mean elsewhere (ties and NaNs).  ``max``/``min`` of one tensor is a reduction
    (:func:`.reductions.extremum`, with ``reduce``)."""
    if not isinstance(b, (torch.Tensor, Jet)) or args or kwargs:
        return extremum(func, reduce, a, b, *args, **kwargs)
    a0, b0 = primal(a), primal(b)
    a_wins, b_wins = (a0 > b0, a0 < b0) if pick is torch.maximum else (a0 < b0, a0 > b0)
    return valued(torch.where(a_wins, a, torch.where(b_wins, b, (a + b) * 0.5)), pick(a0, b0))


@rule(torch.logaddexp, T.logaddexp)
def logaddexp(func: Any, a: Any, b: Any) -> Jet:
    """``m + log1p(exp(s - m))`` with ``m`` the larger of ``a, b`` at ``c_0`` and ``s`` the smaller."""
    a0, b0 = primal(a), primal(b)
    first = a0 >= b0
    larger, smaller = torch.where(first, a, b), torch.where(first, b, a)
    return valued(larger + torch.log1p(torch.exp(smaller - larger)), torch.logaddexp(a0, b0))


@rule(torch.lerp, T.lerp)
def lerp(func: Any, start: Any, end: Any, weight: Any) -> Jet:
    """``start + weight (end - start)``."""
    return valued(start + weight * (end - start), torch.lerp(primal(start), primal(end), primal(weight)))


@rule(torch.addcmul, T.addcmul)
def addcmul(func: Any, base: Any, a: Any, b: Any, *, value: numbers.Number = 1) -> Jet:
    """``base + value a b``."""
    return valued(base + value * (a * b), torch.addcmul(primal(base), primal(a), primal(b), value=value))


@rule(torch.addcdiv, T.addcdiv)
def addcdiv(func: Any, base: Any, a: Any, b: Any, *, value: numbers.Number = 1) -> Jet:
    """``base + value a / b``."""
    return valued(base + value * (a / b), torch.addcdiv(primal(base), primal(a), primal(b), value=value))


@rule(torch.xlogy, T.xlogy, torch.special.xlogy)
def xlogy(func: Any, x: Any, y: Any) -> Jet:
    """``x log y`` where every ``y`` is positive at ``c_0``, as torch differentiates it (at ``x = 0`` too).

    Where ``y <= 0`` torch's value is 0 at ``x = 0`` and its backward masks the derivative in
    ``x`` (NaN elsewhere): refused, as under the compiler, which cannot test the data.
    """
    if torch.compiler.is_compiling():
        raise unsupported(func, " under torch.compile, where it cannot be told whether a y is positive")
    if bool((torch.as_tensor(primal(y)) <= 0).any()):
        raise unsupported(func, " where y <= 0: torch masks the derivative there")
    log = math.log(y) if isinstance(y, numbers.Number) else torch.log(y)
    return valued(x * log, torch.xlogy(primal(x), primal(y)))
