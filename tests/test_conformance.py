"""The conformance matrix: network building blocks x engines x derivative requests, in float64.

Every cell either equals the nested reverse-mode reference (values and the
parameters' gradients, rtol 1e-9) or the engine refuses with ``EngineUnsupported``
naming the op it cannot differentiate; a mismatch fails.  ``method="auto"``
must always match where one engine can.  Sample points avoid the kinks of
piecewise ops (there autograd's subgradient convention is the reference);
the ``-at-zero`` blocks sit on the base's zero and on CELU's kink on purpose.

The reference is :mod:`tests.reference` run with attention on the math kernel
and the fused normalisations (``layer_norm``, ``instance_norm``) and
``hardsigmoid`` written as compositions: PyTorch's own rules for those are
wrong at order 3 (or missing at order 2); ``test_reference_*`` check the
rewritten reference against finite differences.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diffops as do
from diffops.engines import METHODS, EngineUnsupported

from . import reference as ref

D, WIDTH, ROWS = 2, 6, 3
RTOL, ATOL = 1e-9, 1e-11


class Block(nn.Module):
    """``x -> head(f(stem(x)))``: the block ``f`` between two linear maps."""

    def __init__(self, f: Callable, width: int = WIDTH, out: int = 1, stem: bool = True):
        super().__init__()
        self.stem = nn.Linear(D, width) if stem else nn.Identity()
        self.f = f
        training = getattr(f, "training", False)
        with torch.no_grad():
            if training:
                f.eval()  # no batch statistics from the shape probe
            features = f(torch.full((1, width if stem else D), 0.3)).shape[-1]
            if training:
                f.train()
        self.head = nn.Linear(features, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.f(self.stem(x)))


class Tokens(nn.Module):
    """Width-6 features as 3 tokens of 4 channels through ``layer`` (attention blocks)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        tokens = h.reshape(h.shape[0], 3, 2).repeat(1, 1, 2)
        out = self.layer(tokens)
        return (out[0] if isinstance(out, tuple) else out).flatten(1)


class SelfAttention(nn.Module):
    def __init__(self, weights: bool):
        super().__init__()
        self.attention, self.weights = nn.MultiheadAttention(4, 2, batch_first=True), weights

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.attention(t, t, t, need_weights=self.weights)[0]


class Padded(nn.Module):
    """Self-attention with keys padded: every key of the first sample, the last key of the others.

    The first sample's rows are blocked entirely, which PyTorch's attention
    kernels answer with weights 0 (``_safe_softmax``), not NaN.
    """

    def __init__(self, layer: nn.Module, encoder: bool):
        super().__init__()
        self.layer, self.encoder = layer, encoder

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        padded = torch.zeros(t.shape[:2], dtype=torch.bool, device=t.device)
        padded[0], padded[:, -1] = True, True
        if self.encoder:
            return self.layer(t, src_key_padding_mask=padded)
        return self.layer(t, t, t, key_padding_mask=padded, need_weights=False)[0]


class Unpooled(nn.Module):
    """Max pooling in windows of 2 with ``stride``, put back by ``MaxUnpool1d``: with stride 1 the windows
    overlap and an index repeats, where PyTorch's backward is wrong (every engine refuses)."""

    def __init__(self, stride: int):
        super().__init__()
        self.pool = nn.MaxPool1d(2, stride, return_indices=True)
        self.unpool = nn.MaxUnpool1d(2, stride)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.unsqueeze(1)
        pooled, indices = self.pool(h)
        return self.unpool(pooled, indices, output_size=h.shape).flatten(1) + h.flatten(1)


class Paired(nn.Module):
    """``layer(h, tanh(h))``: a layer of two inputs, each depending on the network's input."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer(h, torch.tanh(h))


class Conditioned(nn.Module):
    """An embedding of a class label (fixed per row) added to the features."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(3, WIDTH)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        labels = torch.arange(h.shape[0], device=h.device) % 3
        return torch.tanh(h + self.embedding(labels))


class Fourier(nn.Module):
    def __init__(self):
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(WIDTH, 4))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = 2 * math.pi * h @ self.frequencies
        return torch.cat([z.sin(), z.cos()], dim=-1)


def _square(h: torch.Tensor) -> torch.Tensor:
    """``(N, 2, 2)`` well-conditioned matrices from the features."""
    return h[:, :4].reshape(-1, 2, 2) + 3 * torch.eye(2, dtype=h.dtype, device=h.device)


def _cube(h: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 3)`` matrices (a determinant wavefunction's orbitals), kept away from singular.

    Unshifted, their condition numbers reached 8e3, at which nested autograd's parameter gradients of
    the fourth derivative of det (the reference) were 2e-6 off the exact ones, more than the engines
    under test (tests/engines/test_taylor_linalg.py).
    """
    return torch.cat([h, h[:, :3].sin()], dim=-1).reshape(-1, 3, 3) + 2 * torch.eye(3, dtype=h.dtype, device=h.device)


def _pow_at_zero(x: torch.Tensor) -> torch.Tensor:
    """Integer and float exponents of a base that is exactly 0 at the sample points."""
    b = x[:, :1]
    return torch.cat([b**2, b**3, b**2.0, b**4, torch.tanh(x[:, 1:])], dim=-1)


def _celu_at_zero(x: torch.Tensor) -> torch.Tensor:
    """CELU on its kink: F.celu's branches there (derivatives 1, 0, 0), which every engine must take."""
    return torch.cat([F.celu(x[:, :1], 0.7), torch.tanh(x[:, 1:])], dim=-1)


def _attention(h: torch.Tensor) -> torch.Tensor:
    q = h.reshape(h.shape[0], 2, 3)
    return F.scaled_dot_product_attention(q, q.sin(), q.cos()).flatten(1)


def _signed(h: torch.Tensor) -> torch.Tensor:
    """Positive features but the first, negative."""
    y = torch.sigmoid(h) + 0.5
    return torch.cat([-y[:, :1], y[:, 1:]], -1)


def _gamma_family(h: torch.Tensor) -> torch.Tensor:
    """``lgamma``, ``digamma`` and ``polygamma`` of positive features (a likelihood's terms)."""
    s = h * h + 1
    return torch.cat([torch.lgamma(s), torch.digamma(s), torch.polygamma(1, s), s.polygamma(2)], dim=-1)


def _grouped_query_attention(h: torch.Tensor) -> torch.Tensor:
    """Two query heads sharing one key and value head (``enable_gqa``), 3 tokens of width 1."""
    q = h.reshape(h.shape[0], 2, 3, 1)
    k, v = h.sin().reshape(h.shape[0], 2, 3, 1)[:, :1], h.cos().reshape(h.shape[0], 2, 3, 1)[:, 1:]
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True).flatten(1)


def _blocked_attention(h: torch.Tensor) -> torch.Tensor:
    """Attention whose boolean mask blocks the second query's every key: its output is 0, not NaN."""
    q = h.reshape(h.shape[0], 2, 3)
    mask = torch.tensor([[True, False], [False, False]], device=h.device)
    return (F.scaled_dot_product_attention(q, q.sin(), q.cos(), attn_mask=mask) + q).flatten(1)


class Cast(nn.Module):
    """A float64 network whose output is returned in another float dtype."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = Block(nn.Tanh()), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).to(self.dtype)


ALSO_NAMED = {"ReLU6": ("hardtanh",), "Softmin": ("softmax",), "RReLU": ("leaky_relu",)}


def _activation(module: nn.Module) -> Callable[[], nn.Module]:
    return lambda: Block(module)


# block name -> (make the module, names of its op one of which a refusal must mention)
BLOCKS: dict[str, tuple[Callable[[], nn.Module], tuple[str, ...]]] = {
    **{
        name: (_activation(module), (name.split("-")[0], *ALSO_NAMED.get(name, ())))
        for name, module in {
            "ELU": nn.ELU(),
            "Hardshrink": nn.Hardshrink(),
            "Hardsigmoid": nn.Hardsigmoid(),
            "Hardtanh": nn.Hardtanh(),
            "Hardswish": nn.Hardswish(),
            "LeakyReLU": nn.LeakyReLU(0.1),
            "LogSigmoid": nn.LogSigmoid(),
            "PReLU": nn.PReLU(WIDTH),
            "ReLU": nn.ReLU(),
            "ReLU6": nn.ReLU6(),
            "RReLU": nn.RReLU().eval(),
            "SELU": nn.SELU(),
            "CELU": nn.CELU(0.7),
            "GELU": nn.GELU(),
            "GELU-tanh": nn.GELU(approximate="tanh"),
            "Sigmoid": nn.Sigmoid(),
            "SiLU": nn.SiLU(),
            "Mish": nn.Mish(),
            "Softplus": nn.Softplus(),
            "Softshrink": nn.Softshrink(),
            "Softsign": nn.Softsign(),
            "Tanh": nn.Tanh(),
            "Tanhshrink": nn.Tanhshrink(),
            "Threshold": nn.Threshold(0.1, 0.0),
            "GLU": nn.GLU(),
            "Softmin": nn.Softmin(-1),
            "Softmax": nn.Softmax(-1),
            "LogSoftmax": nn.LogSoftmax(-1),
        }.items()
    },
    "LayerNorm": (lambda: Block(nn.Sequential(nn.Tanh(), nn.LayerNorm(WIDTH))), ("layer_norm",)),
    "RMSNorm": (lambda: Block(nn.Sequential(nn.Tanh(), nn.RMSNorm(WIDTH))), ("rms_norm",)),
    "GroupNorm": (lambda: Block(nn.Sequential(nn.Tanh(), nn.GroupNorm(2, WIDTH))), ("group_norm",)),
    **{
        name: (lambda layers=layers: Block(nn.Sequential(*layers(), nn.Tanh(), nn.Flatten())), ops)
        for name, (layers, ops) in {  # on the features as a signal (N, 1, 6) or an image (N, 1, 2, 3)
            "Conv1d": (lambda: [nn.Unflatten(1, (1, WIDTH)), nn.Conv1d(1, 2, 3, padding=1)], ("conv1d",)),
            "Conv1d-circular": (
                lambda: [nn.Unflatten(1, (1, WIDTH)), nn.Conv1d(1, 2, 3, padding=1, padding_mode="circular")],
                ("conv1d", "pad"),
            ),
            "Conv2d": (lambda: [nn.Unflatten(1, (1, 2, 3)), nn.Conv2d(1, 2, 2)], ("conv2d",)),
            "ConvTranspose1d": (
                lambda: [nn.Unflatten(1, (1, WIDTH)), nn.ConvTranspose1d(1, 2, 3, stride=2)], ("conv_transpose1d",)
            ),
            "AvgPool1d": (lambda: [nn.Unflatten(1, (1, WIDTH)), nn.AvgPool1d(3, stride=2, padding=1)], ("avg_pool1d",)),
            "AdaptiveAvgPool2d": (lambda: [nn.Unflatten(1, (1, 2, 3)), nn.AdaptiveAvgPool2d((2, 2))], ("adaptive",)),
            "Upsample-linear": (lambda: [nn.Unflatten(1, (1, WIDTH)), nn.Upsample(9, mode="linear")], ("interpolate",)),
            "Upsample-bicubic": (
                lambda: [nn.Unflatten(1, (1, 2, 3)), nn.Upsample((3, 4), mode="bicubic", align_corners=True)],
                ("interpolate",),
            ),
            "Upsample-nearest": (lambda: [nn.Unflatten(1, (1, 2, 3)), nn.Upsample(scale_factor=2)], ("interpolate",)),
            "MaxPool1d": (lambda: [nn.Unflatten(1, (1, WIDTH)), nn.MaxPool1d(3, stride=2, padding=1)], ("max_pool1d",)),
            "MaxPool2d": (lambda: [nn.Unflatten(1, (1, 2, 3)), nn.MaxPool2d(2, stride=1)], ("max_pool2d",)),
        }.items()
    },
    "MaxPool1d-indices": (  # the values of a pool that also returns its indices
        lambda: Block(lambda h: torch.tanh(F.max_pool1d(h.unsqueeze(1), 2, return_indices=True)[0]).flatten(1)),
        ("max_pool1d",),
    ),
    "sort": (lambda: Block(lambda h: torch.tanh(h).sort(dim=-1).values * h), ("sort",)),
    "MaxUnpool1d": (lambda: Block(Unpooled(stride=2)), ("max_unpool1d",)),
    "MaxUnpool1d-overlapping": (lambda: Block(Unpooled(stride=1)), ("max_unpool1d", "max_pool1d")),  # refused
    "cumprod": (  # with a factor that is exactly 0 (h times 0), where torch.func's rule gives NaN
        lambda: Block(lambda h: torch.cumprod(torch.cat([h[:, :2], 0 * h[:, 2:3], torch.tanh(h[:, 3:])], -1), -1)),
        ("cumprod",),
    ),
    "logcumsumexp": (lambda: Block(lambda h: torch.logcumsumexp(h, dim=1)), ("logcumsumexp",)),
    "Tensor.T": (lambda: Block(lambda h: torch.tanh(h.T).T), ("Tensor.T",)),  # as in W @ x.T of hand-written layers
    "xlogy": (lambda: Block(lambda h: torch.xlogy(h * h + 0.1, torch.sigmoid(h) + 0.5)), ("xlogy",)),
    "xlogy-at-zero": (  # x exactly 0 in one feature: x log y's derivatives still (y > 0)
        lambda: Block(lambda h: torch.xlogy(torch.cat([0 * h[:, :1], h[:, 1:] ** 2], -1), torch.sigmoid(h) + 0.5)),
        ("xlogy",),
    ),
    "xlogy-nonpositive": (  # y < 0 where x is 0: torch masks the derivative in x there (Taylor mode refuses)
        lambda: Block(lambda h: torch.xlogy(torch.cat([0 * h[:, :1], h[:, 1:] ** 2], -1), _signed(h)) + h),
        ("xlogy",),
    ),
    "gamma-family": (lambda: Block(_gamma_family), ("lgamma", "digamma", "polygamma")),
    **{
        name: (lambda layers=layers: Block(nn.Sequential(*layers, nn.Tanh(), nn.Flatten()), width=16), ops)
        for name, (layers, ops) in {  # rearrangements and patches of a grid of 16 features
            "PixelShuffle": ((nn.Unflatten(1, (4, 2, 2)), nn.PixelShuffle(2)), ("pixel_shuffle",)),
            "PixelUnshuffle": ((nn.Unflatten(1, (1, 4, 4)), nn.PixelUnshuffle(2)), ("pixel_unshuffle",)),
            "ChannelShuffle": ((nn.Unflatten(1, (4, 2, 2)), nn.ChannelShuffle(2)), ("channel_shuffle",)),
            "Unfold": ((nn.Unflatten(1, (1, 4, 4)), nn.Unfold(2)), ("unfold",)),
            "Fold": ((nn.Unflatten(1, (4, 4)), nn.Fold((3, 3), 2)), ("fold",)),
        }.items()
    },
    "Bilinear": (lambda: Block(Paired(nn.Bilinear(WIDTH, WIDTH, 4))), ("bilinear",)),
    "topk": (lambda: Block(lambda h: torch.topk(torch.tanh(h), 3).values), ("topk",)),
    "Softmax2d": (  # the softmax over the channels of (N, C, H, W)
        lambda: Block(nn.Sequential(nn.Unflatten(1, (3, 2, 1)), nn.Softmax2d(), nn.Flatten())),
        ("softmax",),
    ),
    "InstanceNorm": (
        lambda: Block(nn.Sequential(nn.Unflatten(1, (2, 3)), nn.InstanceNorm1d(2, affine=True), nn.Flatten())),
        ("instance_norm", "batch_norm"),
    ),
    "BatchNorm-eval": (lambda: Block(nn.Sequential(nn.BatchNorm1d(WIDTH), nn.Tanh())).eval(), ("batch_norm",)),
    "Dropout-eval": (lambda: Block(nn.Sequential(nn.Dropout(0.3), nn.Tanh())).eval(), ("dropout",)),
    "Embedding": (lambda: Block(Conditioned()), ("embedding",)),
    "MultiheadAttention": (lambda: Block(Tokens(SelfAttention(False))), ("attention",)),
    "MultiheadAttention-weights": (lambda: Block(Tokens(SelfAttention(True))), ("attention", "softmax")),
    "TransformerEncoderLayer": (
        lambda: Block(Tokens(nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True).eval())),
        ("attention", "layer_norm"),
    ),
    "scaled_dot_product_attention": (lambda: Block(_attention), ("attention",)),
    "scaled_dot_product_attention-blocked-row": (lambda: Block(_blocked_attention), ("attention",)),
    "scaled_dot_product_attention-gqa": (lambda: Block(_grouped_query_attention), ("attention",)),
    "MultiheadAttention-padded": (
        lambda: Block(Tokens(Padded(nn.MultiheadAttention(4, 2, batch_first=True), encoder=False))),
        ("attention",),
    ),
    "TransformerEncoderLayer-padded": (
        lambda: Block(
            Tokens(Padded(nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True).eval(), encoder=True))
        ),
        ("attention", "layer_norm"),
    ),
    "logsumexp": (lambda: Block(lambda h: torch.logsumexp(h, -1, keepdim=True) * h), ("logsumexp",)),
    "pow2": (lambda: Block(lambda h: h**2), ("pow",)),
    "pow3": (lambda: Block(lambda h: h**3), ("pow",)),
    "pow0.5": (lambda: Block(lambda h: (h * h + 0.5) ** 0.5), ("pow",)),
    "pow-1": (lambda: Block(lambda h: (h * h + 0.5) ** -1), ("pow",)),
    "pow1.5": (lambda: Block(lambda h: (h * h + 0.5) ** 1.5), ("pow",)),
    "pow-tensor": (lambda: Block(lambda h: (h * h + 0.5) ** torch.tanh(h)), ("pow",)),
    "pow-at-zero": (lambda: Block(_pow_at_zero, stem=False), ("pow",)),
    "CELU-at-zero": (lambda: Block(_celu_at_zero, stem=False), ("celu",)),
    "sqrt": (lambda: Block(lambda h: torch.sqrt(h * h + 0.5)), ("sqrt",)),
    "abs": (lambda: Block(torch.abs), ("abs",)),
    "clamp": (lambda: Block(lambda h: torch.clamp(h, -0.4, 0.4)), ("clamp",)),
    "where": (lambda: Block(lambda h: torch.where(h > 0, h.sin(), h.tanh())), ("where",)),
    "maximum": (lambda: Block(lambda h: torch.maximum(h, 0.5 * h.sin())), ("maximum",)),
    "polar": (lambda: Block(lambda h: torch.atan2(h, h.flip(-1)) + torch.hypot(h, h.roll(1, -1))), ("atan2", "hypot")),
    "extrema": (
        lambda: Block(lambda h: h * h.amax(-1, keepdim=True) + h.min(-1, keepdim=True).values),
        ("amax", "min"),
    ),
    "norm": (lambda: Block(lambda h: h.norm(dim=-1, keepdim=True) * h), ("norm",)),
    "vector_norm": (lambda: Block(lambda h: torch.linalg.vector_norm(h, dim=-1, keepdim=True) + h), ("norm",)),
    "normalize": (lambda: Block(lambda h: F.normalize(h, dim=-1)), ("normalize", "norm")),
    "pairwise_distance": (  # of two jets and of a jet and a constant, p = 2 and 1.5
        lambda: Block(
            lambda h: h * F.pairwise_distance(h[:, :3], h[:, 3:].sin()).unsqueeze(-1)
            + nn.PairwiseDistance(p=1.5, keepdim=True)(h, torch.linspace(-1.0, 1.0, h.shape[-1], dtype=h.dtype))
        ),
        ("pairwise_distance",),
    ),
    "cosine_similarity": (  # of two jets, of a jet and a constant, and along an axis one operand broadcasts
        lambda: Block(
            lambda h: h * F.cosine_similarity(h[:, :3], h[:, 3:].sin(), dim=-1).unsqueeze(-1)
            + nn.CosineSimilarity(dim=1)(h, torch.linspace(-1.0, 1.0, h.shape[-1], dtype=h.dtype)).unsqueeze(-1)
            + F.cosine_similarity(h, h[:, :1].tanh(), dim=1).unsqueeze(-1)
        ),
        ("cosine_similarity",),
    ),
    "cumsum": (lambda: Block(lambda h: torch.cumsum(h.tanh(), -1)), ("cumsum",)),
    "cat-stack-index-reshape": (
        lambda: Block(
            lambda h: torch.stack([h[:, :3].sin(), h[:, 3:].cos()], -1).reshape(h.shape[0], -1)[:, [0, 2, 5]]
        ),
        ("cat",),
    ),
    "einsum": (
        lambda: Block(
            lambda h: torch.einsum("bij,bjk->bik", h.reshape(-1, 2, 3), h.reshape(-1, 3, 2).tanh()).flatten(1)
        ),
        ("einsum",),
    ),
    "matmul": (lambda: Block(lambda h: (h.reshape(-1, 2, 3) @ h.reshape(-1, 3, 2).sin()).flatten(1)), ("matmul",)),
    "bmm": (lambda: Block(lambda h: torch.bmm(h.reshape(-1, 2, 3), h.reshape(-1, 3, 2).tanh()).flatten(1)), ("bmm",)),
    "addmm": (lambda: Block(lambda h: torch.addmm(h[:, :2], h.tanh(), h.new_full((WIDTH, 2), 0.3))), ("addmm",)),
    "det": (lambda: Block(lambda h: torch.linalg.det(_cube(h)).unsqueeze(-1)), ("det",)),
    "slogdet": (lambda: Block(lambda h: torch.linalg.slogdet(_square(h))[1].unsqueeze(-1)), ("slogdet",)),
    "logdet": (lambda: Block(lambda h: torch.logdet(_square(h).mT @ _square(h)).unsqueeze(-1)), ("logdet", "slogdet")),
    "solve": (lambda: Block(lambda h: torch.linalg.solve(_square(h), h[:, 4:])), ("solve",)),
    "inv": (lambda: Block(lambda h: torch.linalg.inv(_square(h)).flatten(1)), ("inv",)),
    "fourier-features": (lambda: Block(Fourier()), ("fourier",)),
    "gating": (lambda: Block(lambda h: torch.sigmoid(h) * torch.tanh(h.flip(-1))), ("sigmoid",)),
    "vector-output": (lambda: Block(nn.Tanh(), out=3), ("tanh",)),
}
BLOCKS["float32-output"] = (lambda: Cast(torch.float32), ("float32",))
BLOCKS["bfloat16-output"] = (lambda: Cast(torch.bfloat16), ("bfloat16",))


def _pure(order: int) -> tuple:
    return do.Derivative, {"wrt": 0, "order": order}, lambda u, x: ref.partial(u, x, (0,) * order)


def _mixed(index: tuple[int, ...]) -> tuple:
    return do.Derivative, {"wrt": index}, lambda u, x: ref.partial(u, x, index)


class Combined(do.DifferentialOperator):
    """A linear combination with every kind of term: the value, first partials (folded into the
    top coefficient of ``e_0`` by the Taylor engine), a second partial read apart, a third-order top."""

    WEIGHTS = {(): 0.5, (0,): 2.0, (1,): -1.0, (0, 1): 0.3, (0, 0, 0): 0.02}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.derivatives(x, r=self.WEIGHTS)["r"]


def _combined(u: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return sum(w * ref.partial(u, x, index) for index, w in Combined.WEIGHTS.items())


# request -> (operator, its keyword arguments, the reference)
REQUESTS = {
    **{f"d{k}": _pure(k) for k in (1, 2, 3, 4)},
    "mixed2": _mixed((0, 1)),
    "mixed3": _mixed((0, 0, 1)),
    "laplacian": (do.Laplacian, {}, ref.laplacian),
    "hessian": (do.Hessian, {}, ref.hessian),
    "jacobian": (do.Jacobian, {}, ref.jacobian),
    "combination": (Combined, {}, _combined),
}


_MADE: dict = {}
_REFERENCES: dict = {}


def reference(block: str, request: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reference value and its parameter gradients, computed once per block and request."""
    key = (block, request)
    if key not in _REFERENCES:
        u, x = make(block)
        with ref.exact_layers():
            value = REQUESTS[request][2](u, x)
        _REFERENCES[key] = value.detach(), gradients(u, value)
    return _REFERENCES[key]


def make(block: str) -> tuple[nn.Module, torch.Tensor]:
    """The block's network and sample points, built once (the cells only read them)."""
    if block not in _MADE:
        _MADE[block] = _build(block)
    return _MADE[block]


def _build(block: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    u = BLOCKS[block][0]().double()
    if isinstance(u, Cast):
        u.dtype = {"float32-output": torch.float32, "bfloat16-output": torch.bfloat16}[block]
    x = 0.8 * torch.randn(ROWS, D, dtype=torch.float64)
    if block.endswith("-at-zero"):
        x[:, 0] = 0.0
    return u, x


def tolerances(dtype: torch.dtype) -> dict:
    return {torch.float64: {"rtol": RTOL, "atol": ATOL}, torch.float32: {"rtol": 1e-6, "atol": 1e-6}}.get(
        dtype, {"rtol": 2e-2, "atol": 2e-2}
    )


def gradients(u: nn.Module, value: torch.Tensor) -> list[torch.Tensor]:
    """The parameters' gradients of a fixed loss of ``value``; zeros where it is constant in them."""
    if not value.requires_grad:
        return [torch.zeros_like(p) for p in u.parameters()]
    return ref.parameter_gradients(u, value.double())


def outcome(u: nn.Module, x: torch.Tensor, request: str, method: str):
    """The operator's value, or the ``EngineUnsupported`` it raised."""
    operator, kwargs, _ = REQUESTS[request]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # auto announces its fallbacks; tested elsewhere
            return operator(u, method=method, **kwargs)(x)
    except EngineUnsupported as error:
        return error


def _plain(text: str) -> str:
    return text.lower().replace("_", "").replace("-", "")


def assert_refusal_names_the_op(error: Exception, block: str) -> None:
    message = _plain(str(error))
    assert any(_plain(op) in message for op in BLOCKS[block][1]), f"the refusal does not name the op: {error}"


# Known gaps of the Taylor engine, expected to fail until fixed (strict: a fix makes these fail loudly)
_NAMES_AN_ATTRIBUTE = "its refusal names a missing Jet attribute, not the op"
KNOWN_GAPS: dict = {}


def _cells() -> list:
    cells = []
    for block in sorted(BLOCKS):
        for method in METHODS:
            for request in sorted(REQUESTS):
                gap = KNOWN_GAPS.get((block, method), KNOWN_GAPS.get((block, method, request)))
                marks = [pytest.mark.xfail(reason=gap, strict=True)] if gap else []
                cells.append(pytest.param(block, method, request, marks=marks, id=f"{block}-{method}-{request}"))
    return cells


@pytest.mark.parametrize(("block", "method", "request_"), _cells())
def test_cell(block, method, request_):
    u, x = make(block)
    result = outcome(u, x, request_, method)
    if isinstance(result, EngineUnsupported):
        if method == "auto":  # only when no engine can
            for other in (m for m in METHODS if m != "auto"):
                assert isinstance(outcome(u, x, request_, other), EngineUnsupported), f"auto refused, {other} did not"
        assert_refusal_names_the_op(result, block)
        return
    expected, expected_gradients = reference(block, request_)
    assert result.shape == expected.shape
    assert_close_to_scale(result.double(), expected.double(), tolerances(result.dtype))
    for actual, wanted in zip(gradients(u, result), expected_gradients):
        assert_close_to_scale(actual, wanted, tolerances(result.dtype))


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, tolerance: dict) -> None:
    """``assert_close``, with the absolute tolerance at least a thousand float64 roundings of the tensor's largest
    entry: an entry that is zero by symmetry (a key bias's gradient through softmax) is computed to that, not to
    ``ATOL``, where the others are large (fourth derivatives through attention: parameter gradients of 1e8)."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    atol = max(tolerance["atol"], 1e3 * torch.finfo(torch.float64).eps * scale)
    torch.testing.assert_close(actual, expected, rtol=tolerance["rtol"], atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("request_", ["laplacian", "d3"])
@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_compiled_auto_cell(block, request_):
    """``torch.compile`` of ``auto`` (``aot_eager``): values and gradients against the reference, or eager's refusal.

    About 7 minutes for the grid on one core (2026-12-04: every block exact but the overlapping unpool, which
    no engine differentiates).
    """
    u, x = make(block)
    operator, kwargs, _ = REQUESTS[request_]
    op = operator(u, method="auto", **kwargs)
    torch._dynamo.reset()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = torch.compile(lambda x: op(x), backend="aot_eager")(x)
    except RuntimeError as error:  # dynamo re-raises auto's refusal as a RuntimeError
        assert isinstance(outcome(u, x, request_, "auto"), EngineUnsupported), error
        assert_refusal_names_the_op(error, block)
        return
    expected, expected_gradients = reference(block, request_)
    assert_close_to_scale(result.double(), expected.double(), tolerances(result.dtype))
    for actual, wanted in zip(gradients(u, result), expected_gradients):
        assert_close_to_scale(actual, wanted, tolerances(result.dtype))


# blocks that Taylor mode refused until it had rules for them (2026-12-04): a refusal passes test_cell, so that they run
# is asserted here
TAYLOR_RULES_ADDED = (
    "Conv1d", "Conv1d-circular", "Conv2d", "ConvTranspose1d", "AvgPool1d", "AdaptiveAvgPool2d", "Upsample-linear",
    "Upsample-bicubic", "Upsample-nearest", "MaxPool1d", "MaxPool2d", "MaxPool1d-indices", "MaxUnpool1d", "sort",
    "topk", "Bilinear", "gamma-family", "scaled_dot_product_attention-gqa", "cumprod", "logcumsumexp",
    "PixelShuffle", "PixelUnshuffle", "ChannelShuffle", "Unfold", "Fold", "det", "inv", "logdet", "slogdet", "solve",
    "xlogy", "xlogy-at-zero", "Tensor.T", "cosine_similarity", "pairwise_distance",
)  # fmt: skip


@pytest.mark.parametrize("block", TAYLOR_RULES_ADDED)
def test_taylor_mode_runs(block):
    u, x = make(block)
    for request in ("laplacian", "d3"):
        assert not isinstance(outcome(u, x, request, "taylor"), EngineUnsupported), (block, request)


@pytest.mark.parametrize("block", ["LayerNorm", "InstanceNorm", "TransformerEncoderLayer", "logcumsumexp"])
def test_reference_matches_finite_differences_where_torch_rules_fail(block):
    """The rewritten reference at orders 3 and 4 against differences of its (upstream-exact) second order."""
    u, x = make(block)
    h = 1e-3
    step = torch.zeros_like(x)
    step[:, 0] = h
    second = {k: reference_at(u, x + k * step, "d2") for k in (-2, -1, 0, 1, 2)}

    def differences(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Central differences of step k h: the third and fourth derivatives to O((k h)^2)."""
        third = (second[k] - second[-k]) / (2 * k * h)
        return third, (second[k] - 2 * second[0] + second[-k]) / (k * h) ** 2

    # Richardson's extrapolation of steps h and 2 h: O(h^4), where O(h^2) was 3e-4 of some seeds' third derivatives
    (third_h, fourth_h), (third_2h, fourth_2h) = differences(1), differences(2)
    third, fourth = (4 * third_h - third_2h) / 3, (4 * fourth_h - fourth_2h) / 3
    # the fused kernels' rules are off by O(1) here
    torch.testing.assert_close(reference(block, "d3")[0], third, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reference(block, "d4")[0], fourth, rtol=1e-3, atol=1e-4)


def reference_at(u: nn.Module, x: torch.Tensor, request: str) -> torch.Tensor:
    with ref.exact_layers():
        return REQUESTS[request][2](u, x).detach()
