"""Every operator and engine on a CUDA device, float32 and float64, compiled and under DDP.

Skipped without a GPU.  Each result computed on the device is compared with
the float64 nested-autograd reference computed on the CPU (values and
gradients with respect to the parameters): float64 at the tolerance of the
CPU tests, float32 within a tolerance that grows with the derivative's order.

``DIFFOPS_CUDA_TESTS_DEVICE=cpu`` runs the same checks on the CPU, a rehearsal
of this file where no GPU is available (the GPU suite's dry run uses it).
"""

from __future__ import annotations

import copy
import inspect
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils._pytree import tree_flatten

import diffops as do
from diffops.engines import METHODS

from . import reference as ref
from .nets import Residual, TwoInputs, mlp

DEVICE = torch.device(os.environ.get("DIFFOPS_CUDA_TESTS_DEVICE", "cuda"))
on_device = pytest.mark.cuda if DEVICE.type == "cuda" else (lambda test: test)
DTYPES = {"float64": torch.float64, "float32": torch.float32}
D = 3


# -- the cases: an operator, its reference, the network and the inputs --------------------------


@dataclass(frozen=True)
class Case:
    """``make(u, method)`` builds the operator; ``expected(u, *inputs)`` is its float64 reference on the CPU."""

    make: Callable[[nn.Module, str], Callable]
    expected: Callable
    net: Callable[[], nn.Module] = field(default=lambda: mlp(D))
    order: int = 2  # the highest derivative order: float32's error grows with it
    inputs: tuple[int, ...] = (D,)  # the coordinates of each input of u


def _partial(index: tuple[int, ...]) -> Callable:
    return lambda u, x: ref.partial(u, x, index)


def _biharmonic(u, x):
    return sum(ref.partial(u, x, (i, i, j, j)) for i in range(x.shape[1]) for j in range(x.shape[1]))


def _divergence(u, x):
    return ref.jacobian(u, x).diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)


def _curl(u, x):
    j = ref.jacobian(u, x)
    return torch.stack([j[:, 2, 1] - j[:, 1, 2], j[:, 0, 2] - j[:, 2, 0], j[:, 1, 0] - j[:, 0, 1]], dim=-1)


def _source(x: torch.Tensor) -> torch.Tensor:
    return x.sin().sum(-1, keepdim=True)


def _joint(u, x, t):
    """``u(x, t)`` as a function of the concatenated coordinates, and those coordinates."""
    return (lambda xt: u(xt[:, : x.shape[1]], xt[:, x.shape[1] :])), torch.cat([x, t], dim=-1)


def _derivatives_reference(u, x, t):
    joint, xt = _joint(u, x, t)
    return {"u": joint(xt), "u_x": ref.partial(joint, xt, (0,)), "u_xxt": ref.partial(joint, xt, (0, 0, 2))}


def _field() -> nn.Module:
    return mlp(D, D)


SPEC = {"u": (), "u_x": (0,), "u_xxt": ("x", "x", "t")}
CASES: dict[str, Case] = {
    "Jacobian": Case(lambda u, m: do.Jacobian(u, method=m), ref.jacobian, _field, order=1),
    "Gradient": Case(lambda u, m: do.Gradient(u, method=m), lambda u, x: ref.jacobian(u, x)[:, 0], order=1),
    "Hessian": Case(lambda u, m: do.Hessian(u, method=m), ref.hessian),
    "Hessian-field": Case(lambda u, m: do.Hessian(u, method=m), ref.hessian, _field),
    "Laplacian": Case(lambda u, m: do.Laplacian(u, method=m), ref.laplacian),
    "Laplacian-residual": Case(lambda u, m: do.Laplacian(u, method=m), ref.laplacian, lambda: Residual(D)),
    "Laplacian-field": Case(lambda u, m: do.Laplacian(u, method=m), ref.laplacian, _field),
    "Biharmonic": Case(lambda u, m: do.Biharmonic(u, method=m), _biharmonic, order=4),
    "Derivative-value": Case(lambda u, m: do.Derivative(u, wrt=1, order=0, method=m), _partial(()), order=0),
    "Derivative-d1": Case(lambda u, m: do.Derivative(u, wrt=2, method=m), _partial((2,)), order=1),
    "Derivative-d4": Case(lambda u, m: do.Derivative(u, wrt=1, order=4, method=m), _partial((1,) * 4), order=4),
    "Derivative-d6": Case(lambda u, m: do.Derivative(u, wrt=0, order=6, method=m), _partial((0,) * 6), order=6),
    "Derivative-mixed3": Case(lambda u, m: do.Derivative(u, wrt=(1, 0, 0), method=m), _partial((0, 0, 1)), order=3),
    "Derivative-mixed4": Case(
        lambda u, m: do.Derivative(u, wrt=(2, 0, 1, 1), method=m), _partial((0, 1, 1, 2)), order=4
    ),
    "Derivatives": Case(
        lambda u, m: do.Derivatives(u, SPEC, argnums=(0, 1), coords=("x", "y", "t"), method=m),
        _derivatives_reference,
        lambda: TwoInputs(2, 1),
        order=3,
        inputs=(2, 1),
    ),  # fmt: skip
    "Divergence": Case(lambda u, m: do.Divergence(u, method=m), _divergence, _field, order=1),
    "Curl": Case(lambda u, m: do.Curl(u, method=m), _curl, _field, order=1),
    "expression": Case(
        lambda u, m: do.Laplacian(u, method=m) + 2.0 * do.Derivative(u, wrt=1, method=m) - _source,
        lambda u, x: ref.laplacian(u, x) + 2.0 * ref.partial(u, x, (1,)) - _source(x),
    ),
    "product": Case(
        lambda u, m: do.Derivative(u, order=0, method=m) * do.Derivative(u, wrt=(0, 0), method=m),
        lambda u, x: u(x) * ref.partial(u, x, (0, 0)),
    ),
    "combination": Case(  # the linear part of a residual, its first partials folded (Taylor mode)
        lambda u, m: do.Derivative(u, wrt=2, method=m) - 0.1 * do.Derivative(u, wrt=(0, 0), method=m),
        lambda u, x: ref.partial(u, x, (2,)) - 0.1 * ref.partial(u, x, (0, 0)),
    ),
}

# Operators of the 0.2 API, checked once the package has them.
_SIGMA = torch.tensor([[1.0, 0.5], [0.0, 2.0], [-1.0, 0.25]], dtype=torch.float64)  # (d, r)
_V = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)  # (d,)


def _like(u: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the device and in the dtype of ``u``'s parameters."""
    return tensor.to(next(u.parameters()))


if "sigma" in inspect.signature(do.Laplacian).parameters:
    CASES["Laplacian-sigma"] = Case(
        lambda u, m: do.Laplacian(u, sigma=_like(u, _SIGMA), method=m),
        lambda u, x: (ref.hessian(u, x) * (_SIGMA @ _SIGMA.T)).sum((-2, -1)),
    )
if hasattr(do, "DirectionalDerivative"):
    CASES["DirectionalDerivative"] = Case(
        lambda u, m: do.DirectionalDerivative(u, _like(u, _V), method=m), lambda u, x: ref.jacobian(u, x) @ _V, order=1
    )
    CASES["DirectionalDerivative-2"] = Case(
        lambda u, m: do.DirectionalDerivative(u, _like(u, _V), order=2, method=m),
        lambda u, x: (ref.hessian(u, x) @ _V) @ _V,
    )


def _tolerance(dtype: torch.dtype, order: int) -> tuple[float, float]:
    """``(rtol, atol relative to the largest reference entry)`` of a result computed in ``dtype``."""
    if dtype == torch.float64:
        return 1e-10, 1e-12
    tolerance = 2e-5 * 2 ** max(order - 2, 0)  # each order above 2 loses about a bit
    return tolerance, tolerance


def _assert_close(actual, expected, dtype: torch.dtype, order: int) -> None:
    """Same structure, ``actual`` on the device in ``dtype``, close to the float64 ``expected`` on the CPU."""
    rtol, atol = _tolerance(dtype, order)
    actual_leaves, expected_leaves = tree_flatten(actual)[0], tree_flatten(expected)[0]
    assert len(actual_leaves) == len(expected_leaves)
    for a, e in zip(actual_leaves, expected_leaves):
        assert a.device.type == DEVICE.type and a.dtype == dtype
        scale = 1.0 if dtype == torch.float64 else max(e.abs().max().item(), 1.0)
        torch.testing.assert_close(a.cpu().double(), e, rtol=rtol, atol=atol * scale)


def _loss_gradients(module: nn.Module, value) -> list[torch.Tensor]:
    """Gradients of :func:`reference.parameter_gradients`'s loss, summed over the leaves of ``value``."""
    return ref.parameter_gradients(module, torch.cat([leaf.reshape(-1) for leaf in tree_flatten(value)[0]]))


def _inputs(case: Case, batch: int = 6) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(batch, d, dtype=torch.float64) for d in case.inputs)


@on_device
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_matches_the_cpu_reference(case, method, dtype):
    """Values and parameter gradients of every operator, every method, on the device."""
    spec, dtype = CASES[case], DTYPES[dtype]
    u = spec.net()
    inputs = _inputs(spec)
    expected = spec.expected(u, *inputs)
    expected_grads = _loss_gradients(u, expected)
    on_device_u = copy.deepcopy(u).to(DEVICE, dtype)
    op = spec.make(on_device_u, method)
    actual = op(*(x.to(DEVICE, dtype) for x in inputs))
    _assert_close(actual, expected, dtype, spec.order)
    _assert_close(_loss_gradients(on_device_u, actual), expected_grads, dtype, spec.order)


def test_every_public_operator_has_a_device_case():
    """A new operator must join the cases above, so that a GPU run proves it too."""
    public = {
        name for name in do.__all__
        if isinstance(getattr(do, name), type) and issubclass(getattr(do, name), do.DifferentialOperator)
    } - {"DifferentialOperator"}  # fmt: skip
    covered = {name.split("-")[0] for name in CASES}
    assert public <= covered, f"no device case for {sorted(public - covered)}"


# -- estimators, batch shapes, chunks, parameter Jacobians -----------------------------------


ESTIMATES = {
    "hutchinson": lambda u, m, g: do.Laplacian(u, estimator="hutchinson", samples=4, generator=g, method=m),
    "gaussian": lambda u, m, g: do.Laplacian(
        u, estimator="hutchinson", samples=4, distribution="gaussian", generator=g, method=m
    ),
    "coordinates": lambda u, m, g: do.Laplacian(u, estimator="coordinates", samples=2, generator=g, method=m),
    "stde": lambda u, m, g: do.Biharmonic(u, estimator="stde", samples=3, generator=g, method=m),
}
if "estimator" in inspect.signature(do.Divergence).parameters:
    ESTIMATES["divergence"] = lambda u, m, g: do.Divergence(u, estimator="hutchinson", samples=4, generator=g, method=m)


@on_device
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("estimator", sorted(ESTIMATES))
def test_estimate_with_a_cpu_generator_equals_the_cpu_estimate(estimator, method):
    """A seeded CPU generator draws the same directions for device inputs: the same estimate."""
    u = _field() if estimator == "divergence" else mlp(D)
    x = torch.randn(8, D, dtype=torch.float64)
    make = lambda: ESTIMATES[estimator](u, method, torch.Generator().manual_seed(0))  # noqa: E731
    expected = make()(x)
    actual = make().to(DEVICE)(x.to(DEVICE))
    assert actual.device.type == DEVICE.type
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-10, atol=1e-12)


@on_device
@pytest.mark.parametrize("method", METHODS)
def test_device_generator_draws_on_the_device(method):
    """Sampling every coordinate is exact, and a device generator seeded alike repeats its draws."""
    u = mlp(D).to(DEVICE)
    x = torch.randn(8, D, dtype=torch.float64, device=DEVICE)
    exact = do.Laplacian(u, method=method)(x)
    generator = lambda: torch.Generator(device=DEVICE).manual_seed(3)  # noqa: E731
    every = do.Laplacian(u, estimator="coordinates", samples=D, generator=generator(), method=method)(x)
    torch.testing.assert_close(every, exact, rtol=1e-10, atol=1e-12)
    draws = [do.Laplacian(u, estimator="hutchinson", samples=2, generator=generator(), method=method)(x)]
    draws.append(do.Laplacian(u, estimator="hutchinson", samples=2, generator=generator(), method=method)(x))
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)


@on_device
@pytest.mark.parametrize("method", METHODS)
def test_batch_shapes_and_chunks(method):
    u = mlp(D)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    expected = ref.laplacian(u, x.reshape(10, D)).reshape(2, 5, 1)
    op = do.Laplacian(u, method=method, chunk_size=3).to(DEVICE)
    actual = op(x.to(DEVICE))
    assert actual.shape == (2, 5, 1)
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-10, atol=1e-12)


EMPTY_FAILS = pytest.mark.xfail(
    reason="the autograd engine reshapes the value to (n, -1), ambiguous for n = 0", raises=RuntimeError, strict=True
)


@on_device
@pytest.mark.parametrize("method", [pytest.param(m, marks=EMPTY_FAILS) if m == "autograd" else m for m in METHODS])
def test_an_empty_batch_gives_an_empty_result(method):
    empty = do.Laplacian(mlp(D), method=method).to(DEVICE)(torch.empty(0, D, dtype=torch.float64, device=DEVICE))
    assert empty.shape == (0, 1) and empty.device.type == DEVICE.type


@on_device
@pytest.mark.parametrize("method", [m for m in METHODS if m != "autograd"])  # nested autograd cannot run in vmap
def test_parameter_jacobian_equals_the_cpu_one(method):
    u = mlp(2)
    x = torch.randn(5, 2, dtype=torch.float64)
    expected = do.parameter_jacobian(do.Laplacian(u, method=method), x)
    actual = do.parameter_jacobian(do.Laplacian(u, method=method).to(DEVICE), x.to(DEVICE))
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].device.type == DEVICE.type
        torch.testing.assert_close(actual[name].cpu(), expected[name], rtol=1e-10, atol=1e-12)


@on_device
@pytest.mark.parametrize("method", METHODS)
def test_float32_training_step(method):
    u = mlp(2).float().to(DEVICE)
    op = do.Laplacian(u, method=method, chunk_size=100)
    x = torch.rand(256, 2, device=DEVICE)
    op(x).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.device.type == DEVICE.type for p in list(u.parameters())[:-1])


@on_device
def test_state_dict_moves_between_devices():
    """Saved on the device, loaded on the CPU: the same outputs."""
    op = do.Laplacian(mlp(D)).to(DEVICE)
    x = torch.randn(4, D, dtype=torch.float64)
    on_device_value = op(x.to(DEVICE)).cpu()
    state = {key: value.cpu() for key, value in op.state_dict().items()}
    on_cpu = do.Laplacian(mlp(D))
    on_cpu.load_state_dict(state)
    torch.testing.assert_close(on_cpu(x), on_device_value, rtol=1e-10, atol=1e-12)


@on_device
def test_inputs_on_two_devices_are_refused():
    if DEVICE.type == "cpu":
        pytest.skip("needs a second device")
    op = do.Derivatives(TwoInputs(1, 1).to(DEVICE), u_xt=(0, 1), argnums=(0, 1))
    x, t = torch.randn(4, 1, dtype=torch.float64, device=DEVICE), torch.randn(4, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"Derivatives.*device"):
        op(x, t)


# -- torch.compile --------------------------------------------------------------------------


COMPILED = {
    "Laplacian": lambda u, m: do.Laplacian(u, method=m),
    "Derivative-d4": lambda u, m: do.Derivative(u, wrt=0, order=4, method=m),
    "expression": lambda u, m: do.Laplacian(u, method=m) + do.Derivative(u, wrt=(0, 1), method=m) - _source,
}


def _compiled_step_matches_eager(op: do.DifferentialOperator, u: nn.Module, x: torch.Tensor, fullgraph: bool) -> None:
    """The loss and its parameter gradients, eager and compiled (two compiled calls: the second reuses the graph)."""
    loss = lambda x: op(x).pow(2).mean()  # noqa: E731
    compiled = torch.compile(loss, fullgraph=fullgraph)
    params = list(u.parameters())
    grads = lambda loss: torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)  # noqa: E731
    expected = loss(x)
    expected_grads = grads(expected)
    for _ in range(2):
        actual = compiled(x)
        actual_grads = grads(actual)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    for a, e in zip(actual_grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


@on_device
@pytest.mark.parametrize("operator", sorted(COMPILED))
def test_compiled_taylor_step_is_one_graph(operator):
    """The Taylor engine's loss step compiles with ``fullgraph=True``, to the eager values and gradients."""
    torch._dynamo.reset()
    u = mlp(2, width=32).float().to(DEVICE)
    x = torch.rand(64, 2, device=DEVICE)
    _compiled_step_matches_eager(COMPILED[operator](u, "taylor"), u, x, fullgraph=True)


@on_device
@pytest.mark.parametrize("method", ["auto", "func"])  # aot_autograd cannot compile nested autograd's double backward
def test_compiled_step_matches_eager(method):
    torch._dynamo.reset()
    u = mlp(2, width=32).float().to(DEVICE)
    x = torch.rand(64, 2, device=DEVICE)
    _compiled_step_matches_eager(COMPILED["Laplacian"](u, method), u, x, fullgraph=False)


# -- DistributedDataParallel ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_setup() -> tuple[str, Callable[[int], torch.device]]:
    """nccl with one GPU per process where two fit; else gloo, both processes on the one device."""
    if DEVICE.type == "cuda" and torch.cuda.device_count() >= 2 and dist.is_nccl_available():
        return "nccl", lambda rank: torch.device("cuda", rank)
    return "gloo", lambda rank: DEVICE


def _helmholtz(u: nn.Module) -> do.DifferentialOperator:
    """Δu + u: every parameter is used (DDP requires it unless find_unused_parameters=True)."""
    return do.Laplacian(u) + do.Derivative(u, order=0)


def _rank_data(rank: int) -> torch.Tensor:
    return torch.rand(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(rank))


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend, device_of = _ddp_setup()
    device = device_of(rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    torch.manual_seed(0)
    op = _helmholtz(mlp(2)).to(device)
    ddp = nn.parallel.DistributedDataParallel(op, device_ids=[device.index] if device.type == "cuda" else None)
    ddp(_rank_data(rank).to(device)).pow(2).mean().backward()
    torch.save([p.grad.cpu() for p in ddp.parameters()], os.path.join(folder, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@on_device
def test_distributed_data_parallel_on_the_device_averages_gradients(tmp_path):
    try:
        mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    except mp.ProcessExitedException:
        # gloo's teardown can abort a process after its work is done; a rank that failed earlier saved nothing
        if not all((tmp_path / f"rank{rank}.pt").exists() for rank in range(2)):
            raise
    grads = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    torch.manual_seed(0)
    op = _helmholtz(mlp(2))
    per_rank = []
    for rank in range(2):
        op.zero_grad()
        op(_rank_data(rank)).pow(2).mean().backward()
        per_rank.append([p.grad.clone() for p in op.parameters()])
    for got0, got1, g0, g1 in zip(grads[0], grads[1], *per_rank):
        torch.testing.assert_close(got0, (g0 + g1) / 2, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got1, got0, rtol=1e-10, atol=1e-12)
