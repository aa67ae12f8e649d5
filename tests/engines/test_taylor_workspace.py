"""The work buffers the fused layers keep between calls: reuse, limits, isolation, exactness when calls interleave."""

from __future__ import annotations

import threading

import pytest
import torch

import diffops as do
from diffops.engines.taylor import workspace

from .. import reference as ref
from ..nets import mlp
from .test_taylor_fast_paths import Gated, assert_close


@pytest.fixture(autouse=True)
def empty_workspace():
    workspace.clear()
    yield
    workspace.clear()


def test_a_buffer_is_the_same_tensor_each_time_its_use_and_shape_recur():
    like = torch.zeros(2, dtype=torch.float64)
    first = workspace.buffer("product", (3, 4), like)
    assert first.shape == (3, 4) and first.dtype == torch.float64
    assert workspace.buffer("product", (3, 4), like) is first
    assert workspace.buffer("product", (4, 3), like) is not first
    assert workspace.buffer("z", (3, 4), like) is not first
    assert workspace.buffer("product", (3, 4), like.float()) is not first


def test_inference_mode_keeps_buffers_of_its_own():
    """A tensor made under inference mode cannot be written outside it, and the reverse is kept apart too."""
    like = torch.zeros(2)
    with torch.inference_mode():
        inside = workspace.buffer("product", (3,), like)
        assert inside.is_inference()
    outside = workspace.buffer("product", (3,), like)
    assert outside is not inside and not outside.is_inference()
    outside.fill_(1.0)


def test_threads_never_share_a_buffer():
    like, theirs = torch.zeros(2), []
    mine = workspace.buffer("product", (3,), like)
    thread = threading.Thread(target=lambda: theirs.append(workspace.buffer("product", (3,), like)))
    thread.start()
    thread.join()
    assert theirs[0] is not mine


def test_other_devices_get_a_fresh_tensor_each_time():
    like = torch.zeros(2, device="meta")
    assert workspace.buffer("product", (3,), like) is not workspace.buffer("product", (3,), like)


def test_at_most_the_limit_is_kept_the_least_recently_used_dropped_first(monkeypatch):
    monkeypatch.setattr(workspace, "LIMIT", 3 * 400)  # three buffers of 100 float32
    like = torch.zeros(1)
    kept = [workspace.buffer(use, (100,), like) for use in ("a", "b", "c")]
    assert workspace.buffer("a", (100,), like) is kept[0]  # "a" is now the most recently used
    workspace.buffer("d", (100,), like)  # one over the limit: "b" goes
    assert workspace.buffer("a", (100,), like) is kept[0]
    assert workspace.buffer("c", (100,), like) is kept[2]
    assert workspace.buffer("b", (100,), like) is not kept[1]


def test_a_buffer_over_the_limit_is_still_handed_out(monkeypatch):
    monkeypatch.setattr(workspace, "LIMIT", 8)
    big = workspace.buffer("a", (100,), torch.zeros(1))
    assert big.shape == (100,)


@pytest.mark.parametrize("net", ["tanh", "gated"])
def test_interleaved_steps_of_two_networks_of_one_shape_stay_exact(net):
    """Two graphs alive at once, their chains sharing the buffers: each backward still gives the reference."""
    torch.manual_seed(0)
    make = {"tanh": lambda: mlp(2, 1, width=8, depth=3), "gated": lambda: Gated(2, 1)}[net]
    nets = [make(), make()]
    x = torch.randn(6, 2, dtype=torch.float64)
    hessians = [do.Hessian(u, method="taylor") for u in nets]
    values = [hessian(x) for hessian in hessians]  # both forwards before either backward
    assert workspace._kept(), "the chains ran without the workspace"
    for u, value in zip(reversed(nets), reversed(values)):
        rows = [torch.stack([ref.partial(u, x, (i, j)) for j in range(2)], -1) for i in range(2)]
        expected = torch.stack(rows, -2)
        assert_close(value, expected)
        for actual, wanted in zip(ref.parameter_gradients(u, value), ref.parameter_gradients(u, expected)):
            assert_close(actual, wanted)
