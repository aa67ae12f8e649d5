"""Validate an operator's inputs once, and flatten them into rows of coordinates.

Every input of ``u`` has shape ``(*batch, d_i)``.  The inputs selected by
``argnums`` are flattened to ``(N, d_i)`` with ``N = prod(batch)`` and
concatenated into ``x: (N, d)``; engines differentiate the batched function
``x -> u(...)`` whose output is ``(N, *out)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import is_tensor_like


def check_argnums(name: str, argnums: Any) -> tuple[int, ...]:
    """``argnums`` as a tuple of distinct non-negative ints."""
    items = argnums if isinstance(argnums, tuple) else (argnums,)
    if not items or any(isinstance(a, bool) or not isinstance(a, int) for a in items):
        raise TypeError(f"{name}: argnums must be an int or a non-empty tuple of ints, got {argnums!r}")
    if any(a < 0 for a in items) or len(set(items)) != len(items):
        raise ValueError(f"{name}: argnums must be distinct non-negative ints, got {argnums!r}")
    return items


@dataclass
class Rows:
    """The inputs of one call flattened to rows; see the module docstring."""

    x: torch.Tensor  # (N, d): the differentiated coordinates, concatenated
    batch_shape: torch.Size
    sizes: tuple[int, ...]  # d_i of each differentiated input
    args: tuple  # the inputs of u, tensors flattened to (N, d_j)
    argnums: tuple[int, ...]
    name: str

    @property
    def num_coordinates(self) -> int:
        return self.x.shape[1]

    def function(self, u: Callable, rows: slice) -> Callable[[torch.Tensor], torch.Tensor]:
        """The batched function ``(n, d) -> (n, *out)`` of ``u`` on the rows ``rows``."""
        others = [a[rows] if isinstance(a, torch.Tensor) else a for a in self.args]

        def fn(x: torch.Tensor) -> torch.Tensor:
            args = list(others)
            for argnum, part in zip(self.argnums, x.split(self.sizes, dim=-1)):
                args[argnum] = part
            out = u(*args)
            if not is_tensor_like(out):  # a tensor, or a tensor-like such as the Taylor engine's jets
                raise TypeError(f"{self.name}: u must return a tensor, got {type(out).__name__}")
            if out.dim() == 0 or out.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{self.name}: u's output must keep the input's batch dimensions "
                    f"{tuple(self.batch_shape)}; got an output of shape {tuple(out.shape)} for "
                    f"inputs of batch shape {tuple(self.batch_shape)} (does u reduce over the batch?)"
                )
            return out

        return fn

    def chunks(self, u: Callable, chunk_size: int | None) -> Iterator[tuple[slice, torch.Tensor, Callable]]:
        """``(rows, x[rows], fn)`` over blocks of at most ``chunk_size`` rows."""
        n = self.x.shape[0]
        step = n if chunk_size is None else chunk_size
        for start in range(0, max(n, 1), max(step, 1)):
            rows = slice(start, start + step)
            yield rows, self.x[rows], self.function(u, rows)

    def unflatten(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(N, *rest)`` -> ``(*batch, *rest)``."""
        return tensor.reshape(*self.batch_shape, *tensor.shape[1:])


def _check_coordinates(name: str, position: int, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: input {position} must be a tensor of shape (*batch, d), got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(
            f"{name}: input {position} must have a floating dtype to be differentiated, got {value.dtype}; "
            "convert it with .float() or .double()"
        )
    if value.dim() < 2:
        raise ValueError(
            f"{name}: input {position} must have shape (*batch, d) with at least one batch dimension, "
            f"got shape {tuple(value.shape)}; for one coordinate per sample use x.unsqueeze(-1)"
        )
    if value.shape[-1] == 0:
        raise ValueError(f"{name}: input {position} has no coordinates (shape {tuple(value.shape)})")
    return value


def flatten_inputs(name: str, inputs: tuple, argnums: tuple[int, ...]) -> Rows:
    """Check ``inputs`` against ``argnums`` and flatten them; raises ``TypeError``/``ValueError``."""
    # torch.compile cannot trace this query (a graph break in every compiled step), so compiled calls skip it
    if not torch.compiler.is_compiling() and torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{name}: derivatives need autograd, which torch.inference_mode() disables; evaluate under "
            "torch.no_grad() or torch.enable_grad() instead (with Lightning: Trainer(inference_mode=False))"
        )
    if not inputs:
        raise TypeError(f"{name}: expected the inputs of u, e.g. op(x) with x of shape (*batch, d); got none")
    if max(argnums) >= len(inputs):
        raise TypeError(
            f"{name}: argnums={argnums if len(argnums) > 1 else argnums[0]} selects input {max(argnums)}, "
            f"but {len(inputs)} input(s) were given"
        )
    selected = [_check_coordinates(name, a, inputs[a]) for a in argnums]
    first = selected[0]
    batch_shape = first.shape[:-1]
    for position, value in enumerate(inputs):
        if isinstance(value, torch.Tensor) and value.shape[:-1] != batch_shape:
            raise ValueError(
                f"{name}: every input must share the batch shape {tuple(batch_shape)} of input {argnums[0]}; "
                f"input {position} has shape {tuple(value.shape)}"
            )
    for position, value in zip(argnums, selected):
        if value.dtype != first.dtype or value.device != first.device:
            raise ValueError(
                f"{name}: differentiated inputs must share dtype and device; input {argnums[0]} is "
                f"{first.dtype} on {first.device}, input {position} is {value.dtype} on {value.device}"
            )
    n = math.prod(batch_shape)
    args = tuple(v.reshape(n, v.shape[-1]) if isinstance(v, torch.Tensor) else v for v in inputs)
    x = torch.cat([args[a] for a in argnums], dim=-1) if len(argnums) > 1 else args[argnums[0]]
    sizes = tuple(v.shape[-1] for v in selected)
    return Rows(x, batch_shape, sizes, args, argnums, name)
