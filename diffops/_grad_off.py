"""Whether ``u`` runs part of itself with gradients off, found once per network by one forward pass.

A ``torch.no_grad()`` section inside ``u`` (a stop-gradient scale) and the
forward of a custom ``torch.autograd.Function`` run with gradients off.  Nested
autograd, the reference, takes what such a part computes as a constant (or
differentiates the Function by its backward); Taylor mode and torch.func would
differentiate through it, so they refuse it where the network is entered with
gradients on (:func:`.engines.base.grad_turned_off`).  Entered with them off,
as a validation loop under ``torch.no_grad()`` is, the part cannot be told from
the rest: `auto` returned a Laplacian 0.16 off for a network with a no-grad
scale, and a custom Function's ``save_for_forward`` failed on jets.

So a call made without gradients asks :func:`runs_without_grad` first, and where
``u`` has such a part, runs its engines with gradients on, where they see it and
refuse it as in training (the results are detached as before).  Other networks
keep the engines' faster path without gradients.  The probe runs ``u`` once on a
few rows with gradients on, under a torch-function mode that notes any torch
call made with them off; a part that touches only parameters (a spectral norm's
power iteration) is noted too, which costs that network's validation calls
their no-gradient speed, not their exactness.
"""

from __future__ import annotations

import weakref

import torch
from torch.overrides import TorchFunctionMode

from ._inputs import Rows
from ._state import UNDECIDED, remembered

PROBE_ROWS = 4

_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _GradOffCalls(TorchFunctionMode):
    """Notes whether any torch call runs with gradients off."""

    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.found = self.found or not torch.is_grad_enabled()
        return func(*args, **(kwargs or {}))


def runs_without_grad(rows: Rows, u: object) -> bool:
    """Whether ``u``, entered with gradients on, runs a torch call with them off; probed once per network.

    False where it cannot be told here (under torch.compile or a torch.func
    transform, an error of ``u``'s own, which the engine call raises).
    """
    if not rows.num_rows or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    return bool(remembered(_FOUND, u, rows.argnums, lambda: _probe(rows, u)))


def _probe(rows: Rows, u: object) -> bool | object:
    calls = _GradOffCalls()
    probed = rows.probe(u, min(rows.num_rows, PROBE_ROWS), torch.enable_grad(), calls)
    return UNDECIDED if probed is UNDECIDED else calls.found
