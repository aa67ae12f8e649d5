"""The built-in differential operators of the public API.

Shapes, for inputs ``(*batch, d)`` (the differentiated coordinates) and an
output ``u(x): (*batch, *out)``:

==================================  =============================
``Jacobian(u)(x)``                  ``(*batch, *out, d)``
``Gradient(u)(x)``                  ``(*batch, d)``, scalar ``u``
``Hessian(u)(x)``                   ``(*batch, *out, d, d)``
``Laplacian(u)(x)``                 ``(*batch, *out)``
``Laplacian(u, sigma=S)(x)``        ``(*batch, *out)``, ``S``: ``(d, r)`` or ``(*batch, d, r)``
``DirectionalDerivative(u, v)(x)``  ``(*batch, *out)``, ``v``: ``(d,)`` or ``(*batch, d)``
``Biharmonic(u)(x)``                ``(*batch, *out)``
``Derivative(u, wrt, order)(x)``    ``(*batch, *out)``
``Divergence(u)(x)``                ``(*batch, 1)``, ``out == (d,)``
``Curl(u)(x)``                      ``(*batch, 3)``, ``out == (3,)``, ``d == 3``
``Derivatives(u, **spec)(x)``       ``{name: (*batch, *out)}``
==================================  =============================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ._coords import combination_symbol, coordinate, derivative_spec, multi_index, partial_symbol
from ._fields import Field, batch_shape_of, columns
from .engines import Request
from .engines.base import Along
from .estimators import check_square_field, make_estimator
from .operator import BuiltinOperator, Computed, DifferentialOperator


class Jacobian(BuiltinOperator):
    """All first partials: ``(*batch, *out, d)``."""

    def _request(self, d: int) -> Request:
        return Request(full=frozenset({"jacobian"}))

    def _assemble(self, computed: Computed) -> torch.Tensor:
        return computed.results["jacobian"]

    def _symbol(self) -> str:
        return "J[u]"


class Gradient(BuiltinOperator):
    """First partials of a scalar-valued ``u`` (per-sample output ``()`` or ``(1,)``): ``(*batch, d)``."""

    def _request(self, d: int) -> Request:
        return Request(full=frozenset({"jacobian"}))

    def _assemble(self, computed: Computed) -> torch.Tensor:
        if math.prod(computed.out_shape) != 1:
            raise ValueError(
                f"Gradient: u must be scalar-valued (per-sample output () or (1,)), but its per-sample "
                f"output has shape {tuple(computed.out_shape)}; use Jacobian for a vector-valued u"
            )
        return computed.results["jacobian"].reshape(*computed.batch_shape, computed.d)

    def _symbol(self) -> str:
        return "∇u"


class Hessian(BuiltinOperator):
    """All second partials: ``(*batch, *out, d, d)``."""

    def _request(self, d: int) -> Request:
        return Request(full=frozenset({"hessian"}))

    def _assemble(self, computed: Computed) -> torch.Tensor:
        return computed.results["hessian"]

    def _symbol(self) -> str:
        return "H[u]"


class _Estimable(BuiltinOperator):
    """A built-in operator that may return an unbiased stochastic estimate instead (exact by default).

    ``estimator``, ``samples``, ``generator`` and ``distribution`` are described
    in :mod:`diffops.estimators`.  An estimate draws its own directions, so it is
    computed apart from the shared engine call of an expression.
    """

    def __init__(
        self,
        u: Callable,
        /,
        *,
        estimator: str | None = None,
        samples: int | None = None,
        generator: torch.Generator | None = None,
        distribution: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(u, **options)
        self.estimator = make_estimator(type(self).__name__, estimator, samples, generator, distribution)

    def _share_key(self) -> tuple | None:
        return super()._share_key() if self.estimator is None else None

    def _evaluate(self, inputs: tuple, shared: dict) -> torch.Tensor:
        if self.estimator is None:
            return super()._evaluate(inputs, shared)
        return self.estimator.estimate(self, inputs)

    def extra_repr(self) -> str:
        return "" if self.estimator is None else f"estimator={self.estimator!r}"


class Laplacian(_Estimable):
    """Sum of the pure second partials, per output component: shaped like ``u(x)``.

    ``Laplacian(u, estimator="hutchinson", samples=S)`` (Rademacher or, with
    ``distribution="gaussian"``, Gaussian directions) or ``estimator="coordinates"``
    returns an unbiased estimate at the cost of S second-order directional passes.

    ``Laplacian(u, sigma=S)`` is the weighted Laplacian ``tr(S S^T H)`` (``H`` the
    Hessian of each output component): ``S`` is ``(d, r)``, ``(*batch, d, r)`` or a
    callable of the operator's inputs returning ``(*batch, d, r)``, evaluated at the
    base point (derivatives act on ``u`` only; the result is differentiable with
    respect to ``S``).  It is the sum of the second directional derivatives along
    the r columns of ``S``: one collapsed Taylor pass of r + 2 vectors a layer.
    With ``estimator="hutchinson"`` the directions are ``S z``, ``z`` of size r.
    """

    def __init__(self, u: Callable, /, *, sigma: Any = None, **options: Any) -> None:
        super().__init__(u, **options)
        self.sigma = None if sigma is None else Field(self, "S", sigma, "Laplacian", "sigma", matrix=True)
        if self.sigma is not None and self.estimator is not None and self.estimator.name != "hutchinson":
            raise ValueError(
                f"Laplacian: estimator={self.estimator.name!r} samples coordinates, which a weighted Laplacian "
                "(sigma=S) does not have; use estimator='hutchinson' (directions S z) or None (exact)"
            )

    def sigma_rows(self, inputs: tuple, x: torch.Tensor) -> torch.Tensor:
        """``S`` at the base points ``x: (N, d)``: ``(N, d, r)``."""
        return self.sigma.rows(self, inputs, x, batch_shape_of(inputs, self.argnums))

    def _request(self, d: int) -> Request:
        if self.sigma is None:
            return Request(full=frozenset({"laplacian"}))
        make = lambda inputs, x: columns(self.sigma_rows(inputs, x))  # noqa: E731
        return Request(along=(Along(("laplacian", id(self)), 2, True, make),))

    def _assemble(self, computed: Computed) -> torch.Tensor:
        if self.sigma is None:
            return computed.results["laplacian"]
        return computed.results[("laplacian", id(self))]

    def _symbol(self) -> str:
        return "Δu" if self.sigma is None else f"tr({self.sigma.name}{self.sigma.name}ᵀ∇²u)"


class Biharmonic(_Estimable):
    """``Δ²u = sum_ij d^4u/dx_i^2 dx_j^2``, per output component: shaped like ``u(x)``.

    Exact from the d(d+1)/2 mixed partials ``(i, i, j, j)``; ``estimator="stde"``
    with ``samples=S`` averages S Gaussian fourth-order directional derivatives.
    """

    def _request(self, d: int) -> Request:
        return Request(frozenset((i, i, j, j) for i in range(d) for j in range(i, d)))

    def _assemble(self, computed: Computed) -> torch.Tensor:
        d, results = computed.d, computed.results
        # (i, i, j, j) stands for both orderings of i != j
        return sum((1 if i == j else 2) * results[(i, i, j, j)] for i in range(d) for j in range(i, d))

    def _symbol(self) -> str:
        return "Δ²u"


class Derivative(BuiltinOperator):
    """A k-th partial along one coordinate, or a mixed partial; shaped like ``u(x)``.

    ``Derivative(u, wrt=1, order=3)`` is d^3u/dx_1^3; ``Derivative(u, wrt=("x", "x", "t"),
    coords=("x", "t"))`` is d^3u/dx^2dt.  ``order=0`` is ``u`` itself.
    """

    def __init__(
        self,
        u: Callable,
        /,
        wrt: int | str | tuple = 0,
        order: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(u, **options)
        if isinstance(wrt, (tuple, list)):
            if order is not None and order != len(wrt):
                raise ValueError(
                    f"Derivative: order={order!r} disagrees with the mixed partial wrt={tuple(wrt)!r} of order "
                    f"{len(wrt)}; give either wrt=(i, j, ...) alone or wrt=i with order=k"
                )
            self.index = multi_index("Derivative", tuple(wrt), self.coords)
            return
        order = 1 if order is None else order
        if isinstance(order, bool) or not isinstance(order, int):
            raise TypeError(f"Derivative: order must be a non-negative int, got {order!r}")
        if order < 0:
            raise ValueError(f"Derivative: order must be a non-negative int, got {order}")
        self.index = (coordinate("Derivative", wrt, self.coords),) * order

    def _request(self, d: int) -> Request:
        return Request(frozenset({self.index}))

    def _assemble(self, computed: Computed) -> torch.Tensor:
        return computed.results[self.index]

    def _linear_form(self) -> list:
        return [(self, 1.0)]

    def _symbol(self) -> str:
        return partial_symbol(self.index, self.coords)


class DirectionalDerivative(BuiltinOperator):
    """``d^k/dt^k u(x + t v)`` at ``t = 0``, shaped like ``u(x)``: ``v·∇u`` for ``order=1``, ``v^T H v`` for 2.

    ``v`` is ``(d,)``, ``(*batch, d)`` or a callable of the operator's inputs
    returning ``(*batch, d)`` (a boundary normal, a drift field ``b(x)``).  It is
    evaluated at the base point ``x`` and held fixed: the derivatives act on ``u``
    only, and the result stays differentiable with respect to ``x`` through both
    ``u`` and ``v(x)``, and with respect to a learnable ``v``.  One Taylor pass
    along one direction, whatever d is.
    """

    def __init__(self, u: Callable, /, v: Any, order: int = 1, **options: Any) -> None:
        super().__init__(u, **options)
        if isinstance(order, bool) or not isinstance(order, int):
            raise TypeError(f"DirectionalDerivative: order must be a non-negative int, got {order!r}")
        if order < 0:
            raise ValueError(f"DirectionalDerivative: order must be a non-negative int, got {order}")
        self.order = order
        self.v = Field(self, "direction", v, "DirectionalDerivative", "v", matrix=False)

    def _request(self, d: int) -> Request:
        if self.order == 0:
            return Request(frozenset({()}))
        make = lambda inputs, x: columns(  # noqa: E731
            self.v.rows(self, inputs, x, batch_shape_of(inputs, self.argnums))
        )
        return Request(along=(Along(("directional", id(self)), self.order, True, make),))

    def _assemble(self, computed: Computed) -> torch.Tensor:
        return computed.results[()] if self.order == 0 else computed.results[("directional", id(self))]

    def _symbol(self) -> str:
        power = "" if self.order == 1 else str(self.order).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
        return "u" if self.order == 0 else f"({self.v.name}·∇){power}u"

    def extra_repr(self) -> str:
        return f"order={self.order}"


class Divergence(_Estimable):
    """``sum_i du_i/dx_i`` of a field with per-sample output ``(d,)``: ``(*batch, 1)``.

    ``Divergence(u, estimator="hutchinson", samples=S)`` averages ``v^T J v`` over S
    Rademacher (or Gaussian) directions: an unbiased estimate from S first-order
    directional derivatives instead of the d of the exact Jacobian.
    """

    def _request(self, d: int) -> Request:
        return Request(full=frozenset({"jacobian"}))

    def _assemble(self, computed: Computed) -> torch.Tensor:
        check_square_field(tuple(computed.out_shape), computed.d)
        return computed.results["jacobian"].diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)

    def _symbol(self) -> str:
        return "∇·u"


class Curl(BuiltinOperator):
    """Curl of a 3-D field (per-sample output ``(3,)``, ``d == 3``): ``(*batch, 3)``."""

    def _request(self, d: int) -> Request:
        return Request(full=frozenset({"jacobian"}))

    def _assemble(self, computed: Computed) -> torch.Tensor:
        if tuple(computed.out_shape) != (3,) or computed.d != 3:
            raise ValueError(
                f"Curl: u must be a 3-D field, with per-sample output (3,) and d=3 coordinates; got per-sample "
                f"output {tuple(computed.out_shape)} and d={computed.d}"
            )
        j = computed.results["jacobian"]  # j[..., i, k] = du_i/dx_k
        return torch.stack(
            [j[..., 2, 1] - j[..., 1, 2], j[..., 0, 2] - j[..., 2, 0], j[..., 1, 0] - j[..., 0, 1]], dim=-1
        )

    def _symbol(self) -> str:
        return "∇×u"


class Derivatives(DifferentialOperator):
    """Several named partials from one shared computation: ``{name: (*batch, *out)}``.

    ``Derivatives(u, u=(), u_x=(0,), u_xx=(0, 0), u_t=(1,))`` or
    ``Derivatives(u, {"u": (), "u_x": (0,)})``; ``()`` is the value itself.
    """

    def __init__(
        self,
        u: Callable,
        spec: Mapping[str, Any] | None = None,
        /,
        *,
        argnums: int | tuple[int, ...] = 0,
        coords: tuple[str, ...] | None = None,
        method: str = "auto",
        chunk_size: int | None = None,
        **named: Any,
    ) -> None:
        super().__init__(u, argnums=argnums, coords=coords, method=method, chunk_size=chunk_size)
        self.spec = derivative_spec("Derivatives", spec, named, self.coords)

    def forward(self, *inputs: Any) -> dict[str, torch.Tensor]:
        return self.derivatives(*inputs, spec=self.spec)

    def _symbol(self) -> str:
        symbol = lambda index: (  # noqa: E731
            partial_symbol(index, self.coords) if isinstance(index, tuple) else combination_symbol(index, self.coords)
        )
        parts = [f"{key}: {symbol(index)}" for key, index in self.spec.items()]
        return "{" + ", ".join(parts) + "}"


__all__ = [
    "Biharmonic",
    "Curl",
    "Derivative",
    "Derivatives",
    "DirectionalDerivative",
    "Divergence",
    "Gradient",
    "Hessian",
    "Jacobian",
    "Laplacian",
]
