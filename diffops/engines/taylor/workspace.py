"""Work buffers the fused layers reuse from one call to the next, on the CPU.

A fused chain's matrix products and series (:mod:`.rules.fused`) live only while
one forward or backward runs.  Fresh memory for them each training step cost
page faults on every first touch, since the C allocator hands large blocks back
to the system when they are freed: some 600 faults a step for Burgers on a
4 x 64 tanh network at batch 2,000, 10-15 % of the step (``docs/performance/
residuals.md``).  Keeping the buffers removes them.  The CUDA caching
allocator already reuses memory, so there every request is a fresh tensor.

A buffer's contents are garbage: a caller writes before it reads, and never
lets one out of the call that asked (return, save for backward), since the
next call writes it again.  Buffers are per thread, so that threads running
diffops at once never share one, and per inference mode, since a tensor made
under ``torch.inference_mode`` cannot be written outside it.  At most
:data:`LIMIT` bytes are kept per thread, the least recently used dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

LIMIT = 256 * 2**20

_local = threading.local()


def buffer(use: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A tensor of ``shape`` with ``like``'s dtype and device, the same one each time ``use`` and ``shape`` recur."""
    if like.device.type != "cpu":
        return like.new_empty(shape)
    kept = _kept()
    key = (use, tuple(shape), like.dtype, torch.is_inference_mode_enabled())
    tensor = kept.pop(key, None)
    if tensor is None:
        tensor = like.new_empty(shape)
    kept[key] = tensor  # the most recently used last
    _trim(kept)
    return tensor


def _kept() -> OrderedDict:
    if not hasattr(_local, "buffers"):
        _local.buffers = OrderedDict()
    return _local.buffers


def _trim(kept: OrderedDict) -> None:
    """Drop the least recently used buffers until at most :data:`LIMIT` bytes are kept (always the newest)."""
    total = sum(t.nbytes for t in kept.values())
    while total > LIMIT and len(kept) > 1:
        _, dropped = kept.popitem(last=False)
        total -= dropped.nbytes


def clear() -> None:
    """Drop this thread's buffers (their memory is freed once no caller holds them)."""
    _kept().clear()

