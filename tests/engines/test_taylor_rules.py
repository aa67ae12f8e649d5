"""The Taylor rules of normalisation, reductions, attention and the activations of ``torch.nn``,
against the float64 nested-autograd reference: values and parameter gradients.

Some upstream rules are not a reference: torch's backward passes of
``layer_norm`` and ``instance_norm`` are wrong from the third derivative on
(finite differences of their second derivatives disagree with their third by
O(1), and agree with the Taylor rules), and that of ``celu`` uses a rounded
``1 / alpha`` (1e-9 relative).  The reference networks therefore run a plain
composition of the same function (``decomposed`` below) where the network has
those layers.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import diffops as do
from diffops.engines import ENGINES, EngineUnsupported, Request, candidates

from .. import reference as ref
from ..strict import warnings_as_errors

RTOL, ATOL = 1e-9, 1e-12
D = 2


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=ATOL, equal_nan=True)


# -- networks -------------------------------------------------------------------------------------


class DecomposedLayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last dimension written in plain ops, sharing the original's parameters."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        centred = h - h.mean(-1, keepdim=True)
        normalised = centred * torch.rsqrt((centred * centred).mean(-1, keepdim=True) + self.eps)
        return normalised if self.weight is None else normalised * self.weight + self.bias


class Function(nn.Module):
    """A function as a module."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.f(h)


class DecomposedInstanceNorm(nn.Module):
    """An affine ``nn.InstanceNorm1d`` without running statistics, in plain ops, sharing its parameters."""

    def __init__(self, norm: nn.InstanceNorm1d):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        centred = h - h.mean(-1, keepdim=True)
        normalised = centred * torch.rsqrt((centred * centred).mean(-1, keepdim=True) + self.eps)
        return normalised * self.weight[:, None] + self.bias[:, None]


def decomposed(u: nn.Module) -> nn.Module:
    """A copy of ``u`` (sharing its parameters) with its layer and instance norms in plain ops: the reference."""
    copied = copy.copy(u)
    copied._modules = dict(u._modules)
    for name, child in u.named_children():
        if isinstance(child, nn.LayerNorm):
            copied._modules[name] = DecomposedLayerNorm(child)
        elif isinstance(child, nn.InstanceNorm1d):
            copied._modules[name] = DecomposedInstanceNorm(child)
        else:
            copied._modules[name] = decomposed(child)
    return copied


class LayerNormResidual(nn.Module):
    """x -> Linear -> tanh -> [h + tanh(Linear(LayerNorm(h)))] x 2 -> LayerNorm -> Linear."""

    def __init__(self, d: int = D, width: int = 8, affine: bool = True):
        super().__init__()
        self.inp = nn.Linear(d, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width, elementwise_affine=affine) for _ in range(3))
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(2))
        self.out = nn.Linear(width, 1)
        if affine:  # away from the initial ones and zeros, so that a wrong affine map shows
            for norm in self.norms:
                nn.init.normal_(norm.weight, 1.0, 0.3)
                nn.init.normal_(norm.bias, 0.0, 0.3)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for norm, block in zip(self.norms, self.blocks):
            h = h + torch.tanh(block(norm(h)))
        return self.out(self.norms[-1](h))


class Transformer(nn.Module):
    """``tokens`` tokens made from x by a Linear, one TransformerEncoderLayer, a Linear read-out."""

    def __init__(self, d: int = D, tokens: int = 4, embed: int = 8, heads: int = 2, norm_first: bool = False):
        super().__init__()
        self.tokens, self.embed = tokens, embed
        self.inp = nn.Linear(d, tokens * embed)
        self.layer = nn.TransformerEncoderLayer(
            embed, heads, 16, dropout=0.0, batch_first=True, activation="gelu", norm_first=norm_first
        )
        self.out = nn.Linear(tokens * embed, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x)).reshape(x.shape[0], self.tokens, self.embed)
        return self.out(self.layer(h).reshape(x.shape[0], -1))


class Decoder(nn.Module):
    """A TransformerDecoderLayer: causal self-attention on 4 tokens, cross-attention to 3 memory tokens."""

    def __init__(self, d: int = D, embed: int = 8):
        super().__init__()
        self.embed = embed
        self.target, self.memory = nn.Linear(d, 4 * embed), nn.Linear(d, 3 * embed)
        self.layer = nn.TransformerDecoderLayer(embed, 2, 16, dropout=0.0, batch_first=True)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(4, dtype=torch.float64))
        self.out = nn.Linear(4 * embed, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        target = torch.tanh(self.target(x)).reshape(x.shape[0], 4, self.embed)
        memory = torch.sin(self.memory(x)).reshape(x.shape[0], 3, self.embed)
        return self.out(self.layer(target, memory, tgt_mask=self.mask).reshape(x.shape[0], -1))


class GatedMLP(nn.Module):
    """RMSNorm, a SwiGLU block and a GLU: products of two branches that both depend on x."""

    def __init__(self, d: int = D, width: int = 8):
        super().__init__()
        self.inp, self.norm = nn.Linear(d, width), nn.RMSNorm(width)
        self.gate, self.up, self.down = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sin(self.inp(x))
        h = h + F.silu(self.gate(self.norm(h))) * self.up(h)
        return self.out(F.glu(self.down(h), dim=-1))


class MaskedAttention(nn.Module):
    """nn.MultiheadAttention over 3 tokens with a causal boolean mask and a padding mask (a key of each
    sample but the first); its averaged weights are used too."""

    def __init__(self, d: int = D, tokens: int = 3, embed: int = 4):
        super().__init__()
        self.tokens, self.embed = tokens, embed
        self.inp = nn.Linear(d, tokens * embed)
        self.attention = nn.MultiheadAttention(embed, 2, batch_first=True)
        self.register_buffer("mask", torch.ones(tokens, tokens, dtype=torch.bool).triu(1))
        self.out = nn.Linear(tokens * embed, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sin(self.inp(x)).reshape(x.shape[0], self.tokens, self.embed)
        keys = torch.arange(self.tokens, device=x.device)
        padding = (keys == (torch.arange(x.shape[0], device=x.device) % self.tokens)[:, None]) & (keys > 0)
        out, weights = self.attention(h, h, h, attn_mask=self.mask, key_padding_mask=padding)
        return self.out(out.reshape(x.shape[0], -1)) + (weights * weights).sum((1, 2))[:, None]


class Reductions(nn.Module):
    """Group and instance norm, softmax, log-softmax, logsumexp, std, norms and F.normalize."""

    def __init__(self, d: int = D, width: int = 8):
        super().__init__()
        self.inp, self.mid = nn.Linear(d, width), nn.Linear(width, width)
        self.group, self.instance = nn.GroupNorm(2, width), nn.InstanceNorm1d(2, affine=True)
        self.out = nn.Linear(width, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = self.group(h) + self.instance(h.reshape(-1, 2, 4)).reshape(h.shape)
        h = F.softmax(self.mid(h), dim=-1) + F.log_softmax(h, dim=-1) * 0.1
        h = F.normalize(h, dim=-1) * torch.linalg.vector_norm(h, dim=-1, keepdim=True) + h.std(-1, keepdim=True)
        h = h + torch.softmax(h, -1, torch.float64) * h.log_softmax(-1) + torch.var(h, (-1,), False, True)
        return self.out(h) + torch.logsumexp(h, -1, keepdim=True) + h.norm(dim=-1, keepdim=True)


class Polar(nn.Module):
    """An MLP of polar coordinates ``(r, theta)`` of x, then the rules of two tensors, extrema and padding:
    hypot, atan2, maximum, minimum, logaddexp, lerp, amax, max along a dim, pad, masked_fill."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(2, width), nn.Linear(width, width), nn.Linear(width, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        polar = torch.stack([torch.hypot(x[:, 0], x[:, 1]), torch.atan2(x[:, 1], x[:, 0])], -1)
        h = torch.tanh(self.inp(polar))
        h = torch.maximum(h, 0.5 * h.flip(-1)) + torch.min(torch.sin(h), h.roll(1, -1))
        h = torch.logaddexp(self.mid(h), 2 * h) - h.amax(-1, keepdim=True) + h.max(-1, keepdim=True).values
        h = torch.lerp(h, torch.tanh(h), torch.sigmoid(h.flip(-1)))
        h = F.pad(h[:, 1:], (1, 0), value=0.2).masked_fill(h.flip(-1) > 0.8, -0.1)
        return self.out(h)


NETWORKS = {
    "polar": Polar,
    "layernorm-residual": LayerNormResidual,
    "layernorm-no-affine": lambda: LayerNormResidual(affine=False),
    "transformer-eval": lambda: Transformer().eval(),
    "transformer-train": lambda: Transformer().train(),
    "transformer-norm-first": lambda: Transformer(norm_first=True).eval(),
    "transformer-decoder": lambda: Decoder().eval(),
    "gated-mlp": GatedMLP,
    "masked-attention": lambda: MaskedAttention().eval(),
    "reductions": Reductions,
}
REQUESTS = {
    **{f"order-{k}": (lambda u, k=k: do.Derivative(u, wrt=1, order=k, method="taylor"), (1,) * k) for k in range(5)},
    "mixed": (lambda u: do.Derivative(u, wrt=(0, 1, 1), method="taylor"), (0, 1, 1)),
    "laplacian": (lambda u: do.Laplacian(u, method="taylor"), "laplacian"),  # the collapsed pass
    "hessian": (lambda u: do.Hessian(u, method="taylor"), "hessian"),
}


def reference(u: nn.Module, x: torch.Tensor, key) -> torch.Tensor:
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernels have no double backward
        if isinstance(key, tuple):
            return ref.partial(u, x, key)
        return {"laplacian": ref.laplacian, "hessian": ref.hessian}[key](u, x)


def check(u: nn.Module, actual: torch.Tensor, expected: torch.Tensor, reference_net: nn.Module) -> None:
    """Values, and the gradients of a loss of them w.r.t. the (shared) parameters."""
    assert_close(actual, expected)
    actual_grads = ref.parameter_gradients(u, actual)
    with sdpa_kernel(SDPBackend.MATH):
        expected_grads = ref.parameter_gradients(reference_net, expected)
    for a, e in zip(actual_grads, expected_grads):
        assert_close(a, e)


@pytest.mark.parametrize("request_name", sorted(REQUESTS))
@pytest.mark.parametrize("net", sorted(NETWORKS))
def test_networks_match_the_reference(net, request_name):
    u = NETWORKS[net]()
    make, key = REQUESTS[request_name]
    x = torch.randn(3, D, dtype=torch.float64)
    reference_net = decomposed(u)
    check(u, make(u)(x), reference(reference_net, x, key), reference_net)


@pytest.mark.cuda
@pytest.mark.parametrize("net", ["layernorm-residual", "masked-attention", "reductions", "transformer-decoder"])
def test_on_cuda(net):
    """The rules create their constants (masks, shifts, slopes) on the input's device."""
    u = NETWORKS[net]()
    x = torch.randn(3, D, dtype=torch.float64)
    expected = reference(decomposed(u), x, "laplacian")
    actual = do.Laplacian(u.to("cuda"), method="taylor")(x.cuda())
    assert actual.device.type == "cuda"
    assert_close(actual.cpu(), expected)


@pytest.mark.parametrize("net", ["layernorm-residual", "reductions", "transformer-eval"])
def test_the_decomposed_reference_is_the_network(net):
    """The reference computes what the network does, to its second derivatives (where torch's are right)."""
    u = NETWORKS[net]()
    x = torch.randn(4, D, dtype=torch.float64)
    assert_close(decomposed(u)(x), u(x))
    assert_close(reference(decomposed(u), x, "laplacian"), reference(u, x, "laplacian"))


@pytest.mark.parametrize("net", ["layernorm-residual", "transformer-eval"])
def test_auto_takes_the_taylor_engine_for_the_laplacian_and_pure_derivatives(net):
    u = NETWORKS[net]()
    x = torch.randn(3, D, dtype=torch.float64)
    operators = {"laplacian": do.Laplacian(u)} | {(1,) * k: do.Derivative(u, wrt=1, order=k) for k in (2, 3, 4)}
    for key, op in operators.items():
        request = Request(full=frozenset({key})) if key == "laplacian" else Request(frozenset({key}))
        assert candidates("auto", request, D)[0] == "taylor"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback
            actual = op(x)
        assert_close(actual, reference(decomposed(u), x, key))


# -- activations ----------------------------------------------------------------------------------


class Activated(nn.Module):
    """Linear -> f -> Linear -> f -> Linear, with pre-activations spread over [-4, 4] to cover every piece."""

    def __init__(self, f, width: int = 6):
        super().__init__()
        self.f = f if isinstance(f, nn.Module) else Function(f)
        self.a, self.b, self.c = nn.Linear(D + 1, width), nn.Linear(width, width), nn.Linear(width, 1)
        with torch.no_grad():
            self.a.weight.mul_(3)
            self.b.weight.mul_(3)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.f(self.b(self.f(self.a(x)))))


class Sawtooth(nn.Module):
    """``frac``, ``fmod``, ``remainder`` and ``%`` (by a learnt period too), ``floor`` and ``round``."""

    def __init__(self):
        super().__init__()
        self.period = nn.Parameter(torch.tensor(1.3, dtype=torch.float64))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        saw = torch.frac(h) + torch.fmod(h, self.period) + torch.remainder(h, 0.9) + h % self.period
        return torch.sin(saw) + 0.1 * h * torch.floor(h) + torch.round(h, decimals=1) * h


class RadialBasis(nn.Module):
    """Gaussian and Laplacian radial basis functions of ``torch.cdist`` to six learnt centres.

    Torch's ``cdist`` has no second derivative, so no other engine differentiates it twice; the
    reference is :meth:`composed`, the same function through ``vector_norm`` of the differences."""

    def __init__(self, features: int = 6):
        super().__init__()
        self.centres = nn.Parameter(torch.randn(features, features, dtype=torch.float64))
        self.by_norms = False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        euclid, manhattan = (self._distances(h, p) for p in (2, 1))
        return torch.exp(-0.1 * euclid**2) + torch.exp(-0.1 * manhattan)

    def _distances(self, h: torch.Tensor, p: int) -> torch.Tensor:
        if self.by_norms:
            return torch.linalg.vector_norm(h[:, None, :] - self.centres, ord=p, dim=-1)
        return torch.cdist(h, self.centres, p=p)

    def composed(self) -> RadialBasis:
        """The same function, sharing the centres, with the distances as norms of differences."""
        same = copy.copy(self)
        same.by_norms = True
        return same


RADIAL_BASIS = RadialBasis()
FEATURE_CONSTANT = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)  # (features,)
BATCH_CONSTANT = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)[:, None]  # (batch, 1), cut to the batch


def _celu(alpha: float):
    return lambda h: torch.where(h > 0, h, alpha * torch.expm1(h / alpha))


# name: (the activation, a reference of the same function where torch's own backward is not one)
ACTIVATIONS = {
    "elu": (nn.ELU(0.7), None),
    "celu": (nn.CELU(0.7), _celu(0.7)),
    "selu": (nn.SELU(), None),
    "hardtanh": (nn.Hardtanh(-0.5, 0.8), None),
    "relu6": (nn.ReLU6(), None),
    "hardswish": (nn.Hardswish(), None),
    "hardsigmoid": (nn.Hardsigmoid(), lambda h: F.relu6(h + 3) / 6),  # torch has no second derivative of it
    "hardshrink": (nn.Hardshrink(0.3), None),
    "softshrink": (nn.Softshrink(0.3), None),
    "threshold": (nn.Threshold(0.1, 2.0), None),
    "tanhshrink": (nn.Tanhshrink(), None),
    "softsign": (nn.Softsign(), None),
    "logsigmoid": (nn.LogSigmoid(), None),
    "leaky-relu": (nn.LeakyReLU(0.1), None),
    "prelu-channels": (nn.PReLU(6).double(), None),
    "prelu": (nn.PReLU(init=0.3).double(), None),
    "rrelu-eval": (nn.RReLU().eval(), None),
    "mish": (nn.Mish(), None),
    "softplus": (nn.Softplus(beta=2.0, threshold=1.0), None),
    "glu": (lambda h: F.glu(torch.cat([h, h.flip(-1)], -1)), None),
    "softmax": (nn.Softmax(dim=-1), None),
    "softmin": (nn.Softmin(dim=-1), None),
    "log-softmax": (nn.LogSoftmax(dim=-1), None),
    "clamp": (lambda h: h.clamp(-0.5, 1.0), None),
    "layer-norm": (nn.LayerNorm(6, elementwise_affine=False), None),
    "rms-norm": (nn.RMSNorm(6).double(), None),
    # functions of torch's math, their arguments kept inside their domains
    "tan": (lambda h: torch.tan(torch.tanh(h)), None),
    "asin": (lambda h: torch.asin(0.9 * torch.tanh(h)), None),
    "acos": (lambda h: torch.arccos(0.9 * torch.tanh(h)), None),
    "asinh": (torch.asinh, None),
    "acosh": (lambda h: torch.acosh(h * h + 1.5), None),
    "atanh": (lambda h: torch.atanh(0.9 * torch.tanh(h)), None),
    "log2-log10": (lambda h: torch.log2(h * h + 1) + torch.log10(torch.exp(h) + 2), None),
    "exp2": (lambda h: torch.exp2(0.5 * h), None),
    "erfc": (torch.erfc, None),
    "sinc": (torch.sinc, None),  # away from 0 (at 0: tests/engines/test_audit_refusals.py)
    "expit": (torch.special.expit, None),
    # of two tensors (the features against the reversed features, so neither is a copy of the other)
    "atan2": (lambda h: torch.atan2(h, h.flip(-1)) + torch.atan2(torch.tensor(0.3, dtype=h.dtype), h), None),
    "hypot": (lambda h: torch.hypot(h, h.flip(-1)), None),
    "maximum": (lambda h: torch.maximum(h, 0.5 * h.flip(-1)), None),
    "minimum": (lambda h: torch.min(h, torch.tanh(h.flip(-1))), None),
    "logaddexp": (lambda h: torch.logaddexp(h, 2 * h.flip(-1)), None),
    "lerp": (lambda h: torch.lerp(h, h.flip(-1), torch.sigmoid(h)) + torch.lerp(h, torch.tanh(h), 0.3), None),
    "addcmul-addcdiv": (
        lambda h: torch.addcmul(h, h, h.flip(-1), value=0.5) + torch.addcdiv(h, torch.sin(h), h * h + 1, value=-0.3),
        None,
    ),
    # extrema, padding, masks and other linear maps
    "extrema": (lambda h: h * h.amax(-1, keepdim=True) + torch.amin(h, 1, True) + h.min(1).values[:, None], None),
    "pad": (lambda h: F.pad(h[:, 1:-1], (1, 1), value=0.5) + F.pad(h[:, None, 1:-1], (1, 1), "reflect")[:, 0], None),
    "masked-fill": (lambda h: h.masked_fill(h < -1, 0.3) + torch.masked_fill(h, h > 1, -0.2), None),
    "triu-tril": (lambda h: torch.triu(h.reshape(-1, 2, 3)).flatten(1) + h.reshape(-1, 3, 2).tril().flatten(1), None),
    "repeat-interleave": (lambda h: h[:, :3].repeat_interleave(2, -1), None),
    "unfold": (lambda h: h.unfold(-1, 3, 3).flatten(1), None),
    "diff": (lambda h: torch.diff(h, dim=-1, prepend=torch.ones_like(h[:, :1])), None),
    "sawtooth": (Sawtooth(), None),
    "broadcast-constants": (  # a constant of the features' shape, or of the batch's, on either side
        lambda h: torch.maximum(FEATURE_CONSTANT, h) + torch.atan2(h, BATCH_CONSTANT[: h.shape[0]])
        + torch.lerp(FEATURE_CONSTANT, h, 0.3) + torch.addcmul(FEATURE_CONSTANT, h, BATCH_CONSTANT[: h.shape[0]])
        + torch.logaddexp(FEATURE_CONSTANT, h) + torch.hypot(h, FEATURE_CONSTANT),
        None,
    ),
    "cross": (
        lambda h: torch.linalg.cross(h[:, :3], h[:, 3:]).repeat(1, 2)
        + torch.cross(h.reshape(-1, 3, 2), FEATURE_CONSTANT.reshape(1, 3, 2), dim=1).flatten(1),
        None,
    ),
    "addmm-baddbmm": (
        lambda h: torch.addmm(h, h.flip(-1), torch.eye(6, dtype=h.dtype) * 0.5, beta=0.7, alpha=2.0)
        + torch.baddbmm(h.reshape(-1, 2, 3), h[:, :2, None], h[:, None, 3:], alpha=0.3).flatten(1)
        + torch.addmm(torch.ones_like(h), h, h.new_full((6, 6), 0.2), beta=0),
        None,
    ),
    "cdist": (RADIAL_BASIS, RADIAL_BASIS.composed()),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_match_the_reference(name):
    f, same = ACTIVATIONS[name]
    u = Activated(f)
    reference_net = decomposed(u)
    if same is not None:
        reference_net._modules["f"] = Function(same)
    x = torch.randn(5, D + 1, dtype=torch.float64)
    for make, key in (REQUESTS["order-3"], REQUESTS["mixed"], REQUESTS["laplacian"]):
        check(u, make(u)(x), reference(reference_net, x, key), reference_net)


KINKS = {
    "relu": (F.relu, [0.0]),
    "leaky-relu": (lambda h: F.leaky_relu(h, 0.1), [0.0]),
    "elu": (lambda h: F.elu(h, 0.7), [0.0]),
    "selu": (F.selu, [0.0]),
    "hardtanh": (F.hardtanh, [-1.0, 1.0]),
    "relu6": (F.relu6, [0.0, 6.0]),
    "hardswish": (F.hardswish, [-3.0, 3.0]),
    "hardsigmoid": (F.hardsigmoid, [-3.0, 3.0]),
    "hardshrink": (lambda h: F.hardshrink(h, 0.5), [-0.5, 0.5]),
    "softshrink": (lambda h: F.softshrink(h, 0.5), [-0.5, 0.5]),
    "threshold": (lambda h: F.threshold(h, 0.1, 2.0), [0.1]),
    "prelu": (lambda h: F.prelu(h, torch.tensor([0.25], dtype=torch.float64)), [0.0]),
    "clamp": (lambda h: h.clamp(-1.0, 1.0), [-1.0, 1.0]),
    "abs": (torch.abs, [0.0]),
    "softsign": (F.softsign, [0.0]),
}


@pytest.mark.parametrize("name", sorted(KINKS))
@pytest.mark.parametrize("order", [1, 2, 3])
def test_derivatives_at_kinks_are_autograds(name, order):
    """At a kink every derivative is the one nested autograd returns there (and away from it, the smooth one)."""
    f, kinks = KINKS[name]

    def network(f):  # x^4 keeps the reference's graphs alive past the kinks' constants
        weights = torch.tensor([1.0, -2.0], dtype=torch.float64)
        return lambda x: (f(x) * weights).sum(-1, keepdim=True) + 0.1 * (x**4).sum(-1, keepdim=True)

    u, x = network(f), x_at(kinks)
    u_ref = u
    if name == "hardsigmoid":  # torch has no second derivative of it: the same function, and kinks, by relu6
        u_ref = network(lambda h: F.relu6(h + 3) / 6)
        assert_close(ref.partial(u, x, (0,)), ref.partial(u_ref, x, (0,)))
    for i in range(D):
        actual = do.Derivative(u, wrt=i, order=order, method="taylor")(x)
        assert_close(actual, ref.partial(u_ref, x, (i,) * order))
    assert_close(do.Laplacian(u, method="taylor")(x), ref.laplacian(u_ref, x))


@pytest.mark.parametrize(
    "f",
    [
        lambda x: torch.stack([x.amax(-1), x.amin(-1)], -1),
        lambda x: torch.stack([torch.max(x, 1).values, torch.min(x, 1, keepdim=True)[0][:, 0]], -1),
        lambda x: torch.stack([torch.maximum(x[:, 0], x[:, 1]), torch.minimum(x[:, 1], x[:, 0])], -1),
        lambda x: torch.stack([torch.logaddexp(x[:, 0], x[:, 1]), torch.atan2(x[:, 0], x[:, 1])], -1),
    ],
    ids=["amax-amin", "max-min-along-a-dim", "maximum-minimum", "logaddexp-atan2"],
)
def test_extrema_at_ties_are_autograds(f):
    """Where two features are equal (and atan2 on its diagonal, where the rule switches its form), every
    derivative is nested autograd's: the mean of the tied coefficients, or those at the index torch returns."""
    weights = torch.tensor([1.0, -2.0], dtype=torch.float64)
    u = lambda x: (f(x) * weights).sum(-1, keepdim=True) + 0.1 * (x**4).sum(-1, keepdim=True)  # noqa: E731
    x = torch.tensor([[0.3, 0.3], [-0.7, -0.7], [0.5, 0.2], [0.1, 0.6]], dtype=torch.float64)
    for order in (1, 2, 3):
        for i in range(D):
            assert_close(do.Derivative(u, wrt=i, order=order, method="taylor")(x), ref.partial(u, x, (i,) * order))
    assert_close(do.Derivative(u, wrt=(0, 1), method="taylor")(x), ref.partial(u, x, (0, 1)))
    assert_close(do.Laplacian(u, method="taylor")(x), ref.laplacian(u, x))


def test_cdist_at_a_zero_distance_has_autograds_first_derivative():
    """A sample on a centre: ``cdist``'s backward is 0 there, and so is the Taylor engine's first derivative."""
    centres = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=torch.float64)
    u = lambda x: (torch.cdist(x, centres) * torch.tensor([1.0, -2.0], dtype=x.dtype)).sum(-1, keepdim=True)  # noqa: E731
    x = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64)
    for i in range(D):
        assert_close(do.Derivative(u, wrt=i, method="taylor")(x), ref.partial(u, x, (i,)))


def test_the_maximum_of_a_whole_sample_shares_its_ties():
    """``max(x)`` and ``min(x)`` over every element (one sample, so the batch is not mixed)."""
    def u(x: torch.Tensor) -> torch.Tensor:
        extrema = torch.max(torch.cat([x, x[:, :1]], -1)) * torch.min(x)
        return extrema.reshape(1, 1) + 0.1 * (x**4).sum(-1, keepdim=True)

    for x in ([[0.4, 0.1]], [[0.2, 0.2]]):
        x = torch.tensor(x, dtype=torch.float64)
        for index in ((0,), (0, 0), (0, 1), (1, 1, 1)):
            assert_close(do.Derivative(u, wrt=index, method="taylor")(x), ref.partial(u, x, index))


def x_at(kinks: list[float]) -> torch.Tensor:
    """Rows with one coordinate at a kink and the other a quarter away from it."""
    return torch.tensor([[k, k + 0.25] for k in kinks] + [[k - 0.25, k] for k in kinks], dtype=torch.float64)


def test_leaky_relu_slope_is_exact_in_float64():
    u = nn.Sequential(nn.Linear(D, 8), nn.LeakyReLU(0.01), nn.Linear(8, 1)).double()
    with torch.no_grad():
        u[0].bias.fill_(-1.0)  # most pre-activations negative: the slope shows
    x = torch.randn(16, D, dtype=torch.float64)
    for make, key in (REQUESTS["order-1"], REQUESTS["laplacian"]):
        assert_close(make(u)(x), reference(u, x, key), rtol=1e-14)
    assert_close(do.Jacobian(u, method="taylor")(x), ref.jacobian(u, x), rtol=1e-14)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_gelu_tanh_keeps_its_digits_where_its_tanh_saturates(order):
    """``0.5 x (1 + tanh(z))`` with ``z`` cubic in ``x``: ``tanh' = 1 - t^2`` has an error of one unit of 1 where
    ``t`` is near +-1, which the rule multiplies by ``x z'^k``.  In float32 the second derivative at ``x = 5`` came
    out 0 (true: -9.9e-6) and the errors reached 1.2e-5 to 2e-4 of the derivative's largest value over ``[-12,
    12]``, where nested autograd's are 4e-7 to 9e-6; the rule computes ``tanh'`` without the cancellation."""
    x = torch.linspace(-12, 12, 97)[:, None]
    weight = torch.tensor(1.0, requires_grad=True)
    weights = torch.randn(97, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    actual = do.Derivative(lambda z: F.gelu(weight * z, approximate="tanh"), wrt=0, order=order, method="taylor")(x)
    (gradient,) = torch.autograd.grad((actual * weights.float()).sum(), weight)
    weight64 = weight.detach().double().requires_grad_()
    expected = ref.partial(lambda z: F.gelu(weight64 * z, approximate="tanh"), x.double(), (0,) * order)
    (expected_gradient,) = torch.autograd.grad((expected * weights).sum(), weight64)
    assert (actual.double() - expected).abs().max() < 1e-6 * expected.abs().max()
    assert abs(gradient.item() - expected_gradient.item()) < 1e-6 * abs(expected_gradient.item())


class RowByRow(nn.Module):
    """``reduce`` of each sample's first feature, a 0-dim tensor indexed out of the batch, stacked again."""

    def __init__(self, reduce):
        super().__init__()
        self.linear, self.reduce = nn.Linear(D, 3).double(), reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return torch.stack([self.reduce(h[row, 0]) * h[row, 1] for row in range(x.shape[0])]).unsqueeze(-1)


@pytest.mark.parametrize(
    "reduce",
    [
        lambda s: torch.logsumexp(s, dim=(0,), keepdim=True),
        lambda s: torch.amax(s.tanh()),
        lambda s: torch.softmax(s, 0),
        lambda s: s.norm(),
    ],
    ids=["logsumexp", "amax", "softmax", "norm"],
)
def test_reductions_of_a_0_dim_tensor_are_refused(reduce):
    """A 0-dim tensor's dimension 0 named the direction axis of the coefficients: the Laplacian of
    ``logsumexp(s, dim=(0,))``, the identity, came out -0.39 where it is 0, and amax's mixed partial failed."""
    u, x = RowByRow(reduce), torch.randn(4, D, dtype=torch.float64)
    with pytest.raises(EngineUnsupported, match="does not reduce a 0-dim tensor"):
        do.Laplacian(u, method="taylor")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        actual = do.Laplacian(u)(x)
    assert_close(actual, ref.laplacian(u, x))


# -- singular points --------------------------------------------------------------------------------


def test_std_and_norm_at_zero_follow_autograd():
    """std masks its root's singularity to zero at every order; the 2-norm to zero at first order, then NaN."""

    def u(x: torch.Tensor) -> torch.Tensor:
        pair = torch.stack([x[:, 0], 2 * x[:, 0]], dim=-1)  # constant rows where x_0 = 0
        return pair.std(-1, keepdim=True) + 0.5 * x[:, 1:] ** 2

    def v(x: torch.Tensor) -> torch.Tensor:  # the zero vector where x_0 = 0
        return torch.linalg.vector_norm(x * x[:, :1], dim=-1, keepdim=True)

    x = torch.tensor([[0.0, 0.5], [1.0, -1.0]], dtype=torch.float64)
    assert torch.isnan(ref.partial(v, x, (0, 0))[0]).all()  # what autograd has there
    for order in (1, 2, 3):
        for function in (u, v):
            assert_close(
                do.Derivative(function, wrt=0, order=order, method="taylor")(x), ref.partial(function, x, (0,) * order)
            )
    assert_close(do.Laplacian(u, method="taylor")(x), ref.laplacian(u, x))


def test_layer_norm_of_constant_features_is_finite_like_torch():
    """var = 0: the root is that of eps, regular, as in torch."""
    u = nn.Sequential(nn.Linear(D, 4), nn.LayerNorm(4), nn.Linear(4, 1)).double()
    with torch.no_grad():
        u[0].weight[:, 0] = 1.0  # every feature the same function of x_0 ...
        u[0].weight[:, 1] = 0.0
        u[0].bias.zero_()
    x = torch.randn(4, D, dtype=torch.float64)
    actual = do.Laplacian(u, method="taylor")(x)
    assert torch.isfinite(actual).all()
    assert_close(actual, ref.laplacian(u, x))


def test_normalize_of_a_zero_vector_is_clamped_like_torch():
    """Below eps F.normalize is ``v / eps``: smooth, where autograd's second derivative is NaN (0 times the
    norm's NaN); elsewhere the reference."""
    eps = 1e-3

    def u(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x * x[:, :1], dim=-1, eps=eps).sum(-1, keepdim=True)

    x = torch.tensor([[0.0, 0.3], [0.5, -1.0]], dtype=torch.float64)
    first = do.Derivative(u, wrt=0, method="taylor")(x)
    assert_close(first, ref.partial(u, x, (0,)))
    second = do.Derivative(u, wrt=0, order=2, method="taylor")(x)
    assert_close(second[1:], ref.partial(u, x, (0, 0))[1:])
    assert_close(second[:1], torch.tensor([[2 / eps]], dtype=torch.float64))  # u = x_0 (x_0 + x_1) / eps near row 0


# -- refusals and bad input ---------------------------------------------------------------------------


REFUSED = {
    "dropout": (lambda h: F.dropout(h, 0.1, training=True), "dropout"),
    "rrelu": (lambda h: F.rrelu(h, training=True), "rrelu"),
    "batch-norm": (lambda h: F.batch_norm(h, None, None, training=True), "batch_norm"),
    "norm-ord-0": (lambda h: torch.linalg.vector_norm(h, ord=0, dim=-1, keepdim=True), "vector_norm.*ord=0"),
    "sdpa-dropout": (
        lambda h: F.scaled_dot_product_attention(h[:, None], h[:, None], h[:, None], dropout_p=0.5),
        "attention",
    ),
    "inplace": (lambda h: F.elu(2.0 * h, inplace=True), "elu"),  # in place on an intermediate, as layers do
    "modulo-by-the-input": (lambda h: h % (h * h + 1), "__mod__ with a divisor that depends on the input"),
    "fill-by-the-input": (lambda h: h.masked_fill(h > 0, h.sum()), "masked_fill.*fill value that depends"),
    "cdist-p0": (lambda h: torch.cdist(h, torch.ones(3, h.shape[-1], dtype=h.dtype), p=0.0), "cdist.*ord=0"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_random_or_unsupported_layers_are_refused_by_name(name):
    f, op_name = REFUSED[name]
    x = torch.randn(3, D, dtype=torch.float64)
    with pytest.raises(EngineUnsupported, match=op_name):
        do.Laplacian(f, method="taylor")(x)


def test_layers_that_are_off_are_the_identity():
    u = nn.Sequential(nn.Linear(D, 4), nn.Dropout(0.3), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double().eval()
    with torch.no_grad():
        u[2].running_mean.normal_()
        u[2].running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, D, dtype=torch.float64)
    check(u, do.Laplacian(u, method="taylor")(x), ref.laplacian(u, x), u)


@pytest.mark.parametrize(
    "f, match",
    [
        (lambda h: F.group_norm(h, 3), "group_norm.*num_groups=3.*shape \\(3, 2\\)"),
        (lambda h: F.glu(h[:, :1]), "glu.*even.*shape \\(3, 1\\)"),
    ],
)
def test_bad_shapes_name_the_layer(f, match):
    x = torch.randn(3, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):  # the rule's own check, on jets
        ENGINES["taylor"].compute(f, x, Request(full=frozenset({"laplacian"})))
    # through an operator it is u's own error (u fails without derivatives too): raised once, with the shapes
    with pytest.raises(RuntimeError, match=r"Laplacian: u itself raised RuntimeError on inputs of shape \(3, 2\)"):
        do.Laplacian(f, method="taylor")(x)


# -- the hand-written backward of the new series --------------------------------------------------------


@pytest.mark.parametrize("f", [nn.ELU(0.7), nn.SELU(), nn.LogSigmoid()], ids=["elu", "selu", "logsigmoid"])
def test_new_series_backward_is_twice_differentiable(f):
    u = Activated(f, width=3)
    x = torch.randn(2, D + 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(do.Derivative(u, wrt=(0, 1, 1), method="taylor"), (x,))
    assert torch.autograd.gradgradcheck(do.Laplacian(u, method="taylor"), (x,))


def test_the_activations_see_both_sides_of_their_kinks():
    """A sanity check of the test inputs: the activations see pre-activations on both sides of their kinks."""
    u = Activated(nn.Identity())
    h = u.b(u.a(torch.randn(5, D + 1, dtype=torch.float64)))
    assert (h < -math.pi / 2).any() and (h > math.pi / 2).any()


@pytest.mark.parametrize(
    "net", [pytest.param(n, marks=pytest.mark.slow) for n in ("layernorm-residual", "transformer-eval", "reductions")]
    + ["polar"],  # the rules of two tensors, extrema and padding, in the default suite
)
def test_torch_compile_traces_the_new_rules_in_one_graph(net):
    torch._dynamo.reset()
    u = NETWORKS[net]()
    op = do.Laplacian(u, method="taylor")
    x = torch.randn(4, D, dtype=torch.float64)

    def loss_step(x: torch.Tensor) -> torch.Tensor:
        return (op(x) - 1.0).square().mean()

    eager = loss_step(x)
    with warnings_as_errors():
        compiled = torch.compile(loss_step, backend="aot_eager", fullgraph=True)(x)
    assert_close(compiled, eager)
    for a, e in zip(ref.parameter_gradients(u, compiled), ref.parameter_gradients(u, eager)):
        assert_close(a, e)


class Functional(nn.Module):
    """The four activations dynamo put in the graph without asking the jet: ``F.tanh``, ``F.sigmoid``, hard ones."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(D, 6), nn.Linear(6, 6), nn.Linear(6, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.tanh(self.a(x))
        return self.c(F.hardswish(self.b(h)) + F.sigmoid(self.b(F.hardsigmoid(2 * h))))


@pytest.mark.parametrize("method", ["taylor", "auto"])
def test_torch_compile_dispatches_the_functional_activations_to_jets(method):
    """Before, compiling failed here ("Failed to convert args/kwargs to proxy"), under auto too."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    u, x = Functional(), 3 * torch.randn(6, D, dtype=torch.float64)  # both sides of the hard kinks
    op = do.Derivative(u, wrt=(0, 0, 1), method=method)
    compiled = torch.compile(lambda x: op(x), backend="aot_eager", fullgraph=True)(x)
    expected = ref.partial(u, x, (0, 0, 1))
    assert_close(compiled, expected)
    for a, e in zip(ref.parameter_gradients(u, compiled), ref.parameter_gradients(u, expected)):
        assert_close(a, e)


class HandAttention(nn.Module):
    """Self-attention written with ``@`` between two input-dependent tensors, over 3 tokens of 4 channels."""

    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(D, 12), nn.Linear(12, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x)).unflatten(-1, (3, 4))
        weights = torch.softmax(h @ h.mT / 2, dim=-1)
        return self.c((weights @ h).flatten(-2))


@pytest.mark.parametrize("method", ["taylor", "auto"])
def test_torch_compile_traces_a_product_of_two_jets(method):
    """Before, dynamo failed on ``jet @ jet`` ("Failed to trace builtin operator `matmul`"), under auto too."""
    torch.manual_seed(0)
    u, x = HandAttention(), torch.randn(5, D, dtype=torch.float64)
    assert_compiled_matches(do.Laplacian(u, method=method), (x,), u, ref.laplacian(u, x))


def assert_compiled_matches(op: nn.Module, inputs: tuple, u: nn.Module, expected: torch.Tensor) -> None:
    """``op`` compiled (``fullgraph=True``) on ``inputs``: ``expected``'s values and ``u``'s parameters' gradients."""
    torch._dynamo.reset()
    check(u, torch.compile(lambda *args: op(*args), backend="aot_eager", fullgraph=True)(*inputs), expected, u)


class Recurrent(nn.Module):
    """Two steps of a recurrent cell, the second fed the first's state (a jet): ``x -> cell -> cell -> Linear``."""

    def __init__(self, kind: str):
        super().__init__()
        cells = {
            "GRUCell": lambda: nn.GRUCell(4, 6),
            "LSTMCell": lambda: nn.LSTMCell(4, 6),
            "RNNCell": lambda: nn.RNNCell(4, 6),
            "RNNCell-relu": lambda: nn.RNNCell(4, 6, nonlinearity="relu"),
        }
        self.kind, self.stem, self.cell, self.head = kind, nn.Linear(D, 4), cells[kind](), nn.Linear(6, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = torch.tanh(self.stem(x))
        state = self.cell(0.5 * inputs, self.cell(inputs))
        return self.head(state[0] if self.kind == "LSTMCell" else state)


CELLS = ["GRUCell", "LSTMCell", "RNNCell", "RNNCell-relu"]


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("request_name", ["order-1", "order-3", "laplacian", "mixed"])
def test_recurrent_cells_match_the_reference(kind, request_name):
    """Taylor mode refused ``gru_cell`` and ``lstm_cell``, so compiled ``auto`` fell to torch.func, which crashed
    inside inductor; the cells are now compositions of the existing rules."""
    torch.manual_seed(0)
    u, x = Recurrent(kind), torch.randn(5, D, dtype=torch.float64)
    make, key = REQUESTS[request_name]
    check(u, make(u)(x), reference(u, x, key), u)


def test_a_compiled_lstm_laplacian_runs_on_taylor_mode():
    torch.manual_seed(0)
    u, x = Recurrent("LSTMCell"), torch.randn(5, D, dtype=torch.float64)
    assert_compiled_matches(do.Laplacian(u), (x,), u, ref.laplacian(u, x))


class JoinedInputs(nn.Module):
    """``u(x, t)`` on ``torch.cat((x, t), dim=1)``: the inputs joined as a tuple, as PINN code writes it."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat((x, t), dim=1))


@pytest.mark.parametrize("method", ["taylor", "auto"])
def test_torch_compile_finds_jets_inside_a_tuple(method):
    """Dynamo looks for ``__torch_function__`` inside lists but not tuples: ``torch.cat((x, t), 1)`` of jets
    failed to compile ("Failed to convert args/kwargs to proxy"), under auto too."""
    torch.manual_seed(0)
    u, x, t = JoinedInputs(), torch.randn(5, 1, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    expected = ref.laplacian(lambda z: u(z[:, :1], z[:, 1:]), torch.cat([x, t], 1))
    assert_compiled_matches(do.Laplacian(u, argnums=(0, 1), method=method), (x, t), u, expected)


class PNorm(nn.Module):
    """``|h|_p tanh(h)`` over the features: ``x -> Linear -> that -> Linear``."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.stem, self.head = p, nn.Linear(D, 6).double(), nn.Linear(6, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(torch.linalg.vector_norm(h, ord=self.p, dim=-1, keepdim=True) * torch.tanh(h))


@pytest.mark.parametrize("p", [3, 1.5, math.inf, -math.inf])
@pytest.mark.parametrize("request_name", ["order-3", "laplacian", "mixed"])
def test_p_norms_match_the_reference(p, request_name):
    """Taylor mode had the 1- and 2-norms only; torch.func refuses the norm from order 2, so a compiled step on
    ``vector_norm(h, ord=3)`` had no engine (nested autograd does not compile)."""
    torch.manual_seed(0)
    u, x = PNorm(p), torch.randn(5, D, dtype=torch.float64)
    make, key = REQUESTS[request_name]
    check(u, make(u)(x), reference(u, x, key), u)


def test_a_compiled_p_norm_laplacian_runs():
    torch.manual_seed(0)
    u, x = PNorm(3), torch.randn(5, D, dtype=torch.float64)
    assert_compiled_matches(do.Laplacian(u), (x,), u, ref.laplacian(u, x))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_cosine_similarity_below_eps_follows_torch(order):
    """Torch clamps the norms to ``eps`` in place without grad: below ``eps`` the value takes the clamp and the
    derivatives the unclamped norm's (a plain clamp would give other first and zero second derivatives)."""
    torch.manual_seed(0)
    anchor = torch.randn(3, dtype=torch.float64)

    def small(x: torch.Tensor) -> torch.Tensor:
        return 1e-10 * torch.stack([x[:, 0], x[:, 1], x[:, 0] * x[:, 1]], -1)

    def u(x: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(small(x), anchor, dim=-1, eps=1e-8).unsqueeze(-1)

    def clamped(x: torch.Tensor) -> torch.Tensor:  # the plain clamp, whose derivatives differ
        norm = torch.linalg.vector_norm(small(x), dim=-1, keepdim=True).clamp_min(1e-8)
        return (small(x) / norm * anchor / anchor.norm()).sum(-1, keepdim=True)

    x = torch.randn(5, 2, dtype=torch.float64)
    assert (torch.linalg.vector_norm(small(x), dim=-1) < 1e-8).all()
    index = (0,) * order
    actual = do.Derivative(u, wrt=index, method="taylor")(x)
    assert_close(actual, ref.partial(u, x, index), rtol=1e-10)
    assert not torch.allclose(actual, ref.partial(clamped, x, index), rtol=1e-3)
