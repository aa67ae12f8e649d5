"""The Lightning examples, run for a few steps with small settings.

Each run must print a finite error, write its plot, validate with derivatives
under Lightning and leave a checkpoint that a later run resumes from.  One test
trains example 2 with DDP (two CPU processes, gloo) against a single process.
"""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("pytorch_lightning")
pytest.importorskip("matplotlib")

os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "lightning_examples"
sys.path.insert(0, str(EXAMPLES))

import burgers  # noqa: E402
import ode_ansatz  # noqa: E402
import poisson_2d  # noqa: E402
import poisson_100d  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from common import CollocationData  # noqa: E402

COMMON = ["--no-progress-bar", "--threads", "1", "--val-every", "5"]
FAST = {
    ode_ansatz: ["--hidden", "8", "--points", "32", "--adam-steps", "20", "--lbfgs-steps", "5"],
    poisson_2d: ["--hidden", "8", "--layers", "2", "--points", "64", "--grid", "11", "--adam-steps", "20",
                 "--lbfgs-steps", "3"],
    burgers: ["--hidden", "8", "--layers", "2", "--points", "64", "--front-points", "16", "--adam-steps", "10",
              "--lbfgs-steps", "2"],
    poisson_100d: ["--hidden", "16", "--layers", "2", "--points", "32", "--boundary-points", "32",
                   "--test-points", "64", "--adam-steps", "10"],
}  # fmt: skip


def run(example, tmp_path: Path, *extra: str) -> dict:
    return example.main([*FAST[example], *COMMON, "--output-dir", str(tmp_path), *extra])


def logged(tmp_path: Path, name: str) -> list[tuple[int, float]]:
    """``(step, value)`` of metric ``name`` in every CSV log under ``tmp_path``."""
    values = []
    for path in sorted(tmp_path.glob("logs/version_*/metrics.csv")):
        with open(path, newline="") as file:
            values += [(int(row["step"]), float(row[name])) for row in csv.DictReader(file) if row.get(name)]
    return values


@pytest.mark.parametrize("example", list(FAST), ids=lambda module: module.__name__)
def test_example_runs_validates_and_plots(example, tmp_path):
    result = run(example, tmp_path)
    assert math.isfinite(result["error"]) and result["error"] > 0
    assert math.isfinite(result["residual"])
    assert result["plot"].exists() and result["plot"].stat().st_size > 10_000
    validation = logged(tmp_path, "val/residual")
    assert len(validation) >= 2, "validation, which takes derivatives, did not run under Lightning"
    assert all(math.isfinite(value) for _, value in validation)
    losses = [value for _, value in logged(tmp_path, "train/loss")]
    assert losses[-1] < losses[0]


def test_validation_fails_under_inference_mode(tmp_path):
    """Why the examples set ``inference_mode=False``: Lightning's default forbids derivatives."""
    grid = torch.linspace(-1, 1, 11, dtype=torch.float64).unsqueeze(-1)
    data = CollocationData(grid, grid, ode_ansatz.exact_solution(grid), steps_per_epoch=1)
    trainer = pl.Trainer(inference_mode=True, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="inference_mode"):
        trainer.validate(ode_ansatz.ODEModule(hidden=4).double(), datamodule=data)


def test_resume_from_checkpoint(tmp_path):
    first = run(ode_ansatz, tmp_path)
    assert first["steps"] == 25 and (tmp_path / "checkpoints" / "last.ckpt").exists()
    resumed = run(ode_ansatz, tmp_path, "--lbfgs-steps", "10", "--resume", "last")
    assert resumed["steps"] == 30
    steps_after_resume = [step for step, _ in logged(tmp_path, "train/loss") if step >= 25]
    assert steps_after_resume, "the resumed run logged no training step"
    assert resumed["error"] <= 1.5 * first["error"]


def test_poisson_100d_with_hutchinson_estimator(tmp_path):
    result = run(poisson_100d, tmp_path, "--estimator", "hutchinson", "--samples", "4")
    assert math.isfinite(result["error"])
    assert result["plot"].name == "poisson_100d_hutchinson.png" and result["plot"].exists()


def test_burgers_reference_matches_published_solution():
    data_dir = ROOT.parent / "shared" / "data"
    if not (data_dir / "burgers_shock.mat").exists():
        pytest.skip(f"reference data burgers_shock.mat not found in {data_dir}")
    scipy_io = pytest.importorskip("scipy.io")
    data = scipy_io.loadmat(data_dir / "burgers_shock.mat")
    reference = burgers.cole_hopf(data["x"][:, 0], data["t"][:, 0])
    error = ((reference - data["usol"]) ** 2).sum() ** 0.5 / (data["usol"] ** 2).sum() ** 0.5
    assert error < 1e-8


def _error_printed(output: str) -> float:
    return float(re.search(r"relative L2 error: (\S+)", output).group(1))


def test_ddp_two_processes_converge_like_one(tmp_path):
    args = [*FAST[poisson_2d], *COMMON, "--accelerator", "cpu"]
    single = poisson_2d.main([*args, "--output-dir", str(tmp_path / "single")])
    command = [sys.executable, str(EXAMPLES / "poisson_2d.py"), *args, "--devices", "2", "--strategy", "ddp"]
    command += ["--output-dir", str(tmp_path / "ddp")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    ddp_error = _error_printed(process.stdout)
    assert process.stdout.count("relative L2 error") == 1, "only rank 0 should report"
    # Each process trains on half the points; the averaged gradient is the full-batch one.
    assert ddp_error == pytest.approx(single["error"], rel=0.1)
    ddp_losses = [value for _, value in logged(tmp_path / "ddp", "train/loss")]
    single_losses = [value for _, value in logged(tmp_path / "single", "train/loss")]
    assert ddp_losses[-1] == pytest.approx(single_losses[-1], rel=0.1)
