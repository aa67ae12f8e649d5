"""Jet rules of linear operations: every Taylor coefficient maps through the operation alone.

Shape operations (indexing, reshapes, concatenation, reductions) are written
for ``(N, *f)`` tensors, so on the ``(R, N, *f)`` coefficients they run under
``vmap``; sums of jets add their coefficients, and a constant added to a jet
changes ``c_0`` only.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
import torch.nn.functional as F

from ...audit import repeats_an_index, unpool_refusal
from ..jet import Jet, jets_in, map_coefficients, primal, rule, unsupported, valued

T = torch.Tensor

SHAPE_OPERATIONS = (
    T.__getitem__, T.split, torch.split, T.chunk, torch.chunk, T.unbind, torch.unbind,
    torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack,
    T.reshape, torch.reshape, T.view, T.view_as, T.reshape_as, T.flatten, torch.flatten, T.unflatten, torch.unflatten,
    T.squeeze, torch.squeeze, T.unsqueeze, torch.unsqueeze, T.transpose, torch.transpose, T.t, torch.t,
    T.permute, torch.permute, T.movedim, torch.movedim, T.expand, T.expand_as, T.broadcast_to,
    torch.broadcast_to, T.repeat, T.tile, torch.tile, T.narrow, torch.narrow, T.select, torch.select,
    T.flip, torch.flip, T.roll, torch.roll, T.diagonal, torch.diagonal, T.index_select, torch.index_select,
    T.gather, torch.gather, T.sum, torch.sum, T.mean, torch.mean, T.cumsum, torch.cumsum,
    T.triu, torch.triu, T.tril, torch.tril, T.repeat_interleave, torch.repeat_interleave, T.unfold,
    T.diff, torch.diff,
)  # fmt: skip

ELEMENTWISE_LINEAR = (
    T.__neg__, T.neg, torch.neg, T.__pos__, T.positive, torch.positive, T.contiguous, T.clone, torch.clone,
    T.to, T.float, T.double, T.half, T.bfloat16, T.type_as,
)  # fmt: skip


@rule(*SHAPE_OPERATIONS)
def shape_operation(func, *args: Any, **kwargs: Any) -> Any:
    """Indexing, reshapes, concatenation, reductions: linear, applied per coefficient."""
    if func in (T.split, torch.split) and _whole(*args, **kwargs):
        return (args[0],)  # how every network with one differentiated input receives it
    if func is T.unflatten:  # Tensor.unflatten calls super(), which dynamo cannot trace on a coefficient
        func = torch.unflatten
    return map_coefficients(func, args, kwargs, batched=False, zero_constants=True)


def _whole(tensor: Jet, split_size: Any, dim: int = 0) -> bool:
    """Whether ``split`` keeps the tensor in one piece."""
    sizes = split_size if isinstance(split_size, (list, tuple)) else [split_size]
    return len(sizes) == 1 and sizes[0] >= tensor.shape[dim]


@rule(*ELEMENTWISE_LINEAR)
def elementwise_linear(func, *args: Any, **kwargs: Any) -> Any:
    """Negation, copies, dtype casts: applied to every coefficient as it is."""
    if not isinstance(args[0], Jet):  # a constant cast like the input, c.to(x): still a constant
        return func(*(a.primal if isinstance(a, Jet) else a for a in args), **kwargs)
    return map_coefficients(func, args, kwargs, batched=True, zero_constants=True)


@rule(torch.where, T.where)
def where(func, *args: Any) -> Jet:
    """``where(condition, a, b)``: a constant branch (tensor or number) contributes to ``c_0`` only."""
    condition, a, b = (args[1], args[0], args[2]) if func is T.where else args
    if isinstance(condition, Jet):
        raise unsupported(func, " with a condition that is not a comparison")
    reference = jets_in((a, b))[0]
    a, b = (_as_tensor(v, reference) for v in (a, b))
    return map_coefficients(torch.where, (condition, a, b), {}, batched=False, zero_constants=True)


@rule(T.masked_fill, torch.masked_fill)
def masked_fill(func, x: Jet, mask: torch.Tensor, value: Any) -> Jet:
    """``value`` where ``mask``, in ``c_0`` only: a filled element does not depend on the input."""
    if isinstance(value, Jet):
        raise unsupported(func, " with a fill value that depends on the input")
    return where(torch.where, mask, _as_tensor(value, x), x)


@rule(F.pad)
def pad(func, x: Jet, pad: Any, mode: str = "constant", value: float | None = None) -> Jet:
    """Padding copies coefficients or, in constant mode, pads with ``value`` in ``c_0`` and 0 above it."""
    padded = map_coefficients(F.pad, (x, pad, mode, None if value is None else 0.0), {}, batched=False,
                              zero_constants=True)  # fmt: skip
    return valued(padded, F.pad(x.primal, pad, mode, value))


def _as_tensor(value: Any, reference: Jet) -> Any:
    if isinstance(value, numbers.Number):
        return torch.as_tensor(value, dtype=reference.dtype, device=reference.device)
    return value


@rule(torch.add, T.add, T.__add__)
def add(func, a: Any, b: Any, *, alpha: numbers.Number = 1) -> Jet:
    """``a + alpha * b``."""
    return linear_combination(a, 1, b, alpha)


@rule(torch.sub, T.sub, T.__sub__, torch.subtract)
def sub(func, a: Any, b: Any, *, alpha: numbers.Number = 1) -> Jet:
    """``a - alpha * b``."""
    return linear_combination(a, 1, b, -alpha)


def linear_combination(a: Any, alpha: numbers.Number, b: Any, beta: numbers.Number) -> Jet:
    """``alpha * a + beta * b`` for jets, tensors or numbers; broadcasts like torch."""
    value = _scaled(primal(a), alpha) + _scaled(primal(b), beta)
    reference = jets_in((a, b))[0]
    coefficients = [value]
    for k in range(1, reference.order + 1):
        terms = [_scaled(v.coefficients[k], s) for v, s in ((a, alpha), (b, beta)) if isinstance(v, Jet)]
        total = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        coefficients.append(broadcast(reference, k, total, value.shape))
    return reference.like(coefficients, max(v.degree for v in jets_in((a, b))))


def _scaled(value: Any, scale: numbers.Number) -> Any:
    return value if scale == 1 else value * scale


def align(jet: Jet, k: int, coefficient: torch.Tensor, ndim: int) -> torch.Tensor:
    """``coefficient`` (c_k of ``jet``) with unit axes after the direction axis, so it has ``ndim`` sample axes.

    Lets a per-direction ``(R, N, f)`` coefficient broadcast against a constant
    of more axes the way ``c_0`` does.
    """
    missing = ndim - jet.primal.dim()
    if missing <= 0 or jet.shared(k):
        return coefficient
    return coefficient.reshape(coefficient.shape[0], *(1,) * missing, *coefficient.shape[1:])


def broadcast(jet: Jet, k: int, coefficient: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``coefficient`` expanded to the result's sample ``shape`` (plus the direction axis if it has one)."""
    coefficient = align(jet, k, coefficient, len(shape))
    target = shape if jet.shared(k) else (coefficient.shape[0], *shape)
    return coefficient if coefficient.shape == target else coefficient.expand(target)


CONVOLUTIONS = (F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
# linear in their first argument, with no other tensor that scales it: average pools (fixed window weights),
# interpolation (weights of the grid alone), patches and rearrangements of a grid
GRID_MAPS = (
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.interpolate, F.unfold, F.fold, F.pixel_shuffle, F.pixel_unshuffle, F.channel_shuffle,
)  # fmt: skip


def _mapped(x: Jet, function: Any, value: torch.Tensor) -> Jet:
    """``x`` through ``function``, linear, on ``(N, *f)`` tensors, with ``value`` as ``c_0``.

    A coefficient with a direction axis ``(R, N, *f)`` runs under ``vmap``, which
    folds the directions into the batch of a convolution or a pool; one above the
    jet's degree is a known zero, and stays one without a call.
    """
    coefficients = [value]
    for k in range(1, x.order + 1):
        coefficient = x.coefficients[k]
        if k > x.degree:
            coefficients.append(x.zero(k, value.shape))
        else:
            coefficients.append(function(coefficient) if x.shared(k) else torch.vmap(function)(coefficient))
    return x.like(coefficients, x.degree)


@rule(*CONVOLUTIONS)
def convolution(func, x: Jet, weight: Any, bias: Any = None, *args: Any, **kwargs: Any) -> Jet:
    """A convolution with a constant kernel: linear in ``x``, its bias on ``c_0`` only."""
    if not isinstance(x, Jet) or isinstance(weight, Jet) or isinstance(bias, Jet):
        raise unsupported(func, " with a kernel or bias that depends on the input")
    value = func(x.primal, weight, bias, *args, **kwargs)
    return _mapped(x, lambda c: func(c, weight, None, *args, **kwargs), value)


@rule(*GRID_MAPS)
def grid_map(func, x: Jet, *args: Any, **kwargs: Any) -> Jet:
    """Average pools, ``F.interpolate`` (every mode), ``unfold``/``fold``, pixel and channel shuffles: linear."""
    return _mapped(x, lambda c: func(c, *args, **kwargs), func(x.primal, *args, **kwargs))


_UNPOOLS = {F.max_unpool1d: 1, F.max_unpool2d: 2, F.max_unpool3d: 3}


@rule(*_UNPOOLS)
def max_unpool(func, x: Jet, indices: torch.Tensor, *args: Any, **kwargs: Any) -> Jet:
    """Max unpooling: each coefficient put back at the indices, linear; refused where an index repeats.

    There the forward keeps one input and PyTorch's backward credits all, so the parameters'
    gradients would be wrong (:data:`..audit.REVERSE_MODE_WRONG`); whether one repeats is a test of
    the data, which the compiler cannot branch on.  The direction axis is folded into the batch:
    ``max_unpool`` has no batching rule for ``vmap``.
    """
    dims = _UNPOOLS[func]
    name = f"F.max_unpool{dims}d"
    if torch.compiler.is_compiling():
        raise unsupported(func, " under torch.compile, where it cannot be told whether an index repeats")
    if repeats_an_index(indices, dims):
        raise unpool_refusal("Taylor mode", name)
    unpool = lambda c, i: func(c, i, *args, **kwargs)  # noqa: E731
    coefficients = [unpool(x.primal, indices)]
    for k in range(1, x.order + 1):
        c = x.coefficients[k]
        if x.shared(k):
            coefficients.append(unpool(c, indices))
            continue
        directions, batched = c.shape[0], x.primal.dim() == dims + 2
        folded = c.flatten(0, 1) if batched else c
        index = indices.expand(directions, *indices.shape)
        out = unpool(folded, index.flatten(0, 1) if batched else index)
        coefficients.append(out.unflatten(0, (directions, -1)) if batched else out)
    return x.like(coefficients, x.degree)
