"""A workaround for an inductor defect that breaks compiled forward-mode derivatives.

Forward-mode rules stand in ``aten::_efficientzerotensor`` for the tangent of a
tensor that has none (a layer's weight under ``jvp``).  Inductor runs that op
as an eager fallback, gets a ``ZeroTensor`` back and may later reuse its
buffer as the ``out=`` of a matrix product, which raises ``ZeroTensors are
immutable`` in the backward pass of a compiled training step.  Decomposing the
op into ``torch.zeros`` gives inductor an ordinary buffer with the same values.
"""

from __future__ import annotations

import torch


def _zeros(size, *, dtype=None, layout=None, device=None, pin_memory=None) -> torch.Tensor:
    return torch.zeros(size, dtype=dtype, layout=layout, device=device)


def materialise_zero_tensors() -> bool:
    """Register the decomposition with inductor (idempotent); ``True`` once it is in place.

    Called while ``torch.compile`` traces the ``func`` engine; marked below as a
    constant result, so dynamo runs it at trace time, before inductor compiles.
    """
    try:
        from torch._inductor import decomposition
    except ImportError:  # pragma: no cover - a build without inductor has nothing to fix
        return False
    op = torch.ops.aten._efficientzerotensor.default
    if decomposition.decompositions.get(op) is not _zeros:
        decomposition.decompositions[op] = _zeros
        decomposition.fast_random_decomps.cache_clear()  # the memoised copy the table is read from
    return True


# what torch.compiler.assume_constant_result sets, without importing dynamo when nothing compiles
materialise_zero_tensors._dynamo_marked_constant = True  # type: ignore[attr-defined]
