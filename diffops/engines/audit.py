"""Which of PyTorch's derivative rules an engine may trust, checked on the ops the network runs.

A scan of torch 2.13 (``docs/guide/exactness.md``) found ops whose forward-mode
rules give wrong numbers without an error: their first-order ``jvp`` is right
but differentiating it again (forward-over-forward, or reverse-over-forward as
a training step does for the parameters' gradients) is not.  The ``func``
engine is built on those rules, so while it runs the network it intercepts
every torch call (:class:`Audit`, a ``TorchFunctionMode``, so it works under
``torch.compile`` too) and

* runs ``layer_norm`` and ``instance_norm`` through the compositions of
  :mod:`.decompositions`, whose rules are right;
* refuses the others with :class:`EngineUnsupported` naming the op, so that
  ``method="auto"`` moves on to an exact engine; and custom
  ``autograd.Function`` calls, whose ``jvp`` forward mode would differentiate.

The double-backward rules of the fused normalisations are right, but not their
third derivatives, which the parameters' gradients of a second derivative
need: nested autograd runs them through the same compositions for requests of
order 2 and more (:func:`exact_reverse_mode`), and ``logcumsumexp``, whose double backward gives NaN (the
func engine runs it composed at every order: its forward-mode rule loses digits where the values spread), and
refuses ``sinc``, whose backward is wrong at 0, from order 1 (as the func engine does).
``hardsigmoid``'s backward has no derivative, so both engines run it as ``relu6(x + 3) / 6``; ``celu``'s is
inexact (a float32 ``1/alpha``), so both run it as ``alpha elu(x / alpha)``.  Both run
attention through PyTorch's math kernel (:func:`math_attention`): the fused CPU
kernels have no double backward.  Upstream errors that say an op has no rule
become refusals naming the op (:func:`missing_rules_refused`).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch._functorch.autograd_function import custom_function_call
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode, resolve_name

from . import decompositions
from .base import EngineUnsupported, Request, grad_turned_off, graph_nodes


@dataclass(frozen=True)
class Defect:
    """An upstream rule found wrong: the aten op and what goes wrong."""

    aten: str
    wrong: str


_NORM_STATISTICS = (
    "it treats the saved mean and inverse deviation as constants, so second and higher forward-mode "
    "derivatives, the parameter gradients of first-order ones, and third and higher reverse-mode "
    "derivatives are wrong"
)
_LINALG = (
    "the parameter gradients of forward-mode derivatives and every forward-mode derivative of order >= 2 are wrong"
)
LAYER_NORM = Defect("aten::native_layer_norm", _NORM_STATISTICS)
BATCH_NORM = Defect("aten::native_batch_norm (batch statistics)", _NORM_STATISTICS)
DET = Defect("aten::_linalg_det", _LINALG)
SLOGDET = Defect("aten::_linalg_slogdet", _LINALG)
SOLVE = Defect("aten::_linalg_solve_ex", _LINALG)
LU_SOLVE = Defect("aten::linalg_lu_solve", "its batching rule under vmap gives wrong second derivatives")


def _argument(args: tuple, kwargs: dict, position: int, name: str, default):
    return kwargs[name] if name in kwargs else args[position] if len(args) > position else default


def _refuse_because(call: str, why: str) -> Callable:
    def handler(engine: str, func: Callable, args: tuple, kwargs: dict):
        raise _inexact(engine, call, why)

    return handler


def _inexact(engine: str, call: str, why: str) -> EngineUnsupported:
    return EngineUnsupported(f"{engine} cannot differentiate {call} exactly: {why}")


def _refuse(defect: Defect, call: str) -> Callable:
    return _refuse_because(call, _wrong_rule(defect))


def _wrong_rule(defect: Defect) -> str:
    return f"PyTorch's derivative rule for {defect.aten} is wrong ({defect.wrong})"


def _instance_norm(engine: str, func: Callable, args: tuple, kwargs: dict):
    use_input_stats = _argument(args, kwargs, 5, "use_input_stats", True)
    running = _argument(args, kwargs, 1, "running_mean", None)
    if not use_input_stats:  # normalises with the running statistics: batch norm in eval mode, exact
        return func(*args, **kwargs)
    if running is not None:  # would update the running statistics as a side effect
        return _refuse(BATCH_NORM, "instance_norm with track_running_stats=True")(engine, func, args, kwargs)
    return decompositions.instance_norm(*args, **kwargs)


def _batch_norm(engine: str, func: Callable, args: tuple, kwargs: dict):
    if _argument(args, kwargs, 5, "training", False):  # position 5 in F.batch_norm and torch.batch_norm
        return _refuse(BATCH_NORM, "batch_norm in training mode")(engine, func, args, kwargs)
    return func(*args, **kwargs)


def _hardsigmoid(engine: str, func: Callable, args: tuple, kwargs: dict):
    return F.relu6(args[0] + 3.0) / 6.0  # aten::hardsigmoid_backward has no derivative upstream


def _logcumsumexp(engine: str, func: Callable, args: tuple, kwargs: dict):
    x, dim = args[0], _argument(args, kwargs, 1, "dim", None)
    if x.dim() == 0 or not x.is_floating_point() or "out" in kwargs:  # nothing to spread over, or not ours
        return func(*args, **kwargs)
    return decompositions.logcumsumexp(x, dim)


_LOGCUMSUMEXPS = {torch.logcumsumexp: _logcumsumexp, torch.Tensor.logcumsumexp: _logcumsumexp}


def _celu(engine: str, func: Callable, args: tuple, kwargs: dict):
    # aten::celu's derivative scales by 1/alpha in float32 (relative error ~1e-8 in float64 for alpha = 0.7);
    # elu's is exact, and takes celu's branches at 0 (derivatives 1, 0, 0 there, as F.celu and Taylor mode)
    x, alpha = args[0], _argument(args, kwargs, 1, "alpha", 1.0)
    return alpha * F.elu(x / alpha)


def _masked_attention(engine: str, func: Callable, args: tuple, kwargs: dict):
    """Masked attention as its composition: ``aten::_safe_softmax`` gave NaN parameter gradients (below)."""
    masked = _argument(args, kwargs, 3, "attn_mask", None) is not None
    if not masked or _argument(args, kwargs, 4, "dropout_p", 0.0) > 0:  # dropout: the kernel's random mask
        return func(*args, **kwargs)
    return decompositions.scaled_dot_product_attention(*args, **kwargs)


def _multi_head_attention(engine: str, func: Callable, args: tuple, kwargs: dict):
    """Multi-head attention as its composition, whose attention :func:`_masked_attention` is (the audit
    does not see the calls inside a function it hands on)."""
    call = decompositions.multi_head_attention_call(args, kwargs)
    masked = call.get("key_padding_mask") is not None or call.get("attn_mask") is not None
    if not masked or not decompositions.multi_head_attention_supported(call):
        return func(*args, **kwargs)
    return decompositions.multi_head_attention_forward(*args, **kwargs)


def _layer_norm(engine: str, func: Callable, args: tuple, kwargs: dict):
    kwargs = {key: value for key, value in kwargs.items() if key != "cudnn_enable"}
    return decompositions.layer_norm(*args[:5], **kwargs)


# torch callable -> handler(engine, func, args, kwargs): every public way to reach a defective aten op.
# The reverse-mode rules of these normalisations are right up to order 2, wrong beyond.
NORMALISATION_HANDLERS: dict[Callable, Callable] = {
    F.layer_norm: _layer_norm,
    torch.layer_norm: _layer_norm,
    torch.native_layer_norm: _refuse(LAYER_NORM, "torch.native_layer_norm"),
    F.instance_norm: _instance_norm,
    torch.instance_norm: _refuse(BATCH_NORM, "torch.instance_norm"),
    F.batch_norm: _batch_norm,
    torch.batch_norm: _batch_norm,
    torch.native_batch_norm: _refuse(BATCH_NORM, "torch.native_batch_norm"),
}


def _from_order(order: int, defect: Defect, call: str) -> tuple[int, Callable]:
    return order, _refuse(defect, call)


_NORM = Defect(
    "aten::linalg_vector_norm",
    "its forward-over-forward rule fails ('a variable needed for gradient computation has been modified')",
)
_STD = Defect("aten::std", _NORM.wrong)
_GLU = Defect("aten::glu", "it has no forward-mode rule for its own derivative (aten::glu_jvp)")
_COPYSIGN = Defect(
    "aten::copysign",
    "its forward-mode rule modifies a tensor its backward needs, so the parameters' gradients of a second "
    "derivative fail ('a variable needed for gradient computation has been modified by an inplace operation')",
)
# errors rather than wrong numbers, refused from the order at which they fail so that they name the op
FORWARD_MODE_FAILURES: dict[Callable, tuple[int, Callable]] = {
    torch.norm: _from_order(2, _NORM, "torch.norm"),
    torch.Tensor.norm: _from_order(2, _NORM, "Tensor.norm"),
    torch.linalg.norm: _from_order(2, _NORM, "torch.linalg.norm"),
    torch.linalg.vector_norm: _from_order(2, _NORM, "torch.linalg.vector_norm"),
    torch.linalg.matrix_norm: _from_order(2, _NORM, "torch.linalg.matrix_norm"),
    F.normalize: _from_order(2, _NORM, "F.normalize"),
    torch.std: _from_order(2, _STD, "torch.std"),
    torch.Tensor.std: _from_order(2, _STD, "Tensor.std"),
    torch.std_mean: _from_order(2, _STD, "torch.std_mean"),
    F.glu: _from_order(1, _GLU, "F.glu"),
    torch.copysign: _from_order(2, _COPYSIGN, "torch.copysign"),
    torch.Tensor.copysign: _from_order(2, _COPYSIGN, "Tensor.copysign"),
    # distances and similarities that reach aten::linalg_vector_norm inside aten, where the audit cannot see it
    torch.pairwise_distance: _from_order(2, _NORM, "F.pairwise_distance"),
    torch.cosine_similarity: _from_order(2, _NORM, "F.cosine_similarity"),
    torch.dist: _from_order(2, _NORM, "torch.dist"),
    torch.Tensor.dist: _from_order(2, _NORM, "Tensor.dist"),
    F.triplet_margin_loss: _from_order(2, _NORM, "F.triplet_margin_loss"),
    torch.triplet_margin_loss: _from_order(2, _NORM, "torch.triplet_margin_loss"),
    F.cosine_embedding_loss: _from_order(2, _NORM, "F.cosine_embedding_loss"),
    torch.cosine_embedding_loss: _from_order(2, _NORM, "torch.cosine_embedding_loss"),
}

_EIGH = Defect(
    "aten::_linalg_eigh",
    "the parameters' gradients of forward-mode derivatives are NaN (from the first derivative through the "
    "eigenvectors, the second through the eigenvalues alone), and the third derivative fails",
)
_EIG = Defect(
    "aten::linalg_eig",
    "forward mode: third derivatives of the eigenvalues are wrong (relative error 0.17), and the parameters' "
    "gradients fail through the eigenvectors from the first derivative, through the eigenvalues from the second "
    "('the eigenvectors in the complex case are specified up to multiplication by e^{i phi}')",
)
_CHOLESKY_INVERSE = Defect("aten::cholesky_inverse", "forward mode: its first derivative is wrong")
_HOUSEHOLDER = Defect(
    "aten::linalg_householder_product",
    "forward mode: the parameters' gradients of its first derivative and its second derivative are wrong",
)
_SCATTER_PROD = Defect(
    "aten::scatter_reduce (reduce='prod')", "forward mode: its first derivative is wrong (0.37 off on a test network)"
)
_CHUNKED_CROSS_ENTROPY = Defect(
    "F.linear_cross_entropy's chunked path (options given)",
    "its derivatives are not differentiated further: forward mode's first derivative is wrong (1.1 off on a test "
    "network), reverse mode's second (0.26 off) and the parameters' gradients of its first (0.98 off)",
)
_COMPLEX_ABS = Defect(
    "aten::abs (complex input)",
    "the parameters' gradients of forward-mode third derivatives fail ('a variable needed for gradient computation "
    "has been modified by an inplace operation')",
)
_PROD = Defect(
    "aten::prod",
    "at a factor that is exactly zero the parameters' gradients of forward-mode derivatives of order >= 2 are NaN",
)
_CUMPROD = Defect(
    "aten::cumprod",
    "at a factor that is exactly zero the parameters' gradients of forward-mode derivatives are NaN",
)


def _refuse_where(applies: Callable[[tuple, dict], bool], defect: Defect, call: str) -> Callable:
    """A handler that refuses ``call`` where ``applies(args, kwargs)`` and runs it otherwise."""
    refuse = _refuse(defect, call)

    def handler(engine: str, func: Callable, args: tuple, kwargs: dict):
        return refuse(engine, func, args, kwargs) if applies(args, kwargs) else func(*args, **kwargs)

    return handler


# abs of a complex tensor (a spectrum's magnitude); of a real one it runs
_complex_abs = _refuse_where(
    lambda args, kwargs: torch.is_tensor(args[0]) and args[0].is_complex(), _COMPLEX_ABS, "abs"
)
# scatter_reduce with reduce="prod"; its other reductions run
_scatter_product = _refuse_where(
    lambda args, kwargs: _argument(args, kwargs, 4, "reduce", None) == "prod", _SCATTER_PROD, "scatter_reduce"
)
# F.linear_cross_entropy with options (its chunked path); without, a composition that runs
_chunked_cross_entropy = _refuse_where(
    lambda args, kwargs: kwargs.get("options") is not None,
    _CHUNKED_CROSS_ENTROPY,
    "F.linear_cross_entropy with options",
)


def _custom_function(engine: str, func: Callable, args: tuple, kwargs: dict):
    """A custom ``autograd.Function``: forward mode runs its ``jvp``, whose own derivatives were wrong.

    With ``setup_context`` and a ``jvp`` written from the saved tensors, the func
    engine's Laplacian of ``x^3`` through such a Function came out 0: the outer
    transforms read the saved tensors as constants.  Nested autograd
    differentiates the Function's backward instead.
    """
    name = getattr(args[0], "__name__", "a custom autograd.Function")
    raise EngineUnsupported(
        f"{engine} cannot differentiate the custom autograd.Function {name} exactly: forward mode runs its jvp "
        "rule, whose own derivatives (higher orders, the parameters' gradients) read the tensors it saved as "
        "constants"
    )


_DATA = (
    "it reads the tensor beneath torch.func's wrappers, so what the network computes from it is differentiated "
    "wrongly (from the parameters' gradients of first derivatives on); Tensor.detach() makes a constant exactly"
)
_SINC = Defect(
    "aten::sinc",
    "at exactly 0 its backward masks the slope to 0, so the second derivative there comes out 0 (forward "
    "mode) or NaN (reverse mode) instead of -pi^2/3: wrong from the parameters' gradients of a first derivative",
)
_AS_STRIDED_SCATTER = Defect(
    "aten::as_strided_scatter",
    "its backward gives the input the gradient of the elements the source overwrites, and the source none of "
    "theirs: first derivatives are wrong",
)
_MAX_UNPOOL = Defect(
    "aten::max_unpool1d/2d/3d",
    "where an index repeats within a plane (pools that overlap), its backward credits every input sharing the "
    "index, where the forward kept one: first derivatives are wrong",
)


def repeats_an_index(indices: object, dims: int) -> bool:
    """Whether the ``indices`` of ``F.max_unpool{dims}d`` repeat one within a plane (their last ``dims`` axes)."""
    if not torch.is_tensor(indices) or indices.numel() == 0:
        return False
    ordered = indices.flatten(-dims).sort(dim=-1).values
    return bool((ordered[..., 1:] == ordered[..., :-1]).any())


def unpool_refusal(engine: str, call: str) -> EngineUnsupported:
    """The refusal of ``call`` (``F.max_unpool*d``) where an index repeats."""
    return _inexact(engine, call, _wrong_rule(_MAX_UNPOOL))


def _unpool(dims: int) -> tuple[Callable, tuple[int, Callable], tuple[int, Callable]]:
    """``F.max_unpool{dims}d`` and its refusals: nested autograd's where an index repeats; torch.func's always.

    Under ``vmap`` the indices cannot be tested, and the parameters' gradients of a
    forward-mode answer go through the same backward.
    """
    call = f"F.max_unpool{dims}d"
    repeated = lambda args, kwargs: repeats_an_index(_argument(args, kwargs, 1, "indices", None), dims)  # noqa: E731
    reverse = _refuse_where(repeated, _MAX_UNPOOL, call)
    forward = _refuse_because(
        call, f"{_wrong_rule(_MAX_UNPOOL)}, and under vmap it cannot be told whether an index repeats"
    )
    return getattr(F, f"max_unpool{dims}d"), (1, reverse), (1, forward)


_UNPOOLS = [_unpool(dims) for dims in (1, 2, 3)]
_AS_STRIDED_SCATTERS = {
    torch.as_strided_scatter: _from_order(1, _AS_STRIDED_SCATTER, "torch.as_strided_scatter"),
    torch.Tensor.as_strided_scatter: _from_order(1, _AS_STRIDED_SCATTER, "Tensor.as_strided_scatter"),
}

# wrong numbers from the order given (NaNs, or values torch.func cannot see), refused from it.  prod, cumprod
# and sinc are refused whatever their arguments: a test for a zero would branch on data, which vmap cannot
FORWARD_MODE_WRONG: dict[Callable, tuple[int, Callable]] = {
    torch.linalg.eigvalsh: _from_order(2, _EIGH, "torch.linalg.eigvalsh"),
    torch.linalg.eigh: _from_order(1, _EIGH, "torch.linalg.eigh"),
    torch.prod: _from_order(2, _PROD, "torch.prod"),
    torch.Tensor.prod: _from_order(2, _PROD, "Tensor.prod"),
    torch.cumprod: _from_order(1, _CUMPROD, "torch.cumprod"),
    torch.Tensor.cumprod: _from_order(1, _CUMPROD, "Tensor.cumprod"),
    torch.sinc: _from_order(1, _SINC, "torch.sinc"),
    torch.Tensor.sinc: _from_order(1, _SINC, "Tensor.sinc"),
    torch.special.sinc: _from_order(1, _SINC, "torch.special.sinc"),
    torch.linalg.eig: _from_order(1, _EIG, "torch.linalg.eig"),
    torch.linalg.eigvals: _from_order(2, _EIG, "torch.linalg.eigvals"),
    torch.cholesky_inverse: _from_order(1, _CHOLESKY_INVERSE, "torch.cholesky_inverse"),
    torch.Tensor.cholesky_inverse: _from_order(1, _CHOLESKY_INVERSE, "Tensor.cholesky_inverse"),
    torch.linalg.householder_product: _from_order(1, _HOUSEHOLDER, "torch.linalg.householder_product"),
    torch.orgqr: _from_order(1, _HOUSEHOLDER, "torch.orgqr"),
    torch.Tensor.orgqr: _from_order(1, _HOUSEHOLDER, "Tensor.orgqr"),
    **{call: (3, _complex_abs) for call in (torch.abs, torch.Tensor.abs, torch.absolute, torch.Tensor.absolute)},
    **{call: (1, _scatter_product) for call in (torch.scatter_reduce, torch.Tensor.scatter_reduce)},
    F.linear_cross_entropy: (1, _chunked_cross_entropy),
    torch.Tensor.data.__get__: (1, _refuse_because("Tensor.data", _DATA)),  # the property's getter
    custom_function_call: (1, _custom_function),  # what a custom Function's apply runs under torch.func
    **{call: forward for call, _, forward in _UNPOOLS},
    **_AS_STRIDED_SCATTERS,  # its backward: of the engine's vjp, and of any answer's parameters' gradients
}


def _batch_norm_composed(engine: str, func: Callable, args: tuple, kwargs: dict):
    if not _argument(args, kwargs, 5, "training", False):
        return func(*args, **kwargs)
    return decompositions.batch_norm(*args, **kwargs)


# nested autograd differentiates batch statistics fine through the composition (func cannot: vmap)
# logcumsumexp's double backward gives NaN (third derivatives, the parameters' gradients of second ones)
REVERSE_MODE_HANDLERS: dict[Callable, Callable] = {
    **NORMALISATION_HANDLERS,
    F.batch_norm: _batch_norm_composed,
    **_LOGCUMSUMEXPS,
}

# wrong numbers of reverse mode from the order given, refused from it
REVERSE_MODE_WRONG: dict[Callable, tuple[int, Callable]] = {
    **_AS_STRIDED_SCATTERS,
    **{call: reverse for call, reverse, _ in _UNPOOLS},
    torch.sinc: _from_order(1, _SINC, "torch.sinc"),
    torch.Tensor.sinc: _from_order(1, _SINC, "Tensor.sinc"),
    torch.special.sinc: _from_order(1, _SINC, "torch.special.sinc"),
    F.linear_cross_entropy: (1, _chunked_cross_entropy),
}

# hardsigmoid's backward has no derivative and celu's is inexact: any derivative trained on
# needs the composition
MISSING_RULE_HANDLERS: dict[Callable, Callable] = {F.hardsigmoid: _hardsigmoid, F.celu: _celu, torch.celu: _celu}
FORWARD_MODE_HANDLERS: dict[Callable, Callable] = {
    **NORMALISATION_HANDLERS,
    **MISSING_RULE_HANDLERS,
    **_LOGCUMSUMEXPS,  # its forward-mode rule loses digits where the values spread (decompositions.logcumsumexp)
    torch.linalg.det: _refuse(DET, "torch.linalg.det"),
    torch.det: _refuse(DET, "torch.det"),
    torch.Tensor.det: _refuse(DET, "Tensor.det"),
    torch.linalg.slogdet: _refuse(SLOGDET, "torch.linalg.slogdet"),
    torch.slogdet: _refuse(SLOGDET, "torch.slogdet"),
    torch.Tensor.slogdet: _refuse(SLOGDET, "Tensor.slogdet"),
    torch.logdet: _refuse(SLOGDET, "torch.logdet"),
    torch.Tensor.logdet: _refuse(SLOGDET, "Tensor.logdet"),
    torch.linalg.solve: _refuse(SOLVE, "torch.linalg.solve"),
    torch.linalg.solve_ex: _refuse(SOLVE, "torch.linalg.solve_ex"),
    torch.linalg.tensorsolve: _refuse(SOLVE, "torch.linalg.tensorsolve"),
    torch.linalg.lu_solve: _refuse(LU_SOLVE, "torch.linalg.lu_solve"),
    F.scaled_dot_product_attention: _masked_attention,
    F.multi_head_attention_forward: _multi_head_attention,
}


class Audit(TorchFunctionMode):
    """Reroutes or refuses the torch calls in ``handlers`` (see the module docstring).

    Every other call passes through unchanged.  The network's Python code runs
    once per transform, so this costs one dict lookup per torch call of ``u``.
    ``engine`` names the engine in the refusals.  With ``constants_refused``, an
    op that runs in a ``torch.no_grad()`` section of the network is refused too
    (:func:`.base.grad_turned_off`; the network runs through :func:`.base.entered`).
    """

    def __init__(self, handlers: dict[Callable, Callable], engine: str, constants_refused: bool = False) -> None:
        super().__init__()
        self.handlers = handlers
        self.engine = engine
        self.constants_refused = constants_refused
        self.checkpoints_refused = False

    @classmethod
    def forward_mode(cls, order: int) -> Audit:
        """The audit of the ``func`` engine for derivatives up to ``order``."""
        from_order = {**FORWARD_MODE_FAILURES, **FORWARD_MODE_WRONG}
        failing = {func: handler for func, (start, handler) in from_order.items() if order >= start}
        audit = cls({**FORWARD_MODE_HANDLERS, **failing}, "torch.func", constants_refused=order >= 1)
        audit.checkpoints_refused = True
        return audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # torch.no_grad()'s exit sets the grad mode with gradients still off: not an op of the section
        if self.constants_refused and func is not torch._C._set_grad_enabled and grad_turned_off():
            raise EngineUnsupported(
                f"{self.engine} cannot differentiate {resolve_name(func) or func} with gradients turned off inside "
                "the network (torch.no_grad()): autograd takes what it computes as a constant, forward mode "
                "differentiates through it"
            )
        if self.checkpoints_refused and torch.is_grad_enabled() and checkpointing():  # eager only, see there
            raise EngineUnsupported(
                f"{self.engine} cannot differentiate {resolve_name(func) or func} inside activation checkpointing "
                "(torch.utils.checkpoint with use_reentrant=False): its recomputation in the backward does not "
                "run under the transforms, and the gradients in the parameters fail (CheckpointError)"
            )
        handler = self.handlers.get(func)
        if handler is None:
            return func(*args, **kwargs)
        return handler(self.engine, func, args, kwargs)


def checkpointing() -> bool:
    """Whether the network runs inside ``torch.utils.checkpoint`` (non-reentrant): its saved-tensor hooks are on.

    Other saved-tensor hooks (``save_on_cpu``) give exact results under torch.func and are not refused.
    Compiled, not asked (False): dynamo cannot trace the question, and it traces a checkpoint as a region
    of its own.
    """
    if torch.compiler.is_compiling():
        return False
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return hooks is not None and getattr(hooks[0], "__module__", None) == "torch.utils.checkpoint"


def math_attention() -> contextlib.AbstractContextManager:
    """``scaled_dot_product_attention`` through the math kernel, which has derivatives of every order."""
    return sdpa_kernel(SDPBackend.MATH)


_MISSING_RULE = re.compile(
    r"derivative for '?([\w:.]+)'? is not implemented|forward AD with ([\w:.]+) that does not"
    r"|vmap: we do not yet support ([\w:.]+)"
)


@contextlib.contextmanager
def missing_rules_refused(engine: str) -> Iterator[None]:
    """Turn PyTorch's "no derivative rule for op X" errors into :class:`EngineUnsupported` naming X."""
    try:
        yield
    except EngineUnsupported:
        raise
    except RuntimeError as error:
        match = _MISSING_RULE.search(str(error))
        if match is None:
            raise
        op = next(group for group in match.groups() if group)
        first_line = str(error).splitlines()[0]
        raise EngineUnsupported(
            f"{engine} cannot differentiate {op}: PyTorch has no rule for it ({first_line})"
        ) from error


def request_order(request: Request) -> int:
    """The highest order of derivative ``request`` needs."""
    # a list rather than max(generator, default=...), which torch.compile cannot trace
    orders = [len(index) for index in request.partials]
    orders += [2 if name in ("hessian", "laplacian") else 1 for name in request.full]
    return max(orders) if orders else 0


def training_batch_norm(engine: str, u: object) -> EngineUnsupported | None:
    """The refusal of :func:`batch_norm_training_refused` read from ``u``'s modules, for ``torch.compile``.

    Compiled, the hook cannot be registered, and ``jvp`` rejected the batch count's
    ``add_`` with a bare error of the compiler that named neither the module nor
    the reason.  A module that ``u`` holds but does not call is refused too.
    """
    modules = u.modules() if isinstance(u, torch.nn.Module) else ()
    for module in modules:
        if isinstance(module, _BatchNorm) and module.training:
            return _inexact(engine, f"{type(module).__name__} in training mode", _wrong_rule(BATCH_NORM))
    return None


@contextlib.contextmanager
def batch_norm_training_refused(engine: str) -> Iterator[None]:
    """Refuse a BatchNorm module in training mode before its forward runs, naming it.

    Its forward first counts the batch in place (``num_batches_tracked.add_``),
    which ``jvp`` rejects with a bare error before :class:`Audit` sees
    ``F.batch_norm``, then normalises with batch statistics (:data:`BATCH_NORM`)
    and updates its running statistics in place.  A global hook, for this
    thread and this context only; not under ``torch.compile``, which cannot
    trace its registration.
    """
    if torch.compiler.is_compiling():
        yield
        return
    thread = threading.get_ident()

    def hook(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, _BatchNorm) and module.training and threading.get_ident() == thread:
            _refuse(BATCH_NORM, f"{type(module).__name__} in training mode")(engine, module, args, {})  # raises

    handle = register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def exact_forward_mode(order: int) -> Iterator[None]:
    """The context the ``func`` engine runs the network in for derivatives up to ``order``.

    The network must run through :func:`.base.entered` for its ``torch.no_grad()`` sections to be refused.
    Gradients are on (the operator detaches what a call without them returns): with them off, nested ``jvp``
    through ``silu`` and ``mish`` fails from order 2 (no forward-mode rule for ``aten::silu_backward``).
    """
    with (
        torch.enable_grad(),
        missing_rules_refused("torch.func"),
        math_attention(),
        batch_norm_training_refused("torch.func"),
        Audit.forward_mode(order),
    ):
        yield


@contextlib.contextmanager
def exact_reverse_mode(order: int) -> Iterator[None]:
    """The context nested autograd runs the network in for derivatives up to ``order``.

    A training step differentiates the result once more, so the normalisations'
    third-order defect shows from ``order`` 2 on (in the parameters' gradients),
    and the missing second derivative of ``hardsigmoid`` from ``order`` 1; the
    calls of :data:`REVERSE_MODE_WRONG` are refused from their order.
    """
    failing = {func: handler for func, (start, handler) in REVERSE_MODE_WRONG.items() if order >= start}
    handlers = {**MISSING_RULE_HANDLERS, **(REVERSE_MODE_HANDLERS if order >= 2 else {}), **failing}
    with missing_rules_refused("nested autograd"), math_attention():
        if order == 0:
            yield
            return
        with Audit(handlers, "nested autograd"):
            yield


# every backward decorated with @once_differentiable runs this one wrapper's code
_ONCE_DIFFERENTIABLE = once_differentiable(lambda ctx, *grads: grads).__code__


def once_differentiable_function(output: torch.Tensor) -> str | None:
    """The name of a custom ``autograd.Function`` in ``output``'s graph whose backward is ``@once_differentiable``.

    Such a backward hands back a result cut off from the graph, whose own
    derivatives nested autograd would read as zeros.
    """
    for node in graph_nodes([output]):
        function = getattr(node, "_forward_cls", None)
        if getattr(getattr(function, "backward", None), "__code__", None) is _ONCE_DIFFERENTIABLE:
            return function.__name__
    return None


def refuse_once_differentiable(output: torch.Tensor, order: int) -> None:
    """Nested autograd refuses ``output`` if its derivatives of ``order`` (and their gradients) would pass
    through a backward that cannot be differentiated."""
    if order < 1 or output.grad_fn is None or torch.compiler.is_compiling():
        return
    name = once_differentiable_function(output)
    if name is not None:
        raise EngineUnsupported(
            f"nested autograd cannot differentiate {name} more than once: its backward is @once_differentiable, "
            "so the derivatives of its gradient would come out as zeros"
        )
