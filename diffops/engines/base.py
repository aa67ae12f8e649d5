"""The one small interface every derivative engine implements.

An engine sees a *batched* function ``fn: (N, d) -> (N, *out)`` whose rows are
independent samples, and a :class:`Request` naming the derivatives wanted.  It
returns a dict from request keys to tensors:

========================  ===================  =====================================
key                       shape                meaning
========================  ===================  =====================================
``()``                    ``(N, *out)``        the value ``fn(x)`` (always returned)
``(i, j, ...)``           ``(N, *out)``        mixed partial d/dx_i d/dx_j ...
``"jacobian"``            ``(N, *out, d)``     all first partials
``"hessian"``             ``(N, *out, d, d)``  all second partials
``"laplacian"``           ``(N, *out)``        sum_i d^2/dx_i^2
========================  ===================  =====================================

Multi-indices are sorted tuples of coordinate indices (partials commute), so
``(0, 0, 1)`` is d^3/dx_0^2 dx_1.  Every returned tensor stays differentiable
with respect to whatever ``fn`` closes over (the network's parameters) and to
``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

BatchedFn = Callable[[torch.Tensor], torch.Tensor]
MultiIndex = tuple[int, ...]
FULL_OPERATORS = ("jacobian", "hessian", "laplacian")


class EngineUnsupported(RuntimeError):
    """An engine cannot handle this network or request; ``auto`` tries the next one."""


@dataclass(frozen=True)
class Request:
    """What to compute: a set of multi-indices plus whole-tensor operators."""

    partials: frozenset[MultiIndex] = field(default_factory=frozenset)
    full: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        unknown = set(self.full) - set(FULL_OPERATORS)
        if unknown:
            raise ValueError(f"unknown full operators {sorted(unknown)}")
        for index in self.partials:
            if tuple(sorted(index)) != index:
                raise ValueError(f"multi-index {index} must be sorted")

    def __or__(self, other: Request) -> Request:
        return Request(self.partials | other.partials, self.full | other.full)


class Engine(Protocol):
    """A way of computing derivatives; see the module docstring for the contract."""

    name: str

    def compute(self, fn: BatchedFn, x: torch.Tensor, request: Request) -> dict:
        """``x``: ``(N, d)``. Returns the dict described in the module docstring."""
        ...

    def directional(self, fn: BatchedFn, x: torch.Tensor, directions: torch.Tensor, order: int) -> torch.Tensor:
        """``(S, N, *out)``: d^order/dt^order fn(x + t v) at t = 0 for each direction.

        ``directions``: ``(S, N, d)``, one direction per sample and row (the
        primitive of the stochastic estimators).
        """
        ...


def basis(x: torch.Tensor) -> torch.Tensor:
    """Coordinate directions broadcast over the batch: ``(d, N, d)`` for ``x`` of ``(N, d)``."""
    n, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    return eye[:, None, :].expand(d, n, d)
