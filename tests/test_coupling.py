"""Networks that couple the samples of their batch: the per-sample engines refuse them; auto gives the reference."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import diffops as do
from diffops import _coupling
from diffops._inputs import flatten_inputs
from diffops._state import UNDECIDED
from diffops.engines import EngineUnsupported

from . import reference as ref


class Mixing(nn.Module):
    """``Linear -> tanh -> Linear`` with ``mix`` applied to the input and to the hidden features."""

    def __init__(self, mix: Callable[[torch.Tensor], torch.Tensor], d: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.mix = nn.Linear(d, 12), nn.Linear(12, 1), mix
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.mix(torch.tanh(self.a(self.mix(x)))))


COUPLED = {
    "centred over the batch": lambda h: h - h.mean(0, keepdim=True),
    "standardised over the batch": lambda h: (h - h.mean(0)) / h.std(0),  # Taylor mode fails on its shapes
    "minus the batch maximum": lambda h: h - h.amax(0, keepdim=True),
    "gated by a batch sum": lambda h: h * h.sum(0, keepdim=True).tanh(),
    "rolled along the batch": lambda h: h + 0.5 * h.roll(1, 0),
    "anchored at the first sample": lambda h: h - 0.5 * h[:1],
    "batch norm, functional": lambda h: nn.functional.batch_norm(h, None, None, training=True),
}
ROW_WISE = {
    "plain": lambda h: h,
    "normalised over the features": lambda h: (h - h.mean(-1, keepdim=True)) / h.std(-1, keepdim=True),
    "a branch on a batch statistic": lambda h: h * 2 if h.mean() > 0 else h,  # no gradient flows through it
    "a detached batch statistic": lambda h: h - h.mean(0, keepdim=True).detach(),
}
# refused by an engine for an op of theirs before the coupling is asked about
REFUSED_FIRST = {("batch norm, functional", "any"), ("standardised over the batch", "func")}
OPERATORS = {
    "laplacian": (lambda u, **kw: do.Laplacian(u, **kw), ref.laplacian),
    "gradient": (lambda u, **kw: do.Gradient(u, **kw), lambda u, x: ref.jacobian(u, x)[:, 0]),
    "mixed third": (lambda u, **kw: do.Derivative(u, wrt=(0, 0, 1), **kw), lambda u, x: ref.partial(u, x, (0, 0, 1))),
}


def points(n: int = 7) -> torch.Tensor:
    return torch.rand(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("operator", sorted(OPERATORS))
@pytest.mark.parametrize("mix", sorted(COUPLED))
def test_auto_gives_the_reference_on_coupled_networks(mix, operator):
    """Before the probe, auto returned Taylor mode's or torch.func's number here, without a word."""
    u, x = Mixing(COUPLED[mix]), points()
    make, reference = OPERATORS[operator]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = make(u)(x)
    fallbacks = [str(w.message) for w in caught if "method='auto' uses" in str(w.message)]
    assert all("uses 'autograd' because" in message for message in fallbacks)
    expected = reference(u, x)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    for actual, wanted in zip(ref.parameter_gradients(u, value), ref.parameter_gradients(u, expected)):
        torch.testing.assert_close(actual, wanted, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["taylor", "func"])
@pytest.mark.parametrize("mix", sorted(COUPLED))
def test_per_sample_engines_refuse_coupled_networks(mix, method):
    if (mix, method) in REFUSED_FIRST or (mix, "any") in REFUSED_FIRST:
        pytest.skip("the engine's own audit refuses an op of it first (test_audit_refusals)")
    with pytest.raises(EngineUnsupported, match=rf"method={method!r} .*u couples the samples of its batch"):
        do.Laplacian(Mixing(COUPLED[mix]), method=method)(points())


@pytest.mark.parametrize("mix", sorted(ROW_WISE))
def test_row_wise_networks_are_not_refused(mix):
    u, x = Mixing(ROW_WISE[mix]), points()
    rows = flatten_inputs("test", (x,), (0,))
    assert _coupling._probe(rows, u) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = do.Laplacian(u)(x)
    assert not [w for w in caught if "couples" in str(w.message)]
    torch.testing.assert_close(value, ref.laplacian(u, x), rtol=1e-10, atol=1e-12)


def test_non_finite_slopes_are_not_a_coupling():
    """``0 * inf`` is NaN: a zero output weight on a row whose slope is infinite is not a coupling."""
    x = points()
    x[::2, 0] = 0.0  # sqrt has an infinite slope there
    rows = flatten_inputs("test", (x,), (0,))
    assert _coupling._probe(rows, lambda x: x.sqrt().sum(-1, keepdim=True)) is None


@pytest.mark.parametrize("mix", sorted(COUPLED))
def test_the_probe_names_a_coupled_row(mix):
    rows = flatten_inputs("test", (points(),), (0,))
    assert _coupling._probe(rows, Mixing(COUPLED[mix])) in range(7)


def test_probed_once_per_network(monkeypatch):
    probes = []
    original = _coupling._probe
    monkeypatch.setattr(_coupling, "_probe", lambda rows, u: probes.append(u) or original(rows, u))
    u, x = Mixing(COUPLED["centred over the batch"]), points()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = do.Laplacian(u)(x)
        with pytest.raises(EngineUnsupported):  # a second operator on the same network
            do.Laplacian(u, method="func")(x)
    assert probes == [u]
    torch.testing.assert_close(first, ref.laplacian(u, x), rtol=1e-10, atol=1e-12)


def test_one_sample_is_not_probed(monkeypatch):
    monkeypatch.setattr(_coupling, "_probe", lambda rows, u: pytest.fail("probed a batch of one"))
    u = Mixing(COUPLED["rolled along the batch"])
    x = points(1)
    torch.testing.assert_close(do.Laplacian(u, method="taylor")(x), ref.laplacian(u, x), rtol=1e-10, atol=1e-12)


def test_the_probe_leaves_no_trace():
    """Dropout draws in the probe, a batch norm in training mode updates its statistics: both are put back."""
    torch.manual_seed(0)
    u = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()
    rows = flatten_inputs("test", (points(),), (0,))
    statistics = [b.clone() for b in u[2].buffers()]
    state = torch.get_rng_state()
    assert _coupling._probe(rows, u) is not None  # batch norm in training mode couples the rows
    assert torch.equal(torch.get_rng_state(), state)
    for before, after in zip(statistics, u[2].buffers()):
        assert torch.equal(before, after)


def test_an_error_of_u_is_undecided_and_raised_by_the_call():
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("bad network")

    rows = flatten_inputs("test", (points(),), (0,))
    assert _coupling._probe(rows, broken) is UNDECIDED
    with pytest.raises(ValueError, match="u itself raised ValueError.*bad network"):
        do.Laplacian(broken)(points())


@pytest.mark.parametrize("method", ["taylor", "auto"])
def test_a_compiled_call_is_checked_before_any_eager_one(method):
    """Compiled first, the probe runs at trace time on points of its own: refused, not Taylor mode's number.

    (auto has no engine left there: nested autograd's double backward does not compile.)
    """
    torch._dynamo.reset()
    op = do.Laplacian(Mixing(COUPLED["centred over the batch"]), method=method)
    with pytest.raises(EngineUnsupported, match="u couples the samples of its batch") as refused:
        torch.compile(lambda x: op(x), backend="aot_eager")(points())
    assert "points of its own when compiled" in str(refused.value)  # its row may lie beyond this batch's 7


def test_a_compiled_row_wise_network_runs_on_the_taylor_engine():
    torch._dynamo.reset()
    u, x = Mixing(ROW_WISE["normalised over the features"]), points()
    op = do.Laplacian(u, method="taylor")
    compiled = torch.compile(lambda x: op(x), backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, ref.laplacian(u, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mix", ["centred over the batch", "normalised over the features"])
def test_compiled_with_dynamic_shapes_is_checked_too(mix):
    """``dynamic=True`` makes the feature sizes symbolic too; the probe failed to compile on them (any network)."""
    torch._dynamo.reset()
    u = Mixing({**COUPLED, **ROW_WISE}[mix])
    op = do.Laplacian(u, method="taylor")
    compiled = torch.compile(lambda x: op(x), backend="aot_eager", fullgraph=mix in ROW_WISE, dynamic=True)
    for x in (points(), points(9)):
        if mix in COUPLED:
            with pytest.raises(EngineUnsupported, match="u couples the samples of its batch"):
                compiled(x)
        else:
            torch.testing.assert_close(compiled(x), ref.laplacian(u, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["autograd", "auto"])
def test_chunks_of_a_coupled_batch_are_refused(method):
    """Each chunk would be normalised by its own statistics: the number would depend on the split."""
    u = Mixing(COUPLED["centred over the batch"])
    with pytest.raises(ValueError, match=r"Laplacian: chunk_size=3 splits the batch of 7 samples, but u couples"):
        do.Laplacian(u, method=method, chunk_size=3)(points())
    whole = do.Laplacian(u, method="autograd", chunk_size=7)(points())  # one chunk: the batch as it is
    torch.testing.assert_close(whole, ref.laplacian(u, points()), rtol=1e-10, atol=1e-12)


class TwoInputs(nn.Module):
    """``u(x, t)``: ``x`` and ``t`` concatenated into ``Mixing(mix)``."""

    def __init__(self, mix: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.net = Mixing(mix)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t], dim=-1))


@pytest.mark.parametrize("mix", ["centred over the batch", "plain"])
def test_a_compiled_network_of_two_inputs_is_checked_too(mix):
    torch._dynamo.reset()
    u, xt = TwoInputs({**COUPLED, **ROW_WISE}[mix]), points()
    op = do.Derivative(u, wrt=(0, 1), argnums=(0, 1), method="taylor")
    compiled = torch.compile(lambda x, t: op(x, t), backend="aot_eager", fullgraph=mix == "plain")
    if mix == "plain":
        expected = ref.partial(lambda xt: u(xt[:, :1], xt[:, 1:]), xt, (0, 1))
        torch.testing.assert_close(compiled(xt[:, :1], xt[:, 1:]), expected, rtol=1e-10, atol=1e-12)
        return
    with pytest.raises(EngineUnsupported, match="u couples the samples of its batch"):
        compiled(xt[:, :1], xt[:, 1:])
