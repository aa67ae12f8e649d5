"""Whether an engine's result can be differentiated once more, found once per network, engine and request.

A training step differentiates the operator's result with respect to the
parameters, and some of PyTorch's rules fail only there, after the engine has
answered: the derivative of nested autograd's first derivative through
``cdist`` or ``pdist`` (their backward has no derivative upstream), forward-mode
rules that modify a tensor their backward needs.  ``auto`` returned such a
result, and the user met the error at ``loss.backward()``, where another engine
(Taylor mode, which writes ``cdist`` with its own rules) could have answered.

So the first result of each engine for each request of a network is
differentiated once, before it is returned, with respect to every leaf it
depends on (the parameters, an input that requires grad): one backward pass
that keeps the graph for the user's.  Where that fails, the engine refuses,
quoting PyTorch, and ``auto`` moves on.  Gradients are not accumulated into
``.grad``; hooks on the leaves' gradients (``Tensor.register_hook``) see that
pass as they see any ``torch.autograd.grad``.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable

import torch

from ._inputs import DEVICE_ERRORS
from ._state import remembered
from .engines.base import graph_nodes

# per network, per (engine, request): why the backward fails, or None; kept as long as the network lives
_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def backward_failure(u: object, engine: str, request: Hashable, results: dict) -> str | None:
    """PyTorch's error where the gradients of ``results`` fail, or None; found once per ``u``, engine and request.

    ``results``: ``{key: tensor}`` as an engine returns them.  Not asked (None) where
    nothing is differentiated: gradients off, no result that requires grad, a
    torch.func transform (the outer transform differentiates), torch.compile (the
    compiler traces the backward with the step and reports its own errors).
    """
    if not torch.is_grad_enabled() or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return None
    outputs = [value for value in results.values() if isinstance(value, torch.Tensor) and value.requires_grad]
    if not outputs:
        return None
    return remembered(_FOUND, u, (engine, request), lambda: _probe(outputs))


def _probe(outputs: list[torch.Tensor]) -> str | None:
    leaves = _leaves(outputs)
    if not leaves:
        return None
    try:
        torch.autograd.grad(
            outputs, leaves, [torch.ones_like(output) for output in outputs], retain_graph=True, allow_unused=True
        )
    except DEVICE_ERRORS:
        raise
    except (RuntimeError, NotImplementedError) as error:
        return str(error).splitlines()[0]
    return None


def _leaves(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors the gradients of ``outputs`` accumulate into: the ``variable`` of each ``AccumulateGrad`` node."""
    return [node.variable for node in graph_nodes(outputs) if getattr(node, "variable", None) is not None]
