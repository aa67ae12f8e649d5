"""Operators behave as nn.Modules: parameters, dtype/device moves, state, optimizers, subclassing, DDP."""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import diffops as do

from . import reference as ref
from .nets import TwoInputs, mlp


def test_parameters_are_the_networks():
    u = mlp(2)
    op = do.Laplacian(u) + do.Derivative(u, wrt=0)
    assert {id(p) for p in op.parameters()} == {id(p) for p in u.parameters()}


def test_dtype_moves_follow_the_module():
    u = mlp(2).float()
    op = do.Laplacian(u)
    x = torch.randn(3, 2)
    assert op(x).dtype == torch.float32
    op.double()
    assert next(u.parameters()).dtype == torch.float64
    assert op(x.double()).dtype == torch.float64


def test_state_dict_round_trip():
    op = do.Laplacian(mlp(2)) - do.Derivative(mlp(2), wrt=1)
    other = do.Laplacian(mlp(2)) - do.Derivative(mlp(2), wrt=1)
    other.load_state_dict(op.state_dict())
    x = torch.randn(4, 2, dtype=torch.float64)
    assert torch.equal(op(x), other(x))


def test_optimizer_trains_a_poisson_residual():
    """A few Adam steps on -Δu = f lower the residual; lap.parameters() is u.parameters()."""
    torch.manual_seed(1)
    u = mlp(2, width=24)
    lap = do.Laplacian(u)
    opt = torch.optim.Adam(lap.parameters(), lr=1e-2)
    x = torch.rand(128, 2, dtype=torch.float64)
    f = lambda x: 2 * torch.pi**2 * torch.sin(torch.pi * x[:, :1]) * torch.sin(torch.pi * x[:, 1:])
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = ((lap(x) + f(x)) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


class Burgers(do.DifferentialOperator):
    """u_t + u u_x - nu u_xx as a custom PDE term."""

    def __init__(self, u: nn.Module, nu: float):
        super().__init__(u, argnums=(0, 1), coords=("x", "t"))
        self.nu = nu

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        d = self.derivatives(x, t, u=(), u_x="x", u_xx=("x", "x"), u_t="t")
        return d["u_t"] + d["u"] * d["u_x"] - self.nu * d["u_xx"]


@pytest.mark.parametrize("method", ["auto", "func", "autograd"])
def test_custom_subclass_with_derivatives(method):
    u = TwoInputs(1, 1)
    op = Burgers(u, nu=0.1)
    op.method = method
    x, t = torch.randn(6, 1, dtype=torch.float64), torch.rand(6, 1, dtype=torch.float64)
    joint = lambda xt: u(xt[:, :1], xt[:, 1:])
    xt = torch.cat([x, t], -1)
    expected = (
        ref.partial(joint, xt, (1,)) + joint(xt) * ref.partial(joint, xt, (0,)) - 0.1 * ref.partial(joint, xt, (0, 0))
    )
    torch.testing.assert_close(op(x, t), expected, rtol=1e-10, atol=1e-12)
    combined = op + do.Derivative(u, wrt="t", argnums=(0, 1), coords=("x", "t"))
    torch.testing.assert_close(combined(x, t), expected + ref.partial(joint, xt, (1,)), rtol=1e-10, atol=1e-12)
    assert "Burgers" in str(combined)


@pytest.mark.parametrize("method", ["func", "autograd"])
def test_no_grad_gives_detached_values(method):
    u = mlp(2)
    x = torch.randn(3, 2, dtype=torch.float64)
    with torch.no_grad():
        value = do.Laplacian(u, method=method)(x)
    assert not value.requires_grad
    torch.testing.assert_close(value, do.Laplacian(u, method=method)(x).detach())


def batchnorm_net() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()


def test_batchnorm_in_training_falls_back_to_autograd():
    net = batchnorm_net().train()
    x = torch.randn(16, 2, dtype=torch.float64)
    op = do.Laplacian(net)
    with pytest.warns(UserWarning, match="method='auto' uses 'autograd' because 'taylor' failed: Taylor mode does not"):
        value = op(x)
    torch.testing.assert_close(value, do.Laplacian(net, method="autograd")(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback is remembered: no second warning
        op(x)


def test_explicit_func_on_batchnorm_says_what_to_change():
    with pytest.raises(RuntimeError, match=r"Laplacian: method='func' cannot differentiate this network.*"
                                           r"method='autograd'"):
        do.Laplacian(batchnorm_net().train(), method="func")(torch.randn(8, 2, dtype=torch.float64))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def helmholtz(u: nn.Module) -> do.DifferentialOperator:
    """Δu + u: every parameter is used (DDP requires it unless find_unused_parameters=True)."""
    return do.Laplacian(u) + do.Derivative(u, order=0)


def rank_data(rank: int) -> torch.Tensor:
    """Different points on each rank."""
    return torch.rand(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(rank))


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    op = nn.parallel.DistributedDataParallel(helmholtz(mlp(2)))
    op(rank_data(rank)).pow(2).mean().backward()
    torch.save([p.grad for p in op.parameters()], os.path.join(folder, f"rank{rank}.pt"))
    dist.barrier()  # tearing gloo down while the other rank still talks can abort the process
    dist.destroy_process_group()


def test_distributed_data_parallel_averages_gradients(tmp_path):
    try:
        mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    except mp.ProcessExitedException:
        # gloo's teardown can abort a process after its work is done ("terminate called without an
        # active exception"); the gradients are saved before it, and a rank that failed earlier saved none
        if not all((tmp_path / f"rank{rank}.pt").exists() for rank in range(2)):
            raise
    grads = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    torch.manual_seed(0)
    lap = helmholtz(mlp(2))
    per_rank = []
    for rank in range(2):
        lap.zero_grad()
        lap(rank_data(rank)).pow(2).mean().backward()
        per_rank.append([p.grad.clone() for p in lap.parameters()])
    for got0, got1, g0, g1 in zip(grads[0], grads[1], *per_rank):
        torch.testing.assert_close(got0, (g0 + g1) / 2)
        torch.testing.assert_close(got1, got0)
