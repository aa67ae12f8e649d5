"""The state a network changes as it runs, kept across the evaluations that must leave no trace.

A module in training mode may update its buffers on every forward pass (a batch
norm's running statistics and its count of batches).  One operator call must
update them as one forward pass of ``u`` does: an engine that fails part way, the
plain evaluation that then checks whether the error is ``u``'s own, and the probes
(the output size; coupled samples, :mod:`._coupling`; grad-off parts,
:mod:`._grad_off`) each run ``u`` too, and their updates are undone.  The probes
(and auto's timing) also put back the random number generator, which dropout
draws from, and what they learn about a network is remembered while it lives
(:func:`remembered`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch
from torch import nn


def updating_buffers(u: object) -> list[torch.Tensor]:
    """The buffers of ``u``'s modules in training mode (those a forward pass may update); none for a function."""
    if not isinstance(u, nn.Module):
        return []
    return [buffer for module in u.modules() if module.training for buffer in module.buffers(recurse=False)]


class Snapshot:
    """Copies of ``buffers``, written back by :meth:`restore` in place (the module keeps its tensors).

    Only the buffers updated since are written back: writing one bumps its version counter, and
    a graph that saved it (``tanh(h) * buffer`` saves the buffer) would then fail in ``backward()``.
    Updated: a new version, or new values (a batch norm's kernel updates its running statistics
    without a new version).
    """

    def __init__(self, buffers: list[torch.Tensor]) -> None:
        self.buffers = buffers
        self.copies = [buffer.detach().clone() for buffer in buffers]
        self.versions = [buffer._version for buffer in buffers]

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, copy, version in zip(self.buffers, self.copies, self.versions):
                if buffer._version != version or not _same(buffer, copy):
                    buffer.copy_(copy)


def _same(buffer: torch.Tensor, copy: torch.Tensor) -> bool:
    """Equal, NaN to NaN."""
    if not buffer.is_floating_point():
        return bool(torch.equal(buffer, copy))
    return bool(((buffer == copy) | (buffer.isnan() & copy.isnan())).all())


@contextlib.contextmanager
def buffers_kept(u: object) -> Iterator[None]:
    """Run the body, then put back the buffers it updated in ``u``'s modules in training mode."""
    buffers = updating_buffers(u)
    if not buffers or torch.compiler.is_compiling():  # compiled code owns its buffers' updates
        yield
        return
    snapshot = Snapshot(buffers)
    try:
        yield
    finally:
        snapshot.restore()


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Restore the random number generator of ``device`` afterwards (a probe must not shift a seeded run)."""
    if torch.compiler.is_compiling():  # compiled code draws its own random numbers
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


UNDECIDED = object()  # what a probe returns where it could not tell (an error of u's own): not remembered


def remembered(memo: weakref.WeakKeyDictionary, u: object, key: Hashable, probe: Callable[[], Any]) -> Any:
    """``probe()``, run once per network ``u`` and ``key`` while ``u`` lives; None where it returns :data:`UNDECIDED`.

    A ``u`` that cannot be weakly referred to is probed on every call.
    """
    try:
        known = memo.setdefault(u, {})
    except TypeError:
        known = {}
    if key not in known:
        found = probe()
        if found is UNDECIDED:
            return None
        known[key] = found
    return known[key]
