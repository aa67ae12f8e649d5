"""Normalisation layers written in primitives whose forward-mode rules are right.

PyTorch's fused ``aten::native_layer_norm`` and ``aten::native_batch_norm``
(which ``instance_norm`` calls) have wrong forward-over-forward and
reverse-over-forward rules (see ``docs/guide/exactness.md``).  ``mean``, ``sub``,
``mul`` and ``rsqrt`` have exact rules at every order, so the ``func`` engine runs
these layers as the compositions below.  They take the arguments of their
``torch.nn.functional`` namesakes and return the same values up to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _normalise(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over ``dims``, with the biased variance."""
    centred = x - x.mean(dims, keepdim=True)
    return centred * torch.rsqrt(centred.square().mean(dims, keepdim=True) + eps)


def layer_norm(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``F.layer_norm``: normalise over the trailing ``len(normalized_shape)`` dimensions."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    y = _normalise(input, tuple(range(-len(shape), 0)), eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _per_channel_affine(
    y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """``y * weight + bias`` with ``weight`` and ``bias`` of shape ``(C,)`` along dimension 1 of ``y: (N, C, *)``."""
    channel = (1, -1) + (1,) * (y.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(channel)
    if bias is not None:
        y = y + bias.reshape(channel)
    return y


def instance_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``F.instance_norm`` with the input's statistics: ``input`` is ``(N, C, *spatial)``.

    Only for ``use_input_stats=True`` without running statistics to update (the
    caller checks); the running-statistics case is batch norm in eval mode.
    """
    y = _normalise(input, tuple(range(2, input.dim())), eps)
    return _per_channel_affine(y, weight, bias)


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``F.batch_norm`` in training mode: ``input`` is ``(N, C, *spatial)``, statistics over all but ``C``.

    Updates the running statistics in place as the fused kernel does (the
    unbiased variance, weighted by ``momentum``).
    """
    dims = (0, *range(2, input.dim()))
    y = _normalise(input, dims, eps)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            count = input.numel() // input.shape[1]
            variance = input.detach().var(dims, correction=1 if count > 1 else 0)
            running_mean.mul_(1 - momentum).add_(momentum * input.detach().mean(dims))
            running_var.mul_(1 - momentum).add_(momentum * variance)
    return _per_channel_affine(y, weight, bias)
