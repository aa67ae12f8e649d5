"""The fused layer under ``torch.compile``: features first, and the hand-written backward, traced.

Under ``torch.compile`` (outside torch.func transforms) a ``Linear`` +
activation on a stacked jet runs as :class:`TracedLayer`, an autograd
function that dynamo traces and inductor compiles, forward and backward.
Against the series as plain ops (:func:`.fused.layer`), whose backward
AOTAutograd derives by differentiating the recurrences of the series, it
differs in three ways, each measured on the compiled training steps of
``benchmarks/residuals.py`` (``docs/performance/residuals.md``):

* **Features first.** The coefficients are stored ``(F, S, *sample)``, seen by
  the other rules as the ``(S, *sample, F)`` view (:func:`~..stacked.feature_major`),
  so a layer's product is one ``W @ (F, S n)`` on the previous layer's output
  as it lies, and its elementwise kernels run along the samples, contiguous,
  with the bias a scalar per row. The CPU BLAS runs ``W @ cols`` faster than
  ``F.linear``'s ``x @ W.T`` at these widths, and inductor's kernels for rows
  of 20 features spent half their lanes on masked tails.
* **The backward of the series** is ``ga_j = sum_(k>=j) g_k z_(k-j)``
  (``dy_k / da_j = z_(k-j)``, see :mod:`.fused`): one small kernel where the
  derived backward replays the recurrences with masked loads and zero fills.
* **Nothing saved but the output** for tanh and sigmoid: their ``z`` (the
  series of ``f'``) follows from ``y`` (``tanh' = 1 - y^2``), and ``y`` is the
  next layer's input, kept for its weight gradient anyway.

Only a layer fed features first (a chain) or by the coordinates runs here; one
fed in rows by another rule runs the plain series.  The backward is not
differentiable again, which needs no guard: AOTAutograd refuses double
backward through a compiled graph.
"""

from __future__ import annotations

import torch

from ..stacked import FEW_FEATURES, Stacked, feature_major, features_first, product_columns, weight_grad_columns
from .fused import Activation, _rows, _split, layer, series, slopes_from_value


def _directions_first(cols: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
    """``(S, F, *sample)``: a view of ``cols: (F, S * n)``, with the slots and sample shape of ``stack``."""
    return cols.view(cols.shape[0], *stack.shape[:-1]).movedim(0, 1)


def _stored(pieces: list) -> torch.Tensor:
    """``[c_0: (F, *sample), c_k: (R_k, F, *sample)]`` as one ``(F, S, *sample)`` tensor."""
    return torch.cat([pieces[0][:, None], *(p.movedim(0, 1) for p in pieces[1:])], dim=1)


def _widened(total: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
    """``total + term`` where ``term`` holds the first ``term.shape[0]`` of ``total``'s directions."""
    n = term.shape[0]
    return total + term if n == total.shape[0] else torch.cat([total[:n] + term, total[n:]])


def series_grad(g: list, z: list, counts: tuple[int, ...], degree: int) -> list[torch.Tensor]:
    """``[ga_0, .., ga_degree]``, ``ga_j = sum_(k>=j) g_k z_(k-j)``, ``ga_0`` summed over the directions.

    The functional form of :func:`.fused._series_backward`; ``g``, ``z``: pieces
    ``[(*sample), (R_1, *sample), ..]`` to order K = len(counts).
    """
    order = len(counts)
    ga = [g[0] * z[0]]
    for j in range(1, degree + 1):
        total = g[j] * z[0]
        for k in range(j + 1, order + 1):
            total = _widened(total, g[k] * _rows(z, k - j, counts[k - 1]))
        ga.append(total)
    per_direction = g[1] * z[1]
    for k in range(2, order + 1):
        per_direction = _widened(per_direction, g[k] * z[k])
    ga[0] = ga[0] + per_direction.sum(0)
    return ga


class TracedLayer(torch.autograd.Function):
    """``f(Linear(x))`` of a stack ``(S, *sample, F_in)``: ``(S, *sample, F_out)``, stored ``(F_out, S, *sample)``.

    ``weight`` None: ``f(x)``.  ``counts``, ``degree``: the stack's (the output has degree ``len(counts)``).
    """

    @staticmethod
    def forward(ctx, stack, weight, bias, activation: Activation, counts: tuple[int, ...], degree: int):
        cols = features_first(stack)
        mapped = _directions_first(cols if weight is None else product_columns(weight, cols), stack)
        a0 = mapped[0] if bias is None else mapped[0] + bias.view(-1, *[1] * (stack.dim() - 2))
        y, z = series(activation, _split(mapped, counts, degree, a0), counts, degree)
        out = _stored(y)
        ctx.counts, ctx.degree, ctx.from_value = counts, degree, activation.from_value
        ctx.save_for_backward(stack, weight, bias, *([out] if ctx.from_value is not None else z))
        return out.movedim(0, -1)

    @staticmethod
    def backward(ctx, grad):
        stack, weight, bias, *z = ctx.saved_tensors
        counts, degree = ctx.counts, ctx.degree
        if ctx.from_value is not None:  # z from the output
            z = slopes_from_value(ctx.from_value, _split(z[0].movedim(0, 1), counts, len(counts)), counts)
        g = _split(grad.movedim(-1, 0).movedim(0, 1), counts, len(counts))
        ga = series_grad(g, z, counts, degree)
        grad_mapped = _stored(ga)  # (F_out, S, *sample)
        if weight is None:
            return grad_mapped.movedim(0, -1), None, None, None, None, None
        grad_stack = grad_weight = grad_bias = None
        flat = grad_mapped.view(grad_mapped.shape[0], -1)
        if ctx.needs_input_grad[0]:
            grad_stack = product_columns(weight.T, flat).view(weight.shape[1], *grad_mapped.shape[1:]).movedim(0, -1)
        if ctx.needs_input_grad[1]:
            grad_weight = weight_grad_columns(flat, features_first(stack))
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = ga[0].flatten(1).sum(1)
        return grad_stack, grad_weight, grad_bias, None, None, None


class _ChainStart(Stacked):
    """The output of a traced layer fed by the coordinates or in rows: other rules read it as the plain series has it.

    Features first pays where the next fused layer reads the stack; where another
    rule does (the products of the modified MLP), the transpose back to rows cost
    more than the layer saved (0.82x on that network compiled). So such a rule
    gets the layer computed again in rows (:func:`.fused.layer`), and the
    compiler drops whichever of the two nothing reads.
    """

    __slots__ = ("source",)

    def resolved(self) -> Stacked:
        if self._resolved is None:
            activation, x, weight, bias = self.source
            self._resolved = Stacked(layer(activation, x.counts, x.degree, x.stack, weight, bias), x.counts, x.order)
        return self._resolved


def traced_layer(activation: Activation, x: Stacked, weight, bias) -> Stacked:
    """``f(x)`` of a stacked jet with its pending ``Linear`` (or None), under torch.compile."""
    out = TracedLayer.apply(x.stack, weight, bias, activation, x.counts, x.degree)
    # Fewer features are the coordinates (stored features first too when traced) or a layer as narrow: a chain
    # start either way, which other rules read recomputed in rows, where a transpose back would cost more.
    if feature_major(x.stack) and x.stack.shape[-1] >= FEW_FEATURES:
        return Stacked(out, x.counts, x.order)
    start = _ChainStart(out, x.counts, x.order)
    start.source = (activation, x, weight, bias)
    return start
