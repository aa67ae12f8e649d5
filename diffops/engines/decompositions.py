"""Normalisation layers and masked attention written in primitives whose forward-mode rules are right.

PyTorch's fused ``aten::native_layer_norm`` and ``aten::native_batch_norm``
(which ``instance_norm`` calls) have wrong forward-over-forward and
reverse-over-forward rules (see ``docs/guide/exactness.md``).  ``mean``, ``sub``,
``mul`` and ``rsqrt`` have exact rules at every order, so the ``func`` engine runs
these layers as the compositions below.  Masked attention runs
``aten::_safe_softmax``, whose rows that block every position give NaN parameter
gradients of derivatives under torch.func; its composition gives such rows
weights 0 as the kernel does (:func:`blocked_rows`).  They take the arguments of
their ``torch.nn.functional`` namesakes and return the same values up to rounding.
``logcumsumexp``, whose forward-mode rule loses digits, runs as masked ``logsumexp``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _normalise(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over ``dims``, with the biased variance."""
    centred = x - x.mean(dims, keepdim=True)
    return centred * torch.rsqrt(centred.square().mean(dims, keepdim=True) + eps)


def layer_norm(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``F.layer_norm``: normalise over the trailing ``len(normalized_shape)`` dimensions."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    y = _normalise(input, tuple(range(-len(shape), 0)), eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _per_channel_affine(
    y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    """``y * weight + bias`` with ``weight`` and ``bias`` of shape ``(C,)`` along dimension 1 of ``y: (N, C, *)``."""
    channel = (1, -1) + (1,) * (y.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(channel)
    if bias is not None:
        y = y + bias.reshape(channel)
    return y


def instance_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``F.instance_norm`` with the input's statistics: ``input`` is ``(N, C, *spatial)``.

    Only for ``use_input_stats=True`` without running statistics to update (the
    caller checks); the running-statistics case is batch norm in eval mode.
    """
    y = _normalise(input, tuple(range(2, input.dim())), eps)
    return _per_channel_affine(y, weight, bias)


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``F.batch_norm`` in training mode: ``input`` is ``(N, C, *spatial)``, statistics over all but ``C``.

    Updates the running statistics in place as the fused kernel does (the
    unbiased variance, weighted by ``momentum``).
    """
    dims = (0, *range(2, input.dim()))
    y = _normalise(input, dims, eps)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            count = input.numel() // input.shape[1]
            variance = input.detach().var(dims, correction=1 if count > 1 else 0)
            running_mean.mul_(1 - momentum).add_(momentum * input.detach().mean(dims))
            running_var.mul_(1 - momentum).add_(momentum * variance)
    return _per_channel_affine(y, weight, bias)


def logcumsumexp(input: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.logcumsumexp``: each prefix's ``logsumexp``, one masked ``logsumexp`` over an ``(.., L, L)`` tensor.

    PyTorch's forward-mode rule for ``aten::logcumsumexp`` loses digits as about
    ``1e-13 e^s`` where the largest value of a prefix lies ``s`` below the
    largest of the whole dimension (measured: 3e-7 of the derivative at
    ``s = 15``, 0.28 at ``s = 29``), and its double backward gives NaN;
    ``logsumexp``'s rules are right at every order and any spread.  Memory:
    ``L`` times the input's, ``L`` the length along ``dim``.
    """
    x = input.movedim(dim, -1)
    length = x.shape[-1]
    later = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)  # (i, j): j not in prefix i
    prefixes = x.unsqueeze(-2).masked_fill(later, -math.inf)
    return torch.logsumexp(prefixes, -1).movedim(-1, dim)


def blocked_rows(bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bias, kept)``: an additive mask with its fully blocked rows 0, and ``kept``, 0 on those rows, else 1.

    A row of ``bias`` that blocks every position (all ``-inf``) has no softmax
    (0 / 0); PyTorch's attention (``aten::_safe_softmax``) gives it weights 0.
    With that row's bias 0 the softmax is finite, and ``kept`` (of shape
    ``(..., L, 1)``) zeroes it, with every derivative.
    """
    blocked = torch.isneginf(bias).all(-1, keepdim=True)
    return bias.masked_fill(blocked, 0.0), (~blocked).to(bias.dtype)


def additive_mask(mask: torch.Tensor | None, allowed: bool, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (``True`` = ``allowed`` to attend, else blocked) as 0 / ``-inf``; a float mask as it is."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    blocked = ~mask if allowed else mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(blocked, -math.inf)


def attention(query, key, value, bias: torch.Tensor | None, scale: float, safe: bool = True) -> tuple:
    """``(softmax(q k^T scale + bias) v, the weights)``: ``q: (..., L, E)``, ``k: (..., S, E)``, ``v: (..., S, Ev)``.

    In torch ops alone, so Taylor mode runs it on jets.  ``safe``: a row that
    ``bias`` blocks entirely gets weights 0, as PyTorch's attention kernels give it
    (:func:`blocked_rows`); else NaN, as its plain softmax gives it.
    """
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    kept = None
    if bias is not None and safe:
        bias, kept = blocked_rows(bias)
    if bias is not None:
        scores = scores + bias
    weights = F.softmax(scores, dim=-1)
    if kept is not None:
        weights = weights * kept
    return torch.matmul(weights, value), weights


def scaled_dot_product_attention(
    query,
    key,
    value,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
):
    """``F.scaled_dot_product_attention`` without dropout (the caller checks): ``(..., L, E)`` queries."""
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: got both attn_mask and is_causal=True; pass one of them")
    if enable_gqa and key.shape[-3] != query.shape[-3]:  # each key and value head serves a group of queries
        groups = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(groups, dim=-3), value.repeat_interleave(groups, dim=-3)
    if is_causal:
        attn_mask = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    return attention(query, key, value, additive_mask(attn_mask, True, query.dtype), scale)[0]


def multi_head_attention_forward(
    query,
    key,
    value,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight,
    in_proj_bias,
    bias_k,
    bias_v,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    training: bool = True,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight=None,
    k_proj_weight=None,
    v_proj_weight=None,
    static_k=None,
    static_v=None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple:
    """``F.multi_head_attention_forward`` on ``(L, N, E)`` (or unbatched ``(L, E)``) inputs, as torch computes it.

    Without ``bias_k``, ``bias_v``, ``add_zero_attn``, static keys or dropout that is
    on (:func:`multi_head_attention_supported`).  With ``need_weights`` torch runs the
    plain softmax (a row blocked entirely: NaN), without it its attention kernel (0).
    """
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
    bias = _merged_mask(attn_mask, key_padding_mask, batch, num_heads, query.dtype)
    out, weights = attention(q, k, v, bias, 1 / math.sqrt(head), safe=not need_weights)
    out = F.linear(out.permute(2, 0, 1, 3).reshape(length, batch, embed), out_proj_weight, out_proj_bias)
    if need_weights:
        weights = weights.mean(dim=1) if average_attn_weights else weights
        weights = weights if batched else weights.squeeze(0)
    return (out if batched else out.squeeze(1)), (weights if need_weights else None)


def multi_head_attention_call(args: tuple, kwargs: dict) -> dict:
    """The arguments of a call of ``F.multi_head_attention_forward`` by name (those given)."""
    return inspect.signature(multi_head_attention_forward).bind(*args, **kwargs).arguments


def multi_head_attention_supported(call: dict) -> bool:
    """Whether :func:`multi_head_attention_forward` computes a call (:func:`multi_head_attention_call`)."""
    extras = [call.get(name) for name in ("bias_k", "bias_v", "static_k", "static_v")]
    dropout = call.get("training", True) and call["dropout_p"] > 0
    return all(extra is None for extra in extras) and not call["add_zero_attn"] and not dropout


def _projections(query, key, value, in_proj_weight, in_proj_bias, separate: tuple | None) -> tuple:
    """``q, k, v``: the inputs through the packed or the separate input projections."""
    weights = separate if separate is not None else in_proj_weight.chunk(3)
    biases = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    return tuple([F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases)])


def _merged_mask(attn_mask, key_padding_mask, batch: int, heads: int, dtype: torch.dtype) -> torch.Tensor | None:
    """One additive mask broadcasting to ``(N, H, L, S)``: ``attn_mask`` (``(L, S)`` or ``(N H, L, S)``)
    plus ``key_padding_mask`` (``(N, S)``); in their boolean form ``True`` means *not* allowed."""
    bias = additive_mask(attn_mask, False, dtype)
    if bias is not None and bias.dim() == 3:
        bias = bias.reshape(batch, heads, *bias.shape[1:])
    padding = additive_mask(key_padding_mask, False, dtype)
    if padding is not None:
        padding = padding.reshape(batch, 1, 1, padding.shape[-1])
        bias = padding if bias is None else bias + padding
    return bias
