"""Jet rules of normalisation layers: layer, RMS, group and instance norm; batch norm in eval mode.

Each normalises over trailing dimensions of one sample with the moments of
:mod:`.reductions`, ``(x - mean) / sqrt(var + eps)``, then applies the affine
parameters; written with other jet rules, it is exact at any order.  The
reciprocal root is that of ``var + eps > 0``, so it is regular everywhere
(torch's eps is added to the biased variance, as here).

Batch norm in training mode and instance norm that updates running
statistics mix the samples of a batch (or change state), so they are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..jet import Jet, rule, unsupported
from .products import power
from .reductions import mean, variance


def normalise(x: Jet, dims: tuple[int, ...], eps: float) -> Jet:
    """``(x - mean) / sqrt(var + eps)`` over ``dims`` (negative), the biased variance."""
    var, centred = variance(x, dims)
    return centred * power(var + eps, -0.5)


def affine(y: Jet, weight: torch.Tensor | None, bias: torch.Tensor | None) -> Jet:
    """``y * weight + bias``, each when given (broadcast like torch's normalisation layers)."""
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def _channels(parameter: torch.Tensor | None, ndim: int) -> torch.Tensor | None:
    """A per-channel ``(C,)`` parameter shaped ``(C, 1, ...)`` to broadcast over a sample ``(N, C, *spatial)``."""
    return None if parameter is None else parameter.reshape(-1, *(1,) * (ndim - 2))


def _last(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    """The trailing dimensions a ``normalized_shape`` names, negative."""
    size = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return tuple(range(-size, 0))


@rule(F.layer_norm)
def layer_norm(
    func: Callable,
    x: Jet,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> Jet:
    return affine(normalise(x, _last(normalized_shape), eps), weight, bias)


@rule(F.rms_norm)
def rms_norm(
    func: Callable,
    x: Jet,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> Jet:
    """``x / sqrt(mean(x^2) + eps)``; ``eps`` defaults to the machine epsilon of the dtype, as in torch."""
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    return affine(x * power(mean(x * x, _last(normalized_shape)) + eps, -0.5), weight, None)


def _group_normalise(x: Jet, groups: int, eps: float) -> Jet:
    """Normalise each sample's ``(C, *spatial)`` channels in ``groups`` groups."""
    n, channels = x.shape[0], x.shape[1]
    grouped = x.reshape(n, groups, channels // groups, *x.shape[2:])
    dims = tuple(range(-(grouped.ndim - 2), 0))
    return normalise(grouped, dims, eps).reshape(x.shape)


@rule(F.group_norm)
def group_norm(
    func: Callable,
    x: Jet,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> Jet:
    if x.ndim < 2 or x.shape[1] % num_groups:
        raise ValueError(
            f"group_norm: expected an input (N, C, *) with C divisible by num_groups={num_groups}, "
            f"got shape {tuple(x.shape)}"
        )
    return affine(_group_normalise(x, num_groups, eps), _channels(weight, x.ndim), _channels(bias, x.ndim))


@rule(F.instance_norm)
def instance_norm(
    func: Callable,
    x: Jet,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Jet:
    """Each channel of each sample over its spatial dimensions; with running statistics as batch norm in eval."""
    if not use_input_stats:
        return _running_norm(x, running_mean, running_var, weight, bias, eps)
    if running_mean is not None or running_var is not None:
        raise unsupported(func, " that updates running statistics (track_running_stats in training mode)")
    return affine(_group_normalise(x, x.shape[1], eps), _channels(weight, x.ndim), _channels(bias, x.ndim))


def _running_norm(x: Jet, running_mean: Any, running_var: Any, weight: Any, bias: Any, eps: float) -> Jet:
    """``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel: an affine map of ``x``."""
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    y = (x - _channels(running_mean, x.ndim)) * _channels(scale, x.ndim)
    return y if bias is None else y + _channels(bias, x.ndim)


@rule(F.batch_norm)
def batch_norm(
    func: Callable,
    x: Jet,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Jet:
    if training or running_mean is None or running_var is None:
        raise unsupported(func, " in training mode (its batch statistics couple the samples); use eval()")
    return _running_norm(x, running_mean, running_var, weight, bias, eps)
