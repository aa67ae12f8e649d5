"""The engine for an empty batch: results of the right shape, no derivative work.

A batch of no samples (adaptive sampling that keeps no point) has empty
derivatives of every order, so no engine needs to run: ``u`` is evaluated
once on the empty rows, which gives the output shape ``(0, *out)`` and keeps
the results in the graph of ``u``'s parameters (their gradients are zeros,
so a loss over an empty batch still backpropagates).  Each result is a copy
of an expanded empty value, so results never alias one another.
"""

from __future__ import annotations

import torch

from .engines.base import BatchedFn, Request

# the trailing dimensions of each whole-tensor result, after (N, *out)
_FULL_DIMS = {"jacobian": 1, "hessian": 2, "laplacian": 0}


def _empty_like(value: torch.Tensor, trailing: tuple[int, ...], leading: tuple[int, ...] = ()) -> torch.Tensor:
    """``(*leading, *value.shape, *trailing)``, empty, in ``value``'s graph."""
    view = value.reshape(*((1,) * len(leading)), *value.shape, *((1,) * len(trailing)))
    return view.expand(*leading, *value.shape, *trailing).clone()


class EmptyBatchEngine:
    """Implements the engine interface of :mod:`diffops.engines.base` for ``x`` of shape ``(0, d)``."""

    name = "empty"

    def compute(self, fn: BatchedFn, x: torch.Tensor, request: Request) -> dict:
        d = x.shape[1]
        value = fn(x)  # (0, *out)
        results: dict = {(): value}
        for index in request.partials:
            if index:
                results[index] = _empty_like(value, ())
        for key in request.full:
            if key not in _FULL_DIMS:
                raise NotImplementedError(f"the shape of {key!r} for an empty batch is not defined")
            results[key] = _empty_like(value, (d,) * _FULL_DIMS[key])
        for combination in request.combinations:
            results[combination] = _empty_like(value, ())
        for item in request.along:  # (0, *out) summed over the directions, else (R, 0, *out)
            leading = () if item.summed else (item.directions.shape[0],)
            results[item.key] = _empty_like(value, (), leading=leading)
        return results

    def directional(self, fn: BatchedFn, x: torch.Tensor, directions: torch.Tensor, order: int) -> torch.Tensor:
        """``(S, 0, *out)``."""
        return _empty_like(fn(x), (), leading=(directions.shape[0],))


EMPTY_BATCH = EmptyBatchEngine()
