"""The fallback engine: nested ``torch.autograd.grad``, one output component at a time.

It handles what ``vmap`` and forward mode cannot (BatchNorm in training mode,
in-place updates of captured buffers, data-dependent control flow).  Attention
runs through PyTorch's math kernel: the fused CPU kernels have no double
backward, and requests of order 2 and more run the fused normalisations
through exact compositions, and ``logcumsumexp``, whose double backward
gives NaN, as masked ``logsumexp`` (:func:`.audit.exact_reverse_mode`).  Every
derivative is a gradient of a lower one, memoised by (component, multi-index),
so a Hessian, a Laplacian and the partials of one request share their work.
"""

from __future__ import annotations

import torch

from .audit import exact_reverse_mode, refuse_once_differentiable, request_order
from .base import BatchedFn, EngineUnsupported, Request, compute_along, compute_combined


def _grad(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(N, d)`` per-sample gradient of ``y: (N,)``; zeros where ``y`` does not depend on ``x``."""
    if not y.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True, allow_unused=True, materialize_grads=True)
    return g


class _Derivatives:
    """Memoised ``grad of d^alpha y_m`` for each output component ``m``: ``(N, d)`` each."""

    def __init__(self, components: torch.Tensor, x: torch.Tensor):
        self.components = components  # (N, M)
        self.x = x
        self.memo: dict = {}

    def partial(self, m: int, index: tuple[int, ...]) -> torch.Tensor:
        """``(N,)``: d^index y_m."""
        if not index:
            return self.components[:, m]
        return self.gradient(m, index[:-1])[:, index[-1]]

    def gradient(self, m: int, index: tuple[int, ...]) -> torch.Tensor:
        """``(N, d)``: the gradient of d^index y_m."""
        key = (m, index)
        if key not in self.memo:
            self.memo[key] = _grad(self.partial(m, index), self.x)
        return self.memo[key]


class AutogradEngine:
    """``method="autograd"``."""

    name = "autograd"
    per_sample = False

    def compiled_refusal(self, u: object) -> EngineUnsupported | None:
        return None

    def compute(self, fn: BatchedFn, x: torch.Tensor, request: Request) -> dict:
        if request.combinations:  # summed from their partials
            return compute_combined(self, fn, x, request)
        if request.along:  # each direction set through self.along, the rest back here
            return compute_along(self, fn, x, request)
        order = request_order(request)
        with torch.enable_grad(), exact_reverse_mode(order):
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            value = fn(x)
            refuse_once_differentiable(value, order)
            n, d = x.shape
            out_shape = value.shape[1:]
            derivatives = _Derivatives(value.reshape(n, -1), x)
            components = range(derivatives.components.shape[1])

            def per_component(make) -> torch.Tensor:
                parts = [make(m) for m in components]
                stacked = torch.stack(parts, dim=1)  # (N, M, ...)
                return stacked.reshape(n, *out_shape, *stacked.shape[2:])

            results: dict = {(): value}
            for index in request.partials:
                results[index] = per_component(lambda m, index=index: derivatives.partial(m, index))
            if "jacobian" in request.full:
                results["jacobian"] = per_component(lambda m: derivatives.gradient(m, ()))
            if "hessian" in request.full:
                results["hessian"] = per_component(
                    lambda m: torch.stack([derivatives.gradient(m, (i,)) for i in range(d)], dim=-1)
                )
            if "laplacian" in request.full:
                results["laplacian"] = per_component(
                    lambda m: sum(derivatives.gradient(m, (i,))[:, i] for i in range(d))
                )
        return results

    def directional(self, fn: BatchedFn, x: torch.Tensor, directions: torch.Tensor, order: int) -> torch.Tensor:
        with torch.enable_grad(), exact_reverse_mode(order):
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            value = fn(x)
            refuse_once_differentiable(value, order)
            components = value.reshape(value.shape[0], -1)
            per_direction = []
            for v in directions:  # (N, d)
                columns = []
                for m in range(components.shape[1]):
                    y = components[:, m]
                    for _ in range(order):
                        y = (_grad(y, x) * v).sum(-1)
                    columns.append(y)
                per_direction.append(torch.stack(columns, dim=1).reshape(value.shape))
        return torch.stack(per_direction)

    def along(
        self, fn: BatchedFn, x: torch.Tensor, directions: torch.Tensor, order: int, summed: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Derivatives in ``t`` of ``fn(x + sum_r t_r v_r)``: the directions stay fixed even where they depend on x.

        (Differentiating ``grad u . v`` in ``x`` instead would add ``(dv/dx)^T grad u`` from
        order 2 on when ``v`` is a function of ``x``.)
        """
        r = directions.shape[0]
        with torch.enable_grad(), exact_reverse_mode(order):
            t = torch.zeros(x.shape[0], r, dtype=x.dtype, device=x.device, requires_grad=True)
            value = fn(x + torch.einsum("nr,rnd->nd", t, directions.to(x.dtype)))
            refuse_once_differentiable(value, order)
            components = value.reshape(value.shape[0], value.shape[1:].numel())  # also for an empty batch
            columns = []
            for m in range(components.shape[1]):
                first = _grad(components[:, m], t) if order else components[:, m, None].expand(-1, r)
                per_direction = []
                for k in range(r):
                    y = first[:, k]
                    for _ in range(order - 1):
                        y = _grad(y, t)[:, k]
                    per_direction.append(y)
                columns.append(torch.stack(per_direction))  # (R, N)
        result = torch.stack(columns, dim=-1).reshape(r, *value.shape)
        return value, result.sum(0) if summed else result
