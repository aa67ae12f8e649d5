"""Jet rules of reductions along dimensions: moments, norms and distances, softmax, log-sum-exp, extrema
and selections (``sort``, ``topk``, max pools).

Each is written with other jet rules (sums, products, ``exp``, ``log``,
powers), so it is exact at any order, works on collapsed jets, and runs
through the hand-written backward passes of the elementwise rules it uses.
Softmax and log-sum-exp shift by the maximum of ``c_0``, a constant: both
are invariant under the shift, so the derivatives are those of the unshifted
function while no ``exp`` overflows.

An extremum takes its coefficients where ``c_0`` has it, as autograd takes the gradient there:
``max(x, dim)`` from the index it returns, ``amax`` and ``max(x)`` as the mean over ties.

Where a root is singular (a norm or a standard deviation at zero), the
coefficients are those nested autograd returns there: torch's backward of
``std`` masks the point to zero at every order, that of ``vector_norm``
to zero at first order, after which its derivatives are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ...base import EngineUnsupported
from ..jet import Jet, primal, rule, unsupported, valued
from .products import power

T = torch.Tensor


def over(x: Jet, reduce: Callable[[torch.Tensor], torch.Tensor]) -> Jet:
    """``reduce`` applied to every coefficient: for linear maps of the trailing (negative) dimensions.

    Negative dimensions name the same axes of ``c_0: (N, *f)`` and of ``c_k:
    (R, N, *f)``, so no ``vmap`` over the direction axis is needed.
    """
    return x.like([reduce(c) for c in x.coefficients], x.degree)


def trailing(dim: Any, ndim: int) -> tuple[int, ...]:
    """``dim`` (an int, a sequence of ints, or None for all) as negative dimensions of an ``ndim``-dim sample.

    A 0-dim tensor (one sample's entry, indexed out of the batch) is refused: its dimension 0 is no axis of
    ``c_0`` but the direction axis of ``c_k``, and a reduction over ``()`` reduces every axis.
    """
    if ndim == 0:
        raise EngineUnsupported("Taylor mode does not reduce a 0-dim tensor (an entry indexed out of the batch)")
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(-ndim, 0))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(sorted({d - ndim if d >= 0 else d for d in dims}))


def count(x: Jet, dims: tuple[int, ...]) -> int:
    """The number of elements a reduction over ``dims`` takes together."""
    return math.prod([x.shape[d] for d in dims])


def mean(x: Jet, dims: tuple[int, ...], keepdim: bool = True) -> Jet:
    return over(x, lambda c: c.mean(dims, keepdim=keepdim))


def total(x: Jet, dims: tuple[int, ...], keepdim: bool = True) -> Jet:
    return over(x, lambda c: c.sum(dims, keepdim=keepdim))


def variance(x: Jet, dims: tuple[int, ...], correction: float = 0, keepdim: bool = True) -> tuple[Jet, Jet]:
    """``(variance, centred x)`` over ``dims``, the sum of squares divided by ``n - correction``."""
    centred = x - mean(x, dims)
    squares = total(centred * centred, dims, keepdim)
    return squares / max(count(x, dims) - correction, 0), centred


def masked_root(s: Jet, higher: float) -> Jet:
    """``sqrt(s)`` for ``s >= 0``; where ``s_0 = 0`` (not differentiable), ``c_1 = 0`` and ``c_k = higher`` above.

    The root is taken of a copy with ``s_0`` set to 1 there, so that neither
    its values nor its backward pass see a division by zero.
    """
    zero = s.primal == 0
    safe = s.like([torch.where(zero, 1.0, s.primal), *s.coefficients[1:]], s.degree)
    root = power(safe, 0.5)
    coefficients = [torch.where(zero, 0.0, root.primal)]
    for k, c in enumerate(root.coefficients[1:], start=1):
        coefficients.append(torch.where(zero, 0.0 if k == 1 else higher, c))
    return s.like(coefficients)


# -- moments ---------------------------------------------------------------------------------------


def _moment_arguments(args: tuple, kwargs: dict) -> tuple[Any, float, bool]:
    """``(dim, correction, keepdim)`` from any of torch's ``var``/``std`` signatures."""
    dim, correction, keepdim, rest = None, 1.0, False, list(args)
    if rest and isinstance(rest[0], bool):  # var(x, unbiased)
        correction = float(rest.pop(0))
    elif rest:  # var(x, dim, unbiased, keepdim)
        dim = rest.pop(0)
        if rest:
            correction = float(rest.pop(0))
        if rest:
            keepdim = rest.pop(0)
    dim = kwargs.get("dim", dim)
    if kwargs.get("unbiased") is not None:
        correction = float(kwargs["unbiased"])
    if kwargs.get("correction") is not None:
        correction = float(kwargs["correction"])
    return dim, correction, kwargs.get("keepdim", keepdim)


@rule(torch.var, T.var)
def var(func: Callable, x: Jet, *args: Any, **kwargs: Any) -> Jet:
    dim, correction, keepdim = _moment_arguments(args, kwargs)
    return variance(x, trailing(dim, x.ndim), correction, keepdim)[0]


@rule(torch.std, T.std)
def std(func: Callable, x: Jet, *args: Any, **kwargs: Any) -> Jet:
    dim, correction, keepdim = _moment_arguments(args, kwargs)
    return masked_root(variance(x, trailing(dim, x.ndim), correction, keepdim)[0], higher=0.0)


@rule(torch.var_mean)
def var_mean(func: Callable, x: Jet, *args: Any, **kwargs: Any) -> tuple[Jet, Jet]:
    dim, correction, keepdim = _moment_arguments(args, kwargs)
    dims = trailing(dim, x.ndim)
    return variance(x, dims, correction, keepdim)[0], mean(x, dims, keepdim)


@rule(torch.std_mean)
def std_mean(func: Callable, x: Jet, *args: Any, **kwargs: Any) -> tuple[Jet, Jet]:
    deviation, average = var_mean(func, x, *args, **kwargs)
    return masked_root(deviation, higher=0.0), average


# -- norms -----------------------------------------------------------------------------------------


def vector_norm(func: Callable, x: Jet, ord: Any, dim: Any, keepdim: bool) -> Jet:
    """The p-norm over ``dim``: the 2-norm (NaN above first order at zero, as autograd), the 1-norm,
    ``(sum |x|^p)^(1/p)`` for another ``p > 0``, and the maximum (minimum) of ``|x|`` for ``p = inf`` (``-inf``)."""
    dims = trailing(dim, x.ndim)
    if ord in (2, 2.0, "fro"):
        return masked_root(total(x * x, dims, keepdim), higher=math.nan)
    if ord in (1, 1.0):
        return total(torch.abs(x), dims, keepdim)
    if ord in (math.inf, -math.inf):
        return (torch.amax if ord > 0 else torch.amin)(torch.abs(x), dim=dims, keepdim=keepdim)
    if isinstance(ord, (int, float)) and ord > 0:
        return total(torch.abs(x) ** ord, dims, keepdim) ** (1 / ord)
    raise unsupported(func, f" with ord={ord!r} (only p-norms of vectors with p > 0)")


@rule(torch.linalg.vector_norm)
def linalg_vector_norm(
    func: Callable, x: Jet, ord: Any = 2, dim: Any = None, keepdim: bool = False, *, dtype: Any = None
) -> Jet:
    return vector_norm(func, x if dtype is None else x.to(dtype), ord, dim, keepdim)


@rule(T.norm, torch.norm)
def norm(func: Callable, x: Jet, p: Any = "fro", dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Jet:
    return vector_norm(func, x if dtype is None else x.to(dtype), 2 if p is None else p, dim, keepdim)


@rule(torch.linalg.norm)
def linalg_norm(func: Callable, x: Jet, ord: Any = None, dim: Any = None, keepdim: bool = False, **kwargs: Any) -> Jet:
    matrix = (dim is None and x.ndim == 2 and ord is not None) or (isinstance(dim, (tuple, list)) and len(dim) == 2)
    if matrix and ord not in (None, "fro"):
        raise unsupported(func, f" of matrices with ord={ord!r}")
    if kwargs.get("dtype") is not None:
        x = x.to(kwargs["dtype"])
    return vector_norm(func, x, 2 if ord is None else ord, dim, keepdim)


@rule(torch.cdist)
def cdist(
    func: Callable, x1: Any, x2: Any, p: float = 2.0, compute_mode: str = "use_mm_for_euclid_dist_if_necessary"
) -> Jet:
    """The ``p``-norms (1 or 2) of ``x1[..., i, :] - x2[..., j, :]``: ``(..., P, R)`` from ``x1: (..., P, M)`` and
    ``x2: (..., R, M)``, the value torch's.  Torch's own ``cdist`` has no second derivative; at a zero
    distance the derivatives are the norm's (0 at first order, as ``cdist``'s backward, then NaN)."""
    differences = torch.sub(x1.unsqueeze(-2), x2.unsqueeze(-3))
    distances = vector_norm(func, differences, p, -1, keepdim=False)
    return valued(distances, torch.cdist(primal(x1), primal(x2), p, compute_mode))


@rule(F.normalize)
def normalize(func: Callable, x: Jet, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out: Any = None) -> Jet:
    """``x / max(||x||_p, eps)``, as torch writes it (the clamp's slope is 1 at ``eps``)."""
    if out is not None:
        raise unsupported(func, " with out=")
    size = vector_norm(func, x, p, dim, keepdim=True)
    kept = size.primal >= eps
    denominator = size.like([torch.where(kept, c, eps if k == 0 else 0.0) for k, c in enumerate(size.coefficients)])
    return x / denominator


@rule(torch.pairwise_distance)
def pairwise_distance(
    func: Callable, x1: Any, x2: Any, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False
) -> Jet:
    """``||x1 - x2 + eps||_p`` over the last dimension of the broadcast operands, as torch computes it."""
    return vector_norm(func, torch.sub(x1, x2) + eps, p, -1, keepdim)


@rule(torch.cosine_similarity)
def cosine_similarity(func: Callable, x1: Any, x2: Any, dim: int = 1, eps: float = 1e-8) -> Jet:
    """``sum(x1 / max(||x1||, eps) * x2 / max(||x2||, eps))`` over ``dim`` of the broadcast operands, as torch
    computes it.  Torch clamps the norms in place without grad, so the clamp sets their values alone and
    the derivatives are the unclamped norms' (at a zero norm those of :func:`vector_norm`)."""
    shape = torch.broadcast_shapes(x1.shape, x2.shape)  # torch expands first: a norm along a broadcast axis grows
    x1, x2 = (x if x.shape == shape else x.expand(shape) for x in (x1, x2))
    return total(_unit(func, x1, dim, eps) * _unit(func, x2, dim, eps), trailing(dim, len(shape)), keepdim=False)


def _unit(func: Callable, x: Any, dim: int, eps: float) -> Any:
    """``x / max(||x||, eps)`` along ``dim``, the clamp on the norm's value alone."""
    if not isinstance(x, Jet):
        return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(eps)
    size = vector_norm(func, x, 2, dim, keepdim=True)
    return x / size.like([c.clamp_min(eps) if k == 0 else c for k, c in enumerate(size.coefficients)])


# -- softmax and log-sum-exp -----------------------------------------------------------------------


def _shift(x: Jet, dim: int) -> torch.Tensor:
    """The maximum of ``c_0`` along ``dim`` (0 where it is infinite, as torch's logsumexp): a constant."""
    peak = x.primal.detach().amax(dim, keepdim=True)
    return peak.masked_fill(~torch.isfinite(peak), 0)


def softmax(x: Jet, dim: int) -> Jet:
    """``exp(x - m) / sum exp(x - m)`` along ``dim``."""
    dim = trailing(dim, x.ndim)[0]
    e = torch.exp(torch.sub(x, _shift(x, dim)))  # torch.sub: under torch.compile ``jet - tensor`` asks the tensor
    return e / total(e, (dim,))


def logsumexp(x: Jet, dims: tuple[int, ...], keepdim: bool) -> Jet:
    """``m + log sum exp(x - m)`` over ``dims``."""
    shift = x.primal.detach().amax(dims, keepdim=True)
    shift = shift.masked_fill(~torch.isfinite(shift), 0)
    result = torch.add(torch.log(total(torch.exp(torch.sub(x, shift)), dims)), shift)
    return result if keepdim else over(result, lambda c: c.squeeze(dims))


def _softmax_dim(name: str, x: Jet, dim: int | None) -> int:
    return F._get_softmax_dim(name, x.ndim, 3) if dim is None else dim


@rule(F.softmax)
def softmax_rule(func: Callable, x: Jet, dim: int | None = None, _stacklevel: int = 3, dtype: Any = None) -> Jet:
    x = x if dtype is None else x.to(dtype)
    return softmax(x, _softmax_dim("softmax", x, dim))


@rule(torch.softmax, T.softmax)
def tensor_softmax(func: Callable, x: Jet, dim: int, dtype: Any = None) -> Jet:
    return softmax_rule(func, x, dim, dtype=dtype)


@rule(F.softmin)
def softmin(func: Callable, x: Jet, dim: int | None = None, _stacklevel: int = 3, dtype: Any = None) -> Jet:
    x = x if dtype is None else x.to(dtype)
    return softmax(-x, _softmax_dim("softmin", x, dim))


@rule(F.log_softmax)
def log_softmax(func: Callable, x: Jet, dim: int | None = None, _stacklevel: int = 3, dtype: Any = None) -> Jet:
    x = x if dtype is None else x.to(dtype)
    dim = trailing(_softmax_dim("log_softmax", x, dim), x.ndim)
    return x - logsumexp(x, dim, keepdim=True)


@rule(torch.log_softmax, T.log_softmax)
def tensor_log_softmax(func: Callable, x: Jet, dim: int, dtype: Any = None) -> Jet:
    return log_softmax(func, x, dim, dtype=dtype)


@rule(torch.logsumexp, T.logsumexp)
def logsumexp_rule(func: Callable, x: Jet, dim: Any = None, keepdim: bool = False) -> Jet:
    return logsumexp(x, trailing(dim, x.ndim), keepdim)


def extremum(func: Callable, reduce: Callable, x: Jet, dim: Any = None, keepdim: bool = False) -> Any:
    """``max``/``min`` of one jet (``func``; ``reduce``: ``torch.amax``/``torch.amin``).

    Over everything: the mean of the coefficients at the ties.  Along ``dim``: ``(values, indices)``,
    the coefficients at the index ``func`` returns for ``c_0``.
    """
    if dim is None:
        return extreme_values(reduce, x, None, False)
    values, indices = func(x.primal, dim, keepdim)
    axis = trailing(dim, x.ndim)[0]  # negative: the same axis of c_0 and of the per-direction c_k
    picked = torch.gather(x, axis, indices if keepdim else indices.unsqueeze(axis))
    picked = valued(picked if keepdim else over(picked, lambda c: c.squeeze(axis)), values)
    return _like_result(func, picked, indices)


def _like_result(func: Callable, values: Jet, indices: torch.Tensor) -> Any:
    """``torch.return_types.max``/``min`` of a jet and the indices."""
    kind = torch.return_types.max if func in (torch.max, T.max) else torch.return_types.min
    return kind((values, indices))


def extreme_values(reduce: Callable, x: Jet, dim: Any, keepdim: bool) -> Jet:
    """``amax``/``amin`` over ``dim``: the coefficients' mean over the ties of ``c_0``."""
    dims = trailing(dim, x.ndim)
    value = reduce(x.primal, dims, keepdim=True)
    ties = (x.primal == value).to(x.dtype)  # in the jet's dtype: a bool / int quotient would be float32
    share = ties / ties.sum(dims, keepdim=True)
    result = valued(total(x * share, dims), value)
    return result if keepdim else over(result, lambda c: c.squeeze(dims))


@rule(torch.amax, T.amax)
def amax(func: Callable, x: Jet, dim: Any = (), keepdim: bool = False) -> Jet:
    return extreme_values(torch.amax, x, dim, keepdim)


@rule(torch.amin, T.amin)
def amin(func: Callable, x: Jet, dim: Any = (), keepdim: bool = False) -> Jet:
    return extreme_values(torch.amin, x, dim, keepdim)


# -- selections: the coefficients at the indices torch picks for c_0, as autograd's backward takes them -----


def _picked(x: Jet, axis: int, indices: torch.Tensor, values: torch.Tensor) -> Jet:
    """The coefficients of ``x`` at ``indices`` along ``axis`` (negative), with torch's ``values`` as ``c_0``."""
    return valued(torch.gather(x, axis, indices), values)


@rule(torch.sort, T.sort)
def sort(func: Callable, x: Jet, *args: Any, **kwargs: Any) -> Any:
    """``sort``: each coefficient in the order of ``c_0`` (at ties, the order torch returns)."""
    values, indices = func(x.primal, *args, **kwargs)
    dim = kwargs.get("dim", args[0] if args else -1)  # torch's first positional argument after the input
    axis = trailing(dim, x.ndim)[0]
    return torch.return_types.sort((_picked(x, axis, indices, values), indices))


@rule(torch.topk, T.topk)
def topk(func: Callable, x: Jet, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> Any:  # noqa: A002
    """``topk``: the coefficients at the ``k`` entries torch picks for ``c_0``."""
    values, indices = func(x.primal, k, dim, largest, sorted)
    axis = trailing(dim, x.ndim)[0]
    return torch.return_types.topk((_picked(x, axis, indices, values), indices))


_MAX_POOLS = {
    F.max_pool1d: (1, F.max_pool1d_with_indices),
    F.max_pool2d: (2, F.max_pool2d_with_indices),
    F.max_pool3d: (3, F.max_pool3d_with_indices),
    F.max_pool1d_with_indices: (1, F.max_pool1d_with_indices),
    F.max_pool2d_with_indices: (2, F.max_pool2d_with_indices),
    F.max_pool3d_with_indices: (3, F.max_pool3d_with_indices),
}


@rule(*_MAX_POOLS)
def max_pool(func: Callable, x: Jet, *args: Any, **kwargs: Any) -> Any:
    """Max pooling: each window's coefficients at the element torch picks for ``c_0``.

    ``return_indices`` (by name or in place 6) as the call gives it; the indices are
    into each plane's flattened input, as ``max_unpool`` reads them.
    """
    dims, with_indices = _MAX_POOLS[func]
    call = dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"), args))
    call.update(kwargs)
    wanted = call.pop("return_indices", False) or func is with_indices
    values, indices = with_indices(x.primal, **call)
    picked = torch.gather(torch.flatten(x, -dims), -1, indices.flatten(-dims))
    pooled = valued(torch.unflatten(picked, -1, indices.shape[-dims:]), values)
    return (pooled, indices) if wanted else pooled


# -- cumulative products and log-sum-exps: a running product or logaddexp of jets along the dimension -------


def _running(combine: Callable, x: Jet, dim: int) -> Jet:
    """``[x_0, combine(., x_1), ..]`` along ``dim``: L - 1 applications of a jet rule."""
    axis = trailing(dim, x.ndim)[0]
    running = x.select(axis, 0)
    out = [running]
    for i in range(1, x.shape[axis]):
        running = combine(running, x.select(axis, i))
        out.append(running)
    return torch.stack(out, dim=axis)


@rule(torch.cumprod, T.cumprod)
def cumprod(func: Callable, x: Jet, dim: int, *, dtype: Any = None) -> Jet:
    """Products of jets, exact at a factor that is 0 (where torch.func's rule is NaN)."""
    x = x if dtype is None else x.to(dtype)
    return valued(_running(torch.mul, x, dim), torch.cumprod(x.primal, dim))


@rule(torch.logcumsumexp, T.logcumsumexp)
def logcumsumexp(func: Callable, x: Jet, dim: int) -> Jet:
    """``logaddexp`` of jets, stable (nested autograd's double backward of it is NaN)."""
    return valued(_running(torch.logaddexp, x, dim), torch.logcumsumexp(x.primal, dim))
