"""Direction fields of the 0.2 operators: a vector ``v`` or a matrix ``S``, constant, per sample or a callable.

``DirectionalDerivative(u, v)`` takes ``v`` as ``(d,)``, ``(*batch, d)`` or a
callable of the operator's inputs returning ``(*batch, d)``;
``Laplacian(u, sigma=S)`` takes ``S`` as ``(d, r)``, ``(*batch, d, r)`` or a
callable returning ``(*batch, d, r)``.  A :class:`Field` checks what it can
when the operator is built and the rest (``d``, the batch shape) once per call,
and evaluates to ``(N, d, r)`` rows (``r = 1`` for a vector) at the base point.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Field:
    """A vector (``matrix=False``) or matrix field given as ``keyword``, stored on ``owner`` under ``attribute``.

    A tensor is registered as a buffer (an ``nn.Parameter`` as a parameter, so it
    is trained with the rest); a module as a submodule.
    """

    def __init__(self, owner: nn.Module, attribute: str, value: Any, operator: str, keyword: str, matrix: bool) -> None:
        self.attribute, self.operator, self.keyword, self.matrix = attribute, operator, keyword, matrix
        self.trailing = "(d, r)" if matrix else "(d,)"
        self.name = "S" if matrix else "v"
        if isinstance(value, torch.Tensor):
            self._check_tensor(value, "")
            if isinstance(value, nn.Parameter):
                setattr(owner, attribute, value)
            else:
                owner.register_buffer(attribute, value)
        elif callable(value):
            setattr(owner, attribute, value)
            name = getattr(value, "__name__", "<lambda>")
            self.name = self.name if name == "<lambda>" else name
        else:
            raise TypeError(
                f"{operator}: {keyword} must be a tensor of shape {self.trailing} or (*batch, "
                f"{self.trailing[1:]}, or a callable of the operator's inputs; got {type(value).__name__}"
            )
        self.constant = isinstance(value, torch.Tensor)

    def _check_tensor(self, value: torch.Tensor, source: str) -> None:
        minimum = 2 if self.matrix else 1
        if not value.is_floating_point():
            raise TypeError(f"{self.operator}: {self.keyword}{source} must have a floating dtype, got {value.dtype}")
        if value.dim() < minimum or value.shape[-1] == 0:
            raise ValueError(
                f"{self.operator}: {self.keyword}{source} must have shape {self.trailing} or "
                f"(*batch, {self.trailing[1:]}{' with r >= 1' if self.matrix else ''}, got shape {tuple(value.shape)}"
            )

    def rows(self, owner: nn.Module, inputs: tuple, x: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        """``(N, d, r)`` (``r = 1`` for a vector) at the base points ``x: (N, d)`` of batch shape ``batch_shape``."""
        value = getattr(owner, self.attribute)
        source = ""
        if not self.constant:
            value = value(*inputs)
            source = " (the callable's result)"
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"{self.operator}: {self.keyword} must return a tensor, got {type(value).__name__}"
                )
            self._check_tensor(value, source)
        n, d = x.shape
        core = value.dim() - (2 if self.matrix else 1)
        if core == 0 and self.constant:
            shape_ok = value.shape[0] == d
        else:
            shape_ok = value.shape[:core] == batch_shape and value.shape[core] == d
        if not shape_ok:
            dims = "".join(f"{b}, " for b in batch_shape)
            per_sample = f"({dims}{d}, r)" if self.matrix else f"({dims}{d})"
            constant = (f"({d}, r) or " if self.matrix else f"({d},) or ") if self.constant else ""
            raise ValueError(
                f"{self.operator}: {self.keyword}{source} must have shape {constant}{per_sample} for inputs of "
                f"batch shape {tuple(batch_shape)} and d={d} coordinates; got shape {tuple(value.shape)}"
            )
        value = value.to(dtype=x.dtype, device=x.device)
        matrix = value if self.matrix else value.unsqueeze(-1)
        if core == 0:
            return matrix.expand(n, *matrix.shape)
        return matrix.reshape(n, *matrix.shape[-2:])


def columns(matrix: torch.Tensor) -> torch.Tensor:
    """``(N, d, r)`` -> the ``r`` directions ``(r, N, d)``."""
    return matrix.permute(2, 0, 1)


def batch_shape_of(inputs: tuple, argnums: tuple[int, ...]) -> torch.Size:
    """The batch shape of the (already validated) differentiated inputs."""
    return inputs[argnums[0]].shape[:-1]

