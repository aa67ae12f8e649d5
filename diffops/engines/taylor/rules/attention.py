"""Jet rules of attention: ``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward``.

Both are written as the math of attention on jets,

    weights = softmax(q k^T * scale + mask),   out = weights v,

with the products of two jets (``q k^T``, ``weights v``) as Cauchy products
(:mod:`.products`) and the softmax of :mod:`.reductions`, so they are exact at
any order whichever of ``q``, ``k``, ``v`` depend on the input.  A boolean
mask becomes an additive one (``-inf`` where attention is not allowed), which
changes ``c_0`` only: ``exp`` of ``-inf`` is 0 with every coefficient 0.

``nn.MultiheadAttention`` (and through it ``nn.TransformerEncoderLayer`` and
``nn.TransformerDecoderLayer``) calls ``F.multi_head_attention_forward`` on
jets, whose rule projects with ``F.linear``, splits the heads and runs the
same attention.  Dropout that is on, ``bias_k``/``bias_v``, ``add_zero_attn``
and static keys are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..jet import Jet, rule, unsupported


def attention(query: Any, key: Any, value: Any, bias: torch.Tensor | None, scale: float) -> tuple[Any, Any]:
    """``(softmax(q k^T scale + bias) v, the weights)``: ``q: (..., L, E)``, ``k: (..., S, E)``, ``v: (..., S, Ev)``."""
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    weights = F.softmax(scores, dim=-1)
    return torch.matmul(weights, value), weights


def additive_mask(mask: Any, allowed: bool, dtype: torch.dtype, func: Callable) -> torch.Tensor | None:
    """A boolean mask (``True`` = ``allowed`` to attend) as 0 / ``-inf``; a float mask as it is."""
    if mask is None:
        return None
    if isinstance(mask, Jet):
        raise unsupported(func, " with a mask that depends on the input")
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    blocked = ~mask if allowed else mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(blocked, -math.inf)




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
    if enable_gqa and query.shape[-3] != key.shape[-3]:
        raise unsupported(func, " with grouped-query attention (enable_gqa=True)")
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: got both attn_mask and is_causal=True; pass one of them")
    dtype = query.dtype
    bias = additive_mask(attn_mask, True, dtype, func)
    if is_causal:
        causal = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
        bias = additive_mask(causal, True, dtype, func)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    return attention(query, key, value, bias, scale)[0]


def _projections(
    query: Any, key: Any, value: Any, in_proj_weight: Any, in_proj_bias: Any, separate: tuple | None
) -> tuple[Any, Any, Any]:
    """``q, k, v``: the inputs through the packed or the separate input projections."""
    weights = separate if separate is not None else in_proj_weight.chunk(3)
    biases = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    return tuple([F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases)])


@rule(F.multi_head_attention_forward)
def multi_head_attention_forward(
    func: Callable,
    query: Any,
    key: Any,
    value: Any,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: Any,
    in_proj_bias: Any,
    bias_k: Any,
    bias_v: Any,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    training: bool = True,
    key_padding_mask: Any = None,
    need_weights: bool = True,
    attn_mask: Any = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: Any = None,
    k_proj_weight: Any = None,
    v_proj_weight: Any = None,
    static_k: Any = None,
    static_v: Any = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Any, Any]:
    """Multi-head attention on ``(L, N, E)`` (or unbatched ``(L, E)``) inputs, as torch computes it."""
    if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None or static_v is not None:
        raise unsupported(func, " with bias_k, bias_v, add_zero_attn or static keys")
    if training and dropout_p > 0:
        raise unsupported(func, f" in training mode with dropout={dropout_p} (a random mask); use eval()")
    if is_causal and attn_mask is None:
        raise ValueError("multi_head_attention_forward: is_causal=True needs the causal attn_mask")
    batched = query.dim() == 3
    if not batched:
        query, key, value = [x.unsqueeze(1) for x in (query, key, value)]
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    length, batch, embed = query.shape
    if embed != embed_dim_to_check:
        raise ValueError(
            f"multi_head_attention_forward: expected inputs of embedding size {embed_dim_to_check}, got {embed}"
        )
    separate = (q_proj_weight, k_proj_weight, v_proj_weight) if use_separate_proj_weight else None
    q, k, v = _projections(query, key, value, in_proj_weight, in_proj_bias, separate)
    head = embed // num_heads
    # (L, N, E) -> (N, H, L, E / H)
    q, k, v = [x.reshape(x.shape[0], batch, num_heads, head).permute(1, 2, 0, 3) for x in (q, k, v)]
    bias = _merged_mask(attn_mask, key_padding_mask, batch, num_heads, query.dtype, func)
    out, weights = attention(q, k, v, bias, 1 / math.sqrt(head))
    out = F.linear(out.permute(2, 0, 1, 3).reshape(length, batch, embed), out_proj_weight, out_proj_bias)
    if need_weights:
        weights = weights.mean(dim=1) if average_attn_weights else weights
        weights = weights if batched else weights.squeeze(0)
    return (out if batched else out.squeeze(1)), (weights if need_weights else None)


def _merged_mask(
    attn_mask: Any, key_padding_mask: Any, batch: int, heads: int, dtype: torch.dtype, func: Callable
) -> torch.Tensor | None:
    """One additive mask broadcasting to ``(N, H, L, S)``: ``attn_mask`` (``(L, S)`` or ``(N H, L, S)``)
    plus ``key_padding_mask`` (``(N, S)``); in their boolean form ``True`` means *not* allowed."""
    bias = additive_mask(attn_mask, False, dtype, func)
    if bias is not None and bias.dim() == 3:
        bias = bias.reshape(batch, heads, *bias.shape[1:])
    padding = additive_mask(key_padding_mask, False, dtype, func)
    if padding is not None:
        padding = padding.reshape(batch, 1, 1, padding.shape[-1])
        bias = padding if bias is None else bias + padding
    return bias
