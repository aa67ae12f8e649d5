"""Fused jet rules for :class:`~..stacked.Stacked` jets: a ``Linear`` and its activation in one step.

Most PINN networks are ``Linear`` layers and elementwise activations.  On a
stacked jet a layer is one matrix product on all its coefficients at once and
the activation's series, written straight into one output tensor, with a
hand-written backward: for ``y = f(a)`` with ``z = f'(a)`` as a series,
``dy_k / da_j = z_(k-j)`` (see :mod:`.elementwise`), and the ``Linear`` adds
three matrix products.  That is a dozen kernels a layer where the ordinary
rules record some sixty for autograd to replay.

The series of an activation with ``y' = z a'``:

    y_k = (1/k) sum_(j=1..k) j a_j z_(k-j),

and ``z_k`` from the ``y``: ``tanh' = 1 - y^2`` and ``sigmoid' = y - y^2`` give
``z_k = s y_k - sum_(i=1..k-1) y_i y_(k-i)`` (``s = -2 y_0`` and ``1 - 2 y_0``);
``sin' = cos`` gives ``z_k = -(1/k) sum_j j a_j y_(k-j)``.  Direction r of
``c_k`` exists for ``r < R_k``, so every term is cut to the rows its order keeps.

The rules registered here take over ``F.linear`` and the activations when
their argument is a stacked jet and hand every other case to the rule they
replace.  Eagerly the series and its backward run as :mod:`.schedules`, made
once per request.  Under torch.func transforms the same series runs as plain
differentiable ops; under ``torch.compile`` as :mod:`.traced`'s layer, with this
backward in plain ops, which the compiler fuses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch._C._functorch import peek_interpreter_stack

from ..jet import RULES, Jet
from ..stacked import COLUMNS, ROWS, Stacked, columns, enters_columns, feature_major, pad_stack, split_slots, traced
from ..workspace import buffer, recycled
from .elementwise import scalar
from .schedules import Builder, Schedule, Term

T = torch.Tensor
Pieces = list  # [c_0: (*sample), c_1: (R_1, *sample), ..]; an entry may be None where it is known zero


def _rows(pieces: Pieces, k: int, n: int) -> torch.Tensor:
    """The first ``n`` directions of ``c_k`` (``c_0``, shared by the directions, broadcasts as it is)."""
    tensor = pieces[k]
    return tensor if k == 0 or tensor.shape[0] == n else tensor.narrow(0, 0, n)


def _sum_of_products(terms: list, out: torch.Tensor | None) -> torch.Tensor:
    """``sum_i w_i a_i b_i`` over ``terms = [(w, a, b), ..]``, the first product written into ``out``."""
    weight, a, b = terms[0]
    total = torch.mul(a, b, out=out) if weight == 1 else torch.addcmul(scalar(0, a), a, b, value=weight, out=out)
    return _accumulate(total, terms[1:])


def _accumulate(total: torch.Tensor, terms: list) -> torch.Tensor:
    """``total + sum_i w_i a_i b_i``, in place where tensors may be updated."""
    mutable = _mutable()
    for weight, a, b in terms:
        total = total.addcmul_(a, b, value=weight) if mutable else torch.addcmul(total, a, b, value=weight)
    return total


def _mutable() -> bool:
    """Whether fresh tensors may be updated in place: not inside torch.func transforms, which lack some such rules."""
    return peek_interpreter_stack() is None


# The series as terms on named coefficients ``(stack, k, n)``: the first n directions of c_k of the
# pieces "a" (the input), "y" (f(a)) or "z" (f'(a)).  The plain series (:func:`_evaluate`) and the
# eager one (a :class:`~.schedules.Schedule`) both read them, so each formula is written once.
Total = tuple  # (base, terms): base + sum of the terms; base a coefficient, or None for 0


def _integral_terms(k: int, n: int, below: int, sign: float = 1, z: str = "z") -> list[Term]:
    """The terms ``(sign j / k, a_j, z_(k-j))`` of ``y_k`` for ``j = below .. 1``, on ``n`` directions."""
    return [(sign * j / k, ("a", j, n), (z, k - j, n)) for j in range(below, 0, -1)]


def _quadratic_slope(k: int, n: int, linear: int) -> Total:
    """``z_k = linear y_k - 2 y_0 y_k - sum_(i=1..k-1) y_i y_(k-i)``: tanh (``linear`` 0), sigmoid (1)."""
    terms = [(-2, ("y", 0, n), ("y", k, n))] + [(-2, ("y", i, n), ("y", k - i, n)) for i in range(1, (k + 1) // 2)]
    if k % 2 == 0 and k > 1:
        terms.append((-1, ("y", k // 2, n), ("y", k // 2, n)))
    return (("y", k, n) if linear else None), terms


def _evaluate(total: Total, pieces: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """A :data:`Total` on ``pieces`` (``{"a": [c_0, ..], ..}``) as plain ops, into ``out`` if given."""
    base, terms = total
    read = lambda c: _rows(pieces[c[0]], c[1], c[2])  # noqa: E731
    products = [(weight, read(a), read(b)) for weight, a, b in terms]
    if base is None:
        return _sum_of_products(products, out)
    weight, a, b = products[0]
    return _accumulate(torch.addcmul(read(base), a, b, value=weight, out=out), products[1:])


class Activation:
    """The series of one activation: ``start(a_0, out, z_out) -> (y_0, z_0)``, ``slope(k, n, degree) -> z_k``.

    ``slope``: the :data:`Total` of ``z_k`` on ``n`` directions, the input of
    ``degree``.  With ``out`` (``y_0`` written into it, ``z_0`` into ``z_out``:
    the eager chain) ``a_0`` is the layer's own tensor, which ``start`` may
    overwrite.  ``from_value``: ``(y_0, z_out) -> (z_0, linear)`` where the slope
    series follows from ``y`` alone (tanh, sigmoid), so that the compiled layer's
    backward can keep ``y`` instead of ``z``.
    """

    def __init__(self, start: Callable, slope: Callable, from_value: Callable | None = None) -> None:
        self.start, self.slope, self.from_value = start, slope, from_value


TANH_BY_SIGMOID = True
"""Whether compiled CPU code computes ``tanh(a)`` as ``2 sigmoid(2a) - 1`` (:func:`tanh_value`)."""


def tanh_value(a: torch.Tensor) -> torch.Tensor:
    """``tanh(a)``, of any shape; compiled on the CPU as ``2 sigmoid(2a) - 1`` (:data:`TANH_BY_SIGMOID`).

    The compiler's vectorised ``tanh`` on the CPU took 3-4x its ``sigmoid``, and
    the arithmetic around fuses into the same kernel: 1.04-1.12x a compiled
    training step (4 x 64 and 8 x 20 tanh, ``benchmarks/compiled_products.py``).
    Within 2.4e-7 of ``tanh`` in float32, absolute, as the eager chain computes
    it (:func:`_tanh_start`).  Only the fused layers take it: through the
    ordinary rules (the compiled Laplacian-like steps) it ran 0.97-1.01x.
    """
    if TANH_BY_SIGMOID and a.device.type == "cpu" and torch.compiler.is_compiling():
        return 2 * torch.sigmoid(2 * a) - 1
    return torch.tanh(a)


def _tanh_start(a0: torch.Tensor, out: torch.Tensor | None, z_out: torch.Tensor | None = None) -> tuple:
    if out is None:  # plain ops, compiled or not
        y0 = tanh_value(a0)
    elif a0.device.type != "cpu":
        y0 = torch.tanh(a0, out=out)
    else:  # tanh = 2 sigmoid(2a) - 1: the CPU kernel of tanh took 3x sigmoid's time (116 vs 36 us at 2000 x 20)
        half = a0.mul_(2).sigmoid_()  # a0 is the layer's own (see Activation)
        y0 = torch.addcmul(scalar(-1, half), half, scalar(2, half), out=out)  # within 2e-7 of tanh in float32
    return y0, _tanh_from_value(y0, z_out)[0]


def _tanh_from_value(y0: torch.Tensor, out: torch.Tensor | None = None) -> tuple:
    """``tanh' = 1 - y^2``: ``z_0``, and 0, the ``linear`` of :func:`_quadratic_slope`."""
    return torch.addcmul(scalar(1, y0), y0, y0, value=-1, out=out), 0


def _sigmoid_start(a0: torch.Tensor, out: torch.Tensor | None, z_out: torch.Tensor | None = None) -> tuple:
    y0 = torch.sigmoid(a0, out=out)
    return y0, _sigmoid_from_value(y0, z_out)[0]


def _sigmoid_from_value(y0: torch.Tensor, out: torch.Tensor | None = None) -> tuple:
    """``sigmoid' = y - y^2``: ``z_0``, and 1, the ``linear`` of :func:`_quadratic_slope`."""
    return torch.addcmul(y0, y0, y0, value=-1, out=out), 1


def _sin_start(a0: torch.Tensor, out: torch.Tensor | None, z_out: torch.Tensor | None = None) -> tuple:
    return torch.sin(a0, out=out), torch.cos(a0, out=z_out)


def _sin_slope(k: int, n: int, degree: int) -> Total:
    """``cos_k = -(1/k) sum_j j a_j sin_(k-j)``."""
    return None, _integral_terms(k, n, min(k, degree), sign=-1, z="y")


ACTIVATIONS = {
    "tanh": Activation(_tanh_start, lambda k, n, degree: _quadratic_slope(k, n, 0), _tanh_from_value),
    "sigmoid": Activation(_sigmoid_start, lambda k, n, degree: _quadratic_slope(k, n, 1), _sigmoid_from_value),
    "sin": Activation(_sin_start, _sin_slope),
}


def series(activation: Activation, a: Pieces, counts: tuple[int, ...], degree: int) -> tuple[list, list]:
    """``y = f(a)`` and ``z = f'(a)`` to order K = len(counts), each ``c_k`` on ``counts[k-1]`` directions.

    ``a``: the pieces of the input to ``degree``.  Plain ops, which torch.func and the compiler differentiate.
    """
    y0, z0 = activation.start(a[0], None)
    pieces = {"a": a, "y": [y0], "z": [z0]}
    for k, n in enumerate(counts, start=1):
        pieces["y"].append(_evaluate((None, _integral_terms(k, n, min(k, degree))), pieces))
        pieces["z"].append(_evaluate(activation.slope(k, n, degree), pieces))
    return pieces["y"], pieces["z"]


def series_into(activation: Activation, mapped: torch.Tensor, a0: torch.Tensor, counts: tuple, degree: int, out, z_out):
    """:func:`series` written into the stacks ``out`` (``y``) and ``z_out`` (``z``), laid out as ``mapped``'s slots.

    ``a0``: ``c_0`` of the input, which the activation's start may overwrite (no later term reads it).
    """
    activation.start(a0, out[0], z_out[0])
    _layer_schedule(activation, counts, degree).run((mapped, out, z_out), scalar(0, out))


@functools.lru_cache(maxsize=256)
def _layer_schedule(activation: Activation, counts: tuple[int, ...], degree: int) -> Schedule:
    """:func:`series_into` after the start, for ``a`` of ``degree``.

    The term ``a_k z_0`` of every ``y_k`` (k <= degree) is one product over those
    slots, where one a coefficient took a product each, and the others add in place.
    """
    build = Builder(("a", "y", "z"), counts)
    stored = sum(counts[:degree])  # the slots of a_1 .. a_degree
    build.mul(build.slots("y", 1, stored), build.slots("a", 1, stored), build.coefficient(("z", 0, 0)))
    for k, n in enumerate(counts, start=1):
        terms = _integral_terms(k, n, min(k - 1, degree))
        if terms:  # above the degree there is no a_k z_0, but a term (a stacked jet has degree >= 1)
            build.total(("y", k, n), "out" if k <= degree else None, terms)
        build.total(("z", k, n), *activation.slope(k, n, degree))
    return build.build()


def _split(stack: torch.Tensor, counts: tuple[int, ...], degree: int, first: torch.Tensor | None = None) -> list:
    """``[c_0, c_1, ..]`` as views of ``stack``; ``first``: a ``c_0`` to use instead of ``stack[0]``."""
    pieces = split_slots(stack, counts, degree)
    if first is not None:
        pieces[0] = first
    return pieces


def preactivation(stack: torch.Tensor, weight, bias) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.linear`` of every coefficient, and ``c_0`` with the bias: ``(S, *sample, out)``, ``(*sample, out)``."""
    mapped = stack if weight is None else F.linear(stack, weight)
    return mapped, mapped[0] if bias is None else mapped[0] + bias


def layer(activation: Activation | None, counts: tuple[int, ...], degree: int, stack, weight, bias) -> torch.Tensor:
    """The stacked output of ``f(Linear(x))`` (``weight`` None: of ``f(x)``; ``f`` None: the identity), as plain ops."""
    mapped, a0 = preactivation(stack, weight, bias)
    if activation is None:
        return torch.cat([a0[None], mapped[1:]])
    a = _split(mapped, counts, degree, a0)
    y, _ = series(activation, a, counts, degree)
    return torch.cat([y[0][None], *y[1:]])


def _run_layers(activations, counts, degree, layout, stack, params, backward: bool) -> tuple:
    """:class:`_FusedChain`'s layers on ``stack``: ``(output, saved, degrees)``, the output ``(S, *sample, F)``.

    ``saved``: each layer's input and series of ``f'`` (None for a ``Linear`` alone),
    what a backward reads; ``degrees``: each layer's input degree.  Without a
    ``backward`` to come (no grad, or no input that needs one) ``f'`` is scratch.
    """
    work, order = layout.enter(stack), len(counts)
    saved, degrees = [], []
    for activation, weight, bias in zip(activations, params[::2], params[1::2]):
        degrees.append(degree)
        if activation is None:  # the product is the output: memory of its own
            out = layout.linear(work, weight, _reused(layout, work, weight, recycled))
            if bias is not None:
                out[0].add_(layout.bias(bias))
            saved += [work, None]
            work = out
            continue
        mapped = work if weight is None else layout.linear(work, weight, _reused(layout, work, weight))
        a0 = mapped[0]  # the layer's own product, or without a weight the saved input: then a copy
        if bias is not None:
            a0 = a0 + layout.bias(bias) if weight is None else a0.add_(layout.bias(bias))
        elif weight is None:
            a0 = a0.clone()
        out = recycled("out", (1 + sum(counts), *a0.shape), a0)
        # z is kept for the backward even where it follows from y (tanh, sigmoid): computing it
        # again there made the step 7-15 % slower at 4 x 64 for a stack of memory a layer
        z = recycled("z", out.shape, out) if backward else buffer("z", out.shape, out)
        series_into(activation, mapped, a0, counts, degree, out, z)
        saved += [work, z]
        work, degree = out, order
    return layout.leave(work, stack), saved, degrees


class _FusedChain(torch.autograd.Function):
    """:func:`layer` after :func:`layer`, one autograd node, with the backward ``dy_k / da_j = z_(k-j)``
    and the three products of each ``Linear``.

    ``activations``: one per layer, the last of them None where the chain ends in
    a ``Linear`` with no activation after it (a network's output layer);
    ``params``: ``weight, bias`` per layer (either may be None; the identity's
    weight is not); ``degree``: the input's.  ``layout`` (:data:`~..stacked.ROWS` or
    :data:`~..stacked.COLUMNS`) says how the coefficients are laid out while the
    layers work on them; the output is stored in that layout, which the next
    chain reads without a copy.
    """

    @staticmethod
    def forward(ctx, activations, counts, degree, layout, stack, *params):
        out, saved, degrees = _run_layers(activations, counts, degree, layout, stack, params, any(ctx.needs_input_grad))
        ctx.activations, ctx.counts, ctx.degrees, ctx.layout = activations, counts, degrees, layout
        ctx.save_for_backward(stack, *params, *saved)
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx, grad):
        stack, *rest = ctx.saved_tensors
        layers = len(ctx.activations)
        params, saved = rest[: 2 * layers], rest[2 * layers :]
        none = (None,) * 4
        if grad is None:
            return *none, None, *(None,) * len(params)
        if torch.is_grad_enabled():  # a differentiable backward: replay the layers under autograd
            return *none, *_replayed(ctx, grad, stack, params)
        counts, layout = ctx.counts, ctx.layout
        grads: list = [None] * len(params)
        grad_out = layout.enter(grad).contiguous()  # a copy only if grad came in the other layout
        for i in reversed(range(layers)):
            work, z, activation = saved[2 * i], saved[2 * i + 1], ctx.activations[i]
            weight, bias, degree = params[2 * i], params[2 * i + 1], ctx.degrees[i]
            if activation is None:  # the identity: the gradient in the product is the one coming in
                grad_mapped, ga0 = grad_out, grad_out[0]
            else:
                shape = (work.shape[0], *z.shape[1:])
                # without a weight the gradient in the mapped stack is the next one out: a tensor of its own
                grad_mapped = z.new_empty(shape) if weight is None else buffer("mapped", shape, z)
                ga0 = _series_backward(grad_out, z, counts, (degree, len(counts), len(counts)), grad_mapped)
            if weight is not None and ctx.needs_input_grad[5 + 2 * i]:
                grads[2 * i] = layout.weight_grad(grad_mapped, work)
            if bias is not None and ctx.needs_input_grad[6 + 2 * i]:
                grads[2 * i + 1] = layout.bias_grad(ga0)
            if i == 0 and not ctx.needs_input_grad[4]:
                return *none, None, *grads
            product = _reused(layout, grad_mapped, weight.T) if weight is not None and i > 0 else None
            grad_out = grad_mapped if weight is None else layout.linear(grad_mapped, weight.T, product)
        return *none, layout.leave(grad_out, stack), *grads


def slopes_from_value(from_value: Callable, y: Pieces, counts: tuple, out: Pieces | None = None) -> list:
    """``[z_0, .., z_K]``, the series of ``f'(a)`` from the pieces ``y`` of ``f(a)`` (tanh, sigmoid), into ``out``."""
    z0, linear = from_value(y[0], None if out is None else out[0])
    slopes, pieces = [_quadratic_slope(k, n, linear) for k, n in enumerate(counts, start=1)], {"y": y}
    return [z0] + [_evaluate(slope, pieces, None if out is None else out[k]) for k, slope in enumerate(slopes, 1)]


def _reused(layout, work: torch.Tensor, weight: torch.Tensor, kept: Callable = buffer) -> torch.Tensor | None:
    """Kept memory for ``layout.linear(work, weight)`` (feature-major only): the layers' shared ``buffer``, or
    ``recycled`` memory for a product that outlives the call.

    The product dies within the layer that makes it; a buffer written again and
    again stays in cache where fresh memory for each layer did not (the product
    took 130-140 us into a reused buffer, 205 us into a new one, at 4 x 20 x 2,000).
    """
    if layout is not COLUMNS:
        return None
    return kept("product", (work.shape[0], weight.shape[0], *work.shape[2:]), work)


def _series_backward(
    grad_out: torch.Tensor, z: torch.Tensor, counts: tuple, degrees: tuple, grad_mapped: torch.Tensor
) -> torch.Tensor:
    """``ga_j = sum_(k>=j) g_k z_(k-j)`` into ``grad_mapped`` (j = 0..degree); ``ga_0`` sums over the directions.

    Returns ``ga_0``, the view of ``grad_mapped`` the bias gradient reads.

    The backward of ``y = f(a)`` (``z`` the series of ``f'``, as :func:`series_into`
    wrote it) and of either factor of a product (``z`` the other factor).
    ``degrees``: those of ``a``, of ``grad_out`` and of ``z``, each a stack of
    slots to its degree.  The term ``g_j z_0`` of every ``ga_j`` is one product
    over their slots.
    """
    stacks, ga0 = (grad_out, z, grad_mapped), grad_mapped[0]
    if all(map(feature_major, stacks)):  # (a product's) as their memory lies: a sum over a permuted view was 3x slower
        stacks = tuple(map(columns, stacks))
    schedule = _backward_schedule(counts, degrees)
    # the per-direction buffer only where ga_0 is summed through it (more than eight directions)
    directions = buffer("directions", (counts[0], *stacks[0].shape[1:]), z) if schedule.reads("d") else None
    schedule.run((*stacks, directions))
    return ga0


# Up to this many products of single directions are added into ga_0 one by one, with no buffer and
# no sum over the directions (a sum over the first dimension took 2.8x an add of the same two slots).
DIRECTIONS_ADDED_ONE_BY_ONE = 8


@functools.lru_cache(maxsize=256)
def _backward_schedule(counts: tuple[int, ...], degrees: tuple[int, int, int]) -> Schedule:
    """:func:`_series_backward`'s kernels on the stacks ``g``, ``z``, ``ga`` and ``d`` (``R_1`` directions)."""
    degree, top, known = degrees
    build = Builder(("g", "z", "ga", "d"), counts)
    stored = sum(counts[:degree])
    if stored:
        build.mul(build.slots("ga", 1, stored), build.slots("g", 1, stored), build.coefficient(("z", 0, 0)))
    for j in range(1, degree + 1):
        for k in range(j + 1, min(top, j + known) + 1):
            n = counts[k - 1]
            build.total(("ga", j, n), "out", [(1, ("g", k, n), ("z", k - j, n))])
    # ga_0 = g_0 z_0 + sum over the directions of sum_k g_k z_k
    ga0, orders = build.coefficient(("ga", 0, 0)), range(1, min(top, known) + 1)
    if counts[0] == 1 or sum(counts[k - 1] for k in orders) <= DIRECTIONS_ADDED_ONE_BY_ONE:
        build.total(("ga", 0, 0), None, [(1, ("g", 0, 0), ("z", 0, 0))])
        for k in orders:
            for slot in range(1 + sum(counts[: k - 1]), 1 + sum(counts[:k])):
                build.add_product(ga0, build.slots("g", slot, 1), build.slots("z", slot, 1))
        return build.build()
    # more: the first order's rows as one product, the higher ones added to them, and one sum
    slot = lambda stack, k: build.coefficient((stack, k, counts[k - 1]))  # noqa: E731 - c_k whole
    rows = lambda k: build.slots("d", 0, counts[k - 1])  # noqa: E731
    build.mul(rows(1), slot("g", 1), slot("z", 1))
    for k in orders[1:]:
        build.add_product(rows(k), slot("g", k), slot("z", k))
    build.sum_directions(ga0, rows(1))
    build.total(("ga", 0, 0), "out", [(1, ("g", 0, 0), ("z", 0, 0))])
    return build.build()


def _replayed(ctx, grad, stack, params) -> tuple:
    """The gradients of :class:`_FusedChain` as differentiable ops: its layers again, under autograd."""

    def layers(stack, *params):
        out, degree = stack, ctx.degrees[0]
        for activation, weight, bias in zip(ctx.activations, params[::2], params[1::2]):
            out, degree = layer(activation, ctx.counts, degree, out, weight, bias), len(ctx.counts)
        return out

    return _partials(layers, (stack, *params), ctx.needs_input_grad[4:], grad)


def _partials(compute: Callable, inputs: tuple, needs: tuple, grad: torch.Tensor) -> tuple:
    """The gradients of ``compute(*inputs)`` against ``grad`` in the inputs that ``needs`` marks, differentiable.

    Each input enters through an alias of its own, so that the gradient in one input holds only the
    paths that do not pass through another: where a factor of a product is itself a function of the
    other factor (a jet used twice), differentiating in the inputs themselves counted those paths twice.
    """
    with torch.enable_grad():
        aliases = [t.view_as(t) if isinstance(t, torch.Tensor) else t for t in inputs]
        needed = [alias for alias, need in zip(aliases, needs) if need]
        grads = iter(torch.autograd.grad(compute(*aliases), needed, grad, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs)


def _plain() -> bool:
    """Whether to run the series as plain ops: under torch.func transforms or torch.compile."""
    return peek_interpreter_stack() is not None or torch.compiler.is_compiling()


from .traced import traced_layer  # noqa: E402 - it builds on the series above


def activate(activation: Activation, x: Stacked) -> Stacked:
    """``f(x)`` of a stacked jet, fused with its pending ``Linear`` if it has one."""
    weight, bias = x.pending if x.pending is not None else (None, None)
    if traced() and enters_columns(x.stack, x.degree):  # a chain, or its start; rows of other rules: plain
        return traced_layer(activation, x, weight, bias)
    if _plain():
        return Stacked(layer(activation, x.counts, x.degree, x.stack, weight, bias), x.counts, x.order)
    return Stacked(None, x.counts, x.order, chain=Chain.after(x, (activation, weight, bias)))


class Chain:
    """Fused layers not run yet: ``layer`` (``(activation, weight, bias)``) on ``parent``'s output, or on ``source``.

    A chain runs, as one :class:`_FusedChain`, when a stack of it is read (any
    rule other than a fused layer, or the network's output), from the last
    link that has run.  A link read by two later layers runs first, so that
    both continue from its output instead of computing it twice.
    """

    __slots__ = (
        "parent", "layer", "source", "degree", "layout", "counts", "shape", "dtype", "device", "grad", "result",
        "children",
    )

    def __init__(self, parent: Chain | None, layer: tuple, source: torch.Tensor, degree: int, layout, counts: tuple):
        self.parent, self.layer, self.source, self.degree = parent, layer, source, degree
        self.layout, self.counts = layout, counts
        weight = layer[1]
        before = parent.shape if parent is not None else source.shape
        features = before[-1] if weight is None else weight.shape[0]
        self.shape = torch.Size((1 + sum(counts), *before[1:-1], features))  # the output's (S, *sample, F)
        self.dtype, self.device = source.dtype, source.device  # the output's, as a stacked jet reads them
        self.grad = torch.is_grad_enabled()
        self.result: torch.Tensor | None = None
        self.children = 0

    @staticmethod
    def after(x: Stacked, layer: tuple) -> Chain:
        """The link that applies ``layer`` to ``x``: on ``x``'s chain if it has one not run, else a new chain."""
        parent = x.chain if x.lazy else None
        if parent is not None and parent.grad == torch.is_grad_enabled():
            return parent.then(layer)
        stack = x.stack
        layout = COLUMNS if enters_columns(stack, x.degree) else ROWS
        return Chain(None, layer, stack, x.degree, layout, x.counts)

    def then(self, layer: tuple) -> Chain:
        """The link that applies ``layer`` (its activation None: a ``Linear`` alone) to this link's output."""
        self.children += 1
        if self.children > 1:
            self.output()
        return Chain(self, layer, self.source, self.degree, self.layout, self.counts)

    def output(self, rows: bool = False) -> torch.Tensor:
        """``(S, *sample, F)``: the stack after this link, running the links before it that have not run.

        ``rows``: the reader lays the stack out in rows (every rule but a fused layer).  A single
        layer on a stack in rows that no later layer reads then runs in rows too: feature-major, its
        output and the gradient coming back would each be transposed, which took longer than the
        layer itself at width 128 (the modified MLP's encoders).
        """
        if self.result is None:
            links, link = [], self
            while link is not None and link.result is None:
                links.append(link)
                link = link.parent
            start, degree = (link.result, len(self.counts)) if link is not None else (self.source, self.degree)
            links.reverse()
            params = [t for each in links for t in each.layer[1:]]
            activations = tuple(each.layer[0] for each in links)
            alone = rows and len(links) == 1 and self.children == 0 and not feature_major(start)
            layout = ROWS if alone else self.layout
            with torch.set_grad_enabled(self.grad):  # the grad mode the layers were called in
                if self.grad:
                    self.result = _FusedChain.apply(activations, self.counts, degree, layout, start, *params)
                else:  # nothing to differentiate: the layers alone
                    self.result = _run_layers(activations, self.counts, degree, layout, start, params, False)[0]
        return self.result


def _override(funcs: tuple, replacement: Callable) -> None:
    """Route ``funcs`` on stacked jets to ``replacement``, every other call (or a None from it) to the rule it had."""
    for func in funcs:
        previous = RULES[func]

        def rule(func, *args, previous=previous, **kwargs):
            stacked = any(isinstance(a, Stacked) for a in args[:2]) and set(kwargs) <= {"alpha", "dim", "bias"}
            fused = replacement(*args, **kwargs) if stacked else None
            return previous(func, *args, **kwargs) if fused is None else fused

        RULES[func] = rule


def padded(x: Stacked, degree: int) -> torch.Tensor:
    """``x``'s stack in rows with zero slots up to ``degree`` (for sums and concatenations)."""
    return pad_stack(x.resolved().stack, x.counts, x.degree, degree)


def _linear(x: Stacked, weight=None, bias=None) -> Stacked | None:
    if isinstance(weight, Jet) or isinstance(bias, Jet) or not isinstance(weight, torch.Tensor):
        return None
    if x.pending is not None:
        x = x.resolved()
    if x.lazy:  # the chain goes on through the activation that reads this
        return Stacked(None, x.counts, x.degree, pending=(weight, bias), chain=x.chain)
    return Stacked(x.stack, x.counts, x.degree, pending=(weight, bias))


def _activation(name: str) -> Callable:
    def replacement(x: Stacked, *args, **kwargs) -> Stacked | None:
        return None if args or kwargs else activate(ACTIVATIONS[name], x)

    return replacement


# -- several inputs: ``x.split`` by the operator, ``torch.cat([x, t], -1)`` by the network ------------------


def _last(x: Stacked, dim: int) -> bool:
    return dim in (-1, x.dim() - 1)


def _split_last(x: Stacked, split_size, dim: int = 0) -> tuple | None:
    """``x.split(sizes, dim=-1)``: the stack split along its last axis (the feature axis of every coefficient)."""
    if not _last(x, dim) or x.dim() == 0:
        return None
    x = x.resolved()
    return tuple(Stacked(part, x.counts, x.degree) for part in x.stack.split(split_size, dim=-1))


def _cat_last(tensors, dim: int = 0) -> Stacked | None:
    """``torch.cat(jets, dim=-1)`` of stacked jets of one layout: their stacks side by side."""
    if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, Stacked) for t in tensors):
        return None
    first = tensors[0]
    if not _last(first, dim) or any(t.counts != first.counts or t.dim() != first.dim() for t in tensors):
        return None
    degree = max(t.degree for t in tensors)
    return Stacked(torch.cat([padded(t, degree) for t in tensors], dim=-1), first.counts, degree)


def _override_cat(funcs: tuple) -> None:
    """``cat`` takes its jets in a list, which the generic check of :func:`_override` does not look into."""
    for func in funcs:
        previous = RULES[func]

        def rule(func, tensors, *args, previous=previous, **kwargs):
            plain = isinstance(tensors, Jet) or not set(kwargs) <= {"dim"}
            fused = None if plain else _cat_last(tensors, *args, **kwargs)
            return previous(func, tensors, *args, **kwargs) if fused is None else fused

        RULES[func] = rule


_override((T.split, torch.split), _split_last)
_override_cat((torch.cat, torch.concat, torch.concatenate))
_override((F.linear,), _linear)
_override((torch.tanh, T.tanh, F.tanh), _activation("tanh"))
_override((torch.sigmoid, T.sigmoid, F.sigmoid), _activation("sigmoid"))
_override((torch.sin, T.sin), _activation("sin"))
