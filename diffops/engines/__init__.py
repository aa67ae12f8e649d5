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
    return ("func", "autograd")


__all__ = ["ENGINES", "METHODS", "Engine", "EngineUnsupported", "Request", "candidates"]
