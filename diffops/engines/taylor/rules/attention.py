"""Jet rules of attention: ``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward``.

Both run the math of attention (:mod:`...decompositions`) on jets,

    weights = softmax(q k^T * scale + mask),   out = weights v,

with the products of two jets (``q k^T``, ``weights v``) as Cauchy products
(:mod:`.products`) and the softmax of :mod:`.reductions`, so they are exact at
any order whichever of ``q``, ``k``, ``v`` depend on the input.  A boolean
mask becomes an additive one (``-inf`` where attention is not allowed), which
changes ``c_0`` only: ``exp`` of ``-inf`` is 0 with every coefficient 0.  A row
that the mask blocks entirely gets weights 0, as PyTorch's attention kernels
give it (its plain softmax, which ``nn.MultiheadAttention`` runs for
``need_weights``, gives NaN, and so does the rule there).

``nn.MultiheadAttention`` (and through it ``nn.TransformerEncoderLayer`` and
``nn.TransformerDecoderLayer``) calls ``F.multi_head_attention_forward`` on
jets, whose rule projects with ``F.linear``, splits the heads and runs the
same attention.  Dropout that is on, ``bias_k``/``bias_v``, ``add_zero_attn``
and static keys are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F

from ... import decompositions
from ..jet import Jet, rule, unsupported


def _constant_masks(func: Callable, *masks: Any) -> None:
    if any(isinstance(mask, Jet) for mask in masks):
        raise unsupported(func, " with a mask that depends on the input")


@rule(F.scaled_dot_product_attention)
def scaled_dot_product_attention(
    func: Callable,
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Any:
    if dropout_p > 0:
        raise unsupported(func, f" with dropout_p={dropout_p} (a random mask)")
    _constant_masks(func, attn_mask)
    return decompositions.scaled_dot_product_attention(
        query, key, value, attn_mask, 0.0, is_causal, scale, enable_gqa
    )


@rule(F.multi_head_attention_forward)
def multi_head_attention_forward(func: Callable, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Multi-head attention on ``(L, N, E)`` (or unbatched ``(L, E)``) inputs, as torch computes it."""
    call = decompositions.multi_head_attention_call(args, kwargs)
    if not decompositions.multi_head_attention_supported(call):
        raise unsupported(
            func, " with bias_k, bias_v, add_zero_attn, static keys, or dropout in training mode (a random mask)"
        )
    _constant_masks(func, call.get("attn_mask"), call.get("key_padding_mask"))
    return decompositions.multi_head_attention_forward(*args, **kwargs)
