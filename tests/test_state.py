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
