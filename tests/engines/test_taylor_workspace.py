"""The work buffers the fused layers keep between calls: reuse, limits, isolation, exactness when calls interleave."""

from __future__ import annotations

import gc
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


def _hessian_reference(u, x: torch.Tensor) -> torch.Tensor:
    """``(N, 2, 2)``: the float64 nested-autograd Hessian of a network of two inputs."""
    rows = [torch.stack([ref.partial(u, x, (i, j)) for j in range(2)], -1) for i in range(2)]
    return torch.stack(rows, -2)


def _slope_stacks() -> int:
    """How many stacks of ``f'`` the fused layers keep for a backward."""
    return sum(len(entry) for key, entry in workspace._kept().items() if key[:2] == ("recycled", "z"))


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


def test_recycled_memory_is_reused_only_once_no_tensor_uses_it():
    like = torch.zeros(1)
    first = workspace.recycled("out", (3, 4), like)
    pointer = first.data_ptr()
    assert workspace.recycled("out", (3, 4), like).data_ptr() != pointer  # first is alive
    view = first[1:]
    del first
    assert workspace.recycled("out", (3, 4), like).data_ptr() != pointer  # a view holds it
    x = torch.ones(2, 4, requires_grad=True)
    product = x * view  # the graph saves the view
    del view
    assert workspace.recycled("out", (3, 4), like).data_ptr() != pointer
    product.sum().backward()  # the graph lets go; product itself does not hold the view
    again = workspace.recycled("out", (3, 4), like)
    assert again.data_ptr() == pointer and again.shape == (3, 4) and again.is_contiguous()


def test_recycled_memory_is_kept_apart_by_use_dtype_and_inference_mode():
    like = torch.zeros(1)
    pointer = workspace.recycled("out", (3,), like).data_ptr()  # dies at once: free
    assert workspace.recycled("other", (3,), like).data_ptr() != pointer
    assert workspace.recycled("out", (3,), like.double()).data_ptr() != pointer
    with torch.inference_mode():
        assert workspace.recycled("out", (3,), like).data_ptr() != pointer
    assert workspace.recycled("out", (3,), like).data_ptr() == pointer


def test_a_graph_kept_for_a_second_backward_keeps_its_memory():
    torch.manual_seed(0)
    u = mlp(2, 1, width=8, depth=3)
    x = torch.randn(6, 2, dtype=torch.float64)
    hessian = do.Hessian(u, method="taylor")
    value = hessian(x)
    first = torch.autograd.grad(value.sum(), list(u.parameters()), retain_graph=True)
    for _ in range(2):  # other steps of the same shapes between the two backward passes
        hessian(x + 0.5).sum().backward()
    second = torch.autograd.grad(value.sum(), list(u.parameters()))
    for a, b in zip(first, second):
        assert_close(a, b)


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
        expected = _hessian_reference(u, x)
        assert_close(value, expected)
        for actual, wanted in zip(ref.parameter_gradients(u, value), ref.parameter_gradients(u, expected)):
            assert_close(actual, wanted)


def _poison_kept_memory() -> None:
    """NaN into every kept buffer and every recycled storage no tensor uses: a read before a write shows."""
    for entry in workspace._kept().values():
        if isinstance(entry, torch.Tensor):
            entry.fill_(float("nan"))
            continue
        for storage in entry:
            if workspace._use_count(storage._cdata) == 1:
                torch.empty(0, dtype=torch.uint8).set_(storage).fill_(255)  # all-ones bytes: NaN in every float


@pytest.mark.parametrize("net", ["tanh", "gated"])
def test_a_call_never_reads_what_an_earlier_one_left_in_kept_memory(net):
    torch.manual_seed(0)
    u = {"tanh": lambda: mlp(2, 3, width=8, depth=3), "gated": lambda: Gated(2, 3)}[net]()
    x = torch.randn(6, 2, dtype=torch.float64)
    hessian = do.Hessian(u, method="taylor")
    value = hessian(x)
    first = torch.autograd.grad(value.sum(), list(u.parameters()))
    _poison_kept_memory()
    again = hessian(x)
    torch.testing.assert_close(again, value, rtol=0, atol=0)
    _poison_kept_memory()
    for a, b in zip(torch.autograd.grad(again.sum(), list(u.parameters())), first):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_threads_running_operators_at_once_stay_exact():
    torch.manual_seed(0)
    u = mlp(2, 1, width=8, depth=3)
    hessian = do.Hessian(u, method="taylor")
    inputs = [torch.randn(6, 2, dtype=torch.float64) for _ in range(4)]
    expected = [hessian(x) for x in inputs]
    results: dict = {}

    def run(i: int) -> None:
        for _ in range(20):
            results[i] = hessian(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, value in enumerate(expected):
        torch.testing.assert_close(results[i], value, rtol=0, atol=0)


def test_calls_without_grad_and_with_it_alternate():
    torch.manual_seed(0)
    u = mlp(2, 1, width=8, depth=3)
    x = torch.randn(6, 2, dtype=torch.float64)
    hessian = do.Hessian(u, method="taylor")
    with torch.no_grad():
        plain = hessian(x)
    value = hessian(x)
    with torch.no_grad():
        torch.testing.assert_close(hessian(x), plain, rtol=0, atol=0)
    value.sum().backward()
    torch.testing.assert_close(value.detach(), plain, rtol=0, atol=0)


def test_without_grad_the_slopes_are_scratch_not_a_stack_per_layer():
    """``f'`` is kept per layer only for a backward; a call without grad writes it into one shared buffer."""
    torch.manual_seed(0)
    u = mlp(2, 1, width=8, depth=3)
    x = torch.randn(6, 2, dtype=torch.float64)
    hessian = do.Hessian(u, method="taylor")
    with torch.no_grad():
        plain = hessian(x)
    assert _slope_stacks() == 0
    value = hessian(x)
    assert _slope_stacks() == 3  # one per tanh layer, alive together until the backward
    torch.testing.assert_close(value.detach(), plain, rtol=0, atol=0)


def test_frozen_parameters_and_inputs_without_grad_keep_no_slopes_and_stay_exact():
    """Grad on but nothing that needs a gradient (a frozen network): the slopes are scratch, the values exact."""
    torch.manual_seed(0)
    u = mlp(2, 1, width=8, depth=3).requires_grad_(False)
    x = torch.randn(6, 2, dtype=torch.float64)
    value = do.Hessian(u, method="taylor")(x)
    assert not value.requires_grad
    assert _slope_stacks() == 0
    assert_close(value, _hessian_reference(u, x))


def _referrers(objects: list) -> str:
    """What holds each of ``objects`` in the collected garbage (types, a dict's keys, a frame's function)."""

    def described(referrer) -> str:
        if isinstance(referrer, dict):
            return f"dict {sorted(map(str, referrer))[:6]}"
        code = getattr(referrer, "f_code", None) or getattr(referrer, "__code__", None)
        kind = type(referrer).__qualname__
        return f"{kind} {code.co_name} {code.co_filename}" if code else kind

    ignored = (gc.garbage, objects)
    kept = lambda r: all(r is not i for i in ignored)  # noqa: E731
    held = [(type(o).__qualname__, [described(r) for r in gc.get_referrers(o) if kept(r)]) for o in objects]
    return f"held by: {held}"


@pytest.mark.parametrize("net", ["tanh", "gated"])
def test_a_training_step_leaves_no_reference_cycles(net):
    """A jet in a reference cycle keeps its stack, kept memory, in use until the garbage collector runs."""
    torch.manual_seed(0)
    u = {"tanh": lambda: mlp(2, 1, width=8, depth=3), "gated": lambda: Gated(2, 1)}[net]()
    x = torch.randn(6, 2, dtype=torch.float64)
    derivatives = do.Derivatives(u, {"u": (), "u_x": (0,), "u_t": (1,), "u_xx": (0, 0)}, method="taylor")

    def step() -> None:
        sum(d.pow(2).sum() for d in derivatives(x).values()).backward()

    step()  # the first call builds what later calls reuse
    gc.collect()
    gc.disable()
    # every object alive now stays alive until the check: what the collector finds was made by the
    # step, not a cache entry of an earlier test (the compiled tests' graphs hold tensors) let go during it
    alive_before = gc.get_objects()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage to be looked at
    try:
        step()
        gc.collect()
        # plain tensors and diffops' objects only
        ours = [o for o in gc.garbage if type(o) is torch.Tensor or "diffops" in type(o).__module__]
        cyclic = [type(o).__qualname__ for o in ours]
        assert not cyclic, f"left in reference cycles: {sorted(set(cyclic))}; {_referrers(ours)}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        del alive_before
        gc.enable()
