"""How ``method="auto"`` ranks the engines: a cost model fitted to measurements.

Costs are in units of about one first-order backward pass through the network.

* Taylor: ``2.3 + 1.2 * sum_k R_k (1 + (k - 1) / 4)``, where ``R_k`` directions
  reach order k (``interpolation.truncate``: each direction is carried only to
  the order it is needed to, and a fused layer costs about a backward pass per
  coefficient, a little more at higher orders; a linear combination's first
  partials need no direction of their own, ``folding.fold``).  Independent of the output
  size.  The collapsed Laplacian beat every other engine at every d measured
  (d = 1 to 64, scalar and vector outputs), so it costs nothing here.
* Nested autograd: ``2.3 + M * sum(3^len(p))`` over the distinct gradients it
  takes (one per prefix ``p`` of each multi-index; the Hessian and the Laplacian
  take ``()`` and every ``(i,)``); ``M`` is the number of output components,
  differentiated one at a time.
* torch.func: about 1.6 times nested autograd's cost for ``min(M, d)`` output
  components (it vmaps over the smaller of the two; the per-op overhead of the
  transforms dominates on a CPU at these sizes).

Under ``torch.compile`` nested autograd cannot run (double backward is not
supported by AOT autograd, and ``fullgraph=True`` refuses ``autograd.grad``), and
the Taylor engine traces to one graph, so there the Taylor engine comes first,
then torch.func, whatever the costs.

Measured with ``benchmarks/residuals.py --threads 1 --nets raissi modified
--compile`` (2026-12-03; the residuals' linear parts asked for as one combination,
:mod:`.taylor.folding`): training steps, float32, batch 2,000, one CPU thread of
an AMD EPYC, ms as taylor / autograd / func (the modified MLP's beam not run):

================  =========================  ============================
residual          8 x 20 tanh                4 x 128 modified MLP
================  =========================  ============================
burgers           6.52 / 11.63 / 31.56       68.88 / 124.19 / 232.01
heat              14.05 / 23.87 / 85.66      108.87 / 184.52 / 439.11
wave              13.53 / 24.12 / 69.36      139.69 / 260.28 / 669.09
allen_cahn        7.66 / 14.74 / 35.24       66.32 / 122.16 / 272.20
poisson2d         10.88 / 20.46 / 52.53      110.65 / 206.49 / 384.65
poisson3d         12.35 / 22.85 / 70.82      145.73 / 247.35 / 547.55
navier_stokes     10.95 / 61.38 / 62.69      112.91 / 508.88 / 473.35
kdv               11.14 / 39.36 / 95.13      92.78 / 295.11 / 581.19
beam              12.71 / 81.53 / 194.51
================  =========================  ============================

The same code timed twice differs by up to 20 % on that machine.  Taylor was
the fastest engine on every residual of both networks (1.7-6.4x ahead of nested
autograd on 8 x 20, 1.7-4.5x on the modified MLP; the 4 x 64 tanh table agrees),
and auto ran it on all of them.  Before the linear parts were combined, the
modified MLP's second-order residuals were 1.3-2x apart (and before products of
jets ran as one node, nested autograd was 1.1-1.6x faster on five of them): at
width 128 a training step is mostly matrix products, of which Taylor mode at
order two did as many as nested autograd, and the combination's fold takes some
away.  The model does not see the network, but it rates those within
1.5x (:data:`CLOSE`), so auto times them (``diffops._timing``) and runs the
faster; third and fourth orders and Navier-Stokes, 1.35x apart or more the other
way, go to Taylor at every width without timing.  The operator cases of
the earlier fit (``--cases operators``) keep their ranking: first partials,
Jacobians of scalar networks, Hessians and low-order mixed partials of one
output go to nested autograd, the Laplacian and high orders to Taylor.
"""

from __future__ import annotations

import torch

from .base import Request
from .taylor import requested_partials
from .taylor.folding import fold


def taylor_cost(request: Request, d: int) -> float:
    partials = requested_partials(request, d)
    if "laplacian" in request.full and "hessian" not in request.full:
        partials = {index for index in partials if len(index) > 1}  # first partials ride on the collapsed pass
        if not partials and not request.combinations:
            return 0.0
    counts = fold(frozenset(partials), request.combinations, d).truncation.counts  # combinations folded
    return 2.3 + 1.2 * sum(r * (1 + (k - 1) / 4) for k, r in enumerate(counts, start=1))


def autograd_cost(request: Request, d: int, outputs: int) -> float:
    prefixes = {index[:k] for index in request.indices() for k in range(len(index))}
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


def costs(request: Request, d: int, outputs: int = 1) -> dict[str, float]:
    """Each engine's modelled cost for ``request`` on ``d`` coordinates and ``outputs`` components."""
    modelled = {
        "taylor": taylor_cost(request, d),
        "autograd": autograd_cost(request, d, outputs),
        "func": 1.6 * autograd_cost(request, d, min(outputs, d)),
    }
    if request.along:
        extra = along_costs(request, outputs)
        modelled = {name: cost + extra[name] for name, cost in modelled.items()}
    return modelled


# The cost model's resolution: two engines modelled within this factor of each other are too
# close to call from the request alone (the network's width and structure decide), so auto
# times them (see ``diffops._timing``).  The residuals it had to time: Burgers, heat, wave,
# Allen-Cahn and Poisson on the 4 x 128 modified MLP (modelled 1.0-1.2x apart; measured up to
# 1.8x the other way before products of jets ran as one node, 0.96-1.3x after, 1.3-2x since the
# gates were factored); those it ranked right were 1.35x apart or more (KdV, beam, Navier-Stokes).
CLOSE = 1.5


def ranked(request: Request, d: int, outputs: int = 1) -> tuple[str, ...]:
    """Engine names to try for ``request`` on ``d`` coordinates and ``outputs`` components: cheapest first."""
    if torch.compiler.is_compiling():  # only engines that compile, Taylor first (see the module docstring)
        return ("taylor", "func", "autograd")
    modelled = costs(request, d, outputs)
    fastest = min(modelled, key=modelled.get)
    # after the fastest, the fallback order of the API contract: torch.func, then nested autograd
    return (fastest, *(name for name in ("func", "autograd", "taylor") if name != fastest))


def too_close(request: Request, d: int, outputs: int = 1) -> tuple[str, ...]:
    """The engines whose modelled costs are within :data:`CLOSE` of the cheapest, cheapest first."""
    modelled = costs(request, d, outputs)
    cheapest = min(modelled.values())
    return tuple(sorted((name for name, cost in modelled.items() if cost <= CLOSE * cheapest), key=modelled.get))
