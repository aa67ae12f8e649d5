"""``Stacked``: a jet whose coefficients live in one tensor, each direction truncated at its own order.

A request such as Burgers' ``{u, u_x, u_xx, u_t}`` needs the direction ``e_x``
to order two but ``e_t`` to order one only.  A :class:`Stacked` jet orders its
R directions by the order they are needed to and keeps, for each order k, only
the first ``R_k`` of them (``R_1 >= R_2 >= ... >= R_K``), all in one tensor::

    stack: (S, *sample),  S = 1 + R_1 + ... + R_D,
    slot 0 = c_0,  slots 1 .. R_1 = c_1 of directions 0 .. R_1 - 1,  then c_2, ...

(``D <= K`` is the degree: the coefficients above it are known zeros and not
stored, as for ``x + t v``.)  The coefficients of a direction never mix with
another's, so truncating one changes no coefficient that is read.

One tensor lets a layer ``Linear`` + activation run as one matrix product and
a handful of fused elementwise kernels (:mod:`.rules.fused`).  A ``Linear``
on a stacked jet is kept *pending* (its input, weight and bias) until the next
operation: an activation with a fused rule takes the three as they are.  The
fused layers themselves are kept as a *chain* (:class:`~.rules.fused.Chain`)
until something reads the stack, and then run as one autograd node: a layer
of its own costs more in Python than its arithmetic at PINN widths.  Sums and
products of stacked jets are kept *deferred* the same way
(:class:`~.rules.sums.Polynomial`), so that products sharing a factor run as
one.  Any other operation sees an ordinary :class:`~.jet.Jet` (``coefficients``, built on
first use, with zeros in the truncated places) and runs its ordinary rule.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from . import onednn
from .jet import Jet

FEW_FEATURES = 8
"""Fewer input features than this are the coordinates, whose products the BLAS runs poorly as they lie:
eagerly 2.5-5x slower than transposed, compiled at 1.7 GFLOP/s (:mod:`.rules.traced`)."""


def linear_on_coordinates(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: ``(*, F_in) -> (*, F_out)``; compiled, over the coordinates as multiply-adds.

    Those the compiler fuses with what reads the result, where the BLAS ran the
    first layer's ``(2,000, 3) @ (3, 64)`` of a compiled heat step at 0.5 GFLOP/s
    (1.45 ms, float64).
    """
    if weight.shape[1] >= FEW_FEATURES or not torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    total = x[..., :1] * weight[:, 0] if bias is None else torch.addcmul(bias, x[..., :1], weight[:, 0])
    for i in range(1, weight.shape[1]):
        total = total + x[..., i : i + 1] * weight[:, i]
    return total


def traced() -> bool:
    """Whether torch.compile is tracing, outside torch.func transforms (for which the traced layers are not written)."""
    return torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


def features_first(stack: torch.Tensor) -> torch.Tensor:
    """``(F, S * n)``, contiguous: the stack ``(S, *sample, F)`` features first (a view where it is stored so).

    Contiguous because the CPU BLAS ran the products 2-4x slower on the
    transposed view of a stack in rows (the coordinates the chain starts from).
    """
    return stack.movedim(-1, 0).reshape(stack.shape[-1], -1).contiguous()


def product_columns(weight: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``weight @ cols``: ``(F_out, F_in) @ (F_in, M)``, over the coordinates as broadcast multiply-adds.

    The compiler fuses those into the layer's kernel, reading the coordinates'
    stack where it is built; the BLAS ran ``(64, 2) @ (2, 30,000)`` at 1.7 GFLOP/s,
    4.5 ms of a 60 ms step (Burgers, 4 x 64, batch 10,000). Large float32
    products on the CPU go through oneDNN (:mod:`.onednn`).
    """
    if weight.shape[1] < FEW_FEATURES:
        total = weight[:, :1] * cols[:1]
        for i in range(1, weight.shape[1]):
            total = total + weight[:, i : i + 1] * cols[i : i + 1]
        return total
    if weight.shape[0] == 1:  # one output: a broadcast sum, whose backward is no outer product in the BLAS
        return (weight.T * cols).sum(0, keepdim=True)
    if onednn.pays(*weight.shape, cols.shape[1], cols):
        return onednn.columns_product(weight, cols)
    return weight @ cols


def weight_grad_columns(grad: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``grad @ cols.T``: ``(F_out, M) @ (M, F_in)``, over the coordinates as one fused reduction each.

    Large float32 products on the CPU go through oneDNN (:mod:`.onednn`).
    """
    if onednn.pays(grad.shape[0], grad.shape[1], cols.shape[0], cols):
        return onednn.samples_product(grad, cols)
    if cols.shape[0] >= FEW_FEATURES:
        return grad @ cols.T
    return torch.stack([(grad * cols[i]).sum(1) for i in range(cols.shape[0])], dim=1)


def columns(stack: torch.Tensor) -> torch.Tensor:
    """``(S, F, N)``: the stack ``(S, *sample, F)`` with the samples flattened and last, as a view."""
    return (stack.unsqueeze(1) if stack.dim() == 2 else stack.flatten(1, -2)).mT


def from_columns(cols: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(S, *sample, F)`` as a view of ``cols: (S, F, N)``, with ``like``'s sample shape."""
    return cols.mT.reshape(cols.shape[0], *like.shape[1:-1], cols.shape[1])


def linear_columns(cols: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``weight @ cols``: every coefficient's ``Linear`` with the samples last, ``(S, F_out, N)`` (into ``out``)."""
    if weight.shape[1] == 1:  # an outer product (a single output's gradient): the BLAS took 3.5x as long
        return torch.mul(weight, cols, out=out)  # (F_out, 1) times (S, 1, N); 57 against 200 us at 4 x 64 x 2,000
    return torch.bmm(weight.expand(cols.shape[0], *weight.shape), cols, out=out)  # matmul would fold cols: a copy


def split_slots(stack: torch.Tensor, counts: tuple[int, ...], degree: int) -> list[torch.Tensor]:
    """``[c_0: (*sample), c_1: (R_1, *sample), .., c_degree]``: views of a stack of that degree.

    One ``split``, not a slice per coefficient: under autograd a slice's backward
    fills a zero tensor the size of the whole stack, ``split``'s one concatenates.
    """
    sizes = [1, *counts[:degree]]
    spare = stack.shape[0] - sum(sizes)  # slots above the degree a caller reads
    first, *rest = stack.split_with_sizes(sizes + [spare] if spare else sizes)  # Tensor.split wraps this
    return [first[0], *rest[: degree]]


def pad_stack(stack: torch.Tensor, counts: tuple[int, ...], degree: int, to: int) -> torch.Tensor:
    """A stack of ``degree`` with zero slots appended up to degree ``to`` (itself if there are none to add)."""
    missing = sum(counts[degree:to])
    return stack if not missing else torch.cat([stack, stack.new_zeros(missing, *stack.shape[1:])])


def empty_stack_like(stack: torch.Tensor, slots: int) -> torch.Tensor:
    """An uninitialised stack of ``slots`` slots with ``stack``'s sample shape, laid out as ``stack`` is."""
    if not feature_major(stack):
        return stack.new_empty(slots, *stack.shape[1:])
    sample, features = stack.shape[1:-1], stack.shape[-1]
    strides = [1] * len(sample)  # the samples row-major, last in memory, after the features
    for i in reversed(range(len(sample) - 1)):
        strides[i] = strides[i + 1] * sample[i + 1]
    n = math.prod(sample)
    # a tensor of its own, not a view of one: a custom Function may return it and have it added to in place
    return stack.new_empty_strided((slots, *sample, features), (features * n, *strides, n))


def feature_major(stack: torch.Tensor) -> bool:
    """Whether ``stack`` is stored as :func:`from_columns` leaves it: samples last in memory."""
    return stack.dim() >= 3 and stack.stride(-2) == 1 and stack.stride(-1) != 1


def enters_columns(stack: torch.Tensor, degree: int) -> bool:
    """Whether a chain of fused layers starting on ``stack`` runs feature-major (:data:`COLUMNS`).

    Yes where the stack is laid out so already, and on the network's input (degree
    one, or a few features: the coordinates with folded top coefficients,
    :mod:`.folding`), whose first product reads it transposed at no cost.  A wide
    stack in rows that other rules left stays in rows: entering columns would copy it.
    """
    return feature_major(stack) or degree <= 1 or stack.shape[-1] < FEW_FEATURES


class Rows:
    """The layout of the ordinary rules: a coefficient ``(*sample, F)``, features last in memory."""

    @staticmethod
    def enter(stack: torch.Tensor) -> torch.Tensor:
        return stack

    @staticmethod
    def leave(work: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return work

    @staticmethod
    def linear(work: torch.Tensor, weight: torch.Tensor, out: None = None) -> torch.Tensor:
        return F.linear(work, weight)

    @staticmethod
    def bias(bias: torch.Tensor) -> torch.Tensor:
        return bias

    @staticmethod
    def weight_grad(grad: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
        grad, work = grad.flatten(0, -2), work.flatten(0, -2)
        if work.shape[-1] < FEW_FEATURES:  # the coordinates: the BLAS ran the product 2.5-5x faster transposed
            return (work.T.contiguous() @ grad).T
        return grad.T @ work

    @staticmethod
    def bias_grad(grad: torch.Tensor) -> torch.Tensor:
        return grad.flatten(0, -2).sum(0)


class Columns:
    """Feature-major: a coefficient ``(F, N)``, the samples flattened and last in memory.

    Why: at PINN widths (20 to 128) the CPU BLAS ran ``W @ cols`` 1.3-2.2x faster
    than ``F.linear``'s ``x @ W.T`` in float64 and 1.2-1.7x in float32
    (``docs/performance/residuals.md``), and elementwise work does not care.  A
    chain of fused layers keeps this layout from its first product to its last;
    every other rule reads the stack through :meth:`Stacked.resolved`, which lays
    it out in rows again (a copy).
    """

    enter = staticmethod(columns)
    leave = staticmethod(from_columns)
    linear = staticmethod(linear_columns)

    @staticmethod
    def bias(bias: torch.Tensor) -> torch.Tensor:
        return bias[:, None]

    @staticmethod
    def weight_grad(grad: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
        # the samples contiguous in both factors: the BLAS took 4x as long on the coordinates' stack as it
        # lies (samples first) for the first layer's gradient, 144 against 32 us at 3 x 2 x 2,000
        return torch.bmm(grad, (work if work.stride(-1) == 1 else work.contiguous()).mT).sum(0)

    @staticmethod
    def bias_grad(grad: torch.Tensor) -> torch.Tensor:
        return grad.sum(-1)


ROWS, COLUMNS = Rows(), Columns()


def map_linear(stack: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(stack, weight)`` of a feature-major stack, the result feature-major too."""
    return from_columns(linear_columns(columns(stack), weight), stack)


class Stacked(Jet):
    """Taylor coefficients of one batched tensor in one ``(S, *sample)`` tensor; see the module docstring.

    ``counts``: ``(R_1, .., R_K)``, non-increasing; ``degree``: the highest order
    stored; ``pending``: ``(weight, bias)`` of a ``Linear`` not yet applied to ``stack``;
    ``chain``: instead of ``stack``, the fused layers whose output it is, run on first read;
    ``deferred``: instead of ``stack``, the sum of products whose value it is, run on first read;
    ``sums``: weighted sums with other jets computed once for several readers (see :mod:`.rules.sums`).
    """

    __slots__ = (
        "_stack", "chain", "deferred", "sums", "counts", "pending", "_in_rows", "_resolved", "_plain", "__weakref__"
    )

    def __init__(
        self,
        stack: torch.Tensor | None,
        counts: tuple[int, ...],
        degree: int,
        pending: tuple | None = None,
        chain: Any = None,
        deferred: Any = None,
    ):
        self._stack = stack
        self.chain = chain
        self.deferred = deferred
        self.sums: dict | None = None
        self.counts = counts
        self.degree = degree
        self.pending = pending
        self.form = Jet.SINGLE if counts[0] == 1 else Jet.DIRECTIONS
        self.weights = None  # never collapsed
        # already resolved (no pending Linear, in rows): a flag, not ``_resolved = self``, since a jet that
        # refers to itself is a reference cycle, and its stack, kept memory, stays in use until the garbage
        # collector runs (the modified MLP's layer outputs missed their kept memory 5 times in 6)
        self._in_rows = pending is None and stack is not None and not feature_major(stack)
        self._resolved: Stacked | None = None
        self._plain: list[torch.Tensor] | None = None

    @property
    def stack(self) -> torch.Tensor:
        """``(S, *sample)``: the coefficients (before the pending ``Linear``); reading it runs the chain."""
        if self._stack is None:
            self._stack = self.chain.output() if self.chain is not None else self.deferred.evaluate()
        return self._stack

    @property
    def lazy(self) -> bool:
        """Whether the stack is still a chain of fused layers that has not run."""
        return self._stack is None and self.chain is not None

    @property
    def unread(self) -> Any:
        """The chain or deferred sum that will write the stack, or None once it is written."""
        return None if self._stack is not None else self.chain if self.chain is not None else self.deferred

    # -- layout ---------------------------------------------------------------------

    def pieces(self) -> list[torch.Tensor]:
        """``[c_0, .., c_K]`` unpadded (``c_k: (R_k, *sample)``), known zeros as expanded zeros."""
        out = split_slots(self.resolved().stack, self.counts, self.degree)
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        return out + [zero.expand(r, *out[0].shape) for r in self.counts[self.degree :]]

    def laid_out(self) -> torch.Tensor:
        """The stack with any pending ``Linear`` applied, feature-major where a chain left it so.

        For the rules that take either layout (sums and products of stacked jets): a
        chain's output read in rows, and the gradient coming back, were each a copy.
        Compiled, in rows: on the traced layers' features-first stacks the modified
        MLP's compiled step took 97 ms, against 66 ms with them in rows.
        """
        if self.pending is None and not torch.compiler.is_compiling():
            return self.stack
        return self.resolved().stack

    def resolved(self) -> Stacked:
        """This jet with its pending ``Linear`` applied (the bias on ``c_0`` only), its stack in rows.

        Every rule but the fused layers reads the stack through here.
        """
        if self._in_rows:
            return self
        if self._resolved is None:
            if self.lazy and self.pending is not None and self.chain.grad == torch.is_grad_enabled():
                # a Linear with no activation after it (a network's output layer): the chain's last link
                self._resolved = Stacked(self.chain.then((None, *self.pending)).output(rows=True).contiguous(),
                                         self.counts, self.degree)
                return self._resolved
            if self.lazy:
                self._stack = self.chain.output(rows=True)
            mapped = self.stack
            if self.pending is not None:
                weight, bias = self.pending
                mapped = map_linear(mapped, weight) if feature_major(mapped) else F.linear(mapped, weight)
                if bias is not None:
                    mapped = torch.cat([(mapped[0] + bias)[None], mapped[1:]])
            self._resolved = Stacked(mapped.contiguous(), self.counts, self.degree)
        return self._resolved

    # -- what the ordinary rules and the tensor-like surface see -------------------------

    @property
    def order(self) -> int:
        return len(self.counts)

    @property
    def coefficients(self) -> list[torch.Tensor]:  # type: ignore[override]
        """The ordinary jet's ``[c_0, c_1, .., c_K]``: every ``c_k`` padded with zeros to ``R_1`` directions."""
        if self._plain is None:
            pieces = self.pieces()
            padded = [pieces[0]]
            for piece in pieces[1:]:
                missing = self.counts[0] - piece.shape[0]
                if missing:
                    piece = torch.cat([piece, piece.new_zeros(missing, *piece.shape[1:])])
                padded.append(piece[0] if self.form == Jet.SINGLE else piece)
            self._plain = padded
        return self._plain

    @property
    def primal(self) -> torch.Tensor:
        return self.resolved().stack[0]

    @property
    def _described(self) -> Any:
        """What has the stack's shape, dtype and device: the stack, or the chain or sum that will write it."""
        unread = self.unread
        return self._stack if unread is None else unread

    @property
    def shape(self) -> torch.Size:
        shape = self._described.shape
        if self.pending is not None:
            return torch.Size((*shape[1:-1], self.pending[0].shape[0]))
        return shape[1:]

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Stacked(counts={self.counts}, degree={self.degree}, shape={tuple(self.shape)})"
