"""Derivative engines behind one interface (see :mod:`diffops.engines.base`).

``ENGINES`` is the table the operators pick from; ``candidates`` is the rule
``method="auto"`` follows: the engines to try, fastest first.
"""

from __future__ import annotations

from .autograd import AutogradEngine
from .base import Engine, EngineUnsupported, Request
from .func import FuncEngine
from .taylor import TaylorEngine

ENGINES: dict[str, Engine] = {
    "taylor": TaylorEngine(),
    "func": FuncEngine(),
    "autograd": AutogradEngine(),
}
METHODS = ("auto", *ENGINES)


def candidates(method: str, request: Request, num_coordinates: int) -> tuple[str, ...]:
    """Engine names to try in order for ``method``; ``auto`` falls back down the list."""
    if method != "auto":
        return (method,)
    if taylor_is_faster(request, num_coordinates):
        return ("taylor", "func", "autograd")
    return ("func", "autograd")


def taylor_is_faster(request: Request, d: int) -> bool:
    """Whether the Taylor engine beats torch.func on ``request`` for ``d`` coordinates.

    Measured on a training step (operator, MSE loss, backward to the parameters)
    of a tanh MLP with 4 hidden layers of 128, batch 256, one CPU thread, scalar
    output; milliseconds, taylor / func:

    * Laplacian, d = 1, 2, 4, 8, 16, 64: 10/28, 11/41, 14/52, 25/87, 48/161,
      185/738; after the order-2 rule and the shared first layer (benchmarks/
      bench_taylor.py, against ``vmap(hessian)``), d = 2, 16, 64: 8.7/20.9,
      27/63, 102/226. One collapsed pass of d + 2 vectors per layer: Taylor at
      any d, and a Jacobian asked with it comes from the same pass.
    * Partials, d = 2: d^2/dx^2 10/24, d^4/dx^4 21/187, d^6/dx^6 35/1638,
      d^2/dxdy 17/23, d^3/dx^2dy 36/61, d^4/dx^2dy^2 73/179, the three partials
      of a biharmonic 75/558: Taylor always.
    * Hessian, d = 1, 2, 4, 8: 16/49, 30/40, 81/57, 243/72. The Taylor Hessian
      needs d (d + 1) / 2 directions, torch.func's forward-over-reverse d: Taylor
      up to d = 2.
    * Jacobian, d = 1, 2, 4, 16: 8/15, 9/9, 16/9, 42/9. One reverse pass beats d
      forward directions for a scalar output: Taylor only at d = 1.
    """
    if "laplacian" in request.full and "hessian" not in request.full:
        return True
    if "hessian" in request.full:
        return d <= 2
    if "jacobian" in request.full:
        return d == 1
    return True


__all__ = ["ENGINES", "METHODS", "Engine", "EngineUnsupported", "Request", "candidates"]
