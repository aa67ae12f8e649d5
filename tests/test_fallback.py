"""Networks torch.func cannot transform work through a fallback or fail with a message saying what to change."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import diffops as do
from diffops.engines import METHODS

from . import reference as ref


class InPlace(nn.Module):
    """Activations applied in place, and a buffer updated in place on every call."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 8), nn.Linear(8, 1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.a(x)
        h.tanh_()
        return self.b(h)


class Branching(nn.Module):
    """Control flow that depends on the data."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 8), nn.Linear(8, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        if h.mean() > 0:
            h = h * 2
        return self.b(h)


def batchnorm_training() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double().train()


NETS = {"in-place": InPlace, "branching": Branching, "batchnorm-training": batchnorm_training}


@pytest.mark.parametrize("net", sorted(NETS))
def test_auto_handles_networks_that_vmap_cannot(net):
    u = NETS[net]()
    x = torch.randn(16, 2, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fallback announces itself once; that is tested elsewhere
        value = do.Laplacian(u)(x)
        mixed = do.Derivative(u, wrt=(0, 1))(x)
    torch.testing.assert_close(value, ref.laplacian(u, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mixed, ref.partial(u, x, (0, 1)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "auto"])
@pytest.mark.parametrize("net", sorted(NETS))
def test_explicit_methods_work_or_say_what_to_change(method, net):
    u = NETS[net]()
    x = torch.randn(16, 2, dtype=torch.float64)
    try:
        value = do.Laplacian(u, method=method)(x)
    except RuntimeError as error:
        message = str(error)
        assert message.startswith(f"Laplacian: method={method!r} cannot differentiate this network")
        assert "method='autograd'" in message
        assert method != "autograd"
    else:
        torch.testing.assert_close(value, ref.laplacian(u, x), rtol=1e-10, atol=1e-12)
