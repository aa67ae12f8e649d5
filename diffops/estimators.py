"""Stochastic estimators of differential operators, for high-dimensional inputs.

An exact Laplacian costs d second-order passes, one per coordinate.  An
estimator averages S directional derivatives ``D_v^k u = d^k/dt^k u(x + t v)``
at ``t = 0`` instead, along random directions ``v`` whose moments make the
average unbiased:

==============  ===============  =====  =====================================================
operator        estimator        order  identity
==============  ===============  =====  =====================================================
``Laplacian``   ``hutchinson``   2      ``E[D_v^2 u] = tr H = Δu`` when ``E[v v^T] = I``
                                        (``distribution="rademacher"`` or ``"gaussian"``)
``Laplacian``   ``coordinates``  2      ``d/S sum_s d^2u/dx_{i_s}^2`` over S coordinates
                                        drawn without replacement
``Laplacian``   ``hutchinson``   2      ``E[D_v^2 u] = tr(S S^T H)`` for ``v = S z`` with
(``sigma=S``)                           ``E[z z^T] = I`` (``z`` of size r)
``Biharmonic``  ``stde``         4      ``E[D_v^4 u] = 3 Δ²u`` for Gaussian ``v``
                                        (Isserlis: ``E[v_i v_j v_k v_l] = δ_ij δ_kl + δ_ik δ_jl + δ_il δ_jk``)
``Divergence``  ``hutchinson``   1      ``E[v^T (D_v u)] = E[v^T J v] = tr J`` when ``E[v v^T] = I``
==============  ===============  =====  =====================================================

Each sample (row) gets its own S directions, drawn afresh at every call, so
the cost is S directional passes whatever d is (only the first layer of the
network sees the d-dimensional direction).  With Rademacher directions the
Hutchinson variance for one direction is ``2 (||H||_F^2 - sum_i H_ii^2)``,
below the Gaussian ``2 ||H||_F^2``.  For the divergence, with ``A = (J + J^T)/2``,
one Rademacher direction has variance ``2 (||A||_F^2 - sum_i A_ii^2)`` and a
Gaussian one ``2 ||A||_F^2``.

Directions come from ``generator`` (a ``torch.Generator``, or the global
generator when ``None``) on the generator's own device and are then moved to
the inputs' device, so a seeded CPU generator gives the same draws for CPU
and CUDA inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .engines.base import Along, Request

if TYPE_CHECKING:
    from .operator import DifferentialOperator


def rademacher(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """Independent ±1 entries."""
    if torch.compiler.is_compiling():  # randint wants sizes that are ints, and dynamic=True traces them as symbols
        return torch.empty(shape, dtype=dtype, device=device).bernoulli_(0.5, generator=generator) * 2 - 1
    bits = torch.randint(0, 2, shape, generator=generator, device=device)
    return bits.to(dtype) * 2 - 1


def gaussian(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """Independent standard normal entries: ``torch.randn``'s draws, filled in place, which compiles with
    ``dynamic=True`` (``randn`` wants sizes that are ints)."""
    return torch.empty(shape, dtype=dtype, device=device).normal_(generator=generator)


DISTRIBUTIONS = {"rademacher": rademacher, "gaussian": gaussian}


class Estimator:
    """Draws ``(S, N, d)`` directions and scales the mean of ``D_v^order u`` into an estimate.

    Subclasses set ``order``, ``distributions`` (the first is the default) and
    ``factor(d)``, so that ``E[factor(d) * D_v^order u]`` is the operator.
    """

    name: str
    order: int
    distributions: tuple[str, ...]

    def __init__(self, operator: str, samples: int, generator: torch.Generator | None, distribution: str) -> None:
        self.operator = operator
        self.samples = samples
        self.generator = generator
        self.distribution = distribution

    def factor(self, d: int) -> float:
        return 1.0

    def draw(self, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``shape = (S, N, d)`` directions on ``device``."""
        return DISTRIBUTIONS[self.distribution](shape, dtype, device, self.generator)

    def directions(self, x: torch.Tensor) -> torch.Tensor:
        """``(S, N, d)`` for ``x: (N, d)``, drawn on the generator's device and moved to ``x``'s."""
        device = x.device if self.generator is None else self.generator.device
        return self.draw((self.samples, *x.shape), x.dtype, device).to(x.device)

    def estimate(self, op: DifferentialOperator, inputs: tuple) -> torch.Tensor:
        """The estimate of ``op``'s operator at ``inputs``: shaped like ``u(*inputs)``."""
        along = op._directional(inputs, self.directions, self.order)  # (*batch, S, *out)
        selected = [inputs[a] for a in op.argnums]
        d = sum(x.shape[-1] for x in selected)
        return self.factor(d) * along.mean(dim=selected[0].dim() - 1)

    def __repr__(self) -> str:
        return f"{self.name}(samples={self.samples}, distribution={self.distribution!r})"


class Hutchinson(Estimator):
    """``mean_s D_{v_s}^2 u`` with ``E[v v^T] = I``: the Laplacian (trace of the Hessian).

    For a weighted Laplacian (``sigma=S``) the directions are ``v = S z`` with
    ``z`` of size r, so ``E[v v^T] = S S^T``; their second derivatives are summed
    in one collapsed pass, with ``S`` held fixed as in the exact operator.
    """

    name = "hutchinson"
    order = 2
    distributions = ("rademacher", "gaussian")

    def estimate(self, op: DifferentialOperator, inputs: tuple) -> torch.Tensor:
        if getattr(op, "sigma", None) is None:
            return super().estimate(op, inputs)

        def make(inputs: tuple, x: torch.Tensor) -> torch.Tensor:
            s = op.sigma_rows(inputs, x)  # (N, d, r)
            device = x.device if self.generator is None else self.generator.device
            z = self.draw((self.samples, s.shape[0], s.shape[2]), x.dtype, device).to(x.device)
            return torch.einsum("ndr,snr->snd", s, z)

        along = Along(("hutchinson", id(op)), self.order, True, make)
        computed = op._compute(inputs, lambda d: Request(along=(along,)))
        return computed.results[along.key] / self.samples


class DivergenceHutchinson(Estimator):
    """``mean_s v_s^T (D_{v_s} u)`` with ``E[v v^T] = I``: the divergence (trace of the Jacobian)."""

    name = "hutchinson"
    order = 1
    distributions = ("rademacher", "gaussian")

    def estimate(self, op: DifferentialOperator, inputs: tuple) -> torch.Tensor:
        drawn = []

        def make(x: torch.Tensor) -> torch.Tensor:
            drawn.append(self.directions(x))
            return drawn[-1]

        along = op._directional(inputs, make, self.order)  # (*batch, S, *out)
        batch_shape = along.shape[: inputs[op.argnums[0]].dim() - 1]
        v = drawn[0].movedim(0, 1).reshape(*batch_shape, *drawn[0].shape[::2])  # (*batch, S, d)
        check_square_field(tuple(along.shape[len(batch_shape) + 1 :]), v.shape[-1])
        return (along * v).sum(-1).mean(-1, keepdim=True)


class SampledCoordinates(Estimator):
    """``d/S sum_s d^2u/dx_{i_s}^2`` over S distinct coordinates per sample: the Laplacian.

    Exact when ``samples == d``; the variance comes from how unequal the pure
    second partials are, not from cross terms as in Hutchinson's.
    """

    name = "coordinates"
    order = 2
    distributions = ("coordinate",)

    def factor(self, d: int) -> float:
        # the mean over S coordinates, times d, is d/S times their sum
        return float(d)

    def draw(self, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        s, n, d = shape
        if s > d:
            raise ValueError(
                f"{self.operator}: estimator='coordinates' draws samples={s} distinct coordinates, but the input "
                f"has only d={d}; use samples <= d (samples == d is the exact Laplacian)"
            )
        chosen = torch.multinomial(torch.ones(n, d, device=device), s, replacement=False, generator=self.generator)
        # a comparison, not an in-place scatter, so that the draw also runs under vmap
        return (chosen.T.unsqueeze(-1) == torch.arange(d, device=device)).to(dtype)


class GaussianQuartic(Estimator):
    """``mean_s D_{v_s}^4 u / 3`` with Gaussian ``v``: the biharmonic ``Δ²u`` (STDE's fourth-order jet)."""

    name = "stde"
    order = 4
    distributions = ("gaussian",)

    def factor(self, d: int) -> float:
        return 1.0 / 3.0


def check_square_field(out_shape: tuple, d: int) -> None:
    """``Divergence`` needs a field with per-sample output ``(d,)``."""
    if out_shape != (d,):
        raise ValueError(
            f"Divergence: u must be a square field, with per-sample output ({d},) for d={d} "
            f"coordinates, but its per-sample output has shape {out_shape}"
        )


ESTIMATORS: dict[str, dict[str, type[Estimator]]] = {
    "Laplacian": {"hutchinson": Hutchinson, "coordinates": SampledCoordinates},
    "Biharmonic": {"stde": GaussianQuartic},
    "Divergence": {"hutchinson": DivergenceHutchinson},
}


def make_estimator(
    operator: str, estimator: Any, samples: Any, generator: Any, distribution: Any
) -> Estimator | None:
    """Validate an operator's estimator settings; ``None`` for the exact operator."""
    table = ESTIMATORS[operator]
    if estimator is None:
        given = {"samples": samples, "generator": generator, "distribution": distribution}
        stray = [key for key, value in given.items() if value is not None]
        if stray:
            raise ValueError(
                f"{operator}: {', '.join(stray)} only apply to a stochastic estimate, but estimator=None (exact); "
                f"choose an estimator from {tuple(table)}"
            )
        return None
    if estimator not in table:
        raise ValueError(f"{operator}: estimator must be None (exact) or one of {tuple(table)}, got {estimator!r}")
    kind = table[estimator]
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise TypeError(f"{operator}: estimator={estimator!r} needs samples=S, a positive int; got {samples!r}")
    if samples < 1:
        raise ValueError(f"{operator}: samples must be a positive int, got {samples}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{operator}: generator must be a torch.Generator or None, got {type(generator).__name__}; "
            "for a seed use torch.Generator().manual_seed(seed)"
        )
    distribution = kind.distributions[0] if distribution is None else distribution
    if distribution not in kind.distributions:
        raise ValueError(
            f"{operator}: estimator={estimator!r} draws {' or '.join(map(repr, kind.distributions))} directions, "
            f"got distribution={distribution!r}"
        )
    return kind(operator, samples, generator, distribution)
