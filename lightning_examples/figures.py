"""The examples' figure, drawn by a callback after the test: solution, reference, error, loss curve.

The loss curve (and, for inverse problems, the trajectories of the identified
coefficients) comes from the run's CSV log, as the logger wrote it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # the examples only write PNG files; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402

History = dict[str, tuple[list[int], list[float]]]


def logged_history(log_dir: str | Path) -> History:
    """``{metric: (steps, values)}`` of every metric in ``log_dir/metrics.csv`` (a CSVLogger's file)."""
    history: History = {}
    with open(Path(log_dir) / "metrics.csv", newline="") as file:
        for row in csv.DictReader(file):
            for name, value in row.items():
                if name not in ("step", "epoch") and value:
                    steps, values = history.setdefault(name, ([], []))
                    steps.append(int(row["step"]))
                    values.append(float(value))
    return history


def run_history(logger_dir: str | Path) -> History:
    """The history of a run and the runs it resumed: every ``version_*`` log under ``logger_dir``, in order.

    Where a resumed run logged steps again, its values replace the earlier ones.
    """
    merged: dict[str, dict[int, float]] = {}
    versions = sorted(Path(logger_dir).glob("version_*"), key=lambda path: int(path.name.split("_")[-1]))
    for version in versions:
        if (version / "metrics.csv").exists():
            for name, (steps, values) in logged_history(version).items():
                merged.setdefault(name, {}).update(zip(steps, values, strict=True))
    return {name: (sorted(points), [points[step] for step in sorted(points)]) for name, points in merged.items()}


def plot_losses(axis: plt.Axes, history: History, adam_steps: int) -> None:
    """The training loss against the step, with the switch from Adam marked."""
    steps, losses = history.get("train/loss", ([], []))
    axis.semilogy(steps, losses)
    if adam_steps and steps and max(steps) > adam_steps:
        axis.axvline(adam_steps, color="gray", linestyle=":", label="Adam | second order")
        axis.legend()
    axis.set(xlabel="step", ylabel="training loss", title="loss curve")


def plot_trajectories(axis: plt.Axes, history: History, identified: dict[str, tuple[float, float]]) -> None:
    """The relative error of each identified coefficient against the step."""
    for name, (_, true) in identified.items():
        steps, values = history.get(f"train/{name}", ([], []))
        axis.semilogy(steps, np.abs(np.asarray(values) - true) / abs(true), label=f"{name} (true {true:g})")
    axis.legend()
    axis.set(xlabel="step", ylabel="relative error", title="identified coefficients")


def draw(
    path: Path, data: dict[str, Any], history: History, adam_steps: int,
    identified: dict[str, tuple[float, float]] | None = None,
) -> None:  # fmt: skip
    """Save the figure of ``data`` (see :class:`SolutionFigure`) as a PNG."""
    panels = 4 if data["kind"] == "field" else 3
    panels += bool(identified)
    columns = 2 if data["kind"] == "field" and panels == 4 else 3
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.8 * rows), layout="constrained", squeeze=False)
    axes = list(axes.flat)
    predicted, exact = data["predicted"], data["exact"]
    if data["kind"] == "field":
        first, second = data["axes"]
        for axis, values, title in [
            (axes[0], predicted, "network solution"), (axes[1], exact, data.get("exact_name", "reference")),
            (axes[2], np.abs(predicted - exact), "|error|"),
        ]:  # fmt: skip
            image = axis.pcolormesh(first, second, values.T, shading="auto", cmap="magma" if "error" in title else None)
            figure.colorbar(image, ax=axis)
            axis.set(xlabel=data["labels"][0], ylabel=data["labels"][1], title=title)
    else:
        x = data["x"]
        axes[0].plot(x, exact, "k-", linewidth=3, alpha=0.4, label=data.get("exact_name", "exact"))
        axes[0].plot(x, predicted, "C0--", label="network")
        axes[0].set(xlabel="x", ylabel="u", title="solution")
        axes[0].legend()
        axes[1].plot(x, predicted - exact)
        axes[1].set(xlabel="x", ylabel="u - exact", title="error")
    loss_axis = axes[3 if data["kind"] == "field" else 2]
    plot_losses(loss_axis, history, adam_steps)
    if identified:
        plot_trajectories(axes[panels - 1], history, identified)
    for axis in axes[panels:]:
        axis.axis("off")
    figure.savefig(path, dpi=80)
    plt.close(figure)


class SolutionFigure(pl.Callback):
    """After the test, saves ``<default_root_dir>/<name>.png`` on the first process.

    The data module's ``figure_data(model)`` says what to draw: ``{"kind": "field",
    "axes": (x, y), "predicted": (len(x), len(y)), "exact": ..., "labels": (..., ...),
    "name": ...}`` for a 2-D grid, or ``{"kind": "curve", "x": ..., "predicted": ...,
    "exact": ..., "name": ...}`` for a 1-D problem.  :attr:`path` is the file written.
    """

    def __init__(self) -> None:
        self.path: Path | None = None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        data = trainer.datamodule.figure_data(pl_module)
        trainer.logger.save()
        self.path = Path(trainer.default_root_dir) / f"{data['name']}.png"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        history = run_history(Path(trainer.logger.log_dir).parent)
        draw(self.path, data, history, pl_module.adam_steps, pl_module.identified())
