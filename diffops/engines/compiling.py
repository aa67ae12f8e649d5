"""Workarounds for four torch.compile defects that break compiled derivatives.

* Forward-mode rules stand in ``aten::_efficientzerotensor`` for the tangent of a
  tensor that has none (a layer's weight under ``jvp``).  Inductor runs that op
  as an eager fallback, gets a ``ZeroTensor`` back and may later reuse its
  buffer as the ``out=`` of a matrix product, which raises ``ZeroTensors are
  immutable`` in the backward pass of a compiled training step.  Decomposing
  the op into ``torch.zeros`` gives inductor an ordinary buffer with the same
  values (:func:`materialise_zero_tensors`, for the ``func`` engine).
* ``F.tanh``, ``F.sigmoid``, ``F.hardswish`` and ``F.hardsigmoid`` are missing
  from PyTorch's overridable functions, so dynamo puts them in the graph as they
  are instead of handing them to an argument's ``__torch_function__``: on a jet
  (the Taylor engine's input) compiling failed with "Failed to convert
  args/kwargs to proxy", under ``auto`` too, since dynamo stopped before any
  engine could refuse.  Eagerly they reach the jet (``F.tanh`` as the
  ``Tensor.tanh`` it calls, the hard ones through their own torch-function
  check); :func:`dispatch_functionals` adds them to dynamo's set, which changes
  nothing for a plain tensor (it has no ``__torch_function__`` of its own).
* Dynamo traces ``a @ b`` between two objects that are not tensors only where
  its table of binary operators has an entry, and ``matmul`` has none (it has
  ``+``, ``*`` and the rest): a product of two jets (a hand-written attention,
  ``q @ k.mT``) failed with "Failed to trace builtin operator `matmul`".
  :func:`trace_object_matmul` adds the entry the others have, calling
  ``__matmul__`` (or the right operand's ``__rmatmul__``); tensors take
  dynamo's own path before that table is read.
* Dynamo looks for arguments with a ``__torch_function__`` inside lists but not
  inside tuples, so ``torch.cat((x, t), dim=1)`` on jets, the way PINN networks
  of ``(x, t)`` join their inputs, was put in the graph as it is and failed with
  "Failed to convert args/kwargs to proxy" (``torch.cat([x, t], 1)`` compiled).
  :func:`open_tuples` has dynamo's flattening open tuples as it opens lists.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F


def _zeros(size, *, dtype=None, layout=None, device=None, pin_memory=None) -> torch.Tensor:
    return torch.zeros(size, dtype=dtype, layout=layout, device=device)


def materialise_zero_tensors() -> bool:
    """Register the decomposition with inductor (idempotent); ``True`` once it is in place.

    Called while ``torch.compile`` traces the ``func`` engine; marked below as a
    constant result, so dynamo runs it at trace time, before inductor compiles.
    """
    try:
        from torch._inductor import decomposition
    except ImportError:  # pragma: no cover - a build without inductor has nothing to fix
        return False
    op = torch.ops.aten._efficientzerotensor.default
    if decomposition.decompositions.get(op) is not _zeros:
        decomposition.decompositions[op] = _zeros
        decomposition.fast_random_decomps.cache_clear()  # the memoised copy the table is read from
    return True


# what torch.compiler.assume_constant_result sets, without importing dynamo when nothing compiles
materialise_zero_tensors._dynamo_marked_constant = True  # type: ignore[attr-defined]


# functions of torch.nn.functional that dynamo does not dispatch to __torch_function__ (torch 2.13)
UNDISPATCHED = (F.tanh, F.sigmoid, F.hardswish, F.hardsigmoid)


def dispatch_functionals() -> bool:
    """Have dynamo hand :data:`UNDISPATCHED` to ``__torch_function__`` (idempotent); ``True`` once it does.

    Called while ``torch.compile`` traces the Taylor engine, before the network
    runs on jets; marked below as a constant result, so dynamo runs it at trace time.
    """
    try:
        from torch._dynamo.variables.torch import get_overridable_functions
    except ImportError:  # pragma: no cover - a build without dynamo compiles nothing
        return False
    functions = get_overridable_functions()  # dynamo's own set, cached: updating it is what dynamo reads
    if not isinstance(functions, set):  # pragma: no cover - a later torch that keeps it otherwise
        return False
    functions.update(UNDISPATCHED)
    return True


dispatch_functionals._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _object_matmul(tx, a, b):
    """Dynamo's handler of ``a @ b`` where one operand is a user-defined object, as it has for ``a + b``."""
    from torch._dynamo.variables.user_defined import UserDefinedVariable

    if isinstance(a, UserDefinedVariable):
        return a.call_method(tx, "__matmul__", [b], {})
    return b.call_method(tx, "__rmatmul__", [a], {})


def trace_object_matmul() -> bool:
    """Have dynamo trace ``@`` between user-defined objects (idempotent); ``True`` once it does.

    Called, like :func:`dispatch_functionals`, while torch.compile traces the Taylor engine.
    """
    try:
        from torch._dynamo.variables.base import VariableTracker
        from torch._dynamo.variables.builtin import BuiltinVariable
        from torch._dynamo.variables.user_defined import UserDefinedVariable

        handlers = BuiltinVariable._binop_handlers()  # dynamo's own table, cached: what it reads
    except (ImportError, AttributeError):  # pragma: no cover - a torch that keeps it otherwise
        return False
    entries = handlers.setdefault(operator.matmul, [])
    if all(handler is not _object_matmul for _, handler in entries):
        entries.append(((UserDefinedVariable, VariableTracker), _object_matmul))
        entries.append(((VariableTracker, UserDefinedVariable), _object_matmul))
    return True


trace_object_matmul._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _opening_tuples(flatten):
    """``flatten`` (dynamo's ``_flatten_vts``) with the items of tuple variables put in their place first."""

    def flatten_vts(vts):
        from torch._dynamo.variables.lists import TupleVariable

        pending, opened = list(vts), []
        while pending:
            vt = pending.pop(0)
            if not vt.is_realized() and vt.peek_type() is tuple:
                vt.realize()
            if vt.is_realized() and isinstance(vt, TupleVariable):
                pending[:0] = vt.unwrap().items
                continue
            opened.append(vt)
        return flatten(opened)

    flatten_vts.opens_tuples = True
    return flatten_vts


def open_tuples() -> bool:
    """Have dynamo find jets inside tuple arguments, as inside lists (idempotent); ``True`` once it does.

    Called, like :func:`dispatch_functionals`, while torch.compile traces the Taylor engine.
    """
    try:
        from torch._dynamo.variables import torch_function
    except ImportError:  # pragma: no cover - a build without dynamo compiles nothing
        return False
    flatten = getattr(torch_function, "_flatten_vts", None)
    if flatten is None:  # pragma: no cover - a later torch that keeps it otherwise
        return False
    if not getattr(flatten, "opens_tuples", False):
        torch_function._flatten_vts = _opening_tuples(flatten)
    return True


open_tuples._dynamo_marked_constant = True  # type: ignore[attr-defined]
