"""The examples' command line before the Lightning CLI: one argparse option per setting.

Kept for examples that have not moved to ``cli.py`` yet; ``common`` re-exports it.
New examples use :func:`cli.run` and a YAML file under ``configs/``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402
from pytorch_lightning.loggers import CSVLogger  # noqa: E402

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


def fit_and_test(
    model: pl.LightningModule, data: pl.LightningDataModule, args: argparse.Namespace
) -> tuple[pl.Trainer, dict]:
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


def report(trainer: pl.Trainer, model: pl.LightningModule, metrics: dict, start: float) -> dict:
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
