"""The Ornstein-Uhlenbeck backward-equation example: its closed form and a few training steps."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("pytorch_lightning")
pytest.importorskip("matplotlib")

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
        ["--hidden", "8", "--layers", "1", "--points", "16", "--boundary-points", "8", "--test-points", "32",
         "--adam-steps", "6", "--val-every", "3", "--no-progress-bar", "--threads", "1", "--dim", "4", "--rank", "2",
         "--output-dir", str(tmp_path)]
    )  # fmt: skip
    assert math.isfinite(result["error"]) and result["error"] > 0 and result["steps"] == 6
    assert result["plot"].exists()
    printed = capsys.readouterr().out
    assert "relative L2 error: " in printed and "wall time: " in printed
