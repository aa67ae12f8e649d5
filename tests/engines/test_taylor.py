"""The Taylor engine against the float64 nested-autograd reference."""

from __future__ import annotations

import itertools
import warnings

import numpy
import pytest
import torch
from torch import nn

import diffops as do
from diffops.engines import ENGINES, EngineUnsupported, Request
from diffops.engines.func import FuncEngine
from diffops.engines.taylor.jet import Jet

from .. import reference as ref
from ..nets import Ansatz, Residual, TwoInputs, mlp

RTOL, ATOL = 1e-10, 1e-12
D = 3


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


def assert_gradients_close(u: nn.Module, actual: torch.Tensor, expected: torch.Tensor) -> None:
    for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
        assert_close(a, e)


class Activated(nn.Module):
    """Linear -> f -> Linear -> f -> Linear, for an elementwise function ``f``."""

    def __init__(self, f, d_in: int = D, d_out: int = 1, width: int = 6):
        super().__init__()
        self.f = f
        self.a, self.b, self.c = nn.Linear(d_in, width), nn.Linear(width, width), nn.Linear(width, d_out)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.f(self.b(self.f(self.a(x)))))


def positive(f):
    """``f`` on ``1 + h^2``, for functions defined on positive numbers only."""
    return lambda h: f(1 + h * h)


FUNCTIONS = {
    "tanh": nn.Tanh(),
    "sigmoid": nn.Sigmoid(),
    "silu": nn.SiLU(),
    "softplus": nn.Softplus(),
    "softplus-threshold": nn.Softplus(beta=2.0, threshold=0.5),
    "gelu": nn.GELU(),
    "gelu-tanh": nn.GELU(approximate="tanh"),
    "mish": nn.Mish(),
    "relu": nn.ReLU(),
    "leaky-relu": nn.LeakyReLU(0.1),
    "abs": torch.abs,
    "sin": torch.sin,
    "cos": torch.cos,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "exp": torch.exp,
    "expm1": torch.expm1,
    "atan": torch.atan,
    "erf": torch.erf,
    "square": torch.square,
    "cube": lambda h: h**3,
    "log": positive(torch.log),
    "log1p": positive(torch.log1p),
    "sqrt": positive(torch.sqrt),
    "rsqrt": positive(torch.rsqrt),
    "power": positive(lambda h: h**1.5),
    "reciprocal": positive(torch.reciprocal),
    "quotient": lambda h: h / (2 + torch.sin(h)),
    "exponent": lambda h: 2.0**h + (1 + h * h) ** torch.sigmoid(h),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_activation_matches_the_reference(name):
    u = Activated(FUNCTIONS[name])
    x = torch.randn(6, D, dtype=torch.float64)
    spec = {"u": (), "lap": None, "d3": (1, 1, 1), "mixed": (0, 2, 2)}
    op = do.Laplacian(u, method="taylor") + do.Derivative(u, wrt=spec["d3"], method="taylor")
    mixed = do.Derivative(u, wrt=spec["mixed"], method="taylor")(x)
    expected = ref.laplacian(u, x) + ref.partial(u, x, spec["d3"])
    actual = op(x)
    assert_close(actual, expected)
    assert_gradients_close(u, actual, expected)  # the only way the collapsed layer's third derivative shows
    assert_close(mixed, ref.partial(u, x, spec["mixed"]))
    assert_gradients_close(u, mixed, ref.partial(u, x, spec["mixed"]))


@pytest.mark.parametrize("name", ["tanh", "sin", "log", "softplus-threshold", "gelu", "silu"])
@pytest.mark.parametrize("wrt", [(1, 1, 1), (0, 1, 1, 2)])
def test_series_backward_is_twice_differentiable(name, wrt):
    """The hand-written backward of the elementwise series, through inputs and parameters."""
    u = Activated(FUNCTIONS[name], width=3)
    op = do.Derivative(u, wrt=wrt, method="taylor")
    x = torch.randn(2, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))
    weight = u.b.weight.detach().clone().requires_grad_(True)

    def of_weight(w: torch.Tensor) -> torch.Tensor:
        with_weight = lambda h: torch.func.functional_call(u, {"b.weight": w}, (h,))  # noqa: E731
        return do.Derivative(with_weight, wrt=wrt, method="taylor")(x.detach())

    assert torch.autograd.gradgradcheck(of_weight, (weight,))


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "silu", "softplus-threshold", "cos"])
def test_collapsed_laplacian_is_twice_differentiable(name):
    u = Activated(FUNCTIONS[name], width=3)
    x = torch.randn(2, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(do.Laplacian(u, method="taylor"), (x,))


@pytest.mark.parametrize("batch", [4, 300])
def test_collapsed_laplacian_on_small_and_large_batches(batch):
    # 8 directions x 300 samples x width 32 is above the size where direction sums go slice by slice.
    u = Activated(torch.tanh, d_in=8, width=32)
    x = torch.randn(batch, 8, dtype=torch.float64)
    actual = do.Laplacian(u, method="taylor")(x)
    expected = ref.laplacian(u, x)
    assert_close(actual, expected)
    assert_gradients_close(u, actual, expected)


@pytest.mark.parametrize("order", range(7))
def test_pure_derivatives_of_every_order(order):
    u = mlp(D, activation="tanh")
    x = torch.randn(8, D, dtype=torch.float64)
    actual = do.Derivative(u, wrt=1, order=order, method="taylor")(x)
    expected = ref.partial(u, x, (1,) * order)
    assert_close(actual, expected)
    assert_gradients_close(u, actual, expected)


MIXED = [i for k in range(2, 5) for i in itertools.combinations_with_replacement(range(D), k) if len(set(i)) > 1]


def test_every_mixed_partial_to_order_four_in_one_pass():
    u = mlp(D, activation="silu")
    x = torch.randn(5, D, dtype=torch.float64)
    calls = []
    counted = lambda h: calls.append(1) or u(h) if isinstance(h, Jet) else u(h)  # noqa: E731 (tensors: the coupling probe)
    spec = {f"d{''.join(map(str, index))}": index for index in MIXED}
    actual = do.Derivatives(counted, spec, method="taylor")(x)
    assert len(calls) == 1
    for name, index in spec.items():
        assert_close(actual[name], ref.partial(u, x, index))


@pytest.mark.parametrize("index", [(0, 1), (0, 0, 1), (0, 1, 2), (0, 0, 1, 1), (0, 1, 1, 2, 2)])
def test_parameter_gradients_of_mixed_partials(index):
    u = mlp(D, activation="sin")
    x = torch.randn(5, D, dtype=torch.float64)
    actual = do.Derivative(u, wrt=index, method="taylor")(x)
    expected = ref.partial(u, x, index)
    assert_close(actual, expected)
    assert_gradients_close(u, actual, expected)


OPERATORS = {
    "laplacian": (do.Laplacian, ref.laplacian),
    "hessian": (do.Hessian, ref.hessian),
    "jacobian": (do.Jacobian, ref.jacobian),
}
NETWORKS = {
    "mlp": lambda d_out: mlp(D, d_out),
    "residual": lambda d_out: Residual(D, d_out),
    "ansatz": lambda d_out: Ansatz(D, d_out),
}


@pytest.mark.parametrize("d_out", [1, 3])
@pytest.mark.parametrize("net", sorted(NETWORKS))
@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_whole_operators_on_scalar_and_vector_outputs(operator, net, d_out):
    make, reference = OPERATORS[operator]
    u = NETWORKS[net](d_out)
    x = torch.randn(2, 3, D, dtype=torch.float64)  # two batch dimensions
    actual = make(u, method="taylor")(x)
    flat = x.reshape(-1, D)
    expected = reference(u, flat).reshape(actual.shape)
    assert_close(actual, expected)
    assert_gradients_close(u, actual, expected)


def full_reference(u, x: torch.Tensor, key) -> torch.Tensor:
    if isinstance(key, tuple):
        return ref.partial(u, x, key)
    return {"laplacian": ref.laplacian, "hessian": ref.hessian, "jacobian": ref.jacobian}[key](u, x)


@pytest.mark.parametrize(
    ("partials", "full", "passes"),
    [
        ({(1,)}, {"laplacian"}, 1),  # the collapsed pass also gives the first partials
        (set(), {"laplacian", "hessian", "jacobian"}, 1),  # the Laplacian is the Hessian's trace
        ({(2, 2, 2), (0,)}, {"laplacian"}, 2),  # a collapsed pass and one for the third partial
        ({(0, 1), (0, 1, 1)}, {"jacobian"}, 1),
    ],
)
def test_combined_requests_share_passes(partials, full, passes):
    u = mlp(D, 2)
    x = torch.randn(4, D, dtype=torch.float64)
    calls = []
    counted = lambda h: calls.append(1) or u(h)  # noqa: E731
    results = ENGINES["taylor"].compute(counted, x, Request(frozenset(partials), frozenset(full)))
    assert len(calls) == passes
    assert set(results) == {(), *partials, *full}
    for key, value in results.items():
        assert_close(value, full_reference(u, x, key))


@pytest.mark.parametrize("argnums", [1, (0, 1), (1, 0)])
def test_several_inputs(argnums):
    u = TwoInputs(2, 1)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    selected = (argnums,) if isinstance(argnums, int) else argnums
    d = sum((2, 1)[a] for a in selected)

    def joined(z: torch.Tensor) -> torch.Tensor:  # u as a function of the selected coordinates
        parts = dict(zip(selected, z.split([(2, 1)[a] for a in selected], dim=-1)))
        return u(parts.get(0, x), parts.get(1, t))

    z = torch.cat([(x, t)[a] for a in selected], dim=-1)
    index = tuple(sorted({0, d - 1}))
    assert_close(do.Laplacian(u, argnums=argnums, method="taylor")(x, t), ref.laplacian(joined, z))
    assert_close(do.Derivative(u, wrt=index, argnums=argnums, method="taylor")(x, t), ref.partial(joined, z, index))


class Structural(nn.Module):
    """Shape operations, products and quotients of two jets, a contraction, a mask, a power of 2, a prod."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(D, 8), nn.Linear(9, 1)
        self.w = nn.Parameter(torch.randn(6, 3))
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        left, right = h.split(4, dim=-1)
        g = torch.cat([left * right, right[:, :1] / (2 + left.sin()[:, 1:2]), x[:, :1] ** 2 - 1], dim=-1)
        g = torch.where(g > 0, g, 0.5 * g)  # (N, 6)
        s = torch.einsum("ni,ij->nj", g, self.w) + g.sum(-1, keepdim=True).exp() / 4  # (N, 3)
        m = (s.unsqueeze(-1) @ s.unsqueeze(-2)).flatten(1)  # (N, 9): a product of two jets
        m = m.where(m < 4, 4.0)  # a constant branch
        scaled = torch.stack([m, m.mean(-1, keepdim=True).expand_as(m)], dim=0).sum(0)
        product = (x.sin() * self.w[0].to(x)).prod(-1, keepdim=True)  # a constant cast like the input
        return self.b(scaled) + 2 ** x[:, 1:2] - x.reshape(-1, 1, D)[:, 0, 2:].cos() + product


@pytest.mark.parametrize("key", [(0,), (0, 2), (1, 1, 2), (0, 1, 1, 2), "hessian", "laplacian"])
def test_shape_operations_and_products_of_jets(key):
    u = Structural()
    x = torch.randn(6, D, dtype=torch.float64)
    request = Request(frozenset({key})) if isinstance(key, tuple) else Request(full=frozenset({key}))
    actual = ENGINES["taylor"].compute(u, x, request)[key]
    expected = full_reference(u, x, key)
    assert_close(actual, expected)
    assert_gradients_close(u, actual, expected)


class Constant(nn.Module):
    """A network whose output does not depend on its input."""

    def __init__(self):
        super().__init__()
        self.c = nn.Parameter(torch.tensor([[1.5]], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c.expand(x.shape[0], 1)


def test_an_output_independent_of_the_input_has_zero_derivatives():
    x = torch.randn(4, 2, dtype=torch.float64)
    results = do.Derivatives(Constant(), u=(), u_x=(0,), u_xy=(0, 1), method="taylor")(x)
    assert_close(results["u"], torch.full((4, 1), 1.5, dtype=torch.float64))
    assert_close(results["u_xy"], torch.zeros(4, 1, dtype=torch.float64))
    assert_close(do.Laplacian(Constant(), method="taylor")(x), torch.zeros(4, 1, dtype=torch.float64))


@pytest.mark.parametrize("order", [0, 1, 2, 4])
def test_directional_derivatives_match_torch_func(order):
    u = mlp(D, 2, activation="silu")
    x = torch.randn(5, D, dtype=torch.float64)
    directions = torch.randn(3, 5, D, dtype=torch.float64)
    actual = ENGINES["taylor"].directional(u, x, directions, order)
    assert_close(actual, FuncEngine().directional(u, x, directions, order))


class UsesBessel(nn.Module):
    """``special.i0`` (a modified Bessel function), for which the Taylor engine has no rule."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 8), nn.Linear(8, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        return self.b(torch.special.i0(h))


def test_an_unsupported_function_is_named():
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(EngineUnsupported, match=r"Taylor mode does not support torch\.special\.i0"):
        do.Laplacian(UsesBessel(), method="taylor")(x)


class SoftplusAtItsSwitch(nn.Module):
    """``softplus(w x, beta=2, threshold=0)`` with ``w x`` exactly 0, below it and above it."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0], [0.5]], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(x @ self.w, beta=2.0, threshold=0.0)


@pytest.mark.parametrize("index", [(0,), (0, 0), (0, 0, 0), (0, 1, 1)])
def test_softplus_at_its_switch_follows_autograds_rules(index):
    """There torch's first derivative takes the smooth branch and the higher ones the linear branch."""
    u = SoftplusAtItsSwitch()
    x = torch.tensor([[0.0, 0.0], [0.6, -1.2], [-0.4, 0.3], [0.8, 0.1]], dtype=torch.float64)
    actual, expected = do.Derivative(u, wrt=index, method="taylor")(x), ref.partial(u, x, index)
    assert_close(actual, expected)
    assert_gradients_close(u, actual, expected)
    laplacian = do.Laplacian(u, method="taylor")(x)  # the collapsed jet's own rule
    assert_close(laplacian, ref.laplacian(u, x))
    assert_gradients_close(u, laplacian, ref.laplacian(u, x))


class PowerOfAbs(nn.Module):
    """``sum_i |w_i x_i|^p``, which a point with ``x_0 = 0`` (a boundary, say) meets at its base's zero."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.w = nn.Parameter(torch.tensor([1.3, -0.7], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.abs(x * self.w) ** self.p).sum(-1, keepdim=True)


@pytest.mark.parametrize(("p", "index"), [(3.5, (0,)), (3.5, (0, 0)), (3.5, (0, 0, 0)), (3.5, (0, 1)), (2.5, (0, 0))])
def test_a_fractional_power_at_a_zero_base_matches_autograd(p, index):
    u, x = PowerOfAbs(p), torch.tensor([[0.0, 0.5], [0.3, 0.2], [0.0, 0.0]], dtype=torch.float64)
    actual, expected = do.Derivative(u, wrt=index, method="taylor")(x), ref.partial(u, x, index)
    assert torch.isfinite(expected).all()
    assert_close(actual, expected)
    # the parameters' gradients are NaN where autograd's are (0 ** -0.5 times 0, from order p - 1/2 on)
    for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL, equal_nan=True)


class NumpySin(torch.autograd.Function):
    """``sin`` computed outside torch, with its derivative in the backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.from_numpy(numpy.sin(x.detach().numpy()))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.cos(x)


class TanhFromOutput(torch.autograd.Function):
    """``tanh`` whose backward reads the saved output: right, and twice differentiable."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class SinWithSurrogate(torch.autograd.Function):
    """``sin`` forward, a constant-slope surrogate backward (as for straight-through estimators)."""

    @staticmethod
    def forward(ctx, x):
        return torch.sin(x)

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class Through(nn.Module):
    """Linear -> a custom autograd.Function -> Linear: autograd differentiates it by the Function's backward."""

    def __init__(self, function: type[torch.autograd.Function]):
        super().__init__()
        self.function = function
        self.a, self.b = nn.Linear(2, 5), nn.Linear(5, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.function.apply(self.a(x)))


@pytest.mark.parametrize("function", [NumpySin, TanhFromOutput, SinWithSurrogate])
def test_a_custom_autograd_function_is_refused_and_auto_follows_its_backward(function):
    torch.manual_seed(0)
    u, x = Through(function), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(EngineUnsupported, match="gradients turned off inside the network"):
        do.Derivative(u, wrt=(0, 0), method="taylor")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto names the engines that refused
        actual = do.Derivative(u, wrt=(0, 0))(x)
    expected = ref.partial(u, x, (0, 0))
    assert_close(actual, expected)
    assert_gradients_close(u, actual, expected)


def test_a_validation_call_without_grad_still_runs_functions_the_jet_can_follow():
    """Entered without gradients the network's own no-grad parts cannot be told apart: Taylor mode runs them."""
    torch.manual_seed(0)
    u, x = Activated(torch.tanh), torch.randn(4, D, dtype=torch.float64)
    with torch.no_grad():
        actual = do.Laplacian(u, method="taylor")(x)
    assert_close(actual, ref.laplacian(u, x).detach())


def test_auto_falls_back_from_an_unsupported_function():
    u = UsesBessel()
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.warns(UserWarning, match="torch.special.i0"):
        actual = do.Laplacian(u)(x)
    assert_close(actual, ref.laplacian(u, x))


def test_float32_and_the_input_gradient():
    u = mlp(2, activation="tanh").float()
    x = torch.randn(8, 2, requires_grad=True)
    actual = do.Laplacian(u, method="taylor")(x)
    expected = ref.laplacian(u, x)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    (g_actual,) = torch.autograd.grad(actual.sum(), x)
    (g_expected,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(g_actual, g_expected, rtol=1e-4, atol=1e-5)


COMPILED_OPERATORS = {
    "laplacian": lambda u: do.Laplacian(u, method="taylor"),
    "mixed": lambda u: do.Derivative(u, wrt=(0, 0, 1), method="taylor"),
    "fourth": lambda u: do.Derivative(u, wrt=0, order=4, method="taylor"),
}


def compile_and_compare(backend: str, operator: str = "laplacian") -> None:
    """A compiled loss step is one graph, without warnings, and gives the eager loss and parameter gradients."""
    torch._dynamo.reset()
    u = mlp(2, width=8, depth=1)
    op = COMPILED_OPERATORS[operator](u)
    x = torch.randn(16, 2, dtype=torch.float64)

    def loss_step(x: torch.Tensor) -> torch.Tensor:
        return (op(x) - 1.0).square().mean()

    def gradients(loss: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(loss, list(u.parameters()), allow_unused=True, materialize_grads=True))

    eager = loss_step(x)
    # recorded, not raised: dynamo instantiates ``autograd.Function`` for a traced one's context under
    # its own ``catch_warnings(record=True)``, where an "error" filter from outside still raises
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(loss_step, backend=backend, fullgraph=True)(x)
    assert not caught, [str(w.message) for w in caught]
    assert_close(compiled, eager)
    for a, e in zip(gradients(compiled), gradients(eager)):
        assert_close(a, e)


@pytest.mark.parametrize("operator", COMPILED_OPERATORS)
def test_torch_compile_traces_a_loss_step_in_one_graph(operator):
    compile_and_compare("aot_eager", operator)  # dynamo and AOT autograd, without code generation


class Operators(nn.Module):
    """Python's operators on the hidden features with numbers and with a tensor ``c``, in both orders;
    ``unflatten`` and a product of two jets."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 4), nn.Linear(4, 1)
        self.c = nn.Parameter(torch.tensor(1.3))
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, c = torch.tanh(self.a(x)), self.c
        h = h**2 + 2**h - (1 - h) * (2 * h) / (h + 3) + 1 / (h + 2) + (-h) % 0.7 + abs(h) + (+h * h + 1) ** 1.5
        h = h + (h - c) * (c - h) / c + c / (h + 3) + (h * h + 1) ** c + c**h + h % c + (h < c) * h
        square = h.unflatten(1, (2, 2))  # Tensor.unflatten calls super(): dynamo traced it on no coefficient
        h = h + torch.matmul(square, square.flip(-1)).flatten(1)
        turn = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=h.dtype).repeat(2, 2)
        return self.b(h @ turn + (turn @ h[:, :, None])[:, :, 0])


def test_torch_compile_routes_pythons_operators_on_jets():
    """Dynamo unwraps ``Tensor.__pow__`` (a Python wrapper) to an object no rule held, so ``h ** 2`` was
    refused, and evaluates ``func in dict`` wrongly for the reflected operators, so ``h - c`` was."""
    torch._dynamo.reset()
    u = Operators()
    x = torch.rand(5, 2, dtype=torch.float64)
    for operator in (do.Laplacian(u, method="taylor"), do.Derivative(u, wrt=(0, 1, 1), method="taylor")):
        compiled = torch.compile(operator, backend="aot_eager", fullgraph=True)(x)
        expected = ref.laplacian(u, x) if isinstance(operator, do.Laplacian) else ref.partial(u, x, (0, 1, 1))
        assert_close(compiled, expected)
        assert_gradients_close(u, compiled, expected)


class RawParameters(nn.Module):
    """``tanh(x @ W1 + b1) @ W2``: a network written with ``@`` on parameters, as ported TensorFlow code is."""

    def __init__(self, width: int):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(2, width)), nn.Parameter(torch.randn(width))
        self.w2 = nn.Parameter(torch.randn(width, 1))
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.w1 + self.b1) @ self.w2


@pytest.mark.parametrize("method", ["taylor", "auto"])
def test_torch_compile_keeps_the_order_of_jet_at_tensor(method):
    """Dynamo passes ``jet @ tensor`` to the jets as ``Tensor.matmul(tensor, jet)``: ``x @ W`` failed to
    compile, and where both orders multiply (a batch of two points, W of 2 x 2) the Laplacian was
    ``W @ x``'s, silently.  Now the shapes decide; where both orders multiply Taylor mode refuses and auto
    moves on to an exact engine."""
    for width, batch in ((5, 6), (2, 2)):
        torch._dynamo.reset()
        u = RawParameters(width)
        x = torch.rand(batch, 2, dtype=torch.float64)
        operator = do.Laplacian(u, method=method)
        compile_call = torch.compile(operator, backend="aot_eager", fullgraph=True)
        if width == batch and method == "taylor":
            with pytest.raises(Exception, match="multiply in both orders"):  # dynamo's type, EngineUnsupported's text
                compile_call(x)
            continue
        actual, expected = compile_call(x), ref.laplacian(u, x)
        assert_close(actual, expected)
        assert_gradients_close(u, actual, expected)


@pytest.mark.parametrize(
    "first, second, defined",
    [
        ((5, 2), (2, 3), True),
        ((2, 3), (5, 2), False),
        ((2, 2), (2, 2), True),
        ((3,), (3, 4), True),
        ((4, 3), (3,), True),
        ((3,), (4,), False),
        ((7, 2, 3), (3, 4), True),
        ((7, 2, 3), (6, 3, 4), False),
        ((1, 2, 3), (6, 3, 4), True),
        ((), (3,), False),
    ],
)
def test_which_orders_of_a_matrix_product_are_defined(first, second, defined):
    """The shape test that decides the written order of a compiled ``Tensor.matmul(tensor, jet)``."""
    from diffops.engines.taylor.rules.products import _multiply

    assert _multiply(torch.Size(first), torch.Size(second)) is defined
    try:
        torch.matmul(torch.zeros(first), torch.zeros(second))
        runs = True
    except RuntimeError:
        runs = False
    assert runs is defined  # torch agrees


@pytest.mark.slow
def test_torch_compile_with_inductor_matches_eager():
    compile_and_compare("inductor")
