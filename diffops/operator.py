"""``DifferentialOperator``: the base class of every operator and expression.

An operator holds the network ``u`` as a submodule, checks its settings once
at construction and its inputs once per call, then hands the derivative work
to an engine picked from :data:`diffops.engines.ENGINES`.  Built-in operators
state what they need as a :class:`~diffops.engines.Request`, so an expression
of several operators on the same ``u`` is computed in one engine call.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._coords import check_coords, check_range, derivative_spec
from ._inputs import check_argnums, flatten_inputs
from .engines import ENGINES, METHODS, EngineUnsupported, Request, candidates


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
        # output components per sample, learnt from the last call: the auto rule weighs it
        self._outputs = 1

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
        ``(0,)`` or ``"x"`` for a first partial, ``("x", "x", "t")`` for a mixed one.
        Returns ``{name: tensor shaped like u(*inputs)}``.
        """
        name = type(self).__name__
        if self.u is None:
            raise TypeError(f"{name}: derivatives() needs the network u given to the constructor")
        indices = derivative_spec(name, spec, named, self.coords)
        computed = self._compute(inputs, lambda d: Request(frozenset(indices.values())))
        return {key: computed.results[index] for key, index in indices.items()}

    # -- the engine call --------------------------------------------------------------

    def _compute(self, inputs: tuple, make_request: Callable[[int], Request]) -> Computed:
        """Validate ``inputs``, run the engines on ``make_request(d)``, return unflattened results."""
        name = type(self).__name__
        rows = flatten_inputs(name, inputs, self.argnums)
        d = rows.num_coordinates
        request = make_request(d).bind(inputs, rows.x)  # directions that depend on the inputs, evaluated once
        for index in request.partials:
            check_range(name, index, d, self.coords)
        check_range(name, (), d, self.coords)
        work = lambda engine, rows_slice, x, fn: engine.compute(fn, x, request.rows(rows_slice))  # noqa: E731
        results = self._run_engines(rows, candidates(self.method, request, d, self._outputs), work)
        computed = Computed(results, rows.batch_shape, d)
        self._outputs = math.prod(computed.out_shape)
        return computed

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
        outputs = self._outputs * directions.shape[0]
        engines = candidates(self.method, request, rows.num_coordinates, outputs)
        return self._run_engines(rows, engines, work)["directional"]

    def _run_engines(self, rows, engine_names: tuple[str, ...], work: Callable) -> dict:
        """``work(engine, rows_slice, x_rows, fn) -> {key: (n, ...)}`` over chunks, with fallback.

        Returns the chunks' results concatenated and unflattened to ``(*batch, ...)``.
        """
        name = type(self).__name__
        tried = [n for n in engine_names if n not in self._failed_engines] or list(engine_names[-1:])
        failures: list[tuple[str, Exception]] = []
        for position, engine_name in enumerate(tried):
            engine = ENGINES[engine_name]
            try:
                chunks = [work(engine, *chunk) for chunk in rows.chunks(self.u, self.chunk_size)]
            except torch.OutOfMemoryError:
                raise
            except (EngineUnsupported, RuntimeError, NotImplementedError) as error:
                failures.append((engine_name, error))
                if position + 1 < len(tried):
                    continue
                if self.method != "auto":
                    kind = EngineUnsupported if isinstance(error, EngineUnsupported) else RuntimeError
                    raise kind(
                        f"{name}: method={self.method!r} cannot differentiate this network: {error}. "
                        "method='autograd' handles any network that torch.autograd can differentiate"
                    ) from error
                raise
            if failures:
                self._failed_engines.update(failed for failed, _ in failures)
                reasons = "; ".join(f"{failed!r} failed: {error}" for failed, error in failures)
                warnings.warn(f"{name}: method='auto' uses {engine_name!r} because {reasons}", stacklevel=4)
            merged = {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}
            if not torch.is_grad_enabled():
                merged = {key: value.detach() for key, value in merged.items()}
            return {key: rows.unflatten(value) for key, value in merged.items()}
        raise RuntimeError(f"{name}: no engine left to try")  # pragma: no cover

    # -- expressions ------------------------------------------------------------------

    def _leaves(self) -> Iterator[DifferentialOperator]:
        """The operators an expression is made of (itself, for a leaf)."""
        yield self

    def _evaluate(self, inputs: tuple, shared: dict) -> Any:
        """This operator's value, reusing the engine results in ``shared`` where it can."""
        return self(*inputs)

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
        from .algebra import Scaled, is_scalar

        if not is_scalar(other):
            return NotImplemented
        return Scaled(1.0 / other, self)


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


def evaluate(root: DifferentialOperator, inputs: tuple) -> Any:
    """Evaluate an operator expression with one engine call per group of leaves that share ``u``."""
    groups: dict[tuple, list[BuiltinOperator]] = {}
    for leaf in root._leaves():
        key = leaf._share_key() if isinstance(leaf, BuiltinOperator) else None
        if key is not None:
            groups.setdefault(key, []).append(leaf)
    shared = {}
    for key, members in groups.items():

        def make_request(d: int, members: list[BuiltinOperator] = members) -> Request:
            request = Request()
            for member in members:
                request = request | member._request(d)
            return request

        shared[key] = members[0]._compute(inputs, make_request)
    return root._evaluate(inputs, shared)
