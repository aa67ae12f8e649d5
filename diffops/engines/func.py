"""The general engine: ``torch.func`` transforms on the batched function.

Pure and mixed partials are nested ``jvp`` along coordinate directions, so a
k-th partial never builds a d^k tensor (it costs 2^k forward passes; the Taylor
engine is the fast path).  Whole Jacobians, Hessians and Laplacians vmap those
directional derivatives over the d coordinate directions.  Because ``fn`` runs
on the whole batch at once, networks that index their input (``x[:, :1]``) work
unchanged; rows must be independent samples.

The network runs under :func:`.audit.exact_forward_mode`: the torch calls whose
upstream forward-mode rules are wrong are rerouted through exact compositions
or refused, and so are ``torch.no_grad()`` sections inside the network (run
through :func:`.base.entered`) and BatchNorm in training mode, so this engine
never returns a value it has not got right.
"""

from __future__ import annotations

import math

import torch
from torch.func import jvp, vjp, vmap

from .audit import exact_forward_mode, request_order, training_batch_norm
from .base import BatchedFn, EngineUnsupported, MultiIndex, Request, basis, compute_along, compute_combined, entered
from .compiling import materialise_zero_tensors


def directional_chain(fn: BatchedFn, directions: list[torch.Tensor]) -> BatchedFn:
    """``x -> (f, D_1 f, D_2 D_1 f, ...)``: nested directional derivatives.

    Each direction is an ``(N, d)`` tangent; the returned tuple has
    ``len(directions) + 1`` tensors of shape ``(N, *out)``.
    """
    if not directions:
        return lambda x: (fn(x),)
    inner = directional_chain(fn, directions[:-1])

    def chain(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        primals, tangents = jvp(inner, (x,), (directions[-1],))
        return primals + (tangents[-1],)

    return chain


def maximal_chains(indices: frozenset[MultiIndex]) -> list[MultiIndex]:
    """The multi-indices that are not a prefix of another: one nested jvp each."""
    return [i for i in indices if not any(j != i and j[: len(i)] == i for j in indices)]


def jacobian(fn: BatchedFn, x: torch.Tensor, out_shape: torch.Size) -> torch.Tensor:
    """``(N, *out, d)``: forward mode if d <= per-sample outputs, else reverse mode."""
    n, d = x.shape
    m = math.prod(out_shape)
    if d <= m:
        tangents = vmap(lambda v: jvp(fn, (x,), (v,))[1])(basis(x))
        return tangents.movedim(0, -1)
    value, vjp_fn = vjp(fn, x)
    eye = torch.eye(m, dtype=value.dtype, device=value.device)
    cotangents = eye.reshape(m, 1, *out_shape).expand(m, n, *out_shape)
    (rows,) = vmap(vjp_fn)(cotangents)  # (m, N, d)
    return rows.movedim(0, 1).reshape(n, *out_shape, d)


def connected(result: torch.Tensor, value: torch.Tensor, directions: bool = False) -> torch.Tensor:
    """``result`` as a function of whatever ``value: (N, *out)`` depends on (the parameters), if it is not one.

    ``torch.func`` hands back a tangent it knows to be zero (the Hessian of a
    piecewise-linear network, any derivative of an output that does not depend
    on ``x``) as a tensor without a graph, which a training step could not
    backward through; nested autograd and Taylor mode return such zeros in the
    graph, with zero gradients.  ``result``: ``(N, *out, ...)``, or ``(R, N, *out)``
    with ``directions``.
    """
    if result.requires_grad or not value.requires_grad:
        return result
    if not directions:
        value = value.reshape(value.shape + (1,) * (result.dim() - value.dim()))
    return result + 0 * value


class FuncEngine:
    """``method="func"``."""

    name = "func"
    per_sample = True

    def compiled_refusal(self, u: object) -> EngineUnsupported | None:
        return training_batch_norm("torch.func", u)  # the hook of exact_forward_mode cannot be registered

    def compute(self, fn: BatchedFn, x: torch.Tensor, request: Request) -> dict:
        if request.combinations:  # summed from their partials
            return compute_combined(self, fn, x, request)
        if request.along:  # each direction set through self.along, the rest back here
            return compute_along(self, fn, x, request)
        if torch.compiler.is_compiling():
            materialise_zero_tensors()
        with exact_forward_mode(request_order(request)):
            results = self._compute(entered(fn), x, request)
        return {key: connected(result, results[()]) for key, result in results.items()}

    def _compute(self, fn: BatchedFn, x: torch.Tensor, request: Request) -> dict:
        results: dict = {}
        directions = basis(x)
        for chain in maximal_chains(request.partials):
            derivatives = directional_chain(fn, [directions[i] for i in chain])(x)
            for k, derivative in enumerate(derivatives):
                if chain[:k] in request.partials or k == 0:
                    results[chain[:k]] = derivative
        if "laplacian" in request.full:
            values, _, pure = vmap(lambda v: directional_chain(fn, [v, v])(x))(directions)
            results["laplacian"] = pure.sum(0)
            results.setdefault((), values[0])  # the chains' primal: no extra forward pass
        if () not in results:
            results[()] = fn(x)
        out_shape = results[()].shape[1:]
        if "jacobian" in request.full:
            results["jacobian"] = jacobian(fn, x, out_shape)
        if "hessian" in request.full:
            jac = lambda y: jacobian(fn, y, out_shape)  # noqa: E731
            rows = vmap(lambda v: jvp(jac, (x,), (v,))[1])(directions)
            results["hessian"] = rows.movedim(0, -1)
        return results

    def directional(self, fn: BatchedFn, x: torch.Tensor, directions: torch.Tensor, order: int) -> torch.Tensor:
        if torch.compiler.is_compiling():
            materialise_zero_tensors()
        with exact_forward_mode(order):
            chains = vmap(lambda v: directional_chain(entered(fn), [v] * order)(x))(directions)
        return connected(chains[order], chains[0][0], directions=True)  # (S, N, *out); the value's primal

    def along(
        self, fn: BatchedFn, x: torch.Tensor, directions: torch.Tensor, order: int, summed: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nested ``jvp`` along each direction, vmapped; a tangent is never differentiated itself."""
        if torch.compiler.is_compiling():
            materialise_zero_tensors()
        with exact_forward_mode(order):
            chains = vmap(lambda v: directional_chain(entered(fn), [v] * order)(x))(directions.to(x.dtype))
        value, top = chains[0][0], chains[order]  # (N, *out), (R, N, *out)
        return value, connected(top.sum(0), value) if summed else connected(top, value, directions=True)
