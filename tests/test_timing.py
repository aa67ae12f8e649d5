"""``method="auto"`` times the engines its cost model cannot tell apart, and only those (``diffops._timing``)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import diffops as do
from diffops import _timing
from diffops.engines import ENGINES, Request
from diffops.engines.choice import too_close

BURGERS = {"u": (), "u_t": "t", "u_x": "x", "u_xx": ("x", "x")}  # modelled 6.2 (Taylor) vs 6.3 (autograd)
KDV = {"u": (), "u_t": "t", "u_x": "x", "u_xxx": ("x", "x", "x")}  # Taylor modelled 1.9x cheaper


class Residual(do.DifferentialOperator):
    def __init__(self, u: nn.Module, spec: dict) -> None:
        super().__init__(u, coords=("x", "t"))
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(self.derivatives(x, spec=self.spec).values())


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts each engine's ``compute`` calls; ``calls["slow"]`` names an engine made 30 ms slower."""
    counts: dict = {name: 0 for name in ENGINES} | {"slow": None}
    for name, engine in ENGINES.items():

        def compute(fn, x, request, name=name, original=engine.compute):
            counts[name] += 1
            if counts["slow"] == name:
                time.sleep(0.03)
            return original(fn, x, request)

        monkeypatch.setattr(engine, "compute", compute)
    return counts


@pytest.fixture
def timed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The engines each timing compared."""
    compared: list = []
    original = _timing.fastest_first

    def fastest_first(names, run, parameters):
        compared.append(names)
        return original(names, run, parameters)

    monkeypatch.setattr(_timing, "fastest_first", fastest_first)
    return compared


def plan(op: do.DifferentialOperator) -> tuple[str, ...]:
    (engines,) = op._plans.values()
    return engines


def test_the_burgers_request_is_a_close_call_and_kdv_is_not() -> None:
    burgers = Request(frozenset({(), (1,), (0,), (0, 0)}))
    kdv = Request(frozenset({(), (1,), (0,), (0, 0, 0)}))
    assert set(too_close(burgers, 2)) == {"taylor", "autograd"}
    assert too_close(kdv, 2) == ("taylor",)


@pytest.mark.parametrize("slow, expected", [("taylor", "autograd"), ("autograd", "taylor")])
def test_a_close_call_goes_to_the_engine_measured_faster(calls: dict, slow: str, expected: str) -> None:
    op, x = Residual(net(), BURGERS), torch.rand(64, 2)
    calls["slow"] = slow
    for _ in range(3):
        op(x).square().mean().backward()
    assert plan(op)[0] == expected
    assert calls["taylor"] >= 3 and calls["autograd"] >= 3  # each timed, three times
    before = dict(calls)
    op(x)
    assert calls[expected] == before[expected] + 1 and calls[slow] == before[slow]  # the order is kept


def test_a_clear_call_is_not_timed(calls: dict, timed: list) -> None:
    op, x = Residual(net(), KDV), torch.rand(64, 2)
    for _ in range(3):
        op(x)
    assert plan(op)[0] == "taylor" and not timed and calls["autograd"] == calls["func"] == 0


def test_timing_leaves_parameters_gradients_and_random_numbers_alone(calls: dict) -> None:
    op, x = Residual(net(), BURGERS), torch.rand(64, 2)
    op(x)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    op(x)  # the call that times
    assert calls["autograd"] >= 2
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in op.parameters())


def test_deterministic_algorithms_keep_the_cost_models_order(calls: dict, timed: list) -> None:
    op, x = Residual(net(), BURGERS), torch.rand(64, 2)
    calls["slow"] = "taylor"
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(3):
            op(x)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert plan(op)[0] == "taylor" and not timed


def test_a_network_with_running_statistics_in_training_is_not_timed(timed: list) -> None:
    torch.manual_seed(0)
    u = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
    op, x = Residual(u, BURGERS), torch.rand(64, 2)
    with pytest.warns(UserWarning, match="training mode"):  # Taylor mode refuses it, auto moves on
        for _ in range(3):
            op(x)
    assert not timed
    op = Residual(u.eval(), BURGERS)  # evaluation mode: nothing would move, so the close call is timed
    op(x)
    op(x)
    assert timed


def test_validation_without_grad_is_timed_apart_from_training(timed: list) -> None:
    op, x = Residual(net(), BURGERS), torch.rand(64, 2)
    with torch.no_grad():  # Lightning's sanity check runs validation before the first training step
        op(x)
        op(x)
    assert len(timed) == 1 and len(op._plans) == 1
    op(x).square().mean().backward()
    op(x).square().mean().backward()
    assert len(timed) == 2 and len(op._plans) == 2  # training has its own, timed with the backward pass


@pytest.mark.parametrize(
    "challenger, beats",
    [
        ([0.7, 0.7, 2.0, 0.7, 0.7], True),  # one load spike does not keep the slower engine
        ([0.7, 2.0, 2.0, 0.7, 0.7], False),  # lost two rounds
        ([0.95, 0.95, 0.95, 0.95, 0.95], False),  # faster, but by less than the margin
        ([0.5, 0.5, float("inf"), 0.5, 0.5], False),  # failed once
    ],
)
def test_another_engine_replaces_the_pick_on_the_median_ratio_and_at_most_one_lost_round(challenger, beats):
    assert _timing._beats(challenger, [1.0] * 5) is beats
