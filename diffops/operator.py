"""``DifferentialOperator``: the base class of every operator and expression.

An operator holds the network ``u`` as a submodule, checks its settings once
at construction and its inputs once per call, then hands the derivative work
to an engine picked from :data:`diffops.engines.ENGINES`.  Built-in operators
state what they need as a :class:`~diffops.engines.Request`, so an expression
of several operators on the same ``u`` is computed in one engine call.

Around the engine call: what depends only on the operator's settings (the
validated multi-indices, the engines to try) is worked out once and cached; a
batch of no samples gets empty results without any engine; an error that ``u``
raises on a plain call too is ``u``'s own and is raised at once with the
operator's name and the inputs' shapes; only other failures make ``auto`` move
on to the next engine.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._C._functorch import peek_interpreter_stack

from . import _timing
from ._coords import check_coords, check_range, derivative_spec
from ._coupling import coupled_row, coupling_message
from ._empty import EMPTY_BATCH
from ._grad_off import runs_without_grad
from ._inputs import DEVICE_ERRORS, Rows, check_argnums, flatten_inputs
from ._state import UNDECIDED, Snapshot, buffers_kept, preserved_rng, updating_buffers
from ._trainable import backward_failure
from .engines import ENGINES, METHODS, EngineUnsupported, Request, candidates
from .engines.base import Combination
from .engines.choice import too_close

# an output size that outweighs any request: auto ranks the engines for it and for one output,
# and when the two rankings agree the output size of u does not matter
_MANY_OUTPUTS = 1 << 20


@dataclass
class Computed:
    """One engine call's results, unflattened to ``(*batch, ...)``; keys as in ``engines.base``."""

    results: dict
    batch_shape: torch.Size
    d: int

    @property
    def out_shape(self) -> torch.Size:
        """The per-sample output shape of ``u``."""
        return self.results[()].shape[len(self.batch_shape) :]


class DifferentialOperator(nn.Module):
    """Base class of diffops operators; subclass it for a custom PDE term.

    Args:
        u: the network, any ``nn.Module`` or callable ``u(*inputs)``; each input is
            ``(*batch, d_i)`` and the output ``(*batch, *out)``.
        argnums: which input(s) to differentiate; a tuple concatenates their coordinates.
        coords: optional coordinate names, so that ``wrt`` and multi-indices may name them.
        method: ``"auto"``, ``"func"``, ``"taylor"`` or ``"autograd"``.
        chunk_size: evaluate at most this many samples at a time to bound peak memory.

    A custom term defines ``forward(*inputs)`` from ``self.derivatives(...)``::

        class Burgers(DifferentialOperator):
            def forward(self, x, t):
                d = self.derivatives(x, t, u=(), u_x="x", u_xx=("x", "x"), u_t="t")
                return d["u_t"] + d["u"] * d["u_x"] - 0.01 * d["u_xx"]

        residual = Burgers(net, argnums=(0, 1), coords=("x", "t"))
    """

    def __init__(
        self,
        u: Callable | None = None,
        /,
        *,
        argnums: int | tuple[int, ...] = 0,
        coords: tuple[str, ...] | None = None,
        method: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if u is not None and not callable(u):
            raise TypeError(f"{name}: u must be an nn.Module or a callable, got {type(u).__name__}")
        if method not in METHODS:
            raise ValueError(f"{name}: method must be one of {METHODS}, got {method!r}")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"{name}: chunk_size must be a positive int or None, got {chunk_size!r}")
        self.u = u
        self.argnums = check_argnums(name, argnums)
        self.coords = check_coords(name, coords)
        self.method = method
        self.chunk_size = chunk_size
        self._failed_engines: set[str] = set()
        # output components per sample, learnt from the last call (None before the first): auto weighs it
        self._outputs: int | None = None
        # settings-only work done once: validated multi-indices of derivatives(), the engines to try
        self._specs: dict = {}
        self._plans: dict = {}

    def forward(self, *inputs: Any) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__}: a custom operator defines forward(*inputs) and builds its "
            "result from self.derivatives(*inputs, name=multi_index, ...)"
        )

    def derivatives(
        self, *inputs: Any, spec: Mapping[str, Any] | None = None, **named: Any
    ) -> dict[str, torch.Tensor]:
        """Several partials of ``u`` from one shared computation.

        ``named`` (or ``spec``) maps a name to a multi-index: ``()`` for the value,
        ``(0,)`` or ``"x"`` for a first partial, ``("x", "x", "t")`` for a mixed one;
        or to a linear combination with constant weights, ``{"t": 1.0, ("x", "x"): -0.01}``
        (``u_t - 0.01 u_xx``), which the Taylor engine computes in fewer passes than
        its terms apart (``engines/taylor/folding.py``).
        Returns ``{name: tensor shaped like u(*inputs)}``.
        """
        if self.u is None:
            raise TypeError(f"{type(self).__name__}: derivatives() needs the network u given to the constructor")
        indices, request = self._derivative_spec(spec, named)
        computed = self._compute(inputs, lambda d: request)
        return {key: computed.results[index] for key, index in indices.items()}

    def _derivative_spec(self, spec: Mapping[str, Any] | None, named: dict) -> tuple[dict, Request]:
        """``derivative_spec`` and its request, validated once per distinct spec.

        Under torch.compile it is validated afresh: the trace runs once, and reading
        the cache would only add guards on it to the compiled graph.
        """
        key = None
        if not torch.compiler.is_compiling():
            try:
                key = (_frozen(spec), _frozen(named), self.coords)
                hash(key)
            except TypeError:  # unhashable multi-indices (lists): validate every time
                key = None
        found = self._specs.get(key) if key is not None else None
        if found is None:
            indices = derivative_spec(type(self).__name__, spec, named, self.coords)
            partials = frozenset(index for index in indices.values() if isinstance(index, tuple))
            combinations = frozenset(index for index in indices.values() if isinstance(index, Combination))
            found = (indices, Request(partials, combinations=combinations))
            if key is not None:
                self._specs[key] = found
        return found

    # -- the engine call --------------------------------------------------------------

    def _compute(self, inputs: tuple, make_request: Callable[[int], Request]) -> Computed:
        """Validate ``inputs``, run the engines on ``make_request(d)``, return unflattened results."""
        rows = flatten_inputs(type(self).__name__, inputs, self.argnums)
        d = rows.num_coordinates
        request = make_request(d).bind(inputs, rows.x)  # directions that depend on the inputs, evaluated once
        work = lambda engine, rows_slice, x, fn: engine.compute(fn, x, request.rows(rows_slice))  # noqa: E731
        engines = self._engines(request, d, rows, work=work)
        if not rows.num_rows:
            return Computed(self._run_empty(rows, work), rows.batch_shape, d)
        computed = Computed(self._run_engines(rows, engines, work, request.signature()), rows.batch_shape, d)
        outputs = math.prod(computed.out_shape)
        # a compiled call learns nothing: a change of state would fail the compiled graph's guards and recompile
        if outputs != self._outputs and not torch.compiler.is_compiling():
            self._outputs = outputs
        return computed

    def _engines(
        self, request: Request, d: int, rows: Rows, scale: int = 1, work: Callable | None = None
    ) -> tuple[str, ...]:
        """The engines to try for ``request``, after checking its indices against ``d``; cached per settings.

        ``auto`` weighs the output components per sample (times ``scale``); where the
        cost model cannot tell the cheapest engines apart it times them on this
        call's ``work`` before the order is cached (:mod:`diffops._timing`).
        """
        compiling = torch.compiler.is_compiling()  # traced once: a cache would only add guards (see above)
        transformed = peek_interpreter_stack() is not None  # inside vmap/grad, as candidates() checks
        # with or without grad: a validation loop (timed forward only) must not decide for training
        key = (request.signature(), d, self._outputs, scale, transformed, self.method, self.coords,
               torch.is_grad_enabled())  # fmt: skip
        engines = None if compiling else self._plans.get(key)
        if engines is None:
            name = type(self).__name__
            check_range(name, (), d, self.coords)
            for index in request.indices():
                check_range(name, index, d, self.coords)
            size = self._output_size(rows, request, d) * scale if self.method == "auto" else 1
            engines = candidates(self.method, request, d, size)
            if self._outputs is not None and not compiling:
                if self.method == "auto" and work is not None and not transformed and rows.num_rows:
                    engines = self._timed(engines, too_close(request, d, size), rows, work)
                self._plans[key] = engines
        return engines

    def _timed(self, engines: tuple[str, ...], close: tuple[str, ...], rows: Rows, work: Callable) -> tuple:
        """``engines`` with those in ``close`` reordered by their measured time, fastest first."""
        close = tuple(name for name in close if name not in self._failed_engines)
        if len(close) < 2 or not _timing.may_time(self.u):
            return engines
        parameters = [p for p in self.u.parameters() if p.requires_grad] if isinstance(self.u, nn.Module) else []
        with preserved_rng(rows.x.device):
            run = lambda name: self._run_chunks(rows, ENGINES[name], work)  # noqa: E731
            timed = _timing.fastest_first(close, run, parameters)
        return (*timed, *(name for name in engines if name not in timed))

    def _output_size(self, rows: Rows, request: Request, d: int) -> int:
        """Output components per sample: from the last call, else from ``u`` on one row if auto needs it.

        Before the first call the size is unknown; auto ranks the engines for one
        output and for very many, and only when the two rankings differ is ``u``
        evaluated on one sample (no graph, random number generator restored).
        """
        if self._outputs is not None:
            return self._outputs
        if not rows.num_rows or ranked_alike(request, d):
            return 1
        probed = rows.probe(self.u, 1, torch.no_grad(), leaf=False)
        return 1 if probed is UNDECIDED else math.prod(probed[1].shape[1:])

    def _directional(
        self, inputs: tuple, make_directions: Callable[[torch.Tensor], torch.Tensor], order: int
    ) -> torch.Tensor:
        """``(*batch, S, *out)``: d^order/dt^order u(x + t v) for directions ``make_directions(x)``.

        ``make_directions`` maps the flattened ``x: (N, d)`` to ``(S, N, d)``; the
        primitive of the stochastic estimators.
        """
        rows = flatten_inputs(type(self).__name__, inputs, self.argnums)
        directions = make_directions(rows.x)

        def work(engine, rows_slice, x, fn):
            along = engine.directional(fn, x, directions[:, rows_slice], order)
            return {"directional": along.movedim(0, 1)}

        request = Request(frozenset({(0,) * order}))
        # nested autograd differentiates each direction and output component in turn
        engines = self._engines(request, rows.num_coordinates, rows, directions.shape[0])
        if not rows.num_rows:
            return self._run_empty(rows, work)["directional"]
        return self._run_engines(rows, engines, work, request.signature())["directional"]

    def _run_empty(self, rows: Rows, work: Callable) -> dict:
        """The results for a batch of no samples: empty tensors of the right shape, no engine run.

        Changes nothing the operator learns from a call (the engines that failed, the output size).
        """
        try:
            results = work(EMPTY_BATCH, slice(None), rows.x, rows.function(self.u))
        except Exception:
            rows.evaluate_plainly(self.u, None)  # an error of u itself, restated with the inputs' shapes
            raise
        return self._finish(rows, results)

    def _finish(self, rows: Rows, results: dict) -> dict:
        if not torch.is_grad_enabled():
            results = {key: value.detach() for key, value in results.items()}
        return {key: rows.unflatten(value) for key, value in results.items()}

    def _run_engines(self, rows: Rows, engine_names: tuple[str, ...], work: Callable, request: Hashable) -> dict:
        """``work(engine, rows_slice, x_rows, fn) -> {key: (n, ...)}`` over chunks, with fallback.

        Returns the chunks' results concatenated and unflattened to ``(*batch, ...)``.
        An error that ``u`` raises on a plain call too is ``u``'s own: it is raised
        at once (see ``Rows.evaluate_plainly``), without trying other engines.  Of
        the other errors, ``EngineUnsupported``, ``RuntimeError`` and
        ``NotImplementedError`` are the engine's failures; the rest (a bad
        request, say) are raised as they are.  A per-sample engine's answer on a
        network that couples the rows counts as its refusal (:meth:`_coupled`), and so does
        an answer whose parameters' gradients PyTorch cannot take (:mod:`diffops._trainable`;
        once per network, engine and ``request``, the signature of the engine's request).
        """
        self._check_chunks(rows)
        # without gradients, a grad-off part of u is seen only with them on (diffops._grad_off)
        grad_on = not torch.is_grad_enabled() and runs_without_grad(rows, self.u)
        tried = [n for n in engine_names if n not in self._failed_engines] or list(engine_names[-1:])
        failures: list[tuple[str, Exception]] = []
        buffers = updating_buffers(self.u)
        before = Snapshot(buffers) if buffers and not torch.compiler.is_compiling() else None
        for position, engine_name in enumerate(tried):
            engine = ENGINES[engine_name]
            try:
                if torch.compiler.is_compiling() and (refused := engine.compiled_refusal(self.u)) is not None:
                    raise refused
                with torch.enable_grad() if grad_on else contextlib.nullcontext():
                    merged = self._run_chunks(rows, engine, work)
                if (coupled := self._coupled(rows, engine_name)) is not None:
                    raise coupled
                if (failure := backward_failure(self.u, engine_name, (request, rows.argnums), merged)) is not None:
                    raise EngineUnsupported(
                        f"method={engine_name!r} answered, but PyTorch cannot differentiate its answer once more (the "
                        f"parameters' gradients of a training step): {failure}"
                    )
            except DEVICE_ERRORS:  # the device is out of memory or broken: no other engine can help
                raise
            except Exception as error:
                if not failures:  # once per call: the plain evaluation raises u's own error
                    with buffers_kept(self.u):
                        rows.evaluate_plainly(self.u, self.chunk_size)
                if before is not None:  # the failed engine's forward pass must not count as the call's
                    before.restore()
                if not isinstance(error, EngineUnsupported):  # a coupling can make an engine fail where it cannot run
                    error = self._coupled(rows, engine_name) or error
                if not isinstance(error, (EngineUnsupported, RuntimeError, NotImplementedError)):
                    raise
                failures.append((engine_name, error))
                if position + 1 < len(tried):
                    continue
                raise self._failure(failures) from error
            if failures:
                self._failed_engines.update(failed for failed, _ in failures)
                if not torch.compiler.is_compiling():  # dynamo cannot trace a warning: compiled, it falls back quietly
                    warnings.warn(
                        f"{type(self).__name__}: method='auto' uses {engine_name!r} because {_reasons(failures)}",
                        stacklevel=4,
                    )
            return self._finish(rows, merged)
        raise RuntimeError(f"{type(self).__name__}: no engine left to try")  # pragma: no cover

    def _check_chunks(self, rows: Rows) -> None:
        """Raise if ``chunk_size`` splits a batch whose rows ``u`` couples: any number would depend on the split."""
        if self.chunk_size is None or self.chunk_size >= rows.num_rows or (row := coupled_row(rows, self.u)) is None:
            return
        raise ValueError(
            f"{type(self).__name__}: chunk_size={self.chunk_size} splits the batch of {rows.num_rows} samples, but u "
            f"couples the samples of its batch (the input of row {row} moves the output of another row), so its "
            "value and derivatives would depend on the split; call it without chunk_size, or compute the batch "
            "statistics outside u"
        )

    def _coupled(self, rows: Rows, engine_name: str) -> EngineUnsupported | None:
        """The refusal of a per-sample engine where ``u`` couples the rows (:mod:`diffops._coupling`), else None.

        Asked after the engine ran, so that its own refusal (``BatchNorm`` in training
        mode, which says what to change) comes first.
        """
        if not ENGINES[engine_name].per_sample or (row := coupled_row(rows, self.u)) is None:
            return None
        return EngineUnsupported(coupling_message(engine_name, row))

    def _run_chunks(self, rows: Rows, engine: Any, work: Callable) -> dict:
        """``work`` on each block of at most ``chunk_size`` rows, concatenated: ``{key: (N, ...)}``."""
        if self.chunk_size is None or self.chunk_size >= rows.num_rows:
            return work(engine, slice(None), rows.x, rows.function(self.u))
        chunks = [work(engine, *chunk) for chunk in rows.chunks(self.u, self.chunk_size)]
        return {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}

    def _failure(self, failures: list[tuple[str, Exception]]) -> Exception:
        """The error for an engine call that no engine could do, naming the operator and each engine's reason."""
        name = type(self).__name__
        last = failures[-1][1]
        unsupported = all(isinstance(error, EngineUnsupported) for _, error in failures)
        kind = EngineUnsupported if unsupported else RuntimeError
        if self.method != "auto":
            advice = (
                ". method='autograd' handles any network that torch.autograd can differentiate"
                if self.method != "autograd"
                else ""
            )
            return kind(f"{name}: method={self.method!r} cannot differentiate this network: {last}{advice}")
        compiled = (
            "; compiled, nested autograd cannot run either (torch.compile cannot take its double backward): call "
            "the operator outside torch.compile for it"
            if torch.compiler.is_compiling()
            else ""
        )
        return kind(
            f"{name}: method='auto' found no method that can differentiate this network: {_reasons(failures)}{compiled}"
        )

    # -- expressions ------------------------------------------------------------------

    def _leaves(self) -> Iterator[DifferentialOperator]:
        """The operators an expression is made of (itself, for a leaf)."""
        yield self

    def _evaluate(self, inputs: tuple, shared: dict) -> Any:
        """This operator's value, reusing the engine results in ``shared`` where it can."""
        return self(*inputs)

    def _linear_form(self) -> list[tuple[DifferentialOperator, float]] | None:
        """``[(leaf, weight), ..]`` where this operator is a sum of ``Derivative`` leaves with number weights."""
        return None

    def _summands(self) -> list[DifferentialOperator] | None:
        """The terms of a sum, nested sums flattened; None for anything else."""
        return None

    def _symbol(self) -> str:
        return type(self).__name__ + "[u]"

    def __str__(self) -> str:
        return self._symbol()

    def __add__(self, other: Any) -> DifferentialOperator:
        from .algebra import Sum, as_operator

        return Sum(self, as_operator(other, "+"))

    def __radd__(self, other: Any) -> DifferentialOperator:
        from .algebra import Sum, as_operator

        return Sum(as_operator(other, "+"), self)

    def __sub__(self, other: Any) -> DifferentialOperator:
        from .algebra import Scaled, Sum, as_operator

        return Sum(self, Scaled(-1.0, as_operator(other, "-")))

    def __rsub__(self, other: Any) -> DifferentialOperator:
        from .algebra import Scaled, Sum, as_operator

        return Sum(as_operator(other, "-"), Scaled(-1.0, self))

    def __neg__(self) -> DifferentialOperator:
        from .algebra import Scaled

        return Scaled(-1.0, self)

    def __mul__(self, other: Any) -> DifferentialOperator:
        from .algebra import Product, Scaled, as_operator, is_scalar

        return Scaled(other, self) if is_scalar(other) else Product(self, as_operator(other, "*"))

    def __rmul__(self, other: Any) -> DifferentialOperator:
        from .algebra import Product, Scaled, as_operator, is_scalar

        return Scaled(other, self) if is_scalar(other) else Product(as_operator(other, "*"), self)

    def __truediv__(self, other: Any) -> DifferentialOperator:
        from .algebra import Quotient, Scaled, as_operator, is_scalar

        if is_scalar(other):
            return Scaled(other, self, divide=True)
        return Quotient(self, as_operator(other, "/"))

    def __rtruediv__(self, other: Any) -> DifferentialOperator:
        from .algebra import Quotient, as_operator

        return Quotient(as_operator(other, "/"), self)


class BuiltinOperator(DifferentialOperator):
    """A leaf whose result is assembled from one shared engine call."""

    def _request(self, d: int) -> Request:
        """What this operator needs from the engine, for ``d`` coordinates."""
        raise NotImplementedError

    def _assemble(self, computed: Computed) -> torch.Tensor:
        """This operator's result from the engine's results."""
        raise NotImplementedError

    def _share_key(self) -> tuple | None:
        """Leaves with equal keys are computed in one engine call.

        ``None`` marks a leaf that computes on its own in ``_evaluate`` (a
        stochastic estimate, which cannot reuse the exact engine results).
        """
        return (id(self.u), self.argnums, self.coords, self.method, self.chunk_size)

    def forward(self, *inputs: Any) -> torch.Tensor:
        return evaluate(self, inputs)

    def _evaluate(self, inputs: tuple, shared: dict) -> torch.Tensor:
        return self._assemble(shared[self._share_key()])


def _frozen(spec: Any) -> Any:
    """A derivative spec as a hashable key: mappings (the spec, a combination's weights) as item tuples."""
    if isinstance(spec, Mapping):
        return tuple((key, _frozen(value)) for key, value in spec.items())
    return spec


def ranked_alike(request: Request, d: int) -> bool:
    """Whether auto ranks the engines for ``request`` the same whatever the output size.

    Compares one output with very many: no engine's cost falls as outputs are
    added and the Taylor engine's does not grow (``engines/choice.py``), so an
    engine ranked first at both ends is first in between.
    """
    return candidates("auto", request, d, 1) == candidates("auto", request, d, _MANY_OUTPUTS)


def evaluate(root: DifferentialOperator, inputs: tuple) -> Any:
    """Evaluate an operator expression with one engine call per group of leaves that share ``u``.

    In a sum, the terms that are partials of one network with constant weights
    (``Derivative(u, wrt="t")`` and ``-0.1 * Derivative(u, wrt="x", order=2)`` in Burgers' residual)
    are asked for as one :class:`Combination`, which the Taylor engine computes in fewer
    coefficients than its terms apart; the sum adds the other terms to it.
    """
    groups: dict[tuple, list[BuiltinOperator]] = {}
    callers: dict[tuple, BuiltinOperator] = {}  # per group, the leaf whose settings make the engine call
    sums: dict[int, tuple[list, list]] = {}
    for part in _parts(root, sums, callers):
        key = part._share_key() if isinstance(part, BuiltinOperator) else None
        if key is not None:
            groups.setdefault(key, []).append(part)
            callers.setdefault(key, part)
    shared: dict = {}
    for key, caller in callers.items():
        members = groups.get(key, [])
        combinations = frozenset(c for combined, _ in sums.values() for k, c in combined if k == key)

        def make_request(d: int, members: list[BuiltinOperator] = members, combinations=combinations) -> Request:
            request = Request(combinations=combinations)
            for member in members:
                request = request | member._request(d)
            return request

        shared[key] = caller._compute(inputs, make_request)
    shared.update((("sum", node), plan) for node, plan in sums.items())
    return root._evaluate(inputs, shared)


def _parts(node: DifferentialOperator, sums: dict, callers: dict) -> Iterator[DifferentialOperator]:
    """The leaves of ``node`` whose results the expression reads, after its sums are planned.

    A sum with two partials or more of one network among its terms, constant weights on them,
    is planned in ``sums`` as ``([(group key, combination), ..], the other terms)``
    (:func:`_planned_sum`); only the other terms are searched further.
    """
    summands = node._summands()
    planned = None if summands is None else _planned_sum(summands, callers)
    if planned is not None:
        sums[id(node)] = planned
        for term in planned[1]:
            yield from _parts(term, sums, callers)
        return
    children = getattr(node, "terms", None)
    if children is None:
        yield node
        return
    for child in children:
        yield from _parts(child, sums, callers)


def _planned_sum(summands: list[DifferentialOperator], callers: dict) -> tuple[list, list] | None:
    """``([(group key, combination), ..], the other terms)`` of a sum, or None if it combines nothing.

    A combination's first leaf is its group's caller if the group has none (its own partial is not
    asked for: that would take the direction the combination's first partials fold into).
    """
    linear: dict[tuple, list] = {}
    rest = []
    for term in summands:
        form = term._linear_form()
        keys = {leaf._share_key() for leaf, _ in form or ()}
        if form and len(keys) == 1 and None not in keys:
            linear.setdefault(keys.pop(), []).append((term, form))
        else:
            rest.append(term)
    combined = []
    for key, items in linear.items():
        leaves = [pair for _, form in items for pair in form]
        if len(leaves) < 2:
            rest += [term for term, _ in items]
            continue
        weights: dict = {}
        for leaf, weight in leaves:
            weights[leaf.index] = weights.get(leaf.index, 0.0) + weight
        combined.append((key, Combination.of(weights)))
        callers.setdefault(key, leaves[0][0])
    return (combined, rest) if combined else None


def _reasons(failures: list[tuple[str, Exception]]) -> str:
    """``"'taylor' failed: ...; 'func' failed: ..."``.

    A list and ``str(error)``, not a generator and ``f"{error}"``: compiled, dynamo traces only those.
    """
    return "; ".join([f"{engine!r} failed: {str(error)}" for engine, error in failures])
