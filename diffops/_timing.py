"""``method="auto"`` on a close call: time the engines the cost model cannot tell apart.

The cost model (:mod:`diffops.engines.choice`) sees the request, not the
network: how wide its layers are and how much of it Taylor mode runs fused
decide between engines whose modelled costs are near each other.  For those
(:func:`~diffops.engines.choice.too_close`) the operator times each engine on
the call's own batch, like ``torch.backends.cudnn.benchmark``: the engine's
results and their backward pass to the parameters of ``u`` (``autograd.grad``,
so no ``.grad`` is touched), five rounds, interleaved; another engine replaces
the model's pick only if it is more than 10 % faster by the median of the
rounds' ratios and faster in all rounds but at most one.
That happens once per request and settings, on the second call (the first
learns the output size the ranking needs), and the order is kept from then on;
calls without grad (a validation loop) are timed and kept apart, on their
forward pass alone.

It is skipped where a measurement would change something or mean nothing:
under ``torch.compile`` and torch.func transforms, with deterministic
algorithms requested (the ranking is then the cost model's, the same on every
run), and when ``u`` has a module in training mode with buffers (a batch
norm's running statistics would move).  The random number generator is
restored afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

ROUNDS = 5
# another engine replaces the cost model's pick only if the median of its per-round time ratios
# to the pick is below MARGIN and it lost at most one round: one load spike on a shared machine
# must not decide either way (with "faster by MARGIN in every round", three rounds on a shared
# two-core machine kept Taylor mode where nested autograd was 1.3-1.5x faster), and on a tie the
# model's order stands
MARGIN = 0.9


def may_time(u: object) -> bool:
    """Whether timing the engines on ``u`` changes nothing and means something (see the module docstring)."""
    if torch.are_deterministic_algorithms_enabled() or torch.compiler.is_compiling():
        return False
    modules = u.modules() if isinstance(u, nn.Module) else ()
    return not any(module.training and next(module.buffers(recurse=False), None) is not None for module in modules)


def fastest_first(names: tuple[str, ...], run: Callable[[str], dict], parameters: list[torch.Tensor]) -> list[str]:
    """``names`` (the cost model's order) reordered by the time of ``run(name)`` and its backward to ``parameters``.

    The engines take turns for :data:`ROUNDS` rounds.  The first name keeps its
    place unless another beats it: a median ratio below :data:`MARGIN`, faster
    in all rounds but one at most; the rest follow by their median time.  An engine that fails goes last: the ordinary
    fallback deals with it.
    """
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(ROUNDS):
        for name in names:
            if times[name] and times[name][-1] == float("inf"):  # it failed: once is enough
                times[name].append(float("inf"))
                continue
            try:
                seconds = _seconds(lambda name=name: _step(run(name), parameters))
            except Exception:  # the engine cannot do it; the call that follows reports why
                seconds = float("inf")
            times[name].append(seconds)
    model = names[0]
    median = {name: _median(values) for name, values in times.items()}
    beat = [n for n in names[1:] if _beats(times[n], times[model])]
    first = min(beat, key=median.get) if beat else model
    return [first, *sorted((name for name in names if name != first), key=median.get)]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _beats(challenger: list[float], incumbent: list[float]) -> bool:
    """Whether per-round times ``challenger`` beat ``incumbent``'s (see :data:`MARGIN`)."""
    if float("inf") in challenger:
        return False
    ratios = [c / i for c, i in zip(challenger, incumbent)]
    return _median(ratios) < MARGIN and sum(r >= 1 for r in ratios) <= 1


def _step(results: dict, parameters: list[torch.Tensor]) -> None:
    """The backward pass a training step takes through ``results``."""
    outputs = [value for value in results.values() if isinstance(value, torch.Tensor) and value.requires_grad]
    if outputs and parameters and torch.is_grad_enabled():
        total = sum(output.float().sum() for output in outputs)
        torch.autograd.grad(total, parameters, allow_unused=True)


def _seconds(work: Callable[[], None]) -> float:
    _synchronize()
    start = time.perf_counter()
    work()
    _synchronize()
    return time.perf_counter() - start


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
