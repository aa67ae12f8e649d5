"""Derivative engines behind one interface (see :mod:`diffops.engines.base`).

``ENGINES`` is the table the operators pick from; ``candidates`` is the rule
``method="auto"`` follows: the engines to try, fastest first.
"""

from __future__ import annotations

from torch._C._functorch import peek_interpreter_stack

from .autograd import AutogradEngine
from .base import Engine, EngineUnsupported, Request
from .choice import ranked
from .func import FuncEngine
from .taylor import TaylorEngine

ENGINES: dict[str, Engine] = {
    "taylor": TaylorEngine(),
    "func": FuncEngine(),
    "autograd": AutogradEngine(),
}
METHODS = ("auto", *ENGINES)


def candidates(method: str, request: Request, num_coordinates: int, outputs: int = 1) -> tuple[str, ...]:
    """Engine names to try in order for ``method``; ``auto`` falls back down the list.

    ``outputs`` is the number of output components per sample, where known.
    """
    if method != "auto":
        return (method,)
    engines = ranked(request, num_coordinates, outputs)
    if peek_interpreter_stack() is not None:
        # inside vmap/grad (e.g. parameter_jacobian) nested autograd cannot run: do not try it
        engines = tuple(name for name in engines if name != "autograd")
    return engines


__all__ = ["ENGINES", "METHODS", "Engine", "EngineUnsupported", "Request", "candidates"]
