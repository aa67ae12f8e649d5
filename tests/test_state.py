"""An operator call updates a network's buffers as one forward pass does, whichever engines it tries."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import diffops as do
from diffops.engines import EngineUnsupported


def batch_norm_net(momentum: float | None) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8, momentum=momentum), nn.Tanh(), nn.Linear(8, 1)).double()


OPERATORS = {
    "laplacian": lambda u: do.Laplacian(u),
    "derivative": lambda u: do.Derivative(u, wrt=0),
    "hessian": lambda u: do.Hessian(u),
}


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_auto_updates_the_running_statistics_once(operator, momentum):
    x = torch.randn(6, 3, dtype=torch.float64)
    once = batch_norm_net(momentum)
    once(x)
    u = batch_norm_net(momentum)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto names the engines that refused batch statistics
        OPERATORS[operator](u)(x)
    for name, expected in once[1].named_buffers():  # the engine may compute the statistics by a composition
        torch.testing.assert_close(dict(u[1].named_buffers())[name], expected, rtol=1e-12, atol=1e-14)


def test_a_call_no_engine_can_do_leaves_the_buffers_as_they_were():
    x = torch.randn(6, 3, dtype=torch.float64)
    u = batch_norm_net(0.1)
    before = {name: buffer.clone() for name, buffer in u.named_buffers()}
    with pytest.raises(EngineUnsupported, match="batch_norm"):
        do.Laplacian(u, method="taylor")(x)
    for name, buffer in u.named_buffers():
        torch.testing.assert_close(buffer, before[name], rtol=0, atol=0)


def test_networks_in_eval_mode_or_without_buffers_are_not_copied(monkeypatch):
    from diffops import _state

    copied = []
    monkeypatch.setattr(_state.Snapshot, "__init__", lambda self, buffers: copied.append(buffers))
    x = torch.randn(6, 3, dtype=torch.float64)
    do.Laplacian(batch_norm_net(0.1).eval())(x)
    do.Laplacian(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double())(x)
    assert copied == []


class BufferedFeatures(nn.Module):
    """Fourier features and an output scale stored as buffers, in training mode (``nn.Module``'s default)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.register_buffer("frequencies", torch.randn(2, 4, dtype=torch.float64))
        self.register_buffer("scale", torch.randn(8, dtype=torch.float64))
        self.hidden = nn.Linear(8, 8).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.frequencies  # saves the buffer for the gradient in x
        features = torch.cat([z.sin(), z.cos()], -1)
        return (torch.tanh(self.hidden(features)) * self.scale).sum(-1, keepdim=True)  # saves it again


@pytest.mark.parametrize("method", ["auto", "taylor", "func", "autograd"])
def test_buffers_a_graph_saved_are_not_written_back(method):
    """The probes put back the buffers of modules in training mode by writing into them, which bumped the
    version of buffers nothing had changed: a graph that saved one then failed in ``backward()`` ("modified by
    an inplace operation"), on the first call of each network."""
    from . import reference as ref

    u, x = BufferedFeatures(), torch.randn(5, 2, dtype=torch.float64)
    versions = [buffer._version for buffer in u.buffers()]
    actual = do.Laplacian(u, method=method)(x)
    expected = ref.laplacian(u, x)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    assert [buffer._version for buffer in u.buffers()] == versions
