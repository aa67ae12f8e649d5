"""An engine whose answer PyTorch cannot differentiate once more refuses (``diffops/_trainable.py``)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import diffops as do
from diffops import _trainable
from diffops.engines import EngineUnsupported, audit

from . import reference as ref


class RadialBasis(nn.Module):
    """``head(exp(-cdist(stem(x), centres)))``: torch's ``cdist`` has no double backward."""

    def __init__(self, distance=torch.cdist):
        super().__init__()
        self.stem, self.centres, self.head = nn.Linear(2, 3), nn.Parameter(torch.randn(4, 3)), nn.Linear(4, 1)
        self.distance = distance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.exp(-self.distance(self.stem(x), self.centres)))


def composed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a[:, None, :] - b[None]) ** 2).sum(-1).sqrt()


def model() -> tuple[RadialBasis, RadialBasis, torch.Tensor]:
    torch.manual_seed(0)
    u = RadialBasis().double()
    reference = RadialBasis(composed).double()
    reference.load_state_dict(u.state_dict())
    return u, reference, torch.randn(5, 2, dtype=torch.float64)


def test_nested_autograd_refuses_a_first_derivative_it_cannot_train():
    """Its gradient through ``cdist`` is right, but the parameters' gradients of it raised at ``backward()``."""
    u, _, x = model()
    with pytest.raises(EngineUnsupported, match=r"cannot differentiate its answer once more.*_cdist_backward"):
        do.Derivative(u, wrt=0, method="autograd")(x)
    with torch.no_grad():  # nothing is differentiated further without gradients: not refused
        do.Derivative(u, wrt=0, method="autograd")(x)


def test_auto_moves_on_to_an_engine_whose_answer_trains():
    u, reference, x = model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto announces that it moved on
        actual = do.Gradient(u)(x)
    expected = torch.stack([ref.partial(reference, x, (i,)) for i in range(2)], -1)
    torch.testing.assert_close(actual, expected.reshape(actual.shape), rtol=1e-9, atol=1e-11)
    for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(reference, expected)):
        torch.testing.assert_close(a, e.reshape(a.shape), rtol=1e-9, atol=1e-11)


def test_a_forward_mode_failure_the_audit_does_not_know_is_refused(monkeypatch):
    """Without its entry in the audit, torch.func's second derivative through ``pairwise_distance`` came back and
    its parameters' gradients failed ("modified by an inplace operation"); the backward pass refuses it."""
    monkeypatch.delitem(audit.FORWARD_MODE_FAILURES, torch.pairwise_distance)
    torch.manual_seed(0)
    stem, head = nn.Linear(2, 6).double(), nn.Linear(1, 1).double()
    u = nn.Sequential(stem, Pairwise(), head)
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(EngineUnsupported, match=r"method='func' answered.*modified by an inplace operation"):
        do.Derivative(u, wrt=0, order=2, method="func")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        actual = do.Derivative(u, wrt=0, order=2, method="auto")(x)
    expected = ref.partial(u, x, (0, 0))
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11)
    for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


class Pairwise(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.pairwise_distance(h[:, :3], h[:, 3:]).unsqueeze(-1)


def test_asked_once_per_network_engine_and_request(monkeypatch):
    calls = []
    probe = _trainable._probe
    monkeypatch.setattr(_trainable, "_probe", lambda outputs: calls.append(1) or probe(outputs))
    u = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(6, 2)
    for _ in range(3):
        do.Laplacian(u, method="taylor")(x)
    assert len(calls) == 1
    do.Derivative(u, wrt=0, method="taylor")(x)  # another request
    assert len(calls) == 2
    with torch.no_grad():
        do.Derivative(u, wrt=1, method="taylor")(x)  # nothing to differentiate: not asked
    assert len(calls) == 2


def test_parameters_gradients_are_not_accumulated():
    u = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    do.Laplacian(u, method="taylor")(torch.randn(6, 2))
    assert all(p.grad is None for p in u.parameters())
