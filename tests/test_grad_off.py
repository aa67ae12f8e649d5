"""Calls made without gradients on a network with a grad-off part give the number a call with gradients gives."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import diffops as do
from diffops import _grad_off
from diffops.engines import ENGINES, EngineUnsupported

from . import reference as ref
from .engines.test_audit_refusals import _Cube


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(2, 8), nn.Linear(8, 1)
        self.double()


class StopGradient(TwoLayers):
    """Features divided by a scale computed under ``torch.no_grad()``: a constant to autograd."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        with torch.no_grad():
            scale = h.square().sum(-1, keepdim=True) + 1
        return self.b(h / scale)


class CustomFunction(TwoLayers):
    """A custom ``autograd.Function`` (``x^3`` with a ``jvp`` from saved tensors) between two layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_Cube.apply(torch.tanh(self.a(x))))


NETWORKS = {"stop-gradient": StopGradient, "custom-function": CustomFunction}
OPERATORS = {
    "laplacian": (lambda u: do.Laplacian(u), ref.laplacian),
    "mixed third": (lambda u: do.Derivative(u, wrt=(0, 0, 1)), lambda u, x: ref.partial(u, x, (0, 0, 1))),
}


def points() -> torch.Tensor:
    return torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("operator", sorted(OPERATORS))
@pytest.mark.parametrize("net", sorted(NETWORKS))
def test_without_gradients_auto_gives_the_reference(net, operator):
    """Before, the stop-gradient network's Laplacian came out 0.16 off, and the custom Function failed on jets."""
    u, x = NETWORKS[net](), points()
    make, reference = OPERATORS[operator]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto names the engines that refused the grad-off part
        with torch.no_grad():
            value = make(u)(x)
    assert not value.requires_grad
    torch.testing.assert_close(value, reference(u, x).detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("net", sorted(NETWORKS))
def test_without_gradients_taylor_refuses_the_grad_off_part(net):
    with torch.no_grad(), pytest.raises(EngineUnsupported, match="with gradients turned off inside the network"):
        do.Laplacian(NETWORKS[net](), method="taylor")(points())


def test_other_networks_keep_the_engines_path_without_gradients(monkeypatch):
    """The engines' faster path without gradients stays for a network with no grad-off part."""
    modes = []
    taylor = ENGINES["taylor"]
    original = taylor.compute
    monkeypatch.setattr(taylor, "compute", lambda *args: modes.append(torch.is_grad_enabled()) or original(*args))
    u = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Dropout(0.0), nn.Linear(8, 1)).double()
    with torch.no_grad():
        value = do.Laplacian(u, method="taylor")(points())
    assert modes == [False]
    torch.testing.assert_close(value, ref.laplacian(u, points()).detach(), rtol=1e-10, atol=1e-12)


def test_probed_once_per_network(monkeypatch):
    probes = []
    original = _grad_off._probe
    monkeypatch.setattr(_grad_off, "_probe", lambda rows, u: probes.append(u) or original(rows, u))
    u = StopGradient()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        do.Laplacian(u)(points())
        do.Laplacian(u)(points())
        do.Derivative(u, wrt=0)(points())
    assert probes == [u]


def test_with_gradients_nothing_is_probed(monkeypatch):
    monkeypatch.setattr(_grad_off, "_probe", lambda rows, u: pytest.fail("probed a call with gradients"))
    u = StopGradient()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        do.Laplacian(u)(points())
