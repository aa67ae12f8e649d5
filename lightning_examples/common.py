"""Pieces shared by the Lightning examples: the training module, data, trainer, command line and plots.

Every example is a physics-informed network: a LightningModule whose loss is a
PDE residual built from diffops operators.  What they share lives here:

* :class:`PINNModule` trains with Adam, then L-BFGS, and keeps derivatives
  working in validation and test (Lightning evaluates without autograd);
* :class:`CollocationData` feeds full batches of fixed collocation points,
  split between processes under DDP, and a held-out grid with the exact solution;
* :func:`base_parser`, :func:`fit_and_test` and :func:`report` are the command
  line, the trainer set-up and the final printout;
* :func:`plot_field` and :func:`plot_curve` save the solution, the exact
  solution, the error and the loss curve as one PNG.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # the examples only write PNG files; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402
from pytorch_lightning.loggers import CSVLogger  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402

Batch = Any  # a tensor of points, or a tuple of tensors (e.g. interior and boundary points)


# -- networks -------------------------------------------------------------------------


def mlp(inputs: int, outputs: int, hidden: int, layers: int, activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """A fully connected network with ``layers`` hidden layers of width ``hidden``."""
    sizes = [inputs] + [hidden] * layers
    blocks: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        blocks += [nn.Linear(fan_in, fan_out), activation()]
    blocks.append(nn.Linear(sizes[-1], outputs))
    return nn.Sequential(*blocks)


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


# -- the training module --------------------------------------------------------------


class PINNModule(pl.LightningModule):
    """A physics-informed network trained with Adam for ``adam_steps`` steps, then with L-BFGS.

    A subclass defines ``forward(points)`` (the solution ``u``) and
    ``residual(points)`` (the PDE residual, from diffops operators); it may
    override :meth:`training_loss` to add terms such as a boundary loss, and
    set ``error_name`` to one of :data:`ERRORS`.

    Validation and test compute the residual on a held-out grid as well as the
    error against the exact solution.  Lightning runs them under
    ``torch.no_grad()`` (and, unless the trainer says ``inference_mode=False``,
    under ``torch.inference_mode()``, where no derivative can be taken), so
    :meth:`evaluate` turns autograd back on around the residual.
    """

    error_name = "relative L2 error"

    def __init__(self, adam_steps: int, lr: float) -> None:
        super().__init__()
        # Two optimizers one after the other, and L-BFGS re-evaluates the loss through a closure:
        # both are simplest to drive by hand.  The optimizer states go into checkpoints as usual.
        self.automatic_optimization = False
        self.adam_steps = adam_steps
        self.lr = lr

    def residual(self, points: torch.Tensor) -> torch.Tensor:
        """The PDE residual at ``points``; zero for the exact solution."""
        raise NotImplementedError

    def training_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The loss terms on one batch of collocation points; the loss is their sum."""
        return {"residual": self.residual(batch).square().mean()}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        adam = torch.optim.Adam(self.parameters(), lr=self.lr)
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

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        adam, lbfgs = self.optimizers()
        optimizer = adam if self.global_step < self.adam_steps else lbfgs
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

    def evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        """Log the mean squared residual and the error against the exact solution on ``batch``."""
        points, exact = batch
        with torch.enable_grad():
            residual = self.residual(points).detach().square().mean()
        metrics = {f"{stage}/residual": residual, f"{stage}/error": ERRORS[self.error_name](self(points), exact)}
        self.log_dict(metrics, prog_bar=stage == "val", sync_dist=True)
        return metrics

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self.evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self.evaluate(batch, "test")


# -- data -----------------------------------------------------------------------------


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
    """Collocation points for full-batch training, and a grid with the exact solution for evaluation.

    ``train`` is either fixed points, or a function ``draw(generator)`` that
    draws new ones for every step.  An epoch is ``steps_per_epoch`` steps
    (validation runs after each).  Under DDP every process trains on its own
    shard of fixed points, so the averaged gradient is the full-batch gradient,
    or on its own draws; each process evaluates the whole grid.
    """

    def __init__(
        self, train: Batch | Callable[[torch.Generator], Batch], grid: torch.Tensor, exact: torch.Tensor,
        steps_per_epoch: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.train, self.grid, self.exact = train, grid, exact
        self.steps_per_epoch = steps_per_epoch

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

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


# -- command line and trainer ---------------------------------------------------------


def base_parser(description: str, example: str) -> argparse.ArgumentParser:
    """The options every example has; an example adds its own and sets its defaults."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model and training")
    model.add_argument("--hidden", type=int, default=32, help="width of the hidden layers")
    model.add_argument("--layers", type=int, default=3, help="number of hidden layers")
    model.add_argument("--points", type=int, default=2000, help="number of collocation points")
    model.add_argument("--adam-steps", type=int, default=500, help="Adam steps before L-BFGS")
    model.add_argument("--lbfgs-steps", type=int, default=100, help="L-BFGS steps (up to 20 iterations each)")
    model.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument(
        "--method", default="auto", choices=("auto", "func", "taylor", "autograd"), help="diffops derivative engine"
    )
    run = parser.add_argument_group("trainer")
    run.add_argument("--output-dir", type=Path, default=Path("outputs") / example, help="plots, logs, checkpoints")
    run.add_argument("--resume", default=None, help="checkpoint to resume from, or 'last'")
    run.add_argument("--val-every", type=int, default=100, help="steps between validations (one epoch)")
    run.add_argument("--precision", default="64-true", help="Lightning precision; PINNs want float64")
    run.add_argument("--accelerator", default="auto")
    run.add_argument("--devices", default="auto", help="e.g. 2 with --strategy ddp for two processes")
    run.add_argument("--strategy", default="auto")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    run.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    return parser


def make_trainer(args: argparse.Namespace) -> pl.Trainer:
    """A trainer for ``args``; ``inference_mode=False`` so that validation may take derivatives."""
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    return pl.Trainer(
        max_steps=args.adam_steps + args.lbfgs_steps,
        max_epochs=-1,
        accelerator=args.accelerator,
        devices=devices,
        strategy=args.strategy,
        precision=args.precision,
        inference_mode=False,
        use_distributed_sampler=False,  # CollocationData shards the points itself
        logger=CSVLogger(args.output_dir, name="logs"),
        callbacks=[ModelCheckpoint(dirpath=args.output_dir / "checkpoints", save_last=True)],
        log_every_n_steps=1,
        enable_progress_bar=args.progress_bar,
        enable_model_summary=False,
    )


def fit_and_test(model: PINNModule, data: CollocationData, args: argparse.Namespace) -> tuple[pl.Trainer, dict]:
    """Train ``model`` (resuming from ``args.resume`` if given), then test it on the grid."""
    trainer = make_trainer(args)
    trainer.fit(model, datamodule=data, ckpt_path=args.resume)
    [metrics] = trainer.test(model, datamodule=data, verbose=False)
    return trainer, {name: float(value) for name, value in metrics.items()}


def setup(args: argparse.Namespace) -> float:
    """Seed and thread settings; returns the start time for :func:`report`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    return time.perf_counter()


def report(trainer: pl.Trainer, model: PINNModule, metrics: dict, start: float) -> dict:
    """Print the final error and the wall time in one line each; return them with the test metrics."""
    result = {"error": metrics["test/error"], "residual": metrics["test/residual"]}
    result["wall_time"] = time.perf_counter() - start
    result["steps"] = trainer.global_step
    if trainer.is_global_zero:
        print(f"{model.error_name}: {result['error']:.1e}")
        print(f"wall time: {result['wall_time']:.0f} s")
    return result


# -- plots ----------------------------------------------------------------------------


def loss_history(trainer: pl.Trainer) -> tuple[list[int], list[float]]:
    """``(steps, losses)`` of ``train/loss`` from the CSV log of this run."""
    trainer.logger.save()
    steps, losses = [], []
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as file:
        for row in csv.DictReader(file):
            if row.get("train/loss"):
                steps.append(int(row["step"]))
                losses.append(float(row["train/loss"]))
    return steps, losses


def _plot_losses(axis: plt.Axes, history: tuple[list[int], list[float]], adam_steps: int) -> None:
    steps, losses = history
    axis.semilogy(steps, losses)
    if adam_steps and steps and max(steps) > adam_steps:
        axis.axvline(adam_steps, color="gray", linestyle=":", label="Adam | L-BFGS")
        axis.legend()
    axis.set(xlabel="step", ylabel="training loss", title="loss curve")


def plot_field(
    path: Path,
    axes: tuple[np.ndarray, np.ndarray],
    predicted: np.ndarray,
    exact: np.ndarray,
    history: tuple[list[int], list[float]],
    adam_steps: int,
    labels: tuple[str, str] = ("x", "y"),
) -> None:
    """Save the network's solution, the exact one and the error on a 2-D grid, and the loss curve."""
    first, second = axes
    figure, (top, bottom) = plt.subplots(2, 2, figsize=(9, 7.5), layout="constrained")
    panels = [(top[0], predicted, "network solution"), (top[1], exact, "exact solution")]
    panels.append((bottom[0], np.abs(predicted - exact), "|error|"))
    for axis, values, title in panels:
        colormap = "magma" if title == "|error|" else "viridis"
        image = axis.pcolormesh(first, second, values.T, shading="auto", cmap=colormap)
        figure.colorbar(image, ax=axis)
        axis.set(xlabel=labels[0], ylabel=labels[1], title=title)
    _plot_losses(bottom[1], history, adam_steps)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_curve(
    path: Path,
    x: np.ndarray,
    predicted: np.ndarray,
    exact: np.ndarray,
    history: tuple[list[int], list[float]],
    adam_steps: int,
) -> None:
    """Save the network's solution against the exact one, the error, and the loss curve of a 1-D problem."""
    figure, (values, error, losses) = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    values.plot(x, exact, "k-", linewidth=3, alpha=0.4, label="exact")
    values.plot(x, predicted, "C0--", label="network")
    values.set(xlabel="x", ylabel="u", title="solution")
    values.legend()
    error.plot(x, predicted - exact)
    error.set(xlabel="x", ylabel="u - exact", title="error")
    _plot_losses(losses, history, adam_steps)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def grid_points(*axes: torch.Tensor) -> torch.Tensor:
    """The tensor-product grid of 1-D ``axes`` as points ``(len_0 * len_1 * ..., len(axes))``, first axis slowest."""
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))


def as_grid(values: torch.Tensor, *sizes: int) -> np.ndarray:
    """Values at :func:`grid_points` reshaped to the grid, as a NumPy array."""
    return values.detach().reshape(*sizes).cpu().numpy()
