"""Property tests of Taylor mode's rules for layers on grids: convolutions, pools, interpolation.

Each draw builds ``Linear(d, C L) -> tanh -> layer -> tanh -> Linear(., 1)`` with the
layer's options drawn (kernel, stride, padding and its mode, dilation, groups, ceil
mode, interpolation mode and size), and checks a random derivative of Taylor mode,
values and parameter gradients, against the float64 nested-autograd reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import diffops as do

from .. import reference as ref

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


class OnGrid(nn.Module):
    """``x -> Linear(d, C * prod(shape)) -> [tanh] -> layer on (N, C, *shape) -> tanh -> Linear(., 1)``.

    Without the first tanh the layer reads a jet of degree one (its coefficients above the first are zero).
    """

    def __init__(self, d: int, channels: int, shape: tuple[int, ...], layer: nn.Module, smooth: bool = True):
        super().__init__()
        self.channels, self.shape, self.smooth = channels, shape, smooth
        self.lift = nn.Linear(d, channels * torch.Size(shape).numel())
        self.layer = layer
        with torch.no_grad():
            features = layer(torch.zeros(1, channels, *shape)).numel()
        self.read = nn.Linear(features, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lift(x)
        h = (torch.tanh(h) if self.smooth else h).reshape(x.shape[0], self.channels, *self.shape)
        return self.read(torch.tanh(self.layer(h)).flatten(1))


def _shape(draw, dims: int) -> tuple[int, ...]:
    return tuple(draw(st.integers(3, 6)) for _ in range(dims))


@st.composite
def convolutions(draw):
    dims, channels = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2]))
    shape = _shape(draw, dims)
    groups = draw(st.sampled_from([1, channels]))
    kernel, stride = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    transposed = draw(st.booleans())
    if transposed:
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d)[dims - 1]
        layer = cls(channels, 2 * groups, kernel, stride=stride, dilation=draw(st.integers(1, 2)), groups=groups)
    else:
        cls = (nn.Conv1d, nn.Conv2d)[dims - 1]
        mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
        padding = draw(st.integers(0, 1)) if mode == "zeros" else 1
        fits = (2 * (kernel - 1) + 1 <= min(shape) + 2 * padding) + 1  # the dilated kernel within the padded input
        dilation = draw(st.integers(1, fits))
        layer = cls(channels, 2 * groups, kernel, stride, padding, dilation, groups, padding_mode=mode)
    return channels, shape, layer


@st.composite
def pools(draw):
    dims = draw(st.integers(1, 2))
    shape = _shape(draw, dims)
    kind = draw(st.sampled_from(["avg", "max", "adaptive"]))
    kernel = draw(st.integers(2, 3))
    stride, padding, ceil = draw(st.integers(1, 2)), draw(st.integers(0, 1)), draw(st.booleans())
    if kind == "adaptive":
        layer = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)[dims - 1](draw(st.integers(1, 3)))
    elif kind == "avg":
        count = draw(st.booleans())
        layer = (nn.AvgPool1d, nn.AvgPool2d)[dims - 1](kernel, stride, padding, ceil, count_include_pad=count)
    else:
        fits = (2 * (kernel - 1) + 1 <= min(shape) + 2 * padding) + 1  # the dilated window within the padded input
        dilation = draw(st.integers(1, fits))
        layer = (nn.MaxPool1d, nn.MaxPool2d)[dims - 1](kernel, stride, padding, dilation, ceil_mode=ceil)
    return 1, shape, layer


class Interpolated(nn.Module):
    def __init__(self, size: tuple[int, ...], mode: str, align_corners: bool | None):
        super().__init__()
        self.size, self.mode, self.align_corners = size, mode, align_corners

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.interpolate(h, size=self.size, mode=self.mode, align_corners=self.align_corners)


@st.composite
def interpolations(draw):
    dims = draw(st.integers(1, 2))
    mode = draw(st.sampled_from({1: ["nearest", "nearest-exact", "linear", "area"], 2: ["bilinear", "bicubic"]}[dims]))
    corners = draw(st.booleans()) if mode in ("linear", "bilinear", "bicubic") else None
    return 1, _shape(draw, dims), Interpolated(_shape(draw, dims), mode, corners)


def check(problem, data) -> None:
    channels, shape, layer = problem
    d = data.draw(st.integers(1, 3))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    net, x = OnGrid(d, channels, shape, layer, data.draw(st.booleans())), torch.randn(4, d, dtype=torch.float64)
    index = tuple(sorted(data.draw(st.lists(st.integers(0, d - 1), min_size=1, max_size=3))))
    actual = do.Derivative(net, wrt=index, method="taylor")(x)
    expected = ref.partial(net, x, index)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11)
    for a, e in zip(ref.parameter_gradients(net, actual), ref.parameter_gradients(net, expected)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


@SETTINGS
@given(problem=convolutions(), data=st.data())
def test_convolutions(problem, data):
    check(problem, data)


@SETTINGS
@given(problem=pools(), data=st.data())
def test_pools(problem, data):
    check(problem, data)


@SETTINGS
@given(problem=interpolations(), data=st.data())
def test_interpolation(problem, data):
    check(problem, data)
