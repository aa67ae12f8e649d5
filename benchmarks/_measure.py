"""Wall-clock time and peak tensor memory of a piece of work, on CPU or CUDA."""

from __future__ import annotations

import platform
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def tanh_mlp(d: int, width: int | Sequence[int], depth: int | None = None, outputs: int = 1) -> torch.nn.Module:
    """Tanh hidden layers and (by default) a scalar output: the network every benchmark times.

    ``width`` is one width repeated ``depth`` times, or the hidden widths in turn
    (``(768, 768, 512, 512)``, with ``depth`` left out).
    """
    widths = [width] * depth if isinstance(width, int) else list(width)
    layers: list[torch.nn.Module] = []
    for size_in, size_out in zip([d, *widths[:-1]], widths):
        layers += [torch.nn.Linear(size_in, size_out), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], outputs))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(
    works: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Best wall-clock seconds of each ``work()`` over ``repeats`` rounds, after ``warmup`` rounds.

    The works take turns within each round, so that load from other processes
    falls on all of them alike; the minimum is kept because such load only
    ever adds time.
    """
    best = dict.fromkeys(works, float("inf"))
    for round_ in range(warmup + repeats):
        for name, work in works.items():
            synchronize(device)
            start = time.perf_counter()
            work()
            synchronize(device)
            if round_ >= warmup:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


class _LiveStorage(TorchDispatchMode):
    """Tracks the bytes of tensor storage created while active and still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            try:
                storage = tensor.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
            except RuntimeError:  # the zero tangents of forward-mode AD have no storage
                continue
            if nbytes == 0 or key in self.seen:  # views share their base's storage
                continue
            self.seen.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def peak_bytes(work: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of the tensors ``work()`` allocates beyond those alive before it."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        work()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with _LiveStorage() as tracker:
        work()
    return tracker.peak


_MATMULS = {"mm", "addmm", "bmm", "baddbmm", "addbmm"}
_NO_WORK = {"empty", "empty_strided", "new_empty", "new_empty_strided", "set_", "_unsafe_view", "resize_"}


class _WorkCount(TorchDispatchMode):
    """Counts the kernels that run while active: matrix-product FLOPs, elements the others write, calls.

    Views and bare allocations are not kernels; every other operator is one, and
    writes its output's elements (an in-place one, the tensor it updates).
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops = self.elements = self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.is_view or name in _NO_WORK:
            return out
        self.kernels += 1
        if name in _MATMULS:
            first, second = (args[1], args[2]) if name.startswith(("add", "badd")) else args[:2]
            self.flops += 2 * first.numel() * second.shape[-1]  # (.., M, K) @ (.., K, N)
        else:
            self.elements += sum(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out


def work_counts(work: Callable[[], object]) -> dict[str, int]:
    """The kernels one ``work()`` runs, on any device: ``{"flops", "elements", "kernels"}`` (see :class:`_WorkCount`).

    Unlike a time, these do not vary from run to run: they say how much each
    method computes, and so where a difference in time can come from.
    """
    with _WorkCount() as counter:
        work()
    return {"flops": counter.flops, "elements": counter.elements, "kernels": counter.kernels}


def cpu_model() -> str:
    """The CPU's model name, as ``lscpu`` prints it (every table names it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
