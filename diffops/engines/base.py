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
a :class:`Combination`    ``(N, *out)``        sum_a w_a d^a u, constant weights
========================  ===================  =====================================

Multi-indices are sorted tuples of coordinate indices (partials commute), so
``(0, 0, 1)`` is d^3/dx_0^2 dx_1.  Every returned tensor stays differentiable
with respect to whatever ``fn`` closes over (the network's parameters) and to
``x``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

BatchedFn = Callable[[torch.Tensor], torch.Tensor]
MultiIndex = tuple[int, ...]
FULL_OPERATORS = ("jacobian", "hessian", "laplacian")


class EngineUnsupported(RuntimeError):
    """An engine cannot handle this network or request; ``auto`` tries the next one."""


@dataclass(frozen=True, eq=False)
class Along:
    """``d^order/dt^order fn(x + t v)`` at ``t = 0`` along R directions ``v``, per direction or summed.

    ``directions``: ``(R, N, d)``, one set per row; the result under ``key`` is
    ``(N, *out)`` when ``summed`` (the sum over the R directions: with the
    columns of ``S`` and ``order=2``, the weighted Laplacian ``tr(S S^T H)``), else
    ``(R, N, *out)``.  The directions are held fixed: derivatives act on ``fn``
    only, while the result stays differentiable with respect to the directions
    (a learnable ``S``) and, through them, to whatever they depend on.

    An operator builds it unbound, with ``make(inputs, x) -> (R, N, d)`` from the
    operator's inputs and their flattened coordinates ``x: (N, d)``;
    :meth:`Request.bind` evaluates it once per call.
    """

    key: Any
    order: int
    summed: bool
    make: Callable[[tuple, torch.Tensor], torch.Tensor] | None = None
    directions: torch.Tensor | None = None

    def bind(self, inputs: tuple, x: torch.Tensor) -> Along:
        return self if self.make is None else Along(self.key, self.order, self.summed, None, self.make(inputs, x))

    def rows(self, rows: slice) -> Along:
        return Along(self.key, self.order, self.summed, None, self.directions[:, rows])


@dataclass(frozen=True)
class Combination:
    """``sum_a w_a d^a u``: a linear differential operator with constant coefficients, one result.

    ``terms``: ``((multi_index, weight), ...)``, distinct sorted multi-indices,
    lowest order first, nonzero float weights; ``()`` is the value.  (Build it
    with :meth:`of`.)  The Taylor engine computes it in fewer coefficients than
    its partials take apart (:mod:`.taylor.folding`); the others sum the
    partials (:func:`compute_combined`).
    """

    terms: tuple[tuple[MultiIndex, float], ...]

    @staticmethod
    def of(weights: dict[MultiIndex, float]) -> Combination:
        """From ``{sorted multi-index: weight}``; zero weights are dropped."""
        terms = sorted((len(index), index, float(w)) for index, w in weights.items() if w != 0)
        return Combination(tuple((index, w) for _, index, w in terms))

    @property
    def order(self) -> int:
        return max([0, *(len(index) for index, _ in self.terms)])

    def evaluate(self, results: dict) -> torch.Tensor:
        """The combination of the partials in ``results`` (each ``(N, *out)``; ``()`` always there)."""
        total = weighted_sum((weight, results[index]) for index, weight in self.terms)
        return 0 * results[()] if total is None else total


def weighted_sum(terms: Iterable[tuple[float, torch.Tensor]]) -> torch.Tensor | None:
    """``sum_i w_i t_i`` of ``terms = ((w_i, t_i), ..)``, a weight of one multiplying nothing; None if empty."""
    total = None
    for weight, tensor in terms:
        term = tensor if weight == 1 else weight * tensor
        total = term if total is None else total + term
    return total


@dataclass(frozen=True)
class Request:
    """What to compute: multi-indices, whole-tensor operators, derivatives along directions, combinations."""

    partials: frozenset[MultiIndex] = field(default_factory=frozenset)
    full: frozenset[str] = field(default_factory=frozenset)
    along: tuple[Along, ...] = ()
    combinations: frozenset[Combination] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        unknown = set(self.full) - set(FULL_OPERATORS)
        if unknown:
            raise ValueError(f"unknown full operators {sorted(unknown)}")
        for index in self.indices():
            if tuple(sorted(index)) != index:
                raise ValueError(f"multi-index {index} must be sorted")

    def indices(self) -> set[MultiIndex]:
        """Every multi-index named: the partials and the combinations' terms."""
        return set(self.partials).union(*({index for index, _ in c.terms} for c in self.combinations))

    def __or__(self, other: Request) -> Request:
        keys = {along.key for along in self.along}
        along = self.along + tuple(item for item in other.along if item.key not in keys)  # a leaf used twice
        combinations = self.combinations | other.combinations
        return Request(self.partials | other.partials, self.full | other.full, along, combinations)

    def bind(self, inputs: tuple, x: torch.Tensor) -> Request:
        """The directions of every :class:`Along` evaluated at the operator's ``inputs`` (``x``: ``(N, d)``)."""
        if not self.along:
            return self
        bound = tuple(along.bind(inputs, x) for along in self.along)
        return Request(self.partials, self.full, bound, self.combinations)

    def signature(self) -> tuple:
        """What the choice of engine depends on: hashable, equal for equal requests of two calls.

        (A bound :class:`Along` compares by identity; its order, form and number of directions count.)
        """
        along = tuple(
            (item.order, item.summed, None if item.directions is None else item.directions.shape[0])
            for item in self.along
        )
        return self.partials, self.full, along, self.combinations

    def rows(self, rows: slice) -> Request:
        """The request for the rows ``rows`` of a chunked call (bound directions sliced alike)."""
        if not self.along:
            return self
        return Request(self.partials, self.full, tuple(along.rows(rows) for along in self.along), self.combinations)


class Engine(Protocol):
    """A way of computing derivatives; see the module docstring for the contract."""

    name: str
    # whether it reads each row's output as a function of that row's input alone; such an
    # engine is not run on a network that couples the rows (see diffops._coupling)
    per_sample: bool

    def compute(self, fn: BatchedFn, x: torch.Tensor, request: Request) -> dict:
        """``x``: ``(N, d)``. Returns the dict described in the module docstring."""
        ...

    def directional(self, fn: BatchedFn, x: torch.Tensor, directions: torch.Tensor, order: int) -> torch.Tensor:
        """``(S, N, *out)``: d^order/dt^order fn(x + t v) at t = 0 for each direction.

        ``directions``: ``(S, N, d)``, one direction per sample and row (the
        primitive of the stochastic estimators).
        """
        ...

    def along(
        self, fn: BatchedFn, x: torch.Tensor, directions: torch.Tensor, order: int, summed: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(value, derivative)``: ``fn(x)`` and the result of :class:`Along` (directions held fixed)."""
        ...

    def compiled_refusal(self, u: object) -> EngineUnsupported | None:
        """Under torch.compile, what it refuses in ``u`` that its run checks eagerly but cannot compiled."""
        ...


def compute_along(engine: Engine, fn: BatchedFn, x: torch.Tensor, request: Request) -> dict:
    """``engine.compute`` for a request with :class:`Along` items: each through ``engine.along``.

    The rest of the request goes to ``engine.compute``; the value comes from the
    first directional pass when nothing else is asked.
    """
    results: dict = {}
    for item in request.along:
        results[()], results[item.key] = engine.along(fn, x, item.directions, item.order, item.summed)
    rest = Request(request.partials, request.full, combinations=request.combinations)
    if rest.partials - {()} or rest.full or rest.combinations:
        results.update(engine.compute(fn, x, rest))
    return results


def compute_combined(engine: Engine, fn: BatchedFn, x: torch.Tensor, request: Request) -> dict:
    """``engine.compute`` for a request with :class:`Combination` items: each summed from its partials."""
    partials = Request(frozenset(request.indices()), request.full, request.along)
    results = engine.compute(fn, x, partials)
    combined = {key: results[key] for key in ((), *request.partials, *request.full, *(a.key for a in request.along))}
    combined.update((c, c.evaluate(results)) for c in request.combinations)
    return combined


def basis(x: torch.Tensor) -> torch.Tensor:
    """Coordinate directions broadcast over the batch: ``(d, N, d)`` for ``x`` of ``(N, d)``."""
    n, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    return eye[:, None, :].expand(d, n, d)


_entered = threading.local()  # .grad: the grad mode the network was last entered with (see ``entered``)


def entered(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` noting, while it runs, whether gradients were enabled as it was entered (restored after: it nests).

    An engine runs the network through it so that :func:`grad_turned_off` can
    tell a ``torch.no_grad()`` section of the network, or the forward of a custom
    ``torch.autograd.Function`` (which runs so), from the rest.
    """

    def run(x: Any) -> Any:
        if torch.compiler.is_compiling():  # a thread-local would break the graph; compiled code is not checked
            return fn(x)
        before = getattr(_entered, "grad", False)
        _entered.grad = torch.is_grad_enabled()
        try:
            return fn(x)
        finally:
            _entered.grad = before

    return run


def grad_turned_off() -> bool:
    """Whether the network now runs with gradients off that it was entered with on (see :func:`entered`).

    Autograd, the reference, takes what a ``torch.no_grad()`` section computes
    as a constant and differentiates a custom ``Function`` by its own backward;
    forward propagation would differentiate both through.  (Entered without
    gradients, as for validation, neither can be told from the rest; the
    operator then enters with them on a network that has such a part:
    :mod:`diffops._grad_off`.)
    """
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling() and getattr(_entered, "grad", False)


def graph_nodes(outputs: Iterable[torch.Tensor]) -> Iterator[Any]:
    """Every node of the autograd graph behind ``outputs``, each once (depth first)."""
    seen, stack = set(), [output.grad_fn for output in outputs]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(next_node for next_node, _ in node.next_functions)
