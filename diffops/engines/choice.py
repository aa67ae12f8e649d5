"""How ``method="auto"`` ranks the engines: a cost model fitted to measurements.

Costs are in units of about one first-order backward pass through the network.

* Taylor: ``2.3 + 1.2 * sum_k R_k (1 + (k - 1) / 4)``, where ``R_k`` directions
  reach order k (``interpolation.truncate``: each direction is carried only to
  the order it is needed to, and a fused layer costs about a backward pass per
  coefficient, a little more at higher orders).  Independent of the output
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

Measured with ``benchmarks/auto_rule.py --threads 1`` (training steps, float32,
one CPU thread of a shared AMD EPYC; ms as taylor / autograd / func, and the
pick): FIT_TABLE
"""

from __future__ import annotations

import torch

from .base import Request
from .taylor import requested_partials
from .taylor.interpolation import truncate


def taylor_cost(request: Request, d: int) -> float:
    partials = requested_partials(request, d)
    if "laplacian" in request.full and "hessian" not in request.full:
        partials = {index for index in partials if len(index) > 1}  # first partials ride on the collapsed pass
        if not partials:
            return 0.0
    counts = truncate(frozenset(partials), d).counts
    return 2.3 + 1.2 * sum(r * (1 + (k - 1) / 4) for k, r in enumerate(counts, start=1))


def autograd_cost(request: Request, d: int, outputs: int) -> float:
    prefixes = {index[:k] for index in request.partials for k in range(len(index))}
    if "jacobian" in request.full:
        prefixes.add(())
    if request.full & {"hessian", "laplacian"}:
        prefixes |= {(), *((i,) for i in range(d))}
    return 2.3 + outputs * sum(3 ** len(prefix) for prefix in prefixes)


def ranked(request: Request, d: int, outputs: int = 1) -> tuple[str, ...]:
    """Engine names to try for ``request`` on ``d`` coordinates and ``outputs`` components: cheapest first."""
    if torch.compiler.is_compiling():  # only engines that compile, Taylor first (see the module docstring)
        return ("taylor", "func", "autograd")
    costs = {
        "taylor": taylor_cost(request, d),
        "autograd": autograd_cost(request, d, outputs),
        "func": 1.6 * autograd_cost(request, d, min(outputs, d)),
    }
    fastest = min(costs, key=costs.get)
    # after the fastest, the fallback order of the API contract: torch.func, then nested autograd
    return (fastest, *(name for name in ("func", "autograd", "taylor") if name != fastest))
