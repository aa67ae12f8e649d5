"""Refusals of the audits (``diffops/engines/audit.py``) for ops whose upstream rules give wrong numbers.

Each case: the engine refuses, naming the op, from the order where the rule goes
wrong (below it, the engine is exact), and ``auto`` then returns the reference's
value and parameter gradients (float64, nested ``torch.autograd.grad``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import diffops as do
from diffops import engines
from diffops.engines import EngineUnsupported

from .. import reference as ref


class Net(nn.Module):
    """``x: (N, 2) -> head(f(stem(x), params)): (N, 1)`` for a function ``f`` of the hidden features."""

    def __init__(self, f: Callable, width: int = 5, features: int | None = None, bias: bool = True):
        super().__init__()
        self.stem = nn.Linear(2, width, bias=bias).double()
        self.head = nn.Linear(features or width, 1).double()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.f(self.stem(x)))


def symmetric(h: torch.Tensor) -> torch.Tensor:
    """``(N, 2, 2)`` from ``h: (N, 4)``."""
    a = h.reshape(-1, 2, 2)
    return a + a.mT


def square(h: torch.Tensor) -> torch.Tensor:
    """``(N, 2, 2)`` from ``h: (N, 4)``, with real, distinct eigenvalues near 3 at the test's points."""
    return h.reshape(-1, 2, 2) + 3 * torch.eye(2, dtype=h.dtype)


def scattered(h: torch.Tensor) -> torch.Tensor:
    """Indices that multiply the six features of each row of ``h: (N, 6)`` into three products of two."""
    return torch.tensor([0, 1, 0, 1, 2, 2], device=h.device).expand(h.shape[0], 6)


def gram(h: torch.Tensor) -> torch.Tensor:
    """``(N, 2, 2)`` positive definite from ``h: (N, 4)``."""
    a = h.reshape(-1, 2, 2)
    return a @ a.mT + torch.eye(2, dtype=h.dtype)


class Product(nn.Module):
    """``prod(tanh(w x))`` over the coordinates, with the first factor exactly zero at ``x_0 = 0``."""

    def __init__(self, cumulative: bool):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.3, -0.7], dtype=torch.float64))
        self.cumulative = cumulative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(x * self.w)
        return z.cumprod(-1)[:, -1:] if self.cumulative else z.prod(-1, keepdim=True)


PRODUCT_X = torch.tensor([[0.0, 0.5], [0.3, 0.2], [-0.4, 0.0]], dtype=torch.float64)

# name -> (network, x or None for random points, the order refused from, the call named)
CASES: dict[str, tuple[Callable[[], nn.Module], torch.Tensor | None, int, str]] = {
    "Tensor.data": (lambda: Net(lambda h: torch.tanh(h) * h.data), None, 1, r"Tensor\.data"),
    "eigvalsh": (
        lambda: Net(lambda h: torch.linalg.eigvalsh(symmetric(h)), width=4, features=2),
        None,
        2,
        r"torch\.linalg\.eigvalsh.*aten::_linalg_eigh",
    ),
    "eigh": (
        lambda: Net(lambda h: torch.linalg.eigh(symmetric(h))[1][..., 0] ** 2, width=4, features=2),
        None,
        1,
        r"torch\.linalg\.eigh.*aten::_linalg_eigh",
    ),
    "prod": (lambda: Product(cumulative=False), PRODUCT_X, 2, r"Tensor\.prod.*aten::prod"),
    "cumprod": (lambda: Product(cumulative=True), PRODUCT_X, 1, r"Tensor\.cumprod.*aten::cumprod"),
    "copysign": (
        lambda: Net(lambda h: torch.copysign(h * h, torch.sin(h))),
        None,
        2,
        r"torch\.copysign.*aten::copysign",
    ),
    "sinc": (lambda: Net(torch.sinc), None, 1, r"torch\.sinc.*aten::sinc"),
    # the parameters' gradients of a second derivative fail ("modified by an inplace operation")
    "pairwise_distance": (
        lambda: Net(lambda h: torch.pairwise_distance(h[:, :3], h[:, 3:]).unsqueeze(-1), width=6, features=1),
        None,
        2,
        r"F\.pairwise_distance.*aten::linalg_vector_norm",
    ),
    "cosine_similarity": (
        lambda: Net(lambda h: torch.cosine_similarity(h[:, :3], h[:, 3:]).unsqueeze(-1), width=6, features=1),
        None,
        2,
        r"F\.cosine_similarity.*aten::linalg_vector_norm",
    ),
    # wrong numbers: the third derivative (and gradients fail from the second) ...
    "eigvals": (
        lambda: Net(lambda h: torch.linalg.eigvals(square(h)).real, width=4, features=2),
        None,
        2,
        r"torch\.linalg\.eigvals.*aten::linalg_eig",
    ),
    # ... the first derivative itself, and its parameters' gradients
    "cholesky_inverse": (
        lambda: Net(lambda h: torch.cholesky_inverse(torch.linalg.cholesky(gram(h))).flatten(1), width=4, features=4),
        None,
        1,
        r"torch\.cholesky_inverse.*aten::cholesky_inverse",
    ),
    "scatter_reduce-prod": (
        lambda: Net(lambda h: torch.ones_like(h[:, :3]).scatter_reduce(1, scattered(h), h, "prod"), 6, 3),
        None,
        1,
        r"scatter_reduce.*aten::scatter_reduce \(reduce='prod'\)",
    ),
    "householder_product": (
        lambda: Net(lambda h: torch.linalg.householder_product(h.reshape(-1, 3, 2), h[:, :2]).flatten(1), 6, 6),
        None,
        1,
        r"torch\.linalg\.householder_product.*aten::linalg_householder_product",
    ),
}


def points(x: torch.Tensor | None) -> torch.Tensor:
    return torch.randn(4, 2, dtype=torch.float64) if x is None else x


def assert_exact(u: nn.Module, x: torch.Tensor, order: int, method: str) -> None:
    """``Derivative(wrt=0, order)`` of ``method``: the reference's value and parameter gradients."""
    expected = ref.partial(u, x, (0,) * order)
    gradients = ref.parameter_gradients(u, expected)  # before u runs again (BatchNorm updates what it saved)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto announces the engine it falls back to
        actual = do.Derivative(u, wrt=0, order=order, method=method)(x)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11)
    for a, e in zip(ref.parameter_gradients(u, actual), gradients):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", sorted(CASES))
def test_func_refuses_from_the_order_where_the_rule_goes_wrong(case):
    make, x, order, named = CASES[case]
    u, x = make(), points(x)
    for operator in (do.Derivative(u, wrt=0, order=order, method="func"), do.Laplacian(u, method="func")):
        with pytest.raises(EngineUnsupported, match=named):  # a Laplacian is of order 2 >= order
            operator(x)
    if order > 1:  # exact below it
        assert_exact(u, x, order - 1, "func")


@pytest.fixture
def func_then_autograd(monkeypatch):
    """``auto`` tries ``func`` and then ``autograd``, as it does wherever Taylor mode refuses an op (and Taylor
    mode last, for the op both refuse: sinc)."""
    monkeypatch.setattr(engines, "ranked", lambda request, d, outputs: ("func", "autograd", "taylor"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_auto_moves_past_the_refusal_to_the_exact_value(case, func_then_autograd):
    make, x, order, _ = CASES[case]
    u, x = make(), points(x)
    assert_exact(u, x, order, "auto")
    assert_exact(u, x, 2, "auto")


def test_the_refused_rules_really_go_wrong():
    """Without the audit, torch.func gives NaN parameter gradients for the second derivative at a zero factor."""
    u = Product(cumulative=False)
    v = torch.zeros_like(PRODUCT_X)
    v[:, 0] = 1.0
    first = lambda y: torch.func.jvp(u, (y,), (v,))[1]  # noqa: E731
    second = torch.func.jvp(first, (PRODUCT_X,), (v,))[1]
    (gradient,) = torch.autograd.grad(second.square().sum(), u.w)
    assert gradient.isnan().any()
    (expected,) = torch.autograd.grad(ref.partial(u, PRODUCT_X, (0, 0)).square().sum(), u.w)
    assert not expected.isnan().any()


class NoGradScale(nn.Module):
    """``head(tanh(h) * s)`` with a scale ``s`` of ``h`` computed under ``torch.no_grad()``: a constant to autograd."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Linear(2, 5).double(), nn.Linear(5, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        with torch.no_grad():
            s = torch.tanh(h).sum(-1, keepdim=True) + 3
        return self.head(torch.tanh(h) * s)


def test_func_refuses_a_no_grad_section_on_the_input():
    u, x = NoGradScale(), torch.randn(4, 2, dtype=torch.float64)
    for operator in (do.Derivative(u, wrt=0, method="func"), do.Laplacian(u, method="func")):
        with pytest.raises(EngineUnsupported, match=r"torch\.tanh with gradients turned off.*no_grad"):
            operator(x)
    with torch.no_grad(), pytest.raises(EngineUnsupported, match="with gradients turned off"):
        do.Laplacian(u, method="func")(x)  # without gradients (validation) too: the operator enters with them


def test_auto_moves_past_a_no_grad_section(func_then_autograd):
    u, x = NoGradScale(), torch.randn(4, 2, dtype=torch.float64)
    for order in (1, 2):
        assert_exact(u, x, order, "auto")


class Checkpointed(nn.Module):
    """``head(tanh(stem(x)))`` with the hidden layer under activation checkpointing (or ``save_on_cpu``)."""

    def __init__(self, hooks: str):
        super().__init__()
        self.stem, self.head, self.hooks = nn.Linear(2, 5).double(), nn.Linear(5, 1).double(), hooks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = lambda x: torch.tanh(self.stem(x))  # noqa: E731
        if self.hooks == "save_on_cpu":
            with torch.autograd.graph.save_on_cpu():
                return self.head(hidden(x))
        return self.head(checkpoint(hidden, x, use_reentrant=False))


def test_func_refuses_activation_checkpointing():
    """Before the refusal the value came back and its parameter gradients raised CheckpointError."""
    u, x = Checkpointed("checkpoint"), torch.randn(4, 2, dtype=torch.float64)
    for operator in (do.Derivative(u, wrt=0, method="func"), do.Laplacian(u, method="func")):
        with pytest.raises(EngineUnsupported, match=r"inside activation checkpointing.*use_reentrant=False"):
            operator(x)


@pytest.mark.parametrize("hooks", ["checkpoint", "save_on_cpu"])
def test_auto_moves_past_activation_checkpointing_and_func_keeps_save_on_cpu(hooks, func_then_autograd):
    u, x = Checkpointed(hooks), torch.randn(4, 2, dtype=torch.float64)
    for order in (1, 2):
        assert_exact(u, x, order, "auto")
    if hooks == "save_on_cpu":  # other saved-tensor hooks are exact under torch.func: not refused
        assert_exact(u, x, 2, "func")
    for order in (1, 2):  # Taylor mode, first in auto's ranking where it runs, differentiates both
        assert_exact(u, x, order, "taylor")


def test_compiled_auto_moves_past_taylors_refusal_of_a_checkpoint():
    """Compiled, Taylor mode refuses the checkpoint's region (``tag_activation_checkpoint``) and auto runs
    torch.func, which is exact there, in one graph: the fallback used to break ``fullgraph=True``
    (dynamo cannot trace the warning that announces it, nor a ``str.join`` over a generator)."""
    torch._dynamo.reset()
    u, x = Checkpointed("checkpoint"), torch.randn(5, 2, dtype=torch.float64)
    operator = do.Derivative(u, wrt=0, order=2)
    with pytest.raises(Exception, match="Taylor mode does not support tag_activation_checkpoint"):  # dynamo's type
        torch.compile(do.Derivative(u, wrt=0, order=2, method="taylor"), backend="aot_eager", fullgraph=True)(x)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # compiled, the fallback is quiet: no warning can be traced
        # but the compiler's own, on its first compilation in a process (when this test runs alone)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=DeprecationWarning)
        actual = torch.compile(operator, backend="aot_eager", fullgraph=True)(x)
    expected = ref.partial(u, x, (0, 0))
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11)
    for a, e in zip(ref.parameter_gradients(u, actual), ref.parameter_gradients(u, expected)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)
    assert operator._failed_engines == {"taylor"}


def batch_norm_training() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double().train()


@pytest.mark.parametrize(
    "operator",
    [do.Laplacian, do.Hessian, do.Jacobian, lambda u, method: do.Derivative(u, wrt=0, order=2, method=method)],
)
def test_func_refuses_batch_norm_in_training_before_it_updates_its_statistics(operator):
    """Under ``jvp`` the in-place count of batches used to fail first, with a bare RuntimeError."""
    u, x = batch_norm_training(), torch.randn(6, 2, dtype=torch.float64)
    with pytest.raises(EngineUnsupported, match=r"BatchNorm1d in training mode.*aten::native_batch_norm"):
        operator(u, method="func")(x)
    assert u[1].num_batches_tracked.item() == 0
    torch.testing.assert_close(u[1].running_mean, torch.zeros(8, dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["func", "auto"])
def test_compiled_refusal_of_batch_norm_in_training_names_the_module_and_the_reason(method):
    """Compiled, the hook that refuses the module cannot be registered: ``jvp`` then rejected its in-place
    count of batches with a bare error of the compiler.  The refusal is read from the modules instead,
    and auto, with no engine left that compiles, says why each failed."""
    torch._dynamo.reset()
    u, x = batch_norm_training(), torch.randn(6, 2, dtype=torch.float64)
    operator = torch.compile(do.Laplacian(u, method=method), backend="eager", fullgraph=True)
    reasons = r"BatchNorm1d in training mode exactly: PyTorch.*derivative rule for aten::native_batch_norm"
    if method == "auto":  # (dynamo quotes the message: no quotation marks in the pattern)
        reasons = r"taylor. failed: .*batch_norm in training mode.*func. failed: .*" + reasons
        reasons += r".*compiled, nested autograd cannot run either"
    with pytest.raises(Exception, match=reasons):  # dynamo's type, with diffops' message
        operator(x)
    assert u[1].num_batches_tracked.item() == 0
    if method == "func":  # compiled, torch.func through batch_norm in eval mode fails inside PyTorch (an assert)
        return
    u.eval()  # in eval mode the same network compiles, through Taylor mode
    torch._dynamo.reset()
    compiled = torch.compile(do.Laplacian(u, method=method), backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, ref.laplacian(u, x), rtol=1e-9, atol=1e-11)


def test_auto_moves_past_batch_norm_in_training(func_then_autograd):
    u, x = batch_norm_training(), torch.randn(6, 2, dtype=torch.float64)
    assert_exact(u, x, 1, "auto")  # (the reference's fused batch norm is exact to reverse order 2)


class _Cube(torch.autograd.Function):
    """``x^3`` with ``setup_context`` and a ``jvp`` from the saved input, as torch.func's docs write one."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x**3

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 3 * x**2 * tangent


def cubed() -> nn.Module:
    return Net(lambda h: _Cube.apply(torch.tanh(h)))


def test_func_refuses_a_custom_function_whose_jvp_it_would_differentiate_as_constants():
    """Its Laplacian came out 0 before, and auto returned that."""
    u, x = cubed(), torch.randn(4, 2, dtype=torch.float64)
    for operator in (do.Derivative(u, wrt=0, method="func"), do.Laplacian(u, method="func")):
        with pytest.raises(EngineUnsupported, match=r"custom autograd\.Function _Cube"):
            operator(x)


def test_auto_differentiates_a_custom_function_through_its_backward():
    u, x = cubed(), torch.randn(4, 2, dtype=torch.float64)
    for order in (1, 2, 3):
        assert_exact(u, x, order, "auto")
    laplacian = do.Laplacian(u)(x)
    torch.testing.assert_close(laplacian, ref.partial(u, x, (0, 0)) + ref.partial(u, x, (1, 1)))


class SincAtZero(nn.Module):
    """``sinc(w x_0) + tanh(x_1)``: at ``x_0 = 0`` torch's backward of sinc masks the slope to 0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.3, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sinc(self.w * x[:, :1]) + torch.tanh(x[:, 1:])


def test_sinc_at_zero_is_taylor_modes_alone():
    """The value there: sinc's derivatives at 0, ``(-1)^n pi^(2n) / (2n + 1)`` at order 2n and 0 at odd orders.

    torch.func returned 0 for the second derivative at 0 and nested autograd NaN; both now refuse sinc,
    and auto lands on Taylor mode, exact there and away from 0, parameters' gradients included."""
    u = SincAtZero()
    x = torch.tensor([[0.0, 0.3], [0.4, -0.2]], dtype=torch.float64)
    for method in ("func", "autograd"):
        with pytest.raises(EngineUnsupported, match=r"torch\.sinc.*aten::sinc"):
            do.Derivative(u, wrt=0, method=method)(x)
    w = u.w.detach()
    at_zero = {1: 0.0, 2: -(math.pi**2) / 3 * w**2, 3: 0.0, 4: math.pi**4 / 5 * w**4}
    for order, expected in at_zero.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # auto announces the engine it moves on to
            actual = do.Derivative(u, wrt=0, order=order)(x)
        torch.testing.assert_close(actual[0, 0], torch.as_tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(actual[1:], ref.partial(u, x[1:], (0,) * order), rtol=1e-9, atol=1e-11)
        (gradient,) = torch.autograd.grad(actual[0, 0], u.w)  # d/dw of sinc^(k)(0) w^k
        torch.testing.assert_close(gradient, torch.as_tensor(order * expected / w, dtype=torch.float64))
    laplacian = do.Laplacian(lambda x: torch.sinc(x).prod(-1, keepdim=True), method="taylor")(x[:1] * 0)
    torch.testing.assert_close(laplacian, torch.tensor([[-2 * math.pi**2 / 3]], dtype=torch.float64))


class SincSeries(SincAtZero):
    """``SincAtZero`` with sinc written as its power series (40 terms): exact to rounding for ``|pi w x_0| < 4``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square = (math.pi * self.w * x[:, :1]) ** 2
        total, term = torch.zeros_like(square), torch.ones_like(square)
        for n in range(40):
            total = total + term
            term = term * -square / ((2 * n + 2) * (2 * n + 3))
        return total + torch.tanh(x[:, 1:])


def test_sinc_near_zero_keeps_its_digits():
    """Near 0 the quotient ``sin(pi x) / (pi x)`` loses digits as ``eps / |pi x|^k`` at order k: Taylor mode's
    parameters' gradients of a third derivative at ``x_0 = 0.002`` were 4e-7 off, relative; its series is not."""
    u, series = SincAtZero(), SincSeries()
    x = torch.tensor([[0.002, 0.3], [-0.03, -0.2], [0.2, 0.1], [0.9, 0.4]], dtype=torch.float64)
    for order in (1, 2, 3, 4):
        actual = do.Derivative(u, wrt=0, order=order, method="taylor")(x)
        expected = ref.partial(series, x, (0,) * order)
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
        (gradient,) = torch.autograd.grad(actual.sum(), u.w)
        (expected_gradient,) = torch.autograd.grad(expected.sum(), series.w)
        torch.testing.assert_close(gradient, expected_gradient, rtol=1e-12, atol=1e-12)


def test_func_refuses_the_third_derivative_of_a_complex_magnitude_alone():
    """``|rfft(h)|``: the parameters' gradients of a forward-mode third derivative failed ("modified by an inplace
    operation"); the second is exact, and so is every order of ``abs`` of a real tensor."""
    spectrum, x = Net(lambda h: torch.fft.rfft(h).abs(), width=6, features=4), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(EngineUnsupported, match=r"abs.*aten::abs \(complex input\)"):
        do.Derivative(spectrum, wrt=0, order=3, method="func")(x)
    assert_exact(spectrum, x, 2, "func")
    assert_exact(Net(lambda h: torch.abs(h) + h.abs()), x, 3, "func")


class ChunkedCrossEntropy(nn.Module):
    """``F.linear_cross_entropy`` per sample, through its chunked path (``options``) or the composition."""

    def __init__(self, chunked: bool):
        super().__init__()
        from torch.nn.modules.linear_cross_entropy_options import LinearCrossEntropyOptions

        torch.manual_seed(0)
        self.stem, self.classes = nn.Linear(2, 3).double(), nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
        self.options = LinearCrossEntropyOptions(batch_chunk_size=2) if chunked else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        target = torch.arange(x.shape[0], device=x.device) % 4
        loss = torch.nn.functional.linear_cross_entropy(
            self.stem(x), self.classes, target, reduction="none", options=self.options
        )
        return loss.unsqueeze(-1)


@pytest.mark.parametrize("method", ["func", "autograd", "auto"])
def test_the_chunked_linear_cross_entropy_is_refused_by_every_engine(method):
    """Its chunked path's derivatives are not differentiated further: torch.func's first derivative was 1.1 off,
    nested autograd's second 0.26 off and the parameters' gradients of its first 0.98 off (auto returned them)."""
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(EngineUnsupported, match=r"linear_cross_entropy"):
        do.Derivative(ChunkedCrossEntropy(chunked=True), wrt=0, method=method)(x)
    assert_exact(ChunkedCrossEntropy(chunked=False), x, 2, method)  # the composition runs


# -- reverse-mode rules that PyTorch gets wrong at first order --------------------------------------------


class StridedScatter(nn.Module):
    """``tanh(W x)`` with every other feature overwritten by the square of another (a strided write)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.linear(x))
        return torch.as_strided_scatter(h, h[:, :3] ** 2, (h.shape[0], 3), (6, 2), 1).sum(-1)


class Unpooled(nn.Module):
    """``tanh(W x)`` pooled in windows of two and put back (``MaxUnpool1d``), with ``stride`` between windows."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 8)
        self.pool = nn.MaxPool1d(2, stride=stride, return_indices=True)
        self.unpool = nn.MaxUnpool1d(2, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.linear(x)).unsqueeze(1)  # (N, 1, 8)
        pooled, indices = self.pool(h)
        return (self.unpool(pooled, indices, output_size=h.shape) * torch.arange(1.0, 9.0, dtype=h.dtype)).sum((1, 2))


def finite_difference_gradient(u: nn.Module, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(N, d)``: central differences of ``u``, one coordinate at a time (no derivative rule involved)."""
    columns = []
    for i in range(x.shape[1]):
        step = torch.zeros_like(x)
        step[:, i] = eps
        columns.append((u(x + step) - u(x - step)) / (2 * eps))
    return torch.stack(columns, dim=-1)


@pytest.mark.parametrize("make", [StridedScatter, lambda: Unpooled(stride=1)], ids=["as_strided_scatter", "unpool"])
def test_the_reverse_mode_rule_is_still_wrong_upstream(make):
    """Why the refusals below exist: PyTorch's own gradient against finite differences.  If this
    fails after a PyTorch upgrade, the rule was fixed there and the refusal can go."""
    torch.manual_seed(0)
    u, x = make().double(), torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    (autograd,) = torch.autograd.grad(u(x).sum(), x)
    assert not torch.allclose(autograd, finite_difference_gradient(u, x.detach()), atol=1e-6)


@pytest.mark.parametrize(
    "make, named",
    [
        (StridedScatter, r"torch.as_strided_scatter exactly.*aten::as_strided_scatter"),
        (lambda: Unpooled(stride=1), r"F.max_unpool1d exactly.*where an index repeats"),  # overlapping windows
    ],
    ids=["as_strided_scatter", "unpool with a repeated index"],
)
def test_wrong_reverse_mode_rules_are_refused_and_auto_returns_no_number(make, named):
    torch.manual_seed(0)
    u, x = make().double(), torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(EngineUnsupported, match=named):
        do.Gradient(u, method="autograd")(x)
    with pytest.raises(RuntimeError, match="found no method.*" + named):  # no engine left that is exact
        do.Gradient(u)(x)
    torch.testing.assert_close(do.Derivative(u, wrt=0, order=0)(x), u(x))  # the value alone: no rule involved


def test_unpooling_without_a_repeated_index_keeps_nested_autograd():
    """Windows that do not overlap put each value back at an index of its own: the rule is right there, and
    auto answers through nested autograd (torch.func, which cannot test the indices under vmap, refuses)."""
    torch.manual_seed(0)
    u, x = Unpooled(stride=2).double(), torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(EngineUnsupported, match=r"under vmap it cannot be told whether an index repeats"):
        do.Gradient(u, method="func")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto announces the engine it falls back to
        gradient = do.Gradient(u)(x)
    torch.testing.assert_close(gradient, finite_difference_gradient(u, x), rtol=1e-6, atol=1e-8)
    assert_exact(u, x, 1, "auto")
