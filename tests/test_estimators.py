"""Stochastic operator estimators: unbiasedness, variance, reproducibility, gradients, errors."""

import copy
import warnings

import pytest
import torch
from torch import nn

import diffops as do
from tests import reference

D = 4
REPEATS = 4000  # independent estimates per point
POINTS = 3


def mlp(d_in: int = D, d_out: int = 1) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, d_out)).double()


def repeated_points(d: int = D) -> torch.Tensor:
    """``(REPEATS, POINTS, d)``: each point repeated, so each row gets its own directions."""
    points = torch.randn(POINTS, d, dtype=torch.float64)
    return points.expand(REPEATS, POINTS, d).clone()


def hessians(u: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(POINTS, d, d)`` exact Hessians of a scalar ``u`` at the distinct points."""
    return do.Hessian(u)(x[0])[:, 0].detach()


def assert_within_standard_errors(estimates: torch.Tensor, exact: torch.Tensor, k: float = 4.0) -> None:
    """Mean over dim 0 within ``k`` standard errors of ``exact``, for every point."""
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / estimates.shape[0] ** 0.5
    assert standard_error.min() > 0, "an estimator with zero variance cannot be checked this way"
    assert ((mean - exact).abs() <= k * standard_error + 1e-12).all(), (mean, exact, standard_error)


@pytest.mark.parametrize(
    "options",
    [
        dict(estimator="hutchinson"),
        dict(estimator="hutchinson", distribution="gaussian"),
        dict(estimator="coordinates"),
    ],
)
@pytest.mark.parametrize("samples", [1, 3])
def test_laplacian_estimators_are_unbiased(options, samples):
    u, x = mlp(), repeated_points()
    estimates = do.Laplacian(u, samples=samples, **options)(x).detach()
    exact = do.Laplacian(u)(x[0]).detach()
    assert estimates.shape == (REPEATS, POINTS, 1)
    assert_within_standard_errors(estimates, exact)


def test_vector_valued_laplacian_estimate_is_unbiased():
    u, x = mlp(d_out=2), repeated_points()
    estimates = do.Laplacian(u, estimator="hutchinson", samples=2)(x).detach()
    assert estimates.shape == (REPEATS, POINTS, 2)
    assert_within_standard_errors(estimates, do.Laplacian(u)(x[0]).detach())


def test_biharmonic_stde_is_unbiased():
    u, x = mlp(d_in=3), repeated_points(3)
    estimates = do.Biharmonic(u, estimator="stde", samples=2)(x).detach()
    assert_within_standard_errors(estimates, do.Biharmonic(u)(x[0]).detach())


def test_exact_biharmonic_matches_nested_laplacians():
    u = mlp(d_in=3)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    laplacian = do.Laplacian(u, method="autograd")
    bilaplacian = do.Laplacian(lambda y: laplacian(y), method="autograd")(x)
    torch.testing.assert_close(do.Biharmonic(u)(x), bilaplacian)
    assert str(do.Biharmonic(u)) == "Δ²u"


def hutchinson_variance(h: torch.Tensor, distribution: str) -> torch.Tensor:
    """Variance of one direction's ``v^T H v``: the cross terms, plus the diagonal for Gaussian ``v``."""
    frobenius = (h**2).sum((-2, -1))
    diagonal = (h.diagonal(dim1=-2, dim2=-1) ** 2).sum(-1)
    return 2 * frobenius if distribution == "gaussian" else 2 * (frobenius - diagonal)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_variance_matches_theory(distribution):
    u, x = mlp(), repeated_points()
    samples = 2
    op = do.Laplacian(u, estimator="hutchinson", samples=samples, distribution=distribution)
    observed = op(x).detach()[..., 0].var(0)
    expected = hutchinson_variance(hessians(u, x), distribution) / samples
    torch.testing.assert_close(observed, expected, rtol=0.25, atol=0)


def test_coordinate_variance_matches_sampling_without_replacement():
    u, x = mlp(), repeated_points()
    samples = 2
    observed = do.Laplacian(u, estimator="coordinates", samples=samples)(x).detach()[..., 0].var(0)
    pure = hessians(u, x).diagonal(dim1=-2, dim2=-1)  # (POINTS, d)
    spread = pure.var(-1, unbiased=False)
    expected = D**2 * spread / samples * (D - samples) / (D - 1)
    torch.testing.assert_close(observed, expected, rtol=0.25, atol=0)


def test_all_coordinates_give_the_exact_laplacian_and_its_gradients():
    u = mlp()
    x = torch.randn(6, D, dtype=torch.float64)
    estimate = do.Laplacian(u, estimator="coordinates", samples=D)(x)
    exact = do.Laplacian(u)(x)
    torch.testing.assert_close(estimate, exact)
    weights = [p for p in u.parameters() if p.dim() == 2]  # a Laplacian does not depend on the last bias
    grads = torch.autograd.grad(estimate.square().sum(), weights)
    expected = torch.autograd.grad(exact.square().sum(), weights)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_a_seeded_generator_reproduces_the_estimate():
    u = mlp()
    x = torch.randn(8, D, dtype=torch.float64)
    make = lambda seed: do.Laplacian(  # noqa: E731
        u, estimator="hutchinson", samples=4, generator=torch.Generator().manual_seed(seed)
    )
    first, again, other = make(0), make(0), make(1)
    a = first(x)
    torch.testing.assert_close(a, again(x))
    assert not torch.allclose(a, other(x))
    assert not torch.allclose(a, first(x)), "each call must draw fresh directions"


def test_the_global_seed_reproduces_the_estimate_without_a_generator():
    u = mlp()
    x = torch.randn(8, D, dtype=torch.float64)
    op = do.Laplacian(u, estimator="coordinates", samples=2)
    torch.manual_seed(5)
    a = op(x)
    torch.manual_seed(5)
    torch.testing.assert_close(a, op(x))


def test_estimate_gradients_flow_to_parameters():
    u = mlp()
    x = torch.randn(8, D, dtype=torch.float64)
    op = do.Biharmonic(u, estimator="stde", samples=2)
    op(x).square().mean().backward()
    for p in u.parameters():
        if p.dim() == 2:  # the last bias drops out of any derivative
            assert p.grad is not None and torch.isfinite(p.grad).all()
    assert u[0].weight.grad.abs().sum() > 0


def test_estimated_laplacian_in_an_expression():
    u = mlp()
    x = torch.randn(2, 5, D, dtype=torch.float64)
    f = lambda y: y[..., :1] ** 2  # noqa: E731
    seeded = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    estimate = do.Laplacian(u, estimator="hutchinson", samples=3, generator=seeded())
    residual = estimate + 2.0 * do.Derivative(u, wrt=1) - f
    expected = do.Laplacian(u, estimator="hutchinson", samples=3, generator=seeded())(x)
    expected = expected + 2.0 * do.Derivative(u, wrt=1)(x) - f(x)
    torch.testing.assert_close(residual(x), expected)
    assert residual(x).shape == (2, 5, 1)


def test_estimator_with_several_inputs():
    torch.manual_seed(2)
    net = mlp(d_in=3)
    u = lambda x, t: net(torch.cat([x, t], dim=-1))  # noqa: E731
    x, t = torch.randn(7, 2, dtype=torch.float64), torch.randn(7, 1, dtype=torch.float64)
    estimate = do.Laplacian(u, argnums=(0, 1), estimator="coordinates", samples=3)(x, t)
    torch.testing.assert_close(estimate, do.Laplacian(u, argnums=(0, 1))(x, t))


def test_estimated_operator_copies_and_reports_its_estimator():
    op = do.Laplacian(mlp(), estimator="hutchinson", samples=4, generator=torch.Generator().manual_seed(0))
    clone = copy.deepcopy(op)
    x = torch.randn(3, D, dtype=torch.float64)
    torch.testing.assert_close(op(x), clone(x))
    assert "hutchinson(samples=4, distribution='rademacher')" in repr(op)


@pytest.mark.parametrize(
    "options, error, words",
    [
        (dict(estimator="hutchinsn", samples=2), ValueError, ["Laplacian", "hutchinsn", "coordinates"]),
        (dict(estimator="stde", samples=2), ValueError, ["Laplacian", "'stde'", "hutchinson"]),
        (dict(estimator="hutchinson"), TypeError, ["Laplacian", "samples", "None"]),
        (dict(estimator="hutchinson", samples=0), ValueError, ["Laplacian", "positive", "0"]),
        (dict(estimator="hutchinson", samples=2.0), TypeError, ["Laplacian", "positive int", "2.0"]),
        (dict(estimator="hutchinson", samples=True), TypeError, ["Laplacian", "True"]),
        (dict(estimator="hutchinson", samples=2, generator=3), TypeError, ["Laplacian", "torch.Generator", "int"]),
        (dict(estimator="hutchinson", samples=2, distribution="uniform"), ValueError, ["'uniform'", "gaussian"]),
        (dict(estimator="coordinates", samples=2, distribution="gaussian"), ValueError, ["coordinates", "gaussian"]),
        (dict(samples=8), ValueError, ["Laplacian", "samples", "estimator=None"]),
    ],
)
def test_bad_estimator_settings_raise(options, error, words):
    with pytest.raises(error) as info:
        do.Laplacian(mlp(), **options)
    for word in words:
        assert word in str(info.value)


def test_biharmonic_rejects_rademacher_directions():
    with pytest.raises(ValueError, match="Biharmonic.*'gaussian'.*rademacher"):
        do.Biharmonic(mlp(), estimator="stde", samples=2, distribution="rademacher")


def test_more_coordinates_than_dimensions_raise_at_call():
    op = do.Laplacian(mlp(), estimator="coordinates", samples=D + 1)
    with pytest.raises(ValueError, match=f"Laplacian.*samples={D + 1}.*d={D}"):
        op(torch.randn(2, D, dtype=torch.float64))


@pytest.mark.cuda
def test_cpu_generator_with_cuda_inputs():
    u = mlp()
    x = torch.randn(8, D, dtype=torch.float64)
    make = lambda: do.Laplacian(u, estimator="hutchinson", samples=4, generator=torch.Generator().manual_seed(0))  # noqa: E731
    on_cpu = make()(x)
    on_gpu = make().to("cuda")(x.cuda())
    torch.testing.assert_close(on_gpu.cpu(), on_cpu)


# -- the Hutchinson divergence ------------------------------------------------------------


def jacobians(u: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(POINTS, d, d)`` Jacobians of a field ``u`` at the distinct points, by nested autograd."""
    return reference.jacobian(u, x[0]).detach()


def divergence_variance(j: torch.Tensor, distribution: str) -> torch.Tensor:
    """Variance of one direction's ``v^T J v = sum_ij J_ij v_i v_j`` for a non-symmetric ``J``.

    With ``E[v_i v_j v_k v_l]`` = 1 when the indices pair up (plus 3 for i = j = k = l, Gaussian),
    ``Var = sum_(i != j) J_ij (J_ij + J_ji)`` for Rademacher directions; Gaussian ones add the
    ``i = j`` terms (``2 J_ii^2``), giving ``2 ||(J + J^T)/2||_F^2``.
    """
    pairs = j * (j + j.transpose(-1, -2))
    diagonal = pairs.diagonal(dim1=-2, dim2=-1).sum(-1)
    total = pairs.sum((-2, -1))
    return total if distribution == "gaussian" else total - diagonal


@pytest.mark.parametrize("method", ["taylor", "func", "autograd"])
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
@pytest.mark.parametrize("samples", [1, 3])
def test_hutchinson_divergence_is_unbiased(method, distribution, samples):
    u, x = mlp(d_out=D), repeated_points()
    op = do.Divergence(u, estimator="hutchinson", samples=samples, distribution=distribution, method=method)
    estimates = op(x).detach()
    assert estimates.shape == (REPEATS, POINTS, 1)
    exact = jacobians(u, x).diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
    torch.testing.assert_close(do.Divergence(u)(x[0]).detach(), exact)
    assert_within_standard_errors(estimates, exact)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_divergence_variance_matches_theory(distribution):
    u, x = mlp(d_out=D), repeated_points()
    samples = 2
    op = do.Divergence(u, estimator="hutchinson", samples=samples, distribution=distribution)
    observed = op(x).detach()[..., 0].var(0)
    expected = divergence_variance(jacobians(u, x), distribution) / samples
    torch.testing.assert_close(observed, expected, rtol=0.2, atol=0)


def test_hutchinson_divergence_of_a_linear_field_with_rademacher_directions():
    """``J`` diagonal and constant: every Rademacher draw gives the exact divergence."""
    scales = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    u = lambda x: x * scales  # noqa: E731
    x = torch.randn(5, D, dtype=torch.float64)
    estimate = do.Divergence(u, estimator="hutchinson", samples=1)(x)
    torch.testing.assert_close(estimate, torch.full((5, 1), scales.sum().item(), dtype=torch.float64))


def test_hutchinson_divergence_gradients_batch_rank_and_expressions():
    u = mlp(d_out=D)
    x = torch.randn(2, 3, D, dtype=torch.float64)
    seeded = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    op = do.Divergence(u, estimator="hutchinson", samples=D, generator=seeded())
    assert str(op) == "∇·u" and "hutchinson(samples=4" in repr(op)
    estimate = op(x)
    assert estimate.shape == (2, 3, 1)
    again = do.Divergence(u, estimator="hutchinson", samples=D, generator=seeded())
    torch.testing.assert_close((again - 1.0)(x), estimate - 1.0)
    grads = torch.autograd.grad(estimate.square().sum(), [u[0].weight, u[-1].weight])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_hutchinson_divergence_with_several_inputs():
    net = mlp(d_in=3, d_out=3)
    u = lambda x, t: net(torch.cat([x, t], dim=-1))  # noqa: E731
    x, t = torch.randn(2000, 2, dtype=torch.float64), torch.randn(2000, 1, dtype=torch.float64)
    x, t = x[:1].expand(2000, 2).clone(), t[:1].expand(2000, 1).clone()
    estimates = do.Divergence(u, argnums=(0, 1), estimator="hutchinson", samples=2)(x, t).detach()
    exact = do.Divergence(u, argnums=(0, 1))(x[:1], t[:1]).detach()
    assert_within_standard_errors(estimates, exact)


def test_hutchinson_divergence_refuses_a_non_square_field_and_bad_settings():
    with pytest.raises(ValueError, match=r"Divergence: u must be a square field.*\(4,\).*\(2,\)"):
        do.Divergence(mlp(d_out=2), estimator="hutchinson", samples=2)(torch.randn(3, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="Divergence.*samples.*estimator=None"):
        do.Divergence(mlp(d_out=D), samples=2)
    with pytest.raises(ValueError, match="Divergence.*hutchinson.*'coordinates'"):
        do.Divergence(mlp(d_out=D), estimator="coordinates", samples=2)
    empty = torch.randn(0, D, dtype=torch.float64)
    assert do.Divergence(mlp(d_out=D), estimator="hutchinson", samples=2)(empty).shape == (0, 1)


def test_hutchinson_divergence_compiles_to_one_graph():
    torch._dynamo.reset()
    u = mlp(d_out=D)
    op = do.Divergence(u, estimator="hutchinson", samples=2)
    x = torch.randn(8, D, dtype=torch.float64)
    compiled = torch.compile(lambda y: op(y).square().mean(), backend="aot_eager", fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = compiled(x)
    assert torch.isfinite(loss) and loss > 0
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, [u[0].weight]))


class _Separable(nn.Module):
    """``u(x) = sum_i f_i(x_i)``, or the field ``u_i = f_i(x_i)``: a diagonal Hessian (Jacobian), on which
    a Rademacher estimate is exact for every draw, so that a compiled estimate can be checked exactly."""

    def __init__(self, d: int, field: bool = False) -> None:
        super().__init__()
        self.parts = nn.ModuleList(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)) for _ in range(d))
        self.field = field

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.cat([f(x[..., i : i + 1]) for i, f in enumerate(self.parts)], dim=-1)
        return parts if self.field else parts.sum(-1, keepdim=True)


@pytest.mark.parametrize("case", ["laplacian", "weighted laplacian", "divergence"])
def test_estimators_compile_with_dynamic_shapes(case):
    """With ``dynamic=True`` the directions' sizes are symbols, which ``torch.randint`` refused ("SymIntArrayRef
    expected to contain only concrete integers"); compiled, the estimates equal the exact operators on
    separable networks, values and parameter gradients, at two batch sizes."""
    torch.manual_seed(0)
    u = _Separable(D, field=case == "divergence").double()
    sigma = torch.diag(torch.rand(D, dtype=torch.float64) + 0.5)  # (S v)^T H (S v) = tr(S S^T H) for diagonal H
    op, exact = {
        "laplacian": (do.Laplacian(u, estimator="hutchinson", samples=3), do.Laplacian(u)),
        "weighted laplacian": (
            do.Laplacian(u, sigma=sigma, estimator="hutchinson", samples=3),
            do.Laplacian(u, sigma=sigma),
        ),
        "divergence": (do.Divergence(u, estimator="hutchinson", samples=3), do.Divergence(u)),
    }[case]
    torch._dynamo.reset()
    compiled = torch.compile(op, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (5, 9):
        x = torch.randn(n, D, dtype=torch.float64)
        actual, expected = compiled(x), exact(x)
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
        for a, e in zip(reference.parameter_gradients(u, actual), reference.parameter_gradients(u, expected)):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_gaussian_directions_compile_with_dynamic_shapes():
    torch.manual_seed(0)
    op = do.Laplacian(mlp(), estimator="hutchinson", samples=3, distribution="gaussian")
    torch._dynamo.reset()
    compiled = torch.compile(op, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (5, 9):
        assert compiled(torch.randn(n, D, dtype=torch.float64)).isfinite().all()
