"""The Ornstein-Uhlenbeck backward-equation example: its closed form and a few training steps."""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("pytorch_lightning")
pytest.importorskip("matplotlib")
pytest.importorskip("jsonargparse")

os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lightning_examples"))

import ou_fokker_planck as example  # noqa: E402

from tests import reference  # noqa: E402


def test_closed_form_solves_the_backward_equation_and_meets_the_terminal_condition():
    process = example.OrnsteinUhlenbeck(5, 2, 0.7, 1.0, torch.Generator().manual_seed(0))
    z = example.draw_points(6, 5, 1.0, torch.Generator().manual_seed(1))
    # the generator by nested autograd: the time derivative, the drift and tr(S S^T Hess) written out
    jacobian, hessian = reference.jacobian(process.exact, z)[:, 0], reference.hessian(process.exact, z)[:, 0]
    drift = (jacobian[:, :-1] * -0.7 * z[:, :-1]).sum(-1)
    diffusion = (hessian[:, :-1, :-1] * (process.sigma @ process.sigma.T)).sum((-1, -2))
    torch.testing.assert_close(jacobian[:, -1] + drift + 0.5 * diffusion, torch.zeros(6, dtype=torch.float64))
    terminal = torch.cat([z[:, :-1], torch.ones(6, 1, dtype=torch.float64)], dim=-1)
    torch.testing.assert_close(process.exact(terminal), process.payoff(z[:, :-1]))


def test_the_residual_is_the_generator_applied_to_the_network():
    module = example.KolmogorovModule(dim=4, rank=2, hidden=8, layers=1).double()
    z = example.draw_points(5, 4, 1.0, torch.Generator().manual_seed(2))
    assert str(module.pde) == "(drift·∇)u + 0.5·tr(SSᵀ∇²u)"
    jacobian, hessian = reference.jacobian(module.u, z)[:, 0], reference.hessian(module.u, z)[:, 0]
    s = module.process.sigma
    expected = (jacobian * module.process.drift(z)).sum(-1) + 0.5 * (hessian[:, :-1, :-1] * (s @ s.T)).sum((-1, -2))
    torch.testing.assert_close(module.residual(z)[:, 0], expected)


def test_example_runs_a_few_steps(tmp_path, capsys):
    result = example.main(
        ["--model.hidden", "8", "--model.layers", "1", "--data.points", "16", "--data.boundary_points", "8",
         "--data.test_points", "32", "--model.adam_steps", "6", "--data.steps_per_epoch", "3",
         "--trainer.enable_progress_bar", "false", "--threads", "1", "--data.dim", "4", "--model.rank", "2",
         "--trainer.default_root_dir", str(tmp_path)]
    )  # fmt: skip
    assert math.isfinite(result["error"]) and result["error"] > 0 and result["steps"] == 6
    assert math.isfinite(result["residual"]) and result["wall_time"] > 0
    assert result["plot"].exists()
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"wall time: \d+ s", lines[-1])
    assert lines[-2] == f"relative L2 error: {result['relative_l2']:.2e}"


def test_the_reference_is_the_closed_form_of_the_trained_process():
    data = example.OrnsteinUhlenbeckData(dim=3, horizon=0.5, test_points=16)
    module = example.KolmogorovModule(dim=3, rank=1, horizon=0.5, hidden=4, layers=1, process_seed=5)
    data.trainer = SimpleNamespace(lightning_module=module)
    data.setup("fit")
    [(points, exact)] = data.references.values()
    assert points.shape == (16, 4) and bool((points[:, -1] <= 0.5).all())
    torch.testing.assert_close(exact, module.process.exact(points))
    torch.testing.assert_close(data.val_dataloader().dataset[0][1], exact)
    other = example.KolmogorovModule(dim=3, rank=1, horizon=0.5, hidden=4, layers=1, process_seed=6)
    assert not torch.allclose(exact, other.process.exact(points)), "the reference follows the model's process"


def test_config_parses(capsys):
    with pytest.raises(SystemExit) as exit_:
        example.main(["--print_config", "--data.dim", "7"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model:" in printed and "data:" in printed and "trainer:" in printed
    assert "adam_steps: 3000" in printed and "rank: 3" in printed and "dim: 7" in printed
