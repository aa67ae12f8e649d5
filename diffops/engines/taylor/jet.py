"""``Jet``: the truncated Taylor series of a batched tensor along several directions.

Running a network on a jet instead of a tensor propagates, in one forward pass,
the Taylor coefficients of ``t -> u(x + t v)`` for R directions ``v`` at once::

    u(x + t v) = c_0 + c_1 t + ... + c_K t^K + O(t^(K+1)),   d^k/dt^k u = k! c_k.

``c_0: (N, *f)`` is shared by all directions; ``c_1 .. c_K: (R, N, *f)``, or
``(N, *f)`` in a *single*-direction jet, which saves the reductions over a
direction axis of size one.  A
*collapsed* jet keeps only the sum over directions of its top coefficient,
``sum_r c_K^(r): (N, *f)``.  That is enough to propagate it: the top
coefficient of every operation is linear in its inputs' top coefficients, with
factors that depend on ``c_0`` only, plus terms in lower coefficients, which
are summed where they arise.  With K = 2 and the unit directions the sum is
half the Laplacian, at d + 2 vectors per layer instead of 2d + 1.  (A weighted
sum with weights ``w_r > 0`` is the plain sum along the directions
``w_r^(1/K) v_r``.)

Jets enter the network through ``__torch_function__``: ``nn.Linear`` calls
``F.linear``, ``nn.Tanh`` calls ``torch.tanh``, a residual calls ``__add__``;
each call is routed to the rule registered for it in ``RULES`` (see the
modules of ``diffops.engines.taylor.rules``).  Any other torch function on a jet raises
:class:`~diffops.engines.base.EngineUnsupported` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import resolve_name
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..base import EngineUnsupported, grad_turned_off

RULES: dict[Callable, Callable] = {}

# ``other OP self``: routed to the rule of ``OP`` with the operands swapped; and ``Tensor.__pow__``, to
# ``torch.pow``.  Most of these are functools wrappers written in Python, and dynamo (torch 2.13) gets
# ``wrapper in dict`` wrong while tracing (``jet ** 2``, ``jet - tensor`` and ``tensor ** jet`` were
# refused under torch.compile), so compiled they are matched by identity (:func:`_routed`).
REVERSED = (
    (torch.Tensor.__radd__, torch.add),
    (torch.Tensor.__rsub__, torch.sub),
    (torch.rsub, torch.sub),
    (torch.Tensor.__rmul__, torch.mul),
    (torch.Tensor.__rtruediv__, torch.div),
    (torch.Tensor.__rdiv__, torch.div),
    (torch.Tensor.__rpow__, torch.pow),
    (torch.Tensor.__rmatmul__, torch.matmul),
    (torch.Tensor.__rmod__, torch.remainder),
)
RENAMED = ((torch.Tensor.__pow__, torch.pow),)

# Functions that read only a jet's metadata (shape, dtype, ...): answered by c_0.
METADATA = {
    torch.Tensor.dim,
    torch.Tensor.size,
    torch.Tensor.numel,
    torch.Tensor.__len__,
    torch.Tensor.is_floating_point,
    torch.Tensor.is_complex,
    torch.Tensor.shape.__get__,
    torch.Tensor.dtype.__get__,
    torch.Tensor.device.__get__,
    torch.Tensor.ndim.__get__,
    torch.Tensor.requires_grad.__get__,
    torch.Tensor.get_device,
}

# Functions whose result is piecewise constant in the jet's values (comparisons, the
# result of ``zeros_like``) or cut off from them (``detach``): computed from c_0.
CONSTANT = {
    *(getattr(torch, name) for name in ("gt", "lt", "ge", "le", "eq", "ne", "sign", "isfinite", "isnan")),
    *(getattr(torch.Tensor, name) for name in ("gt", "lt", "ge", "le", "eq", "ne", "sign", "isfinite", "isnan")),
    *(getattr(module, name) for module in (torch, torch.Tensor) for name in ("floor", "ceil", "round", "trunc")),
    *(getattr(torch.Tensor, f"__{name}__") for name in ("gt", "lt", "ge", "le", "eq", "ne")),
    torch.argmax,
    torch.argmin,
    torch.Tensor.argmax,
    torch.Tensor.argmin,
    torch.zeros_like,
    torch.ones_like,
    torch.empty_like,
    torch.full_like,
    torch.Tensor.new_zeros,
    torch.Tensor.new_ones,
    torch.Tensor.new_empty,
    torch.Tensor.new_full,
    torch.Tensor.new_tensor,
    torch.Tensor.detach,
    torch.detach,
}


def rule(*funcs: Callable) -> Callable:
    """Register the decorated function as the jet rule of every function in ``funcs``."""

    def register(implementation: Callable) -> Callable:
        for func in funcs:
            RULES[func] = implementation
        return implementation

    return register


def unsupported(func: Callable, why: str = "") -> EngineUnsupported:
    """The error for a function the Taylor engine has no rule for."""
    name = getattr(func, "__name__", repr(func))
    if not torch.compiler.is_compiling():  # resolve_name touches the warnings filters, which dynamo cannot trace
        try:
            name = resolve_name(func) or name
        except Exception:  # noqa: BLE001 - a name is only decoration
            pass
    return EngineUnsupported(f"Taylor mode does not support {name}{why}")


class Jet:
    """Taylor coefficients ``[c_0, c_1, ..., c_K]`` of one batched tensor; see the module docstring.

    ``form``: ``DIRECTIONS``, ``COLLAPSED`` (``c_K`` summed over the directions) or
    ``SINGLE`` (one direction, no direction axis).  ``degree``: the coefficients
    above it are known to be zero, as they are for ``x + t v`` and its linear
    images, so the rules may skip their terms.  ``weights``: ``(R,)``, where a
    collapsed top is the weighted sum over the directions (``u_tt - 4 u_xx``,
    which no scaling of real directions gives); None for the plain sum.
    """

    __slots__ = ("coefficients", "form", "degree", "weights")
    DIRECTIONS, COLLAPSED, SINGLE = "directions", "collapsed", "single"
    __hash__ = object.__hash__  # ``==`` compares values, as for tensors

    def __init__(
        self,
        coefficients: list[torch.Tensor],
        form: str = DIRECTIONS,
        degree: int | None = None,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.coefficients = coefficients
        self.form = form
        self.degree = len(coefficients) - 1 if degree is None else degree
        self.weights = weights

    # -- the series ------------------------------------------------------------------

    @property
    def order(self) -> int:
        return len(self.coefficients) - 1

    @property
    def primal(self) -> torch.Tensor:
        return self.coefficients[0]

    def __getitem__(self, index: Any) -> Any:
        return _dispatch(torch.Tensor.__getitem__, (self, index), {})

    def shared(self, k: int) -> bool:
        """Whether ``c_k`` has no direction axis: ``c_0``, a collapsed top, any of a single-direction jet."""
        return k == 0 or self.form == Jet.SINGLE or (k == self.order and self.form == Jet.COLLAPSED)

    def like(self, coefficients: list[torch.Tensor], degree: int | None = None) -> Jet:
        """A jet of the same order and form (and collapse weights) with other coefficients."""
        return Jet(coefficients, self.form, degree, self.weights)

    def collapse(self, per_direction: torch.Tensor) -> torch.Tensor:
        """``(N, *f)``: per-direction terms ``(R, N, *f)`` summed into a collapsed top, with its weights."""
        if self.weights is None:
            return per_direction.sum(0)
        return torch.tensordot(self.weights, per_direction, dims=1)

    def collapses(self, k: int) -> bool:
        """Whether ``c_k`` is a collapsed top, to which per-direction terms contribute their sum."""
        return k == self.order and self.form == Jet.COLLAPSED

    def zero(self, k: int, shape: torch.Size) -> torch.Tensor:
        """A known-zero ``c_k`` for samples of ``shape``, without memory."""
        full = shape if self.shared(k) else (self.coefficients[1].shape[0], *shape)
        return torch.zeros((), dtype=self.dtype, device=self.device).expand(full)

    def truncate(self, order: int) -> Jet:
        """The series up to ``order`` < K: every coefficient kept has a direction axis (or is c_0)."""
        if order >= self.order:
            return self
        form = Jet.SINGLE if self.form == Jet.SINGLE else Jet.DIRECTIONS
        return Jet(self.coefficients[: order + 1], form, min(self.degree, order))

    def combine(self, k: int, head: torch.Tensor | None, lower: torch.Tensor | None, scale: Any = 1) -> torch.Tensor:
        """Coefficient ``k`` of a result: ``head + scale * lower``; ``scale`` a number or an ``(N, *f)`` tensor.

        ``head`` holds the terms in the inputs' ``c_k`` (shaped like them); ``lower``
        the per-direction terms in lower coefficients, which are collapsed with
        over the directions when ``k`` is a collapsed top.
        """
        if lower is None:
            return head
        if self.collapses(k):
            lower = self.collapse(lower)
        if isinstance(scale, torch.Tensor) or scale != 1:
            lower = lower * scale
        return lower if head is None else head + lower

    # -- the tensor-like surface a network sees ----------------------------------------

    @property
    def shape(self) -> torch.Size:
        return self.primal.shape

    @property
    def _described(self) -> Any:
        """What has this jet's dtype and device without computing it (a subclass may hold its coefficients lazily)."""
        return self.primal

    @property
    def dtype(self) -> torch.dtype:
        return self._described.dtype

    @property
    def device(self) -> torch.device:
        return self._described.device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_nested(self) -> bool:  # read by the checks for the fused paths of nn.MultiheadAttention and others
        return self.primal.is_nested

    @property
    def mT(self) -> Jet:  # noqa: N802 - torch's name
        """The last two dimensions swapped, as ``Tensor.mT``."""
        return _dispatch(torch.Tensor.transpose, (self, -2, -1), {})

    @property
    def T(self) -> Jet:  # noqa: N802 - torch's name
        """The dimensions reversed, as ``Tensor.T`` (``W @ x.T`` in hand-written layers)."""
        return _dispatch(torch.Tensor.permute, (self, *reversed(range(self.ndim))), {})

    def dim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return len(self.primal)

    def __repr__(self) -> str:
        return f"Jet(order={self.order}, shape={tuple(self.shape)}, form={self.form})"

    def __getattr__(self, name: str) -> Any:
        method = getattr(torch.Tensor, name, None)
        if not callable(method):
            raise AttributeError(f"Jet has no attribute {name!r}")
        return lambda *args, **kwargs: _dispatch(method, (self, *args), kwargs)

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _dispatch(func, args, kwargs or {})


def _method(func: Callable) -> Callable:
    return lambda self, *args, **kwargs: _dispatch(func, (self, *args), kwargs)


def _reflected(func: Callable) -> Callable:
    """``other OP jet`` as ``func(other, jet)``: under torch.compile the reflected ``Tensor.__rsub__`` reached
    the dispatch as an object no entry of :data:`REVERSED` is (``1 - z`` of a gated network was refused)."""
    return lambda self, other: _dispatch(func, (other, self), {})


for _name in (
    "__add__ __sub__ __mul__ __truediv__ __pow__ __matmul__ __mod__ __neg__ __pos__ __abs__ "
    "__gt__ __lt__ __ge__ __le__ __eq__ __ne__ __bool__ __float__ __int__ __index__"
).split():
    setattr(Jet, _name, _method(getattr(torch.Tensor, _name)))
for _name, _func in (("__radd__", torch.add), ("__rsub__", torch.sub), ("__rmul__", torch.mul),
                     ("__rtruediv__", torch.div), ("__rpow__", torch.pow), ("__rmatmul__", torch.matmul),
                     ("__rmod__", torch.remainder)):  # fmt: skip
    setattr(Jet, _name, _reflected(_func))


def _dispatch(func: Callable, args: tuple, kwargs: dict) -> Any:
    """Route a torch function called on jets to its rule."""
    if grad_turned_off():  # a no_grad() section or a custom Function's forward: autograd's, not the jet's
        raise unsupported(func, " with gradients turned off inside the network (torch.no_grad() or a custom "
                          "torch.autograd.Function, whose backward autograd uses): run by nested autograd")  # fmt: skip
    func, args = _routed(func, args)
    implementation = RULES.get(func)
    if implementation is not None:
        return implementation(func, *args, **kwargs)
    if func in METADATA or func in CONSTANT:
        return func(*_primals(args), **_primals(kwargs))
    raise unsupported(func)


_REVERSED_LOOKUP = dict(REVERSED)


def _routed(func: Callable, args: tuple) -> tuple[Callable, tuple]:
    """``func`` and ``args`` as the rules are keyed: a reflected operator as its forward one, operands swapped.

    Eagerly one dict lookup; compiled, the identity scan of :data:`REVERSED` and :data:`RENAMED`.
    """
    if not torch.compiler.is_compiling():
        forward = _REVERSED_LOOKUP.get(func)
        return (func, args) if forward is None else (forward, (args[1], args[0], *args[2:]))
    for reflected, forward in REVERSED:
        if func is reflected:
            return forward, (args[1], args[0], *args[2:])
    for wrapper, same in RENAMED:
        if func is wrapper:
            return same, args
    return func, args


def primal(value: Any) -> Any:
    """``c_0`` of a jet; anything else as it is."""
    return value.primal if isinstance(value, Jet) else value


def valued(jet: Jet, value: torch.Tensor) -> Jet:
    """``jet`` with ``c_0`` replaced by ``value``, torch's own value of the function a rule wrote with other rules.

    The value and its parameter gradients are then torch's to the last bit, the coefficients above
    it the composition's.
    """
    return jet.like([value, *jet.coefficients[1:]], jet.degree)


def _primals(tree: Any) -> Any:
    leaves, spec = tree_flatten(tree)
    return tree_unflatten([leaf.primal if isinstance(leaf, Jet) else leaf for leaf in leaves], spec)


def jets_in(tree: Any) -> list[Jet]:
    """The jets among the leaves of a pytree of arguments."""
    return [leaf for leaf in tree_flatten(tree)[0] if isinstance(leaf, Jet)]


def map_coefficients(func: Callable, args: tuple, kwargs: dict, batched: bool, zero_constants: bool) -> Any:
    """``func(*args, **kwargs)`` on every coefficient of the jets among ``args``: jets of its output.

    A function linear in its jet arguments (a reshape, a concatenation, a sum)
    maps coefficients to coefficients.  With ``zero_constants``, floating
    tensors that are not jets contribute to ``c_0`` only (as in ``cat([jet,
    tensor])``); integer and boolean tensors (indices, masks) are kept.
    """
    leaves, spec = tree_flatten((args, kwargs))
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Jet)]
    reference = leaves[positions[0]]

    def call(k: int, coefficients: tuple) -> Any:
        filled = [_constant_part(leaf, k, zero_constants) for leaf in leaves]
        for position, coefficient in zip(positions, coefficients):
            filled[position] = coefficient
        call_args, call_kwargs = tree_unflatten(filled, spec)
        return func(*call_args, **call_kwargs)

    outputs = []
    for k in range(reference.order + 1):
        coefficients = tuple(leaves[p].coefficients[k] for p in positions)
        if reference.shared(k) or batched:
            outputs.append(call(k, coefficients))
        else:
            outputs.append(torch.vmap(lambda *c, k=k: call(k, c))(*coefficients))
    return _zip_outputs(outputs, reference, max(leaves[p].degree for p in positions))


def _constant_part(leaf: Any, k: int, zero_constants: bool) -> Any:
    if k == 0 or not zero_constants or not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point():
        return leaf
    return torch.zeros_like(leaf)


def _zip_outputs(outputs: list, reference: Jet, degree: int) -> Any:
    """Per-coefficient output pytrees -> one pytree of jets of ``reference``'s form."""
    flat = [tree_flatten(output) for output in outputs]
    spec = flat[0][1]
    leaves = [reference.like([f[0][i] for f in flat], degree) for i in range(len(flat[0][0]))]
    return tree_unflatten(leaves, spec)
