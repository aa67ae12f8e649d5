"""Validate an operator's inputs once, and flatten them into rows of coordinates.

Every input of ``u`` has shape ``(*batch, d_i)``.  The inputs selected by
``argnums`` are flattened to ``(N, d_i)`` with ``N = prod(batch)`` and
concatenated into ``x: (N, d)``; engines differentiate the batched function
``x -> u(...)`` whose output is ``(N, *out)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import is_tensor_like

from ._state import UNDECIDED, buffers_kept, preserved_rng

# errors of the device itself, raised as they are: not an engine's failure, not u's own error
DEVICE_ERRORS: tuple[type[Exception], ...] = (
    torch.OutOfMemoryError,
    getattr(torch, "AcceleratorError", torch.OutOfMemoryError),  # torch >= 2.8
)


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
    inputs: tuple  # the inputs as given, for error messages

    @property
    def num_coordinates(self) -> int:
        return self.x.shape[1]

    @property
    def num_rows(self) -> int:
        return self.x.shape[0]

    def _arguments(self, x: torch.Tensor, others: list) -> list:
        """The inputs of ``u`` with the differentiated ones taken from ``x: (n, d)``."""
        args = list(others)
        if len(self.argnums) == 1:
            args[self.argnums[0]] = x
        else:
            for argnum, part in zip(self.argnums, x.split(self.sizes, dim=-1)):
                args[argnum] = part
        return args

    def _checked_output(self, out: Any, n: int) -> Any:
        if not is_tensor_like(out):  # a tensor, or a tensor-like such as the Taylor engine's jets
            raise TypeError(f"{self.name}: u must return a tensor, got {type(out).__name__}")
        if out.dim() == 0 or out.shape[0] != n:
            raise ValueError(
                f"{self.name}: u's output must keep the input's batch dimensions "
                f"{tuple(self.batch_shape)}; got an output of shape {tuple(out.shape)} for "
                f"inputs of batch shape {tuple(self.batch_shape)} (does u reduce over the batch?)"
            )
        return out

    def _others(self, rows: slice | None) -> list:
        if rows is None:
            return list(self.args)
        return [a[rows] if isinstance(a, torch.Tensor) else a for a in self.args]

    def function(self, u: Callable, rows: slice | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """The batched function ``(n, d) -> (n, *out)`` of ``u`` on the rows ``rows`` (all by default)."""
        others = self._others(rows)

        def fn(x: torch.Tensor) -> torch.Tensor:
            return self._checked_output(u(*self._arguments(x, others)), x.shape[0])

        return fn

    def chunks(self, u: Callable, chunk_size: int | None) -> Iterator[tuple[slice, torch.Tensor, Callable]]:
        """``(rows, x[rows], fn)`` over blocks of at most ``chunk_size`` rows."""
        n = self.x.shape[0]
        if chunk_size is None or chunk_size >= n:
            yield slice(None), self.x, self.function(u)  # one block: no slicing
            return
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            yield rows, self.x[rows], self.function(u, rows)

    def probe(self, u: Callable, n: int, *contexts: Any, leaf: bool = True) -> Any:
        """``(x, u's output)`` on the first ``n`` rows under ``contexts``; ``x`` a new leaf that requires grad.

        A probe of ``u`` leaves no trace: its buffers and the random number generator
        are put back.  :data:`UNDECIDED` where ``u`` raises: its own errors are raised,
        with their context, by the engine call that follows.  ``leaf=False`` reads the
        rows as they are (inside torch.func transforms, which forbid ``requires_grad_``).
        """
        x = self.x[:n].detach().requires_grad_(True) if leaf else self.x[:n]
        try:
            with contextlib.ExitStack() as stack:
                for context in (preserved_rng(x.device), buffers_kept(u), *contexts):
                    stack.enter_context(context)
                return x, self.function(u, slice(0, n))(x)
        except DEVICE_ERRORS:
            raise
        except Exception:
            return UNDECIDED

    def evaluate_plainly(self, u: Callable, chunk_size: int | None) -> None:
        """Run ``u`` on the rows as a plain call would, raising an error of ``u`` itself with the inputs' shapes.

        Grad mode is on and the coordinates require grad, as for nested autograd,
        so a ``u`` that differentiates its own input is not mistaken for a broken one.
        """
        with torch.enable_grad():
            for rows, x, _ in self.chunks(u, chunk_size):
                args = self._arguments(x.detach().requires_grad_(True), self._others(rows))
                try:
                    out = u(*args)
                except DEVICE_ERRORS:
                    raise
                except Exception as error:
                    raise own_error(self.name, error, self.inputs) from error
                self._checked_output(out, x.shape[0])

    def unflatten(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(N, *rest)`` -> ``(*batch, *rest)``."""
        if len(self.batch_shape) == 1:
            return tensor
        return tensor.reshape(*self.batch_shape, *tensor.shape[1:])


def describe(inputs: tuple) -> str:
    """``"(8, 3) float32, int"``: the shapes and dtypes of ``inputs`` (types of non-tensors), for messages."""
    parts = [
        f"{tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}" if isinstance(v, torch.Tensor) else type(v).__name__
        for v in inputs
    ]
    return ", ".join(parts)


def own_error(name: str, error: Exception, inputs: tuple) -> Exception:
    """``error``, raised by ``u`` on ``inputs``, restated with the operator's name and the inputs' shapes.

    The type is kept where it can be (a ``RuntimeError`` stays one), so that
    handlers written for ``u``'s own errors still catch it.
    """
    message = f"{name}: u itself raised {type(error).__name__} on inputs of shape {describe(inputs)}: {error}"
    try:
        restated = type(error)(message)
    except Exception:
        return RuntimeError(message)
    return restated if str(restated) == message else RuntimeError(message)


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
    if len(batch_shape) == 1:  # already rows: no reshape
        args = inputs
    else:
        n = math.prod(batch_shape)
        args = tuple(v.reshape(n, v.shape[-1]) if isinstance(v, torch.Tensor) else v for v in inputs)
    x = torch.cat([args[a] for a in argnums], dim=-1) if len(argnums) > 1 else args[argnums[0]]
    sizes = tuple(v.shape[-1] for v in selected)
    return Rows(x, batch_shape, sizes, args, argnums, name, inputs)
