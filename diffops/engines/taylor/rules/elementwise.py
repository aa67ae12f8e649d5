"""Jet rules of elementwise functions, from the ordinary differential equations they satisfy.

A function with ``y' = z x'`` has Taylor coefficients

    y_k = (1/k) sum_(j=1..k) j x_j z_(k-j),

so each coefficient costs O(k) products once ``z`` is known to order k - 1:
``tanh' = 1 - tanh^2``, ``sigmoid' = sigmoid (1 - sigmoid)``, ``exp' = exp``,
``sin' = cos`` and ``cos' = -sin`` jointly; ``softplus' = sigmoid``,
``log' = 1/x`` and ``Phi' = phi`` take ``z`` from a jet of lower order.
``silu = x sigmoid(x)`` and ``gelu = x Phi(x)`` are Cauchy products with those
series; Mish and the tanh form of GELU are written with other jet rules.
Piecewise-linear functions (ReLU) scale every coefficient by their slope at
``c_0``: their higher derivatives are zero, as autograd has them.

The same series ``z = f'(x(t))`` gives the backward pass: ``dy_k/dx_j =
z_(k-j)``, so two custom autograd functions replace the graph autograd would
record op by op (which took a third of a fourth-order training step): :class:`_CollapsedSecondOrder`
for the collapsed Laplacian, from ``f', f'', f'''`` at ``c_0``, and
:class:`_SeriesComposition` for orders above two.  Inside torch.func
transforms, for which they are not written, the rules run as plain ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch._C._functorch import peek_interpreter_stack

from ...base import entered
from ..collapsed import TracedCollapsed
from ..jet import Jet, rule, unsupported, valued
from .products import accumulate, convolution, linear_by_coefficient, reciprocal, series_product

T = torch.Tensor
Slope = Callable[[int, list], torch.Tensor]
Derivatives = Callable[[torch.Tensor], Iterator[torch.Tensor]]  # c_0 -> f, f', f'', f''' at c_0, lazily
Series = Callable[[Jet], tuple[list[torch.Tensor], list[torch.Tensor]]]  # x -> coefficients of f(x) and f'(x)


def integral_coefficient(x: Jet, z: list[torch.Tensor], k: int) -> torch.Tensor:
    """``y_k`` of ``y' = z x'`` from ``z_0 .. z_(k-1)``, skipping the ``x_j`` known to be zero."""
    head = z[0] * x.coefficients[k] if k <= x.degree else None
    last, weight = min(k - 1, x.degree), (lambda j: j / k)
    if x.collapses(k) or head is None:
        return x.combine(k, head, convolution(x.coefficients, z, k, weight, last))
    return convolution(x.coefficients, z, k, weight, last, total=head)


def solve(x: Jet, y0: torch.Tensor, slope: Slope) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The coefficients of ``y`` with ``y(c_0) = y0`` and ``y' = z x'``, and of ``z``, both to order K.

    ``slope(k, ys)`` is ``z_k`` from ``ys[:k+1]``.  ``z_K`` (which only the
    backward pass needs) is left out for a collapsed jet, whose top it cannot sum.
    """
    ys: list[torch.Tensor] = [y0]
    zs: list[torch.Tensor] = []
    for k in range(1, x.order + 1):
        zs.append(slope(k - 1, ys))
        ys.append(integral_coefficient(x, zs, k))
    if x.form != Jet.COLLAPSED:
        zs.append(slope(x.order, ys))
    return ys, zs


def second_order(x: Jet, fs: list[torch.Tensor]) -> Jet:
    """A jet of order <= 2 from ``fs = [f, f', f'']`` at ``c_0`` (as many as its order needs):
    ``y_1 = f' x_1``, ``y_2 = f' x_2 + f''/2 x_1^2``."""
    ys = [fs[0]]
    if x.order >= 1:
        x1 = x.coefficients[1]
        ys.append(fs[1] * x1)
    if x.order == 2:
        square = x1 * x1  # (a product differentiates faster than a power)
        top = (0.5 * fs[2]) * (x.collapse(square) if x.collapses(2) else square)
        ys.append(top + fs[1] * x.coefficients[2] if x.degree >= 2 else top)
    return x.like(ys)


def elementwise(
    x: Jet,
    derivatives: Derivatives | None = None,
    series: Series | None = None,
    composite: Callable[[], Jet] | None = None,
) -> Jet:
    """``f(x)`` for an elementwise ``f``, by the fastest rule it has.

    ``derivatives(c_0)``: ``f, f', f'', f'''`` at ``c_0`` (orders up to two);
    ``series(x)``: the coefficients of ``f(x)`` and ``f'(x)`` (any order);
    ``composite()``: ``f(x)`` written with other jet rules, used instead of a
    series on collapsed jets (a series built from Cauchy products has no collapsed top).
    """
    if isinstance(x, TracedCollapsed) and derivatives is not None:
        ordinary = lambda jet, weight, bias: elementwise(linear_by_coefficient(jet, weight, bias), derivatives)  # noqa: E731
        layer = x.activated(derivatives, ordinary)  # compiled, with the Linear before it
        if layer is not None:
            return layer
    plain = peek_interpreter_stack() is not None  # the custom functions are not written for torch.func transforms
    if derivatives is not None and x.order <= 2:
        if x.collapses(2) and not plain:
            x2 = x.coefficients[2] if x.degree >= 2 else None
            y = _CollapsedSecondOrder.apply(derivatives, x.primal, x.coefficients[1], x2, x.weights)
            return x.like(list(y))
        return second_order(x, list(islice(derivatives(x.primal), x.order + 1)))
    if series is None or (x.form == Jet.COLLAPSED and composite is not None):
        return composite()
    if plain or x.form == Jet.COLLAPSED:
        return x.like(series(x)[0])
    return x.like(list(_SeriesComposition.apply(series, x.form, x.degree, *x.coefficients)))


class _CollapsedSecondOrder(torch.autograd.Function):
    """``f(x)`` on a collapsed jet of order 2, the forward Laplacian's layer, with a hand-written backward.

    Forward: ``x0: (N, *f)``, ``x1: (R, N, *f)``, ``x2: (N, *f)`` or None (known
    zero) to ``y0 = f``, ``y1 = f' x1: (R, N, *f)`` and ``y2 = f' x2 + f''/2
    sum_r w_r x1^2: (N, *f)``, with ``f`` and its first three derivatives from
    ``derivatives(x0)`` and the jet's collapse ``weights: (R,)`` (None: all 1).
    The backward is two passes over the ``(R, N, *f)``
    tensors (``f' g1 + w x1 f'' g2`` and ``sum_r g1 x1``) and a few over
    ``(N, *f)`` ones, where autograd would record every product of the rule and
    of the derivatives themselves.  It is written in torch ops, so it can itself
    be differentiated.
    """

    @staticmethod
    def forward(ctx, derivatives: Derivatives, x0, x1, x2, weights):
        f0, f1, f2, f3 = derivatives(x0)
        half_squares = _direction_sum(x1, x1, 0.5, weights)  # (N, *f)
        y2 = f2 * half_squares
        if x2 is not None:
            y2.addcmul_(f1, x2)
        ctx.derivatives, ctx.weights = derivatives, weights
        ctx.save_for_backward(x0, x1, x2, f1, f2, f3, half_squares)
        ctx.set_materialize_grads(False)  # an unused y1 (the last layer's, for a Laplacian) costs nothing
        return f0, x1 * f1, y2

    @staticmethod
    def backward(ctx, g0, g1, g2):
        x0, x1, x2, f1, f2, f3, half_squares = ctx.saved_tensors
        weights = ctx.weights
        if torch.is_grad_enabled():  # a differentiable backward: what was saved, recomputed from the inputs
            _, f1, f2, f3 = ctx.derivatives(x0)
            half_squares = _direction_sum(x1, x1, 0.5, weights)
        # Each result is a fresh tensor, so the sums accumulate in place, differentiably too.
        grad_x0 = None if g0 is None else g0 * f1
        grad_x1 = grad_x2 = None
        if g1 is not None:
            grad_x1 = g1 * f1  # (R, N, *f)
            cross = _direction_sum(g1, x1)  # (N, *f)
            grad_x0 = cross * f2 if grad_x0 is None else grad_x0.addcmul_(cross, f2)
        if g2 is not None:
            top = g2 * f2
            weighted = x1 if weights is None else x1 * weights.reshape(-1, *[1] * (x1.dim() - 1))
            grad_x1 = weighted * top if grad_x1 is None else grad_x1.addcmul_(weighted, top)
            z2 = f3 * half_squares  # the collapsed top of the series of f'(x): d y2 / d x0
            if x2 is not None:
                z2.addcmul_(f2, x2)
                grad_x2 = g2 * f1
            grad_x0 = g2 * z2 if grad_x0 is None else grad_x0.addcmul_(g2, z2)
        return None, grad_x0, grad_x1, grad_x2, None


_CACHED_ELEMENTS = 2**16  # (R, N, *f) elements below which one product and sum beat R slices


def _direction_sum(
    a: torch.Tensor, b: torch.Tensor, scale: float = 1.0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``scale * sum_r w_r a_r b_r: (N, *f)`` of two ``(R, N, *f)`` tensors, a slice at a time.

    ``weights``: ``(R,)``, or None for all 1 (then the slices; weighted, one product and a contraction).

    Slice by slice, the running sum stays in cache and no ``(R, N, *f)``
    product is allocated; directions repeated over the batch (the first
    layer's, expanded with stride 0) are summed once.  Tensors that fit in
    cache anyway take one product and one sum: two kernels instead of R
    (measured at R = 16, width 128: 8.5 instead of 87 us at N = 4, 23
    instead of 101 us at N = 32; at N = 256 the slices win, 289 against 412 us).
    """
    if a.dim() > 1 and a.shape[1] > 1 and a.stride(1) == 0 and b.stride(1) == 0:
        return _direction_sum(a.narrow(1, 0, 1), b.narrow(1, 0, 1), scale, weights).expand(a.shape[1:])
    if weights is not None:
        total = torch.tensordot(weights, a * b, dims=1)
        return total if scale == 1 else total.mul_(scale)
    if a.numel() <= _CACHED_ELEMENTS:
        total = (a * b).sum(0)
        return total if scale == 1 else total.mul_(scale)
    pairs = zip(a.unbind(0), b.unbind(0))
    first, second = next(pairs)
    total = torch.addcmul(scalar(0.0, first), first, second, value=scale)
    for a_r, b_r in pairs:
        total.addcmul_(a_r, b_r, value=scale)
    return total


class _SeriesComposition(torch.autograd.Function):
    """``f(x)`` on a jet of any order, forward by ``series``, backward by ``dy_k / dx_j = z_(k-j)``.

    ``y(t) = f(x(t))`` with ``x(t) = sum_j x_j t^j``, so ``dy(t)/dx_j = f'(x(t)) t^j``:
    the gradient of ``x_j`` is ``sum_(k>=j) g_k z_(k-j)``, K^2/2 fused passes
    with the ``z`` that ``series`` computes anyway, where autograd would
    differentiate every product of the recurrence.  For single-direction and
    per-direction jets (not collapsed ones); ``x_0`` is shared by the directions,
    so its gradient sums over them.
    """

    @staticmethod
    def forward(ctx, series: Series, form: str, degree: int, *xs):
        # entered as every forward runs, with gradients off: the series' own ops are not a section of the network
        ys, zs = entered(series)(Jet(list(xs), form, degree))
        ctx.series, ctx.form, ctx.degree = series, form, degree
        ctx.save_for_backward(*xs, *zs)
        ctx.set_materialize_grads(False)
        return tuple(ys)

    @staticmethod
    def backward(ctx, *gs):
        order = len(gs) - 1
        xs, zs = ctx.saved_tensors[: order + 1], ctx.saved_tensors[order + 1 :]
        if torch.is_grad_enabled():  # a differentiable backward: z recomputed from the inputs
            zs = ctx.series(Jet(list(xs), ctx.form, ctx.degree))[1]
        directions = ctx.form == Jet.DIRECTIONS
        grads = [_correlation(gs, zs, j, directions) if ctx.needs_input_grad[3 + j] else None for j in range(order + 1)]
        return (None, None, None, *grads)


def _correlation(gs: tuple, zs: list[torch.Tensor], j: int, directions: bool) -> torch.Tensor | None:
    """``sum_(k>=j) g_k z_(k-j)``, the gradient of ``x_j``; for ``x_0``, the per-direction terms summed."""
    shared = gs[0] * zs[0] if j == 0 and gs[0] is not None else None
    total = None
    for k in range(max(j, 1), len(gs)):
        if gs[k] is not None:
            total = gs[k] * zs[k - j] if total is None else accumulate(total, gs[k], zs[k - j])
    if total is not None and j == 0 and directions:
        total = total.sum(0)
    if shared is None or total is None:
        return shared if total is None else total
    return shared + total


def _inplace(func: Callable, inplace: bool) -> None:
    if inplace:
        raise unsupported(func, " with inplace=True")


@rule(torch.tanh, T.tanh, F.tanh)
def tanh(func: Callable, x: Jet) -> Jet:
    return elementwise(x, _tanh_derivatives, _tanh_series)


def _tanh_derivatives(x0: torch.Tensor, precise: bool = False) -> Iterator[torch.Tensor]:
    # Written in f' = 1 - t^2, one fused kernel each, since these run on every layer of every step.
    t = torch.tanh(x0)
    yield t
    f1 = sech_squared(x0, t) if precise else torch.addcmul(scalar(1.0, t), t, t, value=-1)
    yield f1
    yield torch.addcmul(scalar(0.0, t), t, f1, value=-2)  # -2 t f'
    yield torch.addcmul(4 * f1, f1, f1, value=-6)  # (6 t^2 - 2) f' = (4 - 6 f') f'


_SCALARS: dict = {}


def scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value``: a 0-d tensor of ``like``'s dtype and device, the broadcast first operand of a fused ``addcmul``.

    Made once, except while compiling: a traced graph must not store a tensor it made.
    """
    if torch.compiler.is_compiling():
        return torch.full((), value, dtype=like.dtype, device=like.device)
    key = (value, like.dtype, like.device)
    if key not in _SCALARS:
        _SCALARS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return _SCALARS[key]



def _tanh_series(x: Jet, precise: bool = False) -> tuple[list, list]:
    y0 = torch.tanh(x.primal)
    d1 = sech_squared(x.primal, y0) if precise else 1 - y0 * y0
    twice_first = -2 * y0  # reused by every order of 1 - y^2
    return solve(x, y0, lambda k, y: d1 if k == 0 else series_product(y, y, k, -1.0, twice_first))


def sech_squared(x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``1 - tanh(x0)^2`` to its last digits: for ``|x0| >= 1``, where ``1 - t^2`` cancels to an error of one unit
    of 1, as ``4 e / (1 + e)^2`` with ``e = exp(-2 |x0|)``; below, ``1 - t^2`` (and no kink of ``abs``)."""
    e = torch.exp(-2 * x0.abs())
    return torch.where(x0.abs() < 1, 1 - t * t, 4 * e / (1 + e) ** 2)


def precise_tanh(x: Jet) -> Jet:
    """``tanh(x)`` with ``tanh'`` to its last digits where it is small: for a rule that multiplies it by large
    factors (the tanh form of GELU), where ``1 - t^2``'s absolute error of one unit of 1 would show."""
    return elementwise(x, partial(_tanh_derivatives, precise=True), partial(_tanh_series, precise=True))


@rule(torch.sigmoid, T.sigmoid, F.sigmoid, torch.special.expit)
def sigmoid(func: Callable, x: Jet) -> Jet:
    return elementwise(x, _sigmoid_derivatives, _sigmoid_series)


def _sigmoid_derivatives(x0: torch.Tensor, beta: float = 1.0) -> Iterator[torch.Tensor]:
    """``sigmoid(beta x)`` and its derivatives."""
    scaled = lambda f, k: f if beta == 1 else beta**k * f  # noqa: E731 - the chain rule's factor beta^k
    s = torch.sigmoid(x0 * beta if beta != 1 else x0)
    yield s
    f1 = torch.addcmul(s, s, s, value=-1)  # s (1 - s)
    yield scaled(f1, 1)
    yield scaled(torch.addcmul(f1, f1, s, value=-2), 2)  # f1 (1 - 2 s)
    yield scaled(torch.addcmul(f1, f1, f1, value=-6), 3)  # f1 (1 - 6 f1)


def _sigmoid_series(x: Jet) -> tuple[list, list]:
    y0 = torch.sigmoid(x.primal)
    d1 = y0 * (1 - y0)
    return solve(x, y0, lambda k, y: d1 if k == 0 else y[k] - series_product(y, y, k))


@rule(torch.exp, T.exp)
def exp(func: Callable, x: Jet) -> Jet:
    return elementwise(x, lambda x0: iter([torch.exp(x0)] * 4), _exp_series)


@rule(torch.exp2, T.exp2, torch.special.exp2)
def exp2(func: Callable, x: Jet) -> Jet:
    return valued(exp(torch.exp, x * math.log(2)), torch.exp2(x.primal))


def _exp_series(x: Jet) -> tuple[list, list]:
    return solve(x, torch.exp(x.primal), lambda k, y: y[k])


@rule(torch.expm1, T.expm1, torch.special.expm1)
def expm1(func: Callable, x: Jet) -> Jet:
    return elementwise(x, _expm1_derivatives, _expm1_series)


def _expm1_derivatives(x0: torch.Tensor) -> Iterator[torch.Tensor]:
    y0 = torch.expm1(x0)
    yield y0
    yield from [y0 + 1] * 3


def _expm1_series(x: Jet) -> tuple[list, list]:
    y0 = torch.expm1(x.primal)
    return solve(x, y0, lambda k, y: y[0] + 1 if k == 0 else y[k])


def _pair(x: Jet, f0: torch.Tensor, g0: torch.Tensor, sign: float) -> tuple[list, list]:
    """The coefficients of ``(f, g)`` with ``f' = g x'`` and ``g' = sign f x'``: sin/cos (sign -1), sinh/cosh (+1)."""
    f, g = [f0], [g0]
    for k in range(1, x.order + 1):
        f.append(integral_coefficient(x, g, k))
        g.append(sign * integral_coefficient(x, f, k))
    return f, g


def _trigonometric(x: Jet, f: Callable, g: Callable, sign: float) -> Jet:
    """``f(x)`` for ``f' = g``, ``g' = sign f``: sin and cos (sign -1), sinh and cosh (+1)."""

    def derivatives(x0: torch.Tensor) -> Iterator[torch.Tensor]:
        f0, g0 = f(x0), g(x0)
        yield from (f0, g0, sign * f0, sign * g0)

    return elementwise(x, derivatives, lambda x: _pair(x, f(x.primal), g(x.primal), sign))


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


def _with_derivative(y0: Callable, derivative: Callable[[Jet], Jet]) -> Series:
    """The series of ``y`` with ``y(c_0) = y0(c_0)`` and ``y' = derivative(x) x'``."""

    def series(x: Jet) -> tuple[list, list]:
        z = derivative(x).coefficients
        return solve(x, y0(x.primal), lambda k, y: z[k])

    return series


@rule(torch.tan, T.tan)
def tan(func: Callable, x: Jet) -> Jet:
    """``tan' = 1 + tan^2``, as tanh's with the other sign."""
    return elementwise(x, series=_tan_series)


def _tan_series(x: Jet) -> tuple[list, list]:
    y0 = torch.tan(x.primal)
    d1, twice_first = 1 + y0 * y0, 2 * y0
    return solve(x, y0, lambda k, y: d1 if k == 0 else series_product(y, y, k, 1.0, twice_first))


# sinc's series near 0 keeps this many terms beyond the order: the first left out, with its derivatives, is
# below 1e-20 for |pi x| < 1
_SINC_TERMS = 10


@rule(torch.sinc, T.sinc, torch.special.sinc)
def sinc(func: Callable, x: Jet) -> Jet:
    """``sin(pi x) / (pi x)``, 1 at 0.  Where ``|pi c_0| < 1``, sinc's own power series ``sum_n (-1)^n (pi x)^(2n) /
    (2n + 1)!``: there the quotient's order-k coefficient loses digits as ``eps / |pi c_0|^k`` (4e-7 relative in
    the parameters' gradients of a third derivative at ``c_0 = 0.003``) and is 0 / 0 at 0, where torch's rules are
    wrong.  Elsewhere the quotient of the series."""
    near = x.primal.abs() * math.pi < 1
    far = torch.where(near, 1.0, x)  # neither branch sees the other's points: no 0 / 0, no overflow
    series = torch.sin(far * math.pi) / (far * math.pi)
    if x.order >= 1:
        close = torch.where(near, x, 0.0) * math.pi
        square, terms = close * close, _SINC_TERMS + x.order
        polynomial = (-1) ** terms / math.factorial(2 * terms + 1)
        for n in reversed(range(terms)):  # Horner's rule in (pi x)^2
            polynomial = polynomial * square + (-1) ** n / math.factorial(2 * n + 1)
        series = torch.where(near, polynomial, series)
    return valued(series, torch.sinc(x.primal))


# f -> f' as jet operations: each rule below is ``y' = f'(x) x'``, its value torch's own ``f(c_0)``
_DERIVATIVES: dict[Callable, Callable[[Jet], Jet]] = {
    torch.log: reciprocal,
    torch.log2: lambda t: reciprocal(t) * (1 / math.log(2)),
    torch.log10: lambda t: reciprocal(t) * (1 / math.log(10)),
    torch.log1p: lambda t: reciprocal(t + 1),
    torch.atan: lambda t: reciprocal(t * t + 1),
    torch.asin: lambda t: torch.rsqrt(1 - t * t),
    torch.acos: lambda t: -torch.rsqrt(1 - t * t),
    torch.asinh: lambda t: torch.rsqrt(t * t + 1),
    torch.acosh: lambda t: torch.rsqrt(t * t - 1),
    torch.atanh: lambda t: reciprocal(1 - t * t),
    torch.erf: lambda t: torch.exp(-(t * t)) * (2 / math.sqrt(math.pi)),
    torch.erfc: lambda t: torch.exp(-(t * t)) * (-2 / math.sqrt(math.pi)),
}
_ALIASES: dict[Callable, tuple[Callable, ...]] = {
    torch.log: (T.log,),
    torch.log2: (T.log2,),
    torch.log10: (T.log10,),
    torch.log1p: (T.log1p, torch.special.log1p),
    torch.atan: (T.atan, torch.arctan, T.arctan),
    torch.asin: (T.asin, torch.arcsin, T.arcsin),
    torch.acos: (T.acos, torch.arccos, T.arccos),
    torch.asinh: (T.asinh, torch.arcsinh, T.arcsinh),
    torch.acosh: (T.acosh, torch.arccosh, T.arccosh),
    torch.atanh: (T.atanh, torch.arctanh, T.arctanh),
    torch.erf: (T.erf, torch.special.erf),
    torch.erfc: (T.erfc, torch.special.erfc),
}


_CANONICAL = {name: f for f, aliases in _ALIASES.items() for name in (f, *aliases)}


@rule(*_CANONICAL)
def with_known_derivative(func: Callable, x: Jet) -> Jet:
    """``log``, ``atan``, ``asin``, ``erf`` and the others of ``_DERIVATIVES``, from their derivatives."""
    f = _CANONICAL[func]
    return elementwise(x, series=_with_derivative(f, _DERIVATIVES[f]))


_normal_cdf_series = _with_derivative(
    lambda t: 0.5 * (1 + torch.erf(t / math.sqrt(2))),  # Phi
    lambda t: torch.exp(t * t * -0.5) * (1 / math.sqrt(2 * math.pi)),  # Phi' = phi
)


def normal_cdf(x: Jet) -> Jet:
    """``Phi(x)``, the standard normal distribution function."""
    return elementwise(x, series=_normal_cdf_series)


def _times_input(g_series: Series) -> Series:
    """The series of ``x g(x)`` and of its derivative ``g + x g'``, from those of ``g`` and ``g'``."""

    def series(x: Jet) -> tuple[list, list]:
        g, slope = g_series(x)
        xs, orders = x.coefficients, range(x.order + 1)
        return [series_product(xs, g, k) for k in orders], [g[k] + series_product(xs, slope, k) for k in orders]

    return series


@rule(F.softplus)
def softplus(func: Callable, x: Jet, beta: float = 1.0, threshold: float = 20.0) -> Jet:
    """``log(1 + exp(beta x)) / beta``, linear where ``beta x > threshold`` (as torch has it)."""

    # At beta x = threshold autograd's rules disagree, and the engine follows them: the first derivative
    # takes the smooth branch there (softplus_backward tests >), the higher ones the linear branch (its
    # double backward tests <).

    def derivatives(x0: torch.Tensor) -> Iterator[torch.Tensor]:
        yield F.softplus(x0, beta, threshold)
        for k, f in enumerate(islice(_sigmoid_derivatives(x0, beta), 3)):
            # from the switch on: 0, but the first derivative's value at the switch (without a slope)
            above = torch.where(x0 * beta > threshold, 1.0, f.detach()) if k == 0 else 0.0
            yield torch.where(x0 * beta < threshold, f, above)

    def slope(t: Jet) -> Jet:
        # no higher terms, to the jet or to autograd (whose double backward is 0 from the switch on)
        first = torch.where(t.primal * beta > threshold, 1.0, torch.sigmoid(t.primal * beta)).detach()
        return torch.where(t * beta < threshold, torch.sigmoid(t * beta), first)

    return elementwise(x, derivatives, _with_derivative(lambda t: F.softplus(t, beta, threshold), slope))


@rule(F.silu)
def silu(func: Callable, x: Jet, inplace: bool = False) -> Jet:
    _inplace(func, inplace)

    def derivatives(x0: torch.Tensor) -> Iterator[torch.Tensor]:
        s = torch.sigmoid(x0)
        yield x0 * s
        q = s * (1 - s)  # sigmoid'
        yield s + x0 * q
        yield q * (2 + x0 * (1 - 2 * s))
        yield q * (3 * (1 - 2 * s) + x0 * (1 - 6 * q))

    return elementwise(x, derivatives, _times_input(_sigmoid_series), lambda: x * torch.sigmoid(x))


@rule(F.mish)
def mish(func: Callable, x: Jet, inplace: bool = False) -> Jet:
    _inplace(func, inplace)
    return x * torch.tanh(F.softplus(x))


@rule(F.gelu)
def gelu(func: Callable, x: Jet, approximate: str = "none") -> Jet:
    if approximate == "tanh":
        inner = (x + 0.044715 * x * x * x) * math.sqrt(2 / math.pi)
        return 0.5 * x * (1 + precise_tanh(inner))

    def derivatives(x0: torch.Tensor) -> Iterator[torch.Tensor]:
        cdf, density = 0.5 * (1 + torch.erf(x0 / math.sqrt(2))), torch.exp(-0.5 * x0 * x0) / math.sqrt(2 * math.pi)
        yield x0 * cdf
        yield cdf + x0 * density
        yield density * (2 - x0 * x0)
        yield density * x0 * (x0 * x0 - 4)

    return elementwise(x, derivatives, _times_input(_normal_cdf_series), lambda: x * normal_cdf(x))


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
    return piecewise_linear(x, F.leaky_relu(x.primal, negative_slope), leaky_slope(x.primal, negative_slope))


def leaky_slope(x0: torch.Tensor, negative_slope: Any) -> torch.Tensor:
    """1 where ``x0 > 0``, else ``negative_slope`` (a number or a tensor), in ``x0``'s dtype: a float
    slope rounded to float32 would be off by 1e-10 relative in a float64 network."""
    negative = torch.as_tensor(negative_slope, dtype=x0.dtype, device=x0.device)
    return torch.where(x0 > 0, torch.ones((), dtype=x0.dtype, device=x0.device), negative)


@rule(torch.abs, T.abs, T.__abs__)
def abs_(func: Callable, x: Jet) -> Jet:
    return piecewise_linear(x, torch.abs(x.primal), torch.sgn(x.primal))


# -- the exponential linear units and other smooth activations ------------------------------------


def _exponential_linear(x: Jet, alpha: float, scale: float, input_scale: float) -> Jet:
    """``scale * x`` for ``x > 0``, ``scale * alpha * (exp(input_scale * x) - 1)`` else: ELU, CELU, SELU.

    With ``y' = z x'``: ``z = scale`` on the linear branch and ``z = input_scale
    (y + scale alpha)`` on the exponential one.  At 0, autograd takes the
    exponential branch's slope and the linear branch's higher derivatives
    (zero), so ``z_0`` switches at ``x <= 0`` and ``z_k`` (k >= 1) at ``x < 0``.
    """
    shift = scale * alpha

    def slope(x0: torch.Tensor, ys: list, k: int) -> torch.Tensor:
        if k == 0:
            return torch.where(x0 <= 0, input_scale * (ys[0] + shift), scalar(scale, x0))
        return torch.where(x0 < 0, input_scale * ys[k], scalar(0.0, x0))

    def value(x0: torch.Tensor) -> torch.Tensor:  # torch's ELU with its three constants: SELU and CELU are such ELUs
        return torch._C._nn.elu(x0, alpha, scale, input_scale)

    def derivatives(x0: torch.Tensor) -> Iterator[torch.Tensor]:
        y0 = value(x0)
        exponential = input_scale * (y0 + shift)
        yield y0
        yield torch.where(x0 <= 0, exponential, scalar(scale, x0))
        yield torch.where(x0 < 0, input_scale * exponential, scalar(0.0, x0))
        yield torch.where(x0 < 0, input_scale**2 * exponential, scalar(0.0, x0))

    def series(x: Jet) -> tuple[list, list]:
        return solve(x, value(x.primal), lambda k, ys: slope(x.primal, ys, k))

    return elementwise(x, derivatives, series)


@rule(F.elu)
def elu(func: Callable, x: Jet, alpha: float = 1.0, inplace: bool = False) -> Jet:
    _inplace(func, inplace)
    return _exponential_linear(x, alpha, 1.0, 1.0)


@rule(F.celu)
def celu(func: Callable, x: Jet, alpha: float = 1.0, inplace: bool = False) -> Jet:
    _inplace(func, inplace)
    return _exponential_linear(x, alpha, 1.0, 1.0 / alpha)


SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


@rule(F.selu)
def selu(func: Callable, x: Jet, inplace: bool = False) -> Jet:
    _inplace(func, inplace)
    return _exponential_linear(x, SELU_ALPHA, SELU_SCALE, 1.0)


@rule(F.logsigmoid)
def logsigmoid(func: Callable, x: Jet) -> Jet:
    """``log sigmoid(x)``, with ``f' = sigmoid(-x)``."""

    def derivatives(x0: torch.Tensor) -> Iterator[torch.Tensor]:
        yield F.logsigmoid(x0)
        for k, f in enumerate(islice(_sigmoid_derivatives(-x0), 3)):
            yield f if k % 2 == 0 else -f  # d^k/dx^k sigmoid(-x) = (-1)^k sigmoid^(k)(-x)

    return elementwise(x, derivatives, _with_derivative(F.logsigmoid, lambda t: torch.sigmoid(-t)))


@rule(F.tanhshrink)
def tanhshrink(func: Callable, x: Jet) -> Jet:
    return x - torch.tanh(x)


@rule(F.softsign)
def softsign(func: Callable, x: Jet) -> Jet:
    """``x / (1 + |x|)``, torch's own composition (so the slope of ``|x|`` at 0 is autograd's, 0)."""
    return x / (torch.abs(x) + 1)


@rule(F.glu)
def glu(func: Callable, x: Jet, dim: int = -1) -> Jet:
    if x.shape[dim] % 2:
        raise ValueError(f"glu: the dimension {dim} of the input must have an even size, got shape {tuple(x.shape)}")
    a, b = x.chunk(2, dim)
    return a * torch.sigmoid(b)


# -- functions known by their derivatives at c_0: the gamma family ----------------------------------------


def from_derivatives(x: Jet, derivatives: list[torch.Tensor]) -> Jet:
    """``f(x)`` from ``[f, f', .., f^(K)]`` at ``c_0``: ``sum_j f^(j)(c_0) / j! (x - c_0)^j``, in jet products.

    For functions whose derivatives torch computes directly (``polygamma``) but
    that satisfy no short differential equation in themselves.  O(K) products.
    """
    step = x - x.primal  # c_0 = 0: the powers of the step start at its own order
    total, power = None, None
    for j in range(1, x.order + 1):
        power = step if power is None else power * step
        term = power * (derivatives[j] / math.factorial(j))
        total = term if total is None else total + term
    return valued(total, derivatives[0])


def _polygamma_from(n: int, x: Jet, value: torch.Tensor) -> Jet:
    """``psi^(n)``'s antiderivative chain: the function whose derivative at order j is ``polygamma(n + j - 1)``,
    with ``value`` its own value (``lgamma`` for n = 0, ``polygamma(n - 1)`` else)."""
    c0 = x.primal
    return from_derivatives(x, [value, *(torch.polygamma(n + j, c0) for j in range(x.order))])


@rule(torch.lgamma, T.lgamma, torch.special.gammaln)
def lgamma(func: Callable, x: Jet) -> Jet:
    """``log |Gamma(x)|``: its derivatives are ``digamma``, ``polygamma(1)``, ..."""
    return _polygamma_from(0, x, torch.lgamma(x.primal))


@rule(torch.digamma, T.digamma, torch.special.digamma, torch.special.psi)
def digamma(func: Callable, x: Jet) -> Jet:
    return _polygamma_from(1, x, torch.digamma(x.primal))


@rule(torch.polygamma, torch.special.polygamma)
def polygamma(func: Callable, n: int, x: Jet) -> Jet:
    return _polygamma_from(n + 1, x, torch.polygamma(n, x.primal))


@rule(T.polygamma)
def tensor_polygamma(func: Callable, x: Jet, n: int) -> Jet:
    return polygamma(torch.polygamma, n, x)
