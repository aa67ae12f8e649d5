"""The Lightning examples, run for a few steps with small settings through their command line.

Each run must print its errors and wall time, write its figure, validate with
derivatives under Lightning and leave a checkpoint that a later run resumes
from; the inverse problems' coefficients must move toward the truth.  Every
config parses (``--print_config``).  One test trains example 2 with DDP (two
CPU processes, gloo) against a single process.
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
pytest.importorskip("jsonargparse")

os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "lightning_examples"
sys.path.insert(0, str(EXAMPLES))

import burgers  # noqa: E402
import burgers_inverse  # noqa: E402
import common  # noqa: E402
import figures  # noqa: E402
import kdv_inverse  # noqa: E402
import ode_ansatz  # noqa: E402
import poisson_2d  # noqa: E402
import poisson_100d  # noqa: E402
import pytorch_lightning as pl  # noqa: E402

import diffops  # noqa: E402

DATA_DIR = ROOT / common.DATA_DIR
COMMON = ["--trainer.enable_progress_bar", "false", "--threads", "1", "--data.steps_per_epoch", "5"]
SMALL = ["--model.hidden", "8", "--model.layers", "2"]
FAST = {
    ode_ansatz: [*SMALL, "--data.points", "32", "--model.adam_steps", "20", "--model.second_order_steps", "5"],
    poisson_2d: [*SMALL, "--data.points", "64", "--data.grid", "11", "--model.adam_steps", "20",
                 "--model.second_order_steps", "3"],
    burgers: [*SMALL, "--data.points", "64", "--data.front_points", "16", "--model.adam_steps", "10",
              "--model.second_order_steps", "2"],
    poisson_100d: ["--model.hidden", "16", "--data.points", "32", "--data.boundary_points", "32",
                   "--data.test_points", "64", "--model.adam_steps", "10"],
    # Enough Levenberg-Marquardt steps for the coefficients to move well toward the truth, on a small network.
    burgers_inverse: ["--model.hidden", "16", "--model.layers", "3", "--data.observations", "500",
                      "--data.collocation", "200", "--model.adam_steps", "100", "--model.lr", "0.01",
                      "--model.second_order_steps", "60"],
    kdv_inverse: ["--model.hidden", "16", "--model.layers", "3", "--data.observations", "500",
                  "--model.adam_steps", "100", "--model.lr", "0.01", "--model.second_order_steps", "30",
                  "--data.data_dir", "null"],
}  # fmt: skip
INVERSE = (burgers_inverse, kdv_inverse)


def run(example, tmp_path: Path, *extra: str) -> dict:
    # The inverse problems validate on their whole data grid: less often.
    every = ["--data.steps_per_epoch", "50"] if example in INVERSE else []
    return example.main([*FAST[example], *COMMON, *every, "--trainer.default_root_dir", str(tmp_path), *extra])


def logged(tmp_path: Path, name: str) -> list[tuple[int, float]]:
    """``(step, value)`` of metric ``name`` in every CSV log under ``tmp_path``."""
    values = []
    for path in sorted(tmp_path.glob("logs/version_*/metrics.csv")):
        with open(path, newline="") as file:
            values += [(int(row["step"]), float(row[name])) for row in csv.DictReader(file) if row.get(name)]
    return values


def run_and_check_report(example, tmp_path: Path, capsys) -> dict:
    """Run ``example``; check its errors, last lines, figure, validations and loss; return its report."""
    result = run(example, tmp_path)
    assert math.isfinite(result["error"]) and result["error"] > 0
    assert math.isfinite(result["residual"]) and result["wall_time"] > 0
    assert result["plot"].exists() and result["plot"].stat().st_size > 10_000
    validation = logged(tmp_path, "val/residual")
    assert len(validation) >= 2, "validation, which takes derivatives, did not run under Lightning"
    assert all(math.isfinite(value) for _, value in validation)
    losses = [value for _, value in logged(tmp_path, "train/loss")]
    assert losses[-1] < losses[0]
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"wall time: \d+ s", lines[-1])
    assert f"relative L2 error: {result['relative_l2']:.2e}" in lines
    for name, (value, error) in result["identified"].items():
        assert f"{name}: {value:.6g} (relative error {error:.2e})" in lines
    return result


@pytest.mark.parametrize("example", [e for e in FAST if e not in INVERSE], ids=lambda module: module.__name__)
def test_example_runs_reports_and_plots(example, tmp_path, capsys):
    run_and_check_report(example, tmp_path, capsys)


@pytest.mark.parametrize("example", INVERSE, ids=lambda module: module.__name__)
def test_inverse_coefficients_move_toward_the_truth(example, tmp_path, capsys):
    result = run_and_check_report(example, tmp_path, capsys)
    assert set(result["identified"]) == {"lambda1", "lambda2"}
    for name, (_, error) in result["identified"].items():
        assert error < 0.7, f"{name} is not much closer to its true value than its start, 0"
        trajectory = [value for _, value in logged(tmp_path, f"train/{name}")]
        assert len(trajectory) == result["steps"], "the coefficient is logged at every step"
    # Levenberg-Marquardt takes lambda1 within a few per cent in a few dozen steps
    # (Burgers, 60 steps with 200 collocation points: 0.1 %; KdV soliton, 30 steps: 0.006 %).
    assert result["identified"]["lambda1"][1] < 0.1


@pytest.mark.parametrize("example", list(FAST), ids=lambda module: module.__name__)
def test_config_parses(example, capsys):
    with pytest.raises(SystemExit) as exit_:
        example.main(["--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model:" in printed and "data:" in printed and "trainer:" in printed
    assert "adam_steps" in printed and "max_steps" not in printed  # trainer.max_steps follows the model


def test_help_lists_the_settings(capsys):
    with pytest.raises(SystemExit):
        burgers.main(["--help"])
    printed = capsys.readouterr().out
    for option in ("--model.second_order", "--data.data_dir", "--ckpt_path", "--trainer.max_time", "--config"):
        assert option in printed


def test_a_bad_setting_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        burgers.main(["--model.second_order", "newton"])
    assert exit_.value.code != 0


def test_config_file_overrides_the_defaults(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text("model:\n  hidden: 8\n  layers: 2\n  adam_steps: 12\n  second_order_steps: 1\n")
    result = ode_ansatz.main(["--config", str(config), *COMMON, "--trainer.default_root_dir", str(tmp_path)])
    assert result["steps"] == 13


def test_max_time_stops_training(tmp_path):
    """``trainer.max_time`` (the time budget of the long examples) ends training early; the report still comes."""
    result = run(ode_ansatz, tmp_path, "--model.adam_steps", "100000", "--trainer.max_time", "00:00:00:02")
    assert 0 < result["steps"] < 100_000 and math.isfinite(result["error"])
    assert result["wall_time"] < 60


def test_levenberg_marquardt_trains(tmp_path):
    result = run(ode_ansatz, tmp_path, "--model.second_order", "levenberg_marquardt", "--model.second_order_steps", "5")
    damping = logged(tmp_path, "train/damping")
    assert [step for step, _ in damping] == list(range(20, 25))
    losses = dict(logged(tmp_path, "train/loss"))
    assert losses[24] < losses[19]
    assert result["error"] < 1e-2


def test_levenberg_marquardt_solves_linear_least_squares():
    """On r = A theta - b one undamped step is the least-squares solution; damping only shortens it."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(20, 3, dtype=torch.float64, generator=generator)
    b = torch.randn(20, dtype=torch.float64, generator=generator)
    theta = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optimizer = common.LevenbergMarquardt([theta], damping=1e-12)
    optimizer.step(lambda: (a @ theta - b, a), lambda: a @ theta - b)
    expected = torch.linalg.lstsq(a, b.unsqueeze(-1)).solution.squeeze(-1)
    torch.testing.assert_close(theta.detach(), expected)


def test_validation_fails_under_inference_mode(tmp_path):
    """Why the examples set ``inference_mode=False``: Lightning's default forbids derivatives."""
    data = ode_ansatz.ODEData(points=11, steps_per_epoch=1)
    trainer = pl.Trainer(inference_mode=True, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="inference_mode"):
        trainer.validate(ode_ansatz.ODEModule(hidden=4).double(), datamodule=data)


def test_resume_from_checkpoint(tmp_path):
    first = run(ode_ansatz, tmp_path)
    assert first["steps"] == 25 and (tmp_path / "checkpoints" / "last.ckpt").exists()
    resumed = run(ode_ansatz, tmp_path, "--model.second_order_steps", "10", "--ckpt_path", "last")
    assert resumed["steps"] == 30
    steps_after_resume = [step for step, _ in logged(tmp_path, "train/loss") if step >= 25]
    assert steps_after_resume, "the resumed run logged no training step"
    assert resumed["error"] <= 1.5 * first["error"]
    assert resumed["wall_time"] >= first["wall_time"], "the Timer resumes from the checkpoint too"
    steps, _ = figures.run_history(tmp_path / "logs")["train/loss"]
    assert steps[:25] == list(range(25)) and len(steps) == 30, "the figure's loss curve spans both runs"


def test_poisson_100d_with_hutchinson_estimator(tmp_path):
    result = run(poisson_100d, tmp_path, "--model.estimator", "hutchinson", "--model.samples", "4")
    assert math.isfinite(result["error"])
    assert result["plot"].name == "poisson_100d_hutchinson.png" and result["plot"].exists()


def test_inverse_data_fall_back_to_closed_forms():
    burgers_data = burgers_inverse.BurgersObservations(observations=10, collocation=0, data_dir=None)
    assert list(burgers_data.references) == ["Cole-Hopf"] and burgers_data.grid.shape == (256 * 100, 2)
    kdv_data = kdv_inverse.KdVObservations(observations=10, noise=0.01, data_dir=None)
    assert list(kdv_data.references) == ["soliton"] and kdv_data.grid.shape == (512 * 201, 2)
    points, values = kdv_data.train
    assert points.shape == (10, 2) and values.shape == (10, 1)


def test_latin_hypercube_puts_one_point_in_every_bin_of_every_axis():
    generator = torch.Generator().manual_seed(0)
    points = common.latin_hypercube(50, [-1.0, 0.0], [1.0, 0.5], generator)
    assert points.shape == (50, 2) and points.dtype == torch.float64
    low, high = torch.tensor([-1.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 0.5], dtype=torch.float64)
    bins = ((points - low) / (high - low) * 50).floor().long()
    for axis in range(2):
        assert sorted(bins[:, axis].tolist()) == list(range(50))
    again = common.latin_hypercube(50, [-1.0, 0.0], [1.0, 0.5], torch.Generator().manual_seed(0))
    torch.testing.assert_close(points, again)


def test_collocation_points_leave_the_observations_and_their_noise_unchanged():
    pl.seed_everything(3)
    without = burgers_inverse.BurgersObservations(observations=40, noise=0.01, collocation=0, data_dir=None).train
    pl.seed_everything(3)
    points, values, collocation = burgers_inverse.BurgersObservations(
        observations=40, noise=0.01, collocation=30, data_dir=None
    ).train
    torch.testing.assert_close(points, without[0])
    torch.testing.assert_close(values, without[1])
    assert collocation.shape == (30, 2) and collocation.dtype == torch.float64
    assert (collocation[:, 0].abs() <= 1).all() and (collocation[:, 1] >= 0).all() and (collocation[:, 1] <= 0.99).all()
    with pytest.raises(ValueError, match="collocation"):
        burgers_inverse.BurgersObservations(observations=10, collocation=-1, data_dir=None)


def test_residual_at_collocation_points_is_in_both_losses():
    """Levenberg-Marquardt's residual vector has a row per observation, per observation point's residual and per
    collocation point, and its sum of squares is the loss that Adam minimizes."""
    pl.seed_everything(0)
    data = burgers_inverse.BurgersObservations(observations=20, noise=0.01, collocation=30, data_dir=None)
    module = burgers_inverse.BurgersInverseModule(hidden=8, layers=2).double()
    with torch.no_grad():
        module.pde.lambda1.fill_(0.7)
        module.pde.lambda2.fill_(0.01)
    r, jacobian = module._residuals_and_jacobian(data.train, jacobian=True)
    parameters = sum(p.numel() for p in module.parameters())
    assert r.shape == (20 + 20 + 30,) and jacobian.shape == (70, parameters)
    loss = sum(module.training_loss(data.train).values())
    torch.testing.assert_close(r.square().sum(), loss.detach())
    # The residual rows depend on lambda1 and lambda2, the data rows do not.
    lambda1 = [i for i, (name, _) in enumerate(module.named_parameters()) if name.endswith("pde.lambda1")]
    start = sum(p.numel() for p in list(module.parameters())[: lambda1[0]])
    assert (jacobian[:20, start] == 0).all() and jacobian[20:, start].abs().sum() > 0


def test_kdv_soliton_solves_kdv():
    """The fallback data satisfy u_t + u u_x + 0.0025 u_xxx = 0 (third derivatives from diffops)."""

    def u(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        speed, start = 0.5, -0.25
        phase = (speed / kdv_inverse.DISPERSION) ** 0.5 / 2 * (x - start - speed * t)
        return 3 * speed / torch.cosh(phase) ** 2

    x = torch.linspace(-1, 1, 50, dtype=torch.float64).unsqueeze(-1)
    t = torch.rand(50, 1, dtype=torch.float64)
    d = diffops.Derivatives(u, u=(), u_x=(0,), u_xxx=(0, 0, 0), u_t=(1,), argnums=(0, 1))(x, t)
    residual = d["u_t"] + d["u"] * d["u_x"] + kdv_inverse.DISPERSION * d["u_xxx"]
    assert residual.abs().max() < 1e-10 * d["u_xxx"].abs().max()
    expected = kdv_inverse.soliton(x[:, 0].numpy(), t[:3, 0].numpy())
    torch.testing.assert_close(u(x, t[:3, 0]), torch.from_numpy(expected))


def test_burgers_reference_matches_published_solution():
    if not (DATA_DIR / "burgers_shock.mat").exists():
        pytest.skip(f"reference data burgers_shock.mat not found in {DATA_DIR}")
    data = common.load_reference(DATA_DIR, "burgers_shock.mat")
    reference = burgers.cole_hopf(data["x"][:, 0], data["t"][:, 0])
    error = ((reference - data["usol"]) ** 2).sum() ** 0.5 / (data["usol"] ** 2).sum() ** 0.5
    assert error < 1e-8


def test_burgers_reports_both_references(tmp_path, capsys):
    if not (DATA_DIR / "burgers_shock.mat").exists():
        pytest.skip(f"reference data burgers_shock.mat not found in {DATA_DIR}")
    result = run(burgers, tmp_path, "--data.data_dir", str(DATA_DIR))
    assert list(result["references"]) == ["burgers_shock.mat", "Cole-Hopf"]
    # The Cole-Hopf solution and the published one agree to 1e-8, so the two errors nearly do too.
    assert result["references"]["Cole-Hopf"] == pytest.approx(result["relative_l2"], rel=0.05)
    assert "relative L2 error against Cole-Hopf" in capsys.readouterr().out


def _error_printed(output: str) -> float:
    return float(re.search(r"^relative L2 error: (\S+)", output, re.MULTILINE).group(1))


def test_ddp_two_processes_converge_like_one(tmp_path):
    args = [*FAST[poisson_2d], *COMMON, "--trainer.accelerator", "cpu"]
    single = poisson_2d.main([*args, "--trainer.default_root_dir", str(tmp_path / "single")])
    command = [sys.executable, str(EXAMPLES / "poisson_2d.py"), *args, "--trainer.devices", "2"]
    command += ["--trainer.strategy", "ddp", "--trainer.default_root_dir", str(tmp_path / "ddp")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    ddp_error = _error_printed(process.stdout)
    assert process.stdout.count("relative L2 error") == 1, "only rank 0 should report"
    # Each process trains on half the points; the averaged gradient is the full-batch one.
    assert ddp_error == pytest.approx(single["relative_l2"], rel=0.1)
    ddp_losses = [value for _, value in logged(tmp_path / "ddp", "train/loss")]
    single_losses = [value for _, value in logged(tmp_path / "single", "train/loss")]
    assert ddp_losses[-1] == pytest.approx(single_losses[-1], rel=0.1)
