"""Jet rules of square matrices: inverse, solve, determinant and its logarithms.

With ``A = A_0 + D`` (``D = A - c_0``, a jet whose value is 0) and ``B_0 = A_0^{-1}``,

    A^{-1} = (I + B_0 D)^{-1} B_0 = sum_m (-B_0 D)^m B_0,
    log |det A| = log |det A_0| + tr log(I + B_0 D) = log |det A_0| + sum_m (-1)^(m+1) tr((B_0 D)^m) / m,

and ``(B_0 D)^m`` starts at order m, so K terms give every coefficient to order
K: K - 1 matrix products of jets, each a Cauchy product (:mod:`.products`).
The values are torch's own (``valued``); the coefficients above them hold
``B_0``, so their parameter gradients go through torch's exact reverse rule of
``inv`` (forward mode's rules of ``det``, ``slogdet`` and ``solve`` are wrong from
the first derivative's parameter gradients, which is why the ``func`` engine
refuses them).  A singular ``c_0`` has no inverse: ``torch.linalg.inv`` raises,
and the engine refuses.  Complex matrices are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..jet import Jet, rule, unsupported, valued

T = torch.Tensor


def _powers(a: Jet, func: Callable) -> tuple[torch.Tensor, list[Jet]]:
    """``(B_0, [M, M^2, .., M^K])`` with ``M = B_0 (A - A_0)``, for a real square matrix jet ``a``."""
    if a.dtype.is_complex:
        raise unsupported(func, " of a complex matrix")
    inverse = torch.linalg.inv(a.primal)
    step = torch.matmul(inverse, a - a.primal)
    powers = [step]
    for _ in range(1, a.order):
        powers.append(torch.matmul(powers[-1], step))
    return inverse, powers


def inverse_series(a: Jet, func: Callable) -> Jet:
    """``A^{-1}`` of a matrix jet ``(..., n, n)``, its value ``torch.linalg.inv``'s."""
    inverse, powers = _powers(a, func)
    total = inverse
    for m, power in enumerate(powers, start=1):
        total = total + (-1) ** m * torch.matmul(power, inverse)
    return valued(total, inverse)


def _log_abs_det(a: Jet, func: Callable, value: torch.Tensor) -> Jet:
    """``log |det A|`` of a matrix jet, with ``value`` as its ``c_0``."""
    _, powers = _powers(a, func)
    total = None
    for m, power in enumerate(powers, start=1):
        term = torch.diagonal(power, dim1=-2, dim2=-1).sum(-1) * ((-1) ** (m + 1) / m)
        total = term if total is None else total + term
    return valued(total, value)


@rule(torch.linalg.inv, torch.inverse, T.inverse)
def inv(func: Callable, a: Jet) -> Jet:
    return inverse_series(a, func)


@rule(torch.linalg.inv_ex)
def inv_ex(func: Callable, a: Jet, *, check_errors: bool = False) -> Any:
    inverse = inverse_series(a, func)
    info = torch.zeros(a.shape[:-2], dtype=torch.int32, device=a.device)  # 0: inverted (inv raises otherwise)
    return torch.return_types.linalg_inv_ex((inverse, info))


@rule(torch.linalg.solve)
def solve(func: Callable, a: Any, b: Any, *, left: bool = True) -> Any:
    """``A^{-1} B`` (``left``) or ``B A^{-1}``; either may depend on the input.

    ``B`` shaped as ``A`` without its last dimension is a batch of vectors (``left`` only), as
    ``torch.linalg.solve`` reads it.
    """
    value = func(a.primal if isinstance(a, Jet) else a, b.primal if isinstance(b, Jet) else b, left=left)
    inverse = inverse_series(a, func) if isinstance(a, Jet) else torch.linalg.inv(a)
    if not left:
        return valued(torch.matmul(b, inverse), value)
    vectors = b.ndim == 1 or (b.ndim == a.ndim - 1 and tuple(b.shape) == tuple(a.shape[:-1]))  # torch's test
    return valued(torch.matmul(inverse, b.unsqueeze(-1)).squeeze(-1) if vectors else torch.matmul(inverse, b), value)


@rule(torch.linalg.slogdet, torch.slogdet, T.slogdet)
def slogdet(func: Callable, a: Jet) -> Any:
    """``(sign, log |det A|)``: the sign a constant (it changes only where det is 0), the log a jet."""
    sign, value = torch.linalg.slogdet(a.primal)
    kind = torch.return_types.linalg_slogdet if func is torch.linalg.slogdet else torch.return_types.slogdet
    return kind((sign, _log_abs_det(a, func, value)))


@rule(torch.logdet, T.logdet)
def logdet(func: Callable, a: Jet) -> Jet:
    """``log det A``; where det A < 0 its value is NaN, as torch's, and every coefficient above it 0,
    as nested autograd's derivatives there."""
    log = _log_abs_det(a, func, torch.logdet(a.primal))
    negative = torch.linalg.slogdet(a.primal).sign < 0
    return log.like([log.primal, *(torch.where(negative, 0.0, c) for c in log.coefficients[1:])], log.degree)


@rule(torch.linalg.det, torch.det, T.det)
def det(func: Callable, a: Jet) -> Jet:
    """``det A = sign exp(log |det A|)``, its value torch's."""
    sign, value = torch.linalg.slogdet(a.primal)
    return valued(torch.exp(_log_abs_det(a, func, value)) * sign, torch.linalg.det(a.primal))
