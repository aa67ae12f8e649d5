"""Per-sample derivatives of an operator's output with respect to the network's parameters.

This is the "gradient of a Jacobian": for any operator or expression ``op``,
``parameter_jacobian(op, x)[name][n, k] = d op(x)[n, k] / d param`` for every
trainable parameter of ``op`` (which holds ``u``), keyed as in
``op.named_parameters()`` (``"u.0.weight"`` for ``Laplacian(u)`` with
``u = nn.Sequential(...)``).  Flattened and concatenated over parameters, the
values form the Jacobian ``J: (samples * outputs, P)`` of a residual, the
building block of Gauss-Newton (``J^T J``), natural-gradient and neural tangent
kernel (``J J^T``) methods.

Samples are independent (a network that couples them is refused,
:mod:`._coupling`), so the per-sample function ``x_n -> op(x_n)`` is
differentiated in reverse mode with ``torch.func.jacrev`` and batched over the
samples with ``vmap``: one vector-Jacobian product per output element of one
sample, instead of a Python loop of ``torch.autograd.grad`` calls.  The
operator must therefore use a ``torch.func``-compatible method (``"func"``,
``"taylor"`` or ``"auto"`` on a network that ``vmap`` handles).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.func import functional_call, jacrev, vmap

from ._coupling import coupled_row
from ._inputs import flatten_inputs
from .operator import DifferentialOperator

NAME = "parameter_jacobian"


def _parameter_paths(op: DifferentialOperator, names: dict[int, str]) -> dict[str, str]:
    """Each (module, attribute) path holding a parameter, mapped to the parameter's key in ``names``.

    A network shared by several terms of an expression is one module reached by
    several paths; ``functional_call(tie_weights=True)`` would swap it once per
    path and restore the wrong tensor, so every module is listed once
    (``named_modules`` drops repeats) and swapped with ``tie_weights=False``.
    A parameter tied between distinct modules still gets one path per module.
    """
    paths = {}
    for prefix, module in op.named_modules():
        for attribute, p in module.named_parameters(recurse=False):
            if id(p) in names:
                paths[f"{prefix}.{attribute}" if prefix else attribute] = names[id(p)]
    return paths


def _check_samples_apart(op: DifferentialOperator, inputs: tuple) -> None:
    """Raise if a network of ``op`` couples the samples of its batch: a batch of one would change its value."""
    for leaf in op.modules():
        if isinstance(leaf, DifferentialOperator) and getattr(leaf, "u", None) is not None:
            row = coupled_row(flatten_inputs(NAME, inputs, leaf.argnums), leaf.u)
            if row is not None:
                raise ValueError(
                    f"{NAME}: the network of {leaf} couples the samples of its batch (the input of row {row} moves "
                    "the output of another row), so its derivatives on one sample alone, which this function "
                    "differentiates, are not those of the batch; compute batch statistics outside u"
                )


def parameter_jacobian(
    op: DifferentialOperator, *inputs: Any, chunk_size: int | None = None
) -> dict[str, torch.Tensor]:
    """``{name: (*batch, *op_out, *param.shape)}``: per-sample d op(*inputs) / d param.

    Args:
        op: any ``DifferentialOperator`` returning a tensor ``(*batch, *op_out)``.
        inputs: the inputs of ``u``, each ``(*batch, d_i)`` (non-tensors are passed through).
        chunk_size: vmap over at most this many samples at a time to bound peak memory.

    The result is detached from the autograd graph.  Stochastic estimators draw
    independent directions for every sample, as in a batched call.
    """
    if not isinstance(op, DifferentialOperator):
        raise TypeError(f"{NAME}: op must be a diffops DifferentialOperator, got {type(op).__name__}")
    nested = [m for m in op.modules() if isinstance(m, DifferentialOperator) and m.method == "autograd"]
    if nested:
        raise ValueError(
            f"{NAME}: {nested[0]} uses method='autograd', whose torch.autograd.grad calls cannot run inside "
            "vmap; use method='auto' or 'func'"
        )
    trainable = {name: p for name, p in op.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError(f"{NAME}: {op} has no trainable parameters to differentiate")
    paths = _parameter_paths(op, {id(p): name for name, p in trainable.items()})
    params = {name: p.detach() for name, p in trainable.items()}
    batch_shape = flatten_inputs(NAME, inputs, op.argnums).batch_shape  # the operators' own input checks
    _check_samples_apart(op, inputs)
    n = math.prod(batch_shape)
    # every sample is evaluated as a batch of one: (1, d_i)
    rows = tuple(v.reshape(n, 1, v.shape[-1]) if isinstance(v, torch.Tensor) else v for v in inputs)

    def one_sample(params: dict, *sample: Any) -> torch.Tensor:
        swapped = {path: params[name] for path, name in paths.items()}
        out = functional_call(op, swapped, sample, tie_weights=False)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"{NAME}: {op} returns {type(out).__name__}, expected a tensor; differentiate one operator "
                "or expression at a time"
            )
        return out[0]

    in_dims = (None, *(0 if isinstance(v, torch.Tensor) else None for v in inputs))
    per_sample = vmap(jacrev(one_sample), in_dims=in_dims, randomness="different", chunk_size=chunk_size)
    jacobians = per_sample(params, *rows)
    return {name: value.reshape(*batch_shape, *value.shape[1:]) for name, value in jacobians.items()}
