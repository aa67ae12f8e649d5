"""How ``method="auto"`` ranks the engines: a cost model fitted to measurements.

Costs are in units of one first-order backward pass through the network.  On a
training step (operator, MSE loss, backward to the parameters) of tanh MLPs
(4 x 128, batch 256, and 4 x 64, batch 1024; one CPU thread) the time of each
engine followed these models to within about 20 %:

* Taylor: ``2.3 + 0.7 * R * (K^2 + 1)`` for R univariate jets of order K (the
  directions of ``interpolation.interpolate``), independent of the output size.
  The collapsed Laplacian beat every other engine at every d measured (d = 1 to
  64, scalar and vector outputs), so it costs nothing here.
* Nested autograd: ``2.3 + M * sum(3^len(p))`` over the distinct gradients it
  takes (one per prefix ``p`` of each multi-index; the Hessian and the Laplacian
  take ``()`` and every ``(i,)``); ``M`` is the number of output components,
  differentiated one at a time.
* torch.func: about 1.6 times nested autograd's cost for ``min(M, d)`` output
  components (it vmaps over the smaller of the two; the per-op overhead of the
  transforms dominates on a CPU at these sizes).

Measured with ``benchmarks/auto_rule.py --threads 1``, ms (taylor / autograd / func),
4 x 128, batch 256, d = 2 unless said: du/dx 4.5 / 3.4 / 6.1; d2u/dx2 6.2 / 7.0 / 16.3;
d2u/dxdy 11.8 / 6.8 / 15.8; d3u/dx2dy 14.5 / 11.8 / 34.9; {u, u_x, u_xx, u_t} 7.0 / 5.5 / 16.3;
Jacobian d=16 21.9 / 3.4 / 4.5; Jacobian d=4 with 8 outputs 7.4 / 14.0 / 11.5;
Hessian d=4 32.2 / 17.0 / 22.3; Hessian d=16 438 / 62.4 / 59.2 (a tie between the two);
Laplacian d=16 with 3 outputs 21.0 / 203 / 103.
4 x 64, batch 1024, d = 1, d^k u/dx^k for k = 1..6: taylor 4.5, 8.2, 9.2, 10.8,
16.0, 18.4; autograd 3.8, 8.6, 20.5, 65.9, 219, 591.  Since the Taylor engine's
backward runs through the series of f' (``taylor.rules.elementwise``), its cost grows more
slowly in K than the model says; the model still ranks it first wherever it is.
"""

from __future__ import annotations

from .base import Request
from .taylor import interpolate, requested_partials


def taylor_cost(request: Request, d: int) -> float:
    partials = requested_partials(request, d)
    if "laplacian" in request.full and "hessian" not in request.full:
        partials = {index for index in partials if len(index) > 1}  # first partials ride on the collapsed pass
        if not partials:
            return 0.0
    plan = interpolate(frozenset(partials), d)
    return 2.3 + 0.7 * len(plan.directions) * (plan.order**2 + 1)


def autograd_cost(request: Request, d: int, outputs: int) -> float:
    prefixes = {index[:k] for index in request.partials for k in range(len(index))}
    if "jacobian" in request.full:
        prefixes.add(())
    if request.full & {"hessian", "laplacian"}:
        prefixes |= {(), *((i,) for i in range(d))}
    return 2.3 + outputs * sum(3 ** len(prefix) for prefix in prefixes)


def along_costs(request: Request, outputs: int) -> dict[str, float]:
    """Each engine's extra cost for the directional requests (``Request.along``): R directions, order K.

    Fitted to ``benchmarks/bench_weighted.py`` (part 3: tanh MLP 4 x 128, batch 256, d = 16, a
    training step; one CPU thread on a shared AMD EPYC, so the unit is ~3 ms there), ms
    taylor / func / autograd: (v·∇)u 9.5 / 25.6 / 14.2; (v·∇)²u 25.1 / 105 / 30.8;
    tr(SSᵀ∇²u) r=1 21.7 / 114 / 47.8; r=2 48.5 / 137 / 79.9; r=8 115 / 302 / 212.
    Taylor mode costs about ``2.2 K R`` (a collapsed sum costs no more than R single jets),
    nested autograd in ``t`` (one backward, then R (K - 1) more per output component) about
    ``M R 3^K``, torch.func's vmapped nested jvp about ``10 + 1.2 R 3^K``: Taylor ranks first
    in every case measured.
    """
    costs = dict.fromkeys(("taylor", "func", "autograd"), 0.0)
    for item in request.along:
        r, k = (1 if item.directions is None else item.directions.shape[0]), item.order  # unbound: one
        costs["taylor"] += 2.2 * k * r
        costs["autograd"] += outputs * r * 3**k
        costs["func"] += 10 + 1.2 * r * 3**k
    return costs


def ranked(request: Request, d: int, outputs: int = 1) -> tuple[str, ...]:
    """Engine names to try for ``request`` on ``d`` coordinates and ``outputs`` components: cheapest first."""
    costs = {
        "taylor": taylor_cost(request, d),
        "autograd": autograd_cost(request, d, outputs),
        "func": 1.6 * autograd_cost(request, d, min(outputs, d)),
    }
    if request.along:
        extra = along_costs(request, outputs)
        costs = {name: cost + extra[name] for name, cost in costs.items()}
    fastest = min(costs, key=costs.get)
    # after the fastest, the fallback order of the API contract: torch.func, then nested autograd
    return (fastest, *(name for name in ("func", "autograd", "taylor") if name != fastest))
