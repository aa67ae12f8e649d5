"""The compiled layers' large float32 products on the CPU, through oneDNN.

Torch carries two CPU matrix-product libraries: the BLAS (``torch.mm``, MKL in
the x86 wheels) and oneDNN. On an AMD EPYC core the BLAS ran the products of
the compiled 4 x 64 Burgers step, ``(64, 64) @ (64, 30,000)`` and the weight
gradient over the 30,000 columns, at 60-75 GFLOP/s; oneDNN ran them at 80-95,
and the whole compiled step took 1.11x less time (paired, batch 10,000;
``docs/performance/residuals.md``). At 20 features, or at a few thousand
columns, oneDNN ran no faster or slower (0.8x on the 8 x 20 step at batch
2,000), so only products above :data:`LARGE` multiply-adds with at least
:data:`WIDE` features on both sides take it.

Inductor does not lower oneDNN's product for trainable weights, so each runs as
a custom op, an opaque call in the compiled graph. Each op is a product with no
derivative of its own: the layers that call them write their backward.
"""

from __future__ import annotations

import torch

WIDE = 32
"""Fewest rows, columns and terms of a product that oneDNN takes."""

LARGE = 2**25
"""Fewest multiply-adds of a product that oneDNN takes (the 4 x 64 step at batch 2,000 has 2^24.6: even)."""


@torch.compiler.assume_constant_result  # read when a graph is traced, as torch.mm's precision is
def _full_precision() -> bool:
    """Whether oneDNN is in this build and float32 products run at full precision.

    A reduced float32 matmul precision, where the user set one, is left to
    ``torch.mm`` to apply.
    """
    try:
        available = torch.backends.mkldnn.is_available() and callable(torch.ops.mkldnn._linear_pointwise)
    except (AttributeError, RuntimeError):
        return False
    precision = torch.get_float32_matmul_precision(), torch.backends.mkldnn.matmul.fp32_precision
    return available and precision[0] == "highest" and precision[1] in ("none", "ieee")


def pays(rows: int, inner: int, columns: int, like: torch.Tensor) -> bool:
    """Whether ``(rows, inner) @ (inner, columns)`` on ``like``'s device and dtype goes through oneDNN."""
    return (
        like.device.type == "cpu"
        and like.dtype == torch.float32
        and min(rows, inner, columns) >= WIDE
        and rows * inner * columns >= LARGE
        and _full_precision()
    )


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T``: ``(M, K) @ (K, N)`` with ``weight: (N, K)``, in oneDNN (which reads a strided ``weight``)."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, None, "none", [], "")


@torch.library.custom_op("diffops::columns_product", mutates_args=())
def columns_product(weight: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``weight @ cols``: ``(F_out, F_in) @ (F_in, M) -> (F_out, M)``."""
    return _linear(weight, cols.contiguous().T)


@columns_product.register_fake
def _(weight: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return weight.new_empty(weight.shape[0], cols.shape[1])


@torch.library.custom_op("diffops::samples_product", mutates_args=())
def samples_product(grad: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``grad @ cols.T``: ``(F_out, M) @ (M, F_in) -> (F_out, F_in)``, a sum over the M columns."""
    return _linear(grad, cols.contiguous())


@samples_product.register_fake
def _(grad: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return grad.new_empty(grad.shape[0], cols.shape[0])
