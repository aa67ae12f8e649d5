"""Memory the fused layers reuse from one call to the next, on the CPU.

A fused chain's matrix products and series (:mod:`.rules.fused`) are written
into fresh tensors each training step.  Fresh memory costs a page fault on every
first touch of a page, since the C allocator hands large blocks back to the
system when they are freed: on the build machine (a virtual machine, where a
fault is several microseconds) 500-900 faults a step for Burgers on a 4 x 64
tanh network at batch 2,000, about a tenth of the step (``docs/performance/
residuals.md``).  Keeping the memory removes them.  The CUDA caching allocator
already reuses memory, so there every request is a fresh tensor.

Two kinds:

* :func:`buffer`: scratch that lives within one forward or backward.  Its
  contents are garbage; a caller writes before it reads and never lets it out
  of the call that asked (return, save for backward), since the next call
  writes it again.
* :func:`recycled`: a tensor that may be saved for backward or returned.  It
  is made on kept memory only once no tensor uses that memory any more (the
  storage's use count, which views, saved tensors and the autograd graph all
  hold), else on fresh memory, which is kept for later.

Memory is kept per thread, so that threads running diffops at once never share
it, and per inference mode, since a tensor made under ``torch.inference_mode``
cannot be written outside it.  At most :data:`LIMIT` bytes are kept per thread,
the least recently used dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch

LIMIT = 256 * 2**20
RECYCLED_PER_SHAPE = 16  # stacks of one use and shape alive at once: a chain's layers, a net's chains

_local = threading.local()
_use_count = getattr(torch._C, "_storage_Use_Count", None)  # None: every recycled tensor is fresh


def buffer(use: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A tensor of ``shape`` with ``like``'s dtype and device, the same one each time ``use`` and ``shape`` recur."""
    if like.device.type != "cpu":
        return like.new_empty(shape)
    return _entry("buffer", use, shape, like, lambda: like.new_empty(shape))


def recycled(use: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor of ``shape``, ``like``'s dtype and device, on kept memory that no tensor uses any more."""
    if like.device.type != "cpu" or _use_count is None:
        return like.new_empty(shape)
    storages = _entry("recycled", use, shape, like, list)
    for storage in storages:
        if _use_count(storage._cdata) == 1:  # only this list holds it
            return like.new_empty(0).set_(storage, 0, shape)
    tensor = like.new_empty(shape)
    if len(storages) < RECYCLED_PER_SHAPE:
        storages.append(tensor.untyped_storage())
        _trim(_kept())
    return tensor


def _entry(kind: str, use: str, shape: tuple, like: torch.Tensor, make: Callable):
    """This thread's entry for the key, made by ``make()`` on first asking; marked the most recently used."""
    kept = _kept()
    key = (kind, use, tuple(shape), like.dtype, torch.is_inference_mode_enabled())
    if key in kept:
        kept.move_to_end(key)
        return kept[key]
    kept[key] = entry = make()
    _trim(kept)
    return entry


def _kept() -> OrderedDict:
    if not hasattr(_local, "buffers"):
        _local.buffers = OrderedDict()
    return _local.buffers


def _trim(kept: OrderedDict) -> None:
    """Drop the least recently used buffers until at most :data:`LIMIT` bytes are kept (always the newest)."""
    total = sum(_nbytes(entry) for entry in kept.values())
    while total > LIMIT and len(kept) > 1:
        _, dropped = kept.popitem(last=False)
        total -= _nbytes(dropped)


def _nbytes(entry: torch.Tensor | list) -> int:
    """A buffer's bytes, or those of a list of recycled storages."""
    return entry.nbytes if isinstance(entry, torch.Tensor) else sum(storage.nbytes() for storage in entry)


def clear() -> None:
    """Drop this thread's kept memory (freed once no tensor uses it)."""
    _kept().clear()

