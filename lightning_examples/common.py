"""What the examples share that is specific to physics-informed networks.

* :func:`mlp`, the tanh networks, and :func:`uniform_points` / :func:`latin_hypercube`, the collocation points;
* :class:`PINNModule`: Adam for ``adam_steps`` steps, then L-BFGS or Levenberg-Marquardt
  (:class:`LevenbergMarquardt`, on the residual's per-point parameter Jacobian from
  :func:`diffops.parameter_jacobian`), with derivatives kept working in validation and test;
* :class:`CollocationData`: full batches of collocation points, sharded under DDP, and the
  reference solutions the network is tested against;
* :class:`ErrorReport`: the last lines every example prints (errors, identified parameters, wall time);
* :func:`load_reference`: the published solutions in ``--data.data_dir``, when they are there.

The command line is in ``cli.py``, the figures in ``figures.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

import diffops

Batch = Any  # a tensor of points, or a tuple of tensors (e.g. interior and boundary points)

# Where the examples look for the published data sets (relative paths start at the repository root);
# without them they fall back to closed-form references.
DATA_DIR = "../shared/data"
ROOT = Path(__file__).resolve().parents[1]


# -- networks and points --------------------------------------------------------------


def mlp(inputs: int, outputs: int, hidden: int, layers: int, activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """A fully connected network with ``layers`` hidden layers of width ``hidden``."""
    sizes = [inputs] + [hidden] * layers
    blocks: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        blocks += [nn.Linear(fan_in, fan_out), activation()]
    blocks.append(nn.Linear(sizes[-1], outputs))
    return nn.Sequential(*blocks)


class SpaceTime(nn.Module):
    """``u(x, t) = network(z)`` with ``z`` the point ``(x, t)`` mapped from the box ``[low, high]`` onto ``[-1, 1]^2``.

    Two inputs, so that operators can name them (``argnums=(0, 1), coords=("x", "t")``); the rescaling
    keeps tanh units in their active range whatever the domain.
    """

    def __init__(self, network: nn.Module, low: tuple[float, float], high: tuple[float, float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("low", torch.tensor(low, dtype=torch.float64))
        self.register_buffer("high", torch.tensor(high, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        points = torch.cat([x, t], dim=-1)
        return self.network(2 * (points - self.low) / (self.high - self.low) - 1)


def uniform_points(count: int, low: list[float], high: list[float], generator: torch.Generator | None = None):
    """``(count, len(low))`` points drawn uniformly from the box ``[low, high]``, in float64."""
    low_, high_ = torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)
    return low_ + (high_ - low_) * torch.rand(count, len(low), dtype=torch.float64, generator=generator)


def latin_hypercube(count: int, low: list[float], high: list[float], generator: torch.Generator | None = None):
    """``(count, len(low))`` Latin-hypercube points in the box ``[low, high]``, in float64.

    Each axis is cut into ``count`` equal bins and every bin holds exactly one point (at a uniform
    place inside it), the bins paired at random across axes: the points cover the box more evenly
    than independent uniform draws, as in the collocation points of Raissi et al.
    """
    low_, high_ = torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)
    bins = torch.stack([torch.randperm(count, generator=generator) for _ in low], dim=1).to(torch.float64)
    within = torch.rand(count, len(low), dtype=torch.float64, generator=generator)
    return low_ + (high_ - low_) * (bins + within) / count


def grid_points(*axes: torch.Tensor) -> torch.Tensor:
    """The tensor-product grid of 1-D ``axes`` as points ``(len_0 * len_1 * ..., len(axes))``, first axis slowest."""
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))


def as_grid(values: torch.Tensor, *sizes: int) -> np.ndarray:
    """Values at :func:`grid_points` reshaped to the grid, as a NumPy array."""
    return values.detach().reshape(*sizes).cpu().numpy()


# -- errors ---------------------------------------------------------------------------


def relative_l2(predicted: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """``||predicted - exact|| / ||exact||`` over all points."""
    return (predicted - exact).norm() / exact.norm()


def max_error(predicted: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """``max |predicted - exact|`` over all points."""
    return (predicted - exact).abs().max()


ERRORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "relative L2 error": relative_l2,
    "max error": max_error,
}


def load_reference(data_dir: str | Path | None, name: str) -> dict[str, np.ndarray] | None:
    """The arrays of ``data_dir/name`` (a MATLAB file), or ``None`` when it is not there.

    A relative ``data_dir`` starts at the repository root, wherever the example is run from.
    """
    if data_dir is None or not (ROOT / data_dir / name).exists():
        return None
    from scipy.io import loadmat  # only needed with the published data

    return {key: value for key, value in loadmat(ROOT / data_dir / name).items() if not key.startswith("__")}


# -- Levenberg-Marquardt --------------------------------------------------------------


class LevenbergMarquardt(torch.optim.Optimizer):
    """Damped Gauss-Newton steps ``delta = -(J^T J + lambda I)^{-1} J^T r`` on a least-squares loss ``mean(r^2)``.

    ``step(closure, residuals)`` takes a closure returning ``(r, J)``: the residuals
    ``(N,)`` and their Jacobian ``(N, P)`` with respect to this optimizer's
    parameters, flattened in their order, and a function returning ``r`` alone
    (to try a step).  The damping ``lambda`` shrinks by ``decrease`` after a step
    that lowers the loss and grows by ``increase`` until one does (up to ``tries``
    times); it is part of the optimizer state, so checkpoints resume it.
    ``reduce`` sums ``J^T J``, ``J^T r`` and the loss over processes (DDP shards the points).
    """

    def __init__(
        self, params, damping: float = 1e-3, increase: float = 4.0, decrease: float = 3.0, tries: int = 12,
        reduce: Callable[[torch.Tensor], torch.Tensor] = lambda value: value,
    ) -> None:  # fmt: skip
        super().__init__(params, {"damping": damping, "increase": increase, "decrease": decrease, "tries": tries})
        self.reduce = reduce

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], tuple[torch.Tensor, torch.Tensor]], residuals: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        group = self.param_groups[0]
        params = group["params"]
        with torch.enable_grad():
            r, jacobian = closure()
        count = self.reduce(torch.tensor(float(r.numel()), dtype=r.dtype, device=r.device))
        loss = self.reduce(r.square().sum()) / count
        normal = self.reduce(jacobian.T @ jacobian)  # (P, P): cheaper than the (N, N) kernel for N > P
        gradient = self.reduce(jacobian.T @ r)
        start = torch.nn.utils.parameters_to_vector(params)
        eye = torch.eye(len(gradient), dtype=r.dtype, device=r.device)
        for _ in range(group["tries"]):
            factor, info = torch.linalg.cholesky_ex(normal + group["damping"] * eye)
            if info == 0:
                delta = torch.cholesky_solve(gradient.unsqueeze(-1), factor).squeeze(-1)
                torch.nn.utils.vector_to_parameters(start - delta, params)
                with torch.enable_grad():
                    trial = residuals().detach()
                if self.reduce(trial.square().sum()) / count < loss:
                    group["damping"] = max(group["damping"] / group["decrease"], 1e-12)
                    return loss
            group["damping"] *= group["increase"]
        torch.nn.utils.vector_to_parameters(start, params)  # no step lowered the loss: stay, damped harder
        return loss


# -- the training module --------------------------------------------------------------


class PINNModule(pl.LightningModule):
    """A physics-informed network: Adam for ``adam_steps`` steps, then L-BFGS or Levenberg-Marquardt.

    A subclass defines ``forward(points)`` (the solution ``u``) and
    ``residual(points)`` (the PDE residual, from diffops operators); it may
    override :meth:`training_loss` to add terms such as a data or boundary
    loss, and set ``error_name`` to one of :data:`ERRORS`.  For
    ``second_order="levenberg_marquardt"`` it defines
    :meth:`least_squares_operators`: the loss as a sum of mean squares of
    diffops operators, whose parameter Jacobians :func:`diffops.parameter_jacobian` gives.

    Validation and test compute the residual on a held-out grid as well as the
    error against the reference solutions.  Lightning runs them under
    ``torch.no_grad()`` (and, unless the trainer says ``inference_mode=False``,
    under ``torch.inference_mode()``, where no derivative can be taken), so
    :meth:`evaluate` turns autograd back on around the residual.
    """

    error_name = "relative L2 error"

    def __init__(
        self, adam_steps: int, lr: float, second_order: str = "lbfgs", damping: float = 1e-3,
    ) -> None:  # fmt: skip
        super().__init__()
        if second_order not in ("lbfgs", "levenberg_marquardt"):
            raise ValueError(f"second_order must be 'lbfgs' or 'levenberg_marquardt', got {second_order!r}")
        # Two optimizers one after the other, and the second re-evaluates the loss through a closure:
        # both are simplest to drive by hand.  The optimizer states go into checkpoints as usual.
        self.automatic_optimization = False
        self.adam_steps, self.lr = adam_steps, lr
        self.second_order, self.damping = second_order, damping

    # -- what a subclass defines

    def residual(self, points: torch.Tensor) -> torch.Tensor:
        """The PDE residual at ``points``; zero for the exact solution."""
        raise NotImplementedError

    def training_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The loss terms on one batch of collocation points; the loss is their sum."""
        return {"residual": self.residual(batch).square().mean()}

    def least_squares_operators(self, batch: Batch) -> list[tuple[diffops.DifferentialOperator, tuple, Any]]:
        """``[(op, inputs, target), ...]`` with loss ``sum_k mean((op_k(*inputs_k) - target_k)^2)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define its loss for Levenberg-Marquardt")

    def identified(self) -> dict[str, tuple[float, float]]:
        """Identified PDE coefficients of an inverse problem, ``{name: (value, true value)}``."""
        return {}

    # -- optimization

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        adam = torch.optim.Adam(self.parameters(), lr=self.lr)
        if self.second_order == "levenberg_marquardt":
            return [adam, LevenbergMarquardt(self.parameters(), damping=self.damping, reduce=self._sum_over_processes)]
        lbfgs = torch.optim.LBFGS(
            self.parameters(),
            lr=1.0,
            max_iter=20,
            history_size=50,
            line_search_fn="strong_wolfe",
            # The defaults stop once the loss changes by less than 1e-9 in absolute terms, far above
            # what float64 PINN losses reach; stop on the gradient instead.
            tolerance_grad=1e-11,
            tolerance_change=1e-16,
        )
        return [adam, lbfgs]

    def _sum_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(value, reduce_op="sum") if self.trainer.world_size > 1 else value

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        adam, second = self.optimizers()
        if self.global_step >= self.adam_steps and self.second_order == "levenberg_marquardt":
            loss = second.step(
                closure=lambda: self._residuals_and_jacobian(batch, jacobian=True),
                residuals=lambda: self._residuals_and_jacobian(batch, jacobian=False)[0],
            )
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/damping", second.param_groups[0]["damping"])
            self._log_identified()
            return
        optimizer = adam if self.global_step < self.adam_steps else second
        terms: dict[str, torch.Tensor] = {}

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            terms.update(self.training_loss(batch))
            loss = sum(terms.values())
            self.manual_backward(loss)
            # Under DDP each process holds a shard of the points; L-BFGS's line search and stopping
            # test must see the same loss everywhere, or the processes would take different steps.
            return self.trainer.strategy.reduce(loss.detach())

        loss = optimizer.step(closure=closure)
        self.log("train/loss", loss, prog_bar=True)
        for name, term in terms.items():
            self.log(f"train/{name}", term.detach())
        self._log_identified()

    def _log_identified(self) -> None:
        for name, (value, _) in self.identified().items():
            self.log(f"train/{name}", value)

    def _residuals_and_jacobian(self, batch: Batch, jacobian: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All least-squares residuals, scaled so that their sum of squares is the loss, and their Jacobian."""
        params = list(self.parameters())
        index = {id(p): i for i, p in enumerate(params)}
        residuals, blocks = [], []
        for op, inputs, target in self.least_squares_operators(batch):
            values = op(*inputs) - target
            scale = values.numel() ** -0.5
            residuals.append(scale * values.detach().reshape(-1))
            if jacobian:
                per_param = diffops.parameter_jacobian(op, *inputs)
                by_index = dict(zip([index[id(p)] for _, p in op.named_parameters() if p.requires_grad],
                                    per_param.values(), strict=True))  # fmt: skip
                columns = [
                    by_index[i].reshape(values.numel(), -1) if i in by_index
                    else values.new_zeros(values.numel(), p.numel())
                    for i, p in enumerate(params)
                ]  # fmt: skip
                blocks.append(scale * torch.cat(columns, dim=1))
        r = torch.cat(residuals)
        return r, (torch.cat(blocks) if jacobian else None)

    # -- evaluation

    def evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, suffix: str = "") -> dict:
        """Log the mean squared residual and the errors against the reference solution on ``batch``."""
        points, exact = batch
        with torch.enable_grad():
            residual = self.residual(points).detach().square().mean()
        predicted = self(points)
        metrics = {f"{stage}/residual{suffix}": residual}
        metrics[f"{stage}/error{suffix}"] = ERRORS[self.error_name](predicted, exact)
        metrics[f"{stage}/relative_l2{suffix}"] = relative_l2(predicted, exact)
        self.log_dict(metrics, prog_bar=stage == "val", sync_dist=True, add_dataloader_idx=False)
        return metrics

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict:
        return self.evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        names = list(self.trainer.datamodule.references) if self.trainer.datamodule is not None else []
        return self.evaluate(batch, "test", f"/{names[dataloader_idx]}" if dataloader_idx else "")


# -- data -----------------------------------------------------------------------------


class InverseProblemModule(PINNModule):
    """A tanh network ``u(x, t)`` and the coefficients ``lambda1``, ``lambda2`` of ``family``, fitted to observations.

    ``family(u, method)`` is a :class:`diffops.DifferentialOperator` of the inputs ``(x, t)`` that holds
    ``lambda1`` and ``lambda2`` as its own parameters; ``true_values`` are the coefficients to identify.
    A subclass sets both and calls :meth:`build` from its ``__init__`` (whose defaults the CLI shows).
    """

    family: type[diffops.DifferentialOperator]
    true_values: dict[str, float]

    def build(self, hidden: int, layers: int, method: str, jacobian_method: str) -> None:
        """The network, the residual, and the operators whose per-point parameter Jacobians Levenberg-Marquardt takes
        (the same residual, sharing the coefficients, and ``u`` itself, with ``jacobian_method``)."""
        self.u = SpaceTime(mlp(2, 1, hidden, layers), low=(-1.0, 0.0), high=(1.0, 1.0))
        self.pde = self.family(self.u, method=method)
        self.pde_for_jacobian = self.family(self.u, method=jacobian_method)
        self.pde_for_jacobian.lambda1, self.pde_for_jacobian.lambda2 = self.pde.lambda1, self.pde.lambda2
        self.value = diffops.Derivative(self.u, wrt=0, order=0, argnums=(0, 1), method=jacobian_method)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.u(points[..., :1], points[..., 1:])

    def residual(self, points: torch.Tensor) -> torch.Tensor:
        return self.pde(points[..., :1], points[..., 1:])

    @staticmethod
    def residual_points(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Where the residual is taken: the observation points, and the collocation points when the batch has them."""
        return torch.cat([batch[0], batch[2]]) if len(batch) > 2 else batch[0]

    def training_loss(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        points, values = batch[:2]
        residual = self.residual(self.residual_points(batch)).square().mean()
        return {"data": (self(points) - values).square().mean(), "residual": residual}

    def least_squares_operators(self, batch: tuple[torch.Tensor, ...]) -> list:
        points, values = batch[:2]
        where = self.residual_points(batch)
        inputs = (points[..., :1], points[..., 1:])
        return [(self.value, inputs, values), (self.pde_for_jacobian, (where[..., :1], where[..., 1:]), 0.0)]

    def identified(self) -> dict[str, tuple[float, float]]:
        return {name: (getattr(self.pde, name).item(), true) for name, true in self.true_values.items()}


def _shard(batch: Batch, rank: int, world_size: int) -> Batch:
    """This process's share of every tensor in ``batch``."""
    if isinstance(batch, torch.Tensor):
        return batch.tensor_split(world_size)[rank]
    return tuple(_shard(part, rank, world_size) for part in batch)


class FreshPoints(IterableDataset):
    """``steps`` batches of newly drawn points, ``draw(generator)`` each, for domains too large to fix them."""

    def __init__(self, draw: Callable[[torch.Generator], Batch], steps: int, seed: int) -> None:
        self.draw, self.steps = draw, steps
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        for _ in range(self.steps):
            yield self.draw(self.generator)


class CollocationData(pl.LightningDataModule):
    """Collocation points for full-batch training, and reference solutions for evaluation.

    ``train`` is either fixed points, or a function ``draw(generator)`` that
    draws new ones for every step.  An epoch is ``steps_per_epoch`` steps
    (validation runs after each).  Under DDP every process trains on its own
    shard of fixed points, so the averaged gradient is the full-batch gradient,
    or on its own draws; each process evaluates the whole grid.

    ``grid`` and ``exact`` are the main reference, on which validation runs;
    a subclass may add more to :attr:`references` (``{name: (points, exact)}``,
    the main one first), which the test evaluates as well.
    """

    def __init__(
        self, train: Batch | Callable[[torch.Generator], Batch], grid: torch.Tensor, exact: torch.Tensor,
        steps_per_epoch: int, reference_name: str = "exact solution",
    ) -> None:  # fmt: skip
        super().__init__()
        self.train, self.grid, self.exact = train, grid, exact
        self.steps_per_epoch = steps_per_epoch
        self.references: dict[str, tuple[torch.Tensor, torch.Tensor]] = {reference_name: (grid, exact)}

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank
        if callable(self.train):
            return DataLoader(
                FreshPoints(self.train, self.steps_per_epoch, torch.initial_seed() + rank), batch_size=None
            )
        shard = _shard(self.train, rank, self.trainer.world_size)
        return DataLoader([shard] * self.steps_per_epoch, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([(self.grid, self.exact)], batch_size=None)

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader([reference], batch_size=None) for reference in self.references.values()]

    def figure_data(self, model: PINNModule) -> dict[str, Any]:
        """What :class:`figures.SolutionFigure` draws; see there."""
        raise NotImplementedError


class ObservationData(CollocationData):
    """``observations`` points drawn from a reference solution on a grid, with Gaussian noise, for inverse problems.

    Training batches are ``(points, values)``: the values are ``exact`` plus ``noise`` times its standard
    deviation times standard normal draws (the noise model of Raissi et al.), in float64.  With
    ``collocation > 0`` they are ``(points, values, collocation_points)``: that many Latin-hypercube points
    of the grid's bounding box, where the PDE residual is taken too, so that between and around the
    observations the network must still solve the equation instead of bending toward their noise.
    The collocation points come from a generator of their own (seeded from the run's seed), so the
    observations and their noise are the same draws whatever ``collocation`` is.  The whole grid is
    the reference.
    """

    def __init__(
        self, grid: torch.Tensor, exact: torch.Tensor, observations: int, noise: float, steps_per_epoch: int,
        reference_name: str, collocation: int = 0,
    ) -> None:  # fmt: skip
        if collocation < 0:
            raise ValueError(f"collocation must be a number of points >= 0, got {collocation}")
        index = torch.randperm(len(grid))[:observations]
        values = exact[index] + noise * exact.std() * torch.randn_like(exact[index])
        train: tuple[torch.Tensor, ...] = (grid[index], values)
        if collocation:
            generator = torch.Generator().manual_seed(torch.initial_seed())
            low, high = grid.amin(dim=0).tolist(), grid.amax(dim=0).tolist()
            train += (latin_hypercube(collocation, low, high, generator).to(grid.dtype),)
        super().__init__(train, grid, exact, steps_per_epoch, reference_name)


# -- the report -----------------------------------------------------------------------


class ErrorReport(pl.Callback):
    """Prints the last lines of every example after the test, on the first process only.

    ``relative L2 error: <value>`` against the main reference (the published data where
    the example has them), the same against any other reference, ``max error`` where an
    example measures that, ``lambda1: <value> (relative error <value>)`` for identified
    coefficients, then ``wall time: <s> s`` (training and test, from Lightning's
    :class:`~pytorch_lightning.callbacks.Timer`).  :attr:`result` holds the same numbers.
    """

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}

    def on_test_end(self, trainer: pl.Trainer, pl_module: PINNModule) -> None:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        timer = next(callback for callback in trainer.callbacks if isinstance(callback, Timer))
        names = list(trainer.datamodule.references)
        result: dict[str, Any] = {"error": metrics["test/error"], "residual": metrics["test/residual"]}
        result["relative_l2"] = metrics["test/relative_l2"]
        result["references"] = {names[0]: result["relative_l2"]}
        result["references"] |= {name: metrics[f"test/relative_l2/{name}"] for name in names[1:]}
        result["identified"] = {
            name: (value, abs(value - true) / abs(true)) for name, (value, true) in pl_module.identified().items()
        }
        result["wall_time"] = timer.time_elapsed("train") + timer.time_elapsed("test")
        result["steps"] = trainer.global_step
        self.result = result
        if not trainer.is_global_zero:
            return
        for name in names[1:]:
            print(f"relative L2 error against {name}: {result['references'][name]:.2e}")
        if pl_module.error_name != "relative L2 error":
            print(f"{pl_module.error_name}: {result['error']:.2e}")
        print(f"relative L2 error: {result['relative_l2']:.2e}")
        for name, (value, error) in result["identified"].items():
            print(f"{name}: {value:.6g} (relative error {error:.2e})")
        print(f"wall time: {result['wall_time']:.0f} s")
