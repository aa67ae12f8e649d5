"""The collapsed Laplacian under ``torch.compile``: one features-first tensor, a layer one node.

Compiled, a Laplacian-like combination runs as one collapsed jet of order 2
(:func:`..engine.collapsed`): ``c_0``, ``c_1`` along R directions and the top
``c_2`` summed over them.  Through the ordinary rules each ``Linear`` was three
products in rows, ``x @ W.T`` of ``c_0``, of the R rows of ``c_1`` and of
``c_2``, and so was each of the two products of its backward; the CPU BLAS ran
those at 24 GFLOP/s in float64 where one ``W @ cols`` on all R + 2 with the
samples last ran at 37 (64 x 64 x 8,000, one core).

So under ``torch.compile``, in float64 on the CPU (:func:`enters`), a collapsed
jet leaving the coordinates is kept as :class:`TracedCollapsed`: its
coefficients in one ``(F, S, *sample)`` tensor,
``S = R + 2`` (``c_0``, the R rows of ``c_1``, ``c_2``), and a ``Linear``
pending until an activation with derivatives (tanh, sigmoid, sin, softplus,
...) takes both as one :class:`CollapsedLayer`: a product, the rule of
:class:`.rules.elementwise._CollapsedSecondOrder` along the samples, and its
backward written out.  Any other rule reads the ordinary jet: the stored
tensor laid out in rows, or, on the coordinates' layer, that layer as the
ordinary rules compute it in rows (:attr:`TracedCollapsed.in_rows`).

Only compiled: eagerly the same layer, unfused, took 1.1-1.5x as long as the
ordinary rules with their hand-written layer (4 x 64 and 4 x 128 tanh
Laplacians, d = 2, 3, 8, float32 and float64, training steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from .jet import Jet
from .stacked import FEW_FEATURES, product_columns, traced, weight_grad_columns

Derivatives = Callable[[torch.Tensor], Iterator[torch.Tensor]]  # a_0 -> f, f', f'', f''' at a_0
OrdinaryLayer = Callable[[Jet, torch.Tensor, "torch.Tensor | None"], Jet]  # jet, weight, bias -> f(Linear(jet))


def enters(x: Jet, weight: object, bias: object) -> bool:
    """Whether ``F.linear(x, weight, bias)`` starts a :class:`TracedCollapsed`: compiled, on the coordinates.

    A wide collapsed jet that other rules left in rows stays in rows: entering
    the features-first layout would copy it.  Float64 on the CPU only, where
    the products in rows are slow: in float32 the BLAS ran them as fast as
    ``W @ cols`` (77 against 73 GFLOP/s), and the compiled 4 x 64 heat and
    Poisson steps took 1.08-1.10x as long features first (paired, 3 runs each).
    """
    return (
        type(x) is Jet
        and x.form == Jet.COLLAPSED
        and x.order == 2
        and x.dtype == torch.float64
        and x.device.type == "cpu"
        and isinstance(weight, torch.Tensor)
        and weight.shape[1] < FEW_FEATURES
        and (bias is None or isinstance(bias, torch.Tensor))
        and traced()
    )


class TracedCollapsed(Jet):
    """A collapsed jet of order 2 stored features first: ``store: (F, S, *sample)``, ``S = R + 2``.

    ``pending``: ``(weight, bias)`` of a ``Linear`` not yet applied to ``store``.
    ``coefficients`` are the ordinary jet's, ``[c_0: (*sample, F), c_1: (R, *sample, F),
    c_2: (*sample, F)]``, the stored tensor (after the pending ``Linear``) laid out in rows.
    ``origin``: the ordinary jet that a pending ``Linear`` on the coordinates maps.
    ``in_rows``: on the coordinates, this jet by the ordinary rules, in rows, for the readers
    other than a layer.  Read features first, the gradient coming back through them in rows
    was transposed inside the layer's backward kernel: 43 of the 94 ms of the modified MLP's
    compiled heat step, whose gates read the first layers.  The compiler drops whichever of the
    two nothing reads.
    """

    __slots__ = ("store", "pending", "origin", "in_rows", "_plain")

    def __init__(self, store: torch.Tensor, weights: torch.Tensor | None, pending: tuple | None = None) -> None:
        self.store, self.pending, self.origin, self.in_rows, self._plain = store, pending, None, None, None
        self.form, self.degree, self.weights = Jet.COLLAPSED, 2, weights

    @classmethod
    def entering(
        cls, x: Jet, weight: torch.Tensor, bias: torch.Tensor | None, in_rows: Callable[[], Jet]
    ) -> TracedCollapsed:
        """``F.linear(x, weight, bias)`` of an ordinary collapsed jet, pending on its stored coefficients.

        ``in_rows()``: the same by the ordinary rules.
        """
        c0, c1, c2 = x.coefficients
        stack = torch.cat([c0[None], c1.expand(-1, *c0.shape), c2.expand(c0.shape)[None]])  # (S, *sample, F)
        entered = cls(stack.movedim(-1, 0).contiguous(), x.weights, (weight, bias))
        entered.origin, entered.in_rows = x, in_rows
        return entered

    def then_linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> TracedCollapsed:
        """``F.linear(self, weight, bias)``: pending, on this jet's output."""
        return TracedCollapsed(self.resolved_store(), self.weights, (weight, bias))

    def activated(self, derivatives: Derivatives, ordinary: OrdinaryLayer) -> TracedCollapsed | None:
        """``f(self)`` with its pending ``Linear`` as one :class:`CollapsedLayer`; None without one.

        ``ordinary(jet, weight, bias)``: ``f(F.linear(jet, weight, bias))`` by the ordinary
        rules, which other rules read on the coordinates' layer (:attr:`in_rows`).
        """
        if self.pending is None:
            return None
        weight, bias = self.pending
        out = TracedCollapsed(CollapsedLayer.apply(self.store, weight, bias, derivatives, self.weights), self.weights)
        if self.origin is not None:
            out.in_rows = lambda: ordinary(self.origin, weight, bias)
        return out

    def resolved_store(self) -> torch.Tensor:
        """``(F, S, *sample)``: the stored coefficients with the pending ``Linear`` applied."""
        if self.pending is None:
            return self.store
        weight, bias = self.pending
        mapped = product_columns(weight, self.store.reshape(self.store.shape[0], -1)).view(-1, *self.store.shape[1:])
        if bias is None:
            return mapped
        return torch.cat([_with_bias(mapped[:, :1], bias), mapped[:, 1:]], dim=1)

    # -- what the ordinary rules see -------------------------------------------------------

    @property
    def order(self) -> int:
        return 2

    @property
    def coefficients(self) -> list[torch.Tensor]:  # type: ignore[override]
        if self._plain is None and self.in_rows is not None:
            self._plain = self.in_rows().coefficients
        elif self._plain is None:
            rows = self.resolved_store().movedim(0, -1).contiguous()  # (S, *sample, F)
            self._plain = [rows[0], rows[1:-1], rows[-1]]
        return self._plain

    @property
    def shape(self) -> torch.Size:
        features = self.store.shape[0] if self.pending is None else self.pending[0].shape[0]
        return torch.Size((*self.store.shape[2:], features))

    @property
    def _described(self) -> torch.Tensor:
        return self.store

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"TracedCollapsed(directions={self.store.shape[1] - 2}, shape={tuple(self.shape)})"


def _with_bias(a0: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``a0 + bias`` for ``a0: (F, ...)`` features first."""
    return a0 if bias is None else a0 + bias.view(-1, *[1] * (a0.dim() - 1))


def _half_squares(a1: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``1/2 sum_r w_r a1_r^2: (F, *sample)`` of ``a1: (F, R, *sample)``."""
    squares = a1 * a1 if weights is None else a1 * a1 * _per_direction(weights, a1)
    return 0.5 * squares.sum(1)


def _per_direction(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``weights: (R,)`` broadcast along axis 1 of ``like: (F, R, *sample)``."""
    return weights.to(like.dtype).view(1, -1, *[1] * (like.dim() - 2))


class CollapsedLayer(torch.autograd.Function):
    """``f(Linear(x))`` of a collapsed jet stored ``(F_in, S, *sample)``: ``(F_out, S, *sample)``.

    With ``a = W x + b`` (the bias on ``a_0`` only) and ``f, f', f'', f'''`` at ``a_0``::

        y_0 = f,   y_1 = f' a_1,   y_2 = f' a_2 + f''/2 sum_r w_r a_1r^2,

    whose backward is ``ga_0 = g_0 f' + f'' sum_r g_1r a_1r + g_2 (f'' a_2 + f'''/2 sum_r w_r a_1r^2)``,
    ``ga_1 = g_1 f' + w g_2 f'' a_1``, ``ga_2 = g_2 f'``, plus the ``Linear``'s two products.
    Saved: the input, the parameters, the product and the derivatives at ``a_0``
    (which the compiler's partitioner may compute again instead).  Not
    differentiable again, which needs no guard: AOTAutograd refuses double backward
    through a compiled graph.
    """

    @staticmethod
    def forward(ctx, store, weight, bias, derivatives: Derivatives, weights):
        features, slots = store.shape[:2]
        mapped = product_columns(weight, store.reshape(features, -1)).view(-1, slots, *store.shape[2:])
        a0, a1, a2 = _with_bias(mapped[:, 0], bias), mapped[:, 1:-1], mapped[:, -1]
        f0, f1, f2, f3 = derivatives(a0)
        y2 = f1 * a2 + f2 * _half_squares(a1, weights)
        ctx.save_for_backward(store, weight, bias, mapped, weights, f1, f2, f3)
        return torch.cat([f0[:, None], f1[:, None] * a1, y2[:, None]], dim=1)

    @staticmethod
    def backward(ctx, grad):
        store, weight, bias, mapped, weights, f1, f2, f3 = ctx.saved_tensors
        a1, a2 = mapped[:, 1:-1], mapped[:, -1]
        g0, g1, g2 = grad[:, 0], grad[:, 1:-1], grad[:, -1]
        weighted = a1 if weights is None else a1 * _per_direction(weights, a1)
        ga0 = g0 * f1 + f2 * (g1 * a1).sum(1) + g2 * (f2 * a2 + f3 * _half_squares(a1, weights))
        ga1 = g1 * f1[:, None] + weighted * (g2 * f2)[:, None]
        grad_mapped = torch.cat([ga0[:, None], ga1, (g2 * f1)[:, None]], dim=1)
        flat = grad_mapped.reshape(grad_mapped.shape[0], -1)
        grad_store = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_store = product_columns(weight.T, flat).view(store.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = weight_grad_columns(flat, store.reshape(store.shape[0], -1))
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = ga0.reshape(ga0.shape[0], math.prod(ga0.shape[1:])).sum(1)
        return grad_store, grad_weight, grad_bias, None, None
