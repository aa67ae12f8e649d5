"""Float64 nested ``torch.autograd.grad``: the reference every engine is checked against.

Written plainly, one output component and one row of partials at a time, and
independent of the package's own autograd engine.  PyTorch's own rules are not
exact everywhere: :func:`exact_layers` runs the layers whose fused derivative
rules fail (normalisations beyond order 2, batch norm with batch statistics
included, ``hardsigmoid``, ``celu``, ``logcumsumexp``) as plain compositions and attention on the
math kernel; ``partial`` uses it throughout.  Normalisations with running
statistics are affine maps, exact, and run as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode


def _normalise(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    centred = x - x.mean(dims, keepdim=True)
    return centred / torch.sqrt((centred * centred).mean(dims, keepdim=True) + eps)


class CompositeReference(TorchFunctionMode):
    """The ops whose fused reverse-mode rules fail beyond order 2, written out for the reference."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm:
            x, shape, weight, bias = args[0], args[1], kwargs.get("weight"), kwargs.get("bias")
            y = _normalise(x, tuple(range(-len(shape), 0)), kwargs.get("eps", 1e-5))
            return y * weight + bias if weight is not None else y
        if func is F.instance_norm and kwargs.get("use_input_stats", args[5] if len(args) > 5 else True):  # else exact
            x, weight, bias = args[0], kwargs.get("weight"), kwargs.get("bias")
            y = _normalise(x, tuple(range(2, x.dim())), kwargs.get("eps", 1e-5))
            return y * weight[:, None] + bias[:, None] if weight is not None else y
        if func is F.batch_norm and (args[5] if len(args) > 5 else kwargs.get("training", False)):
            x, weight, bias = args[0], kwargs.get("weight"), kwargs.get("bias")  # batch statistics, wrong at order 3
            y = _normalise(x, (0, *range(2, x.dim())), kwargs.get("eps", 1e-5))
            shape = (1, -1, *([1] * (x.dim() - 2)))
            return y * weight.reshape(shape) + bias.reshape(shape) if weight is not None else y
        if func is F.hardsigmoid:  # no double backward upstream
            return F.relu6(args[0] + 3) / 6
        if func in (torch.logcumsumexp, torch.Tensor.logcumsumexp):  # its double backward is NaN upstream
            x, dim = args[0], args[1] if len(args) > 1 else kwargs["dim"]
            shift = x.detach().amax(dim, keepdim=True)  # a constant: no exp overflows, the derivatives unchanged
            return torch.log(torch.cumsum(torch.exp(x - shift), dim)) + shift
        if func is F.celu:  # the upstream derivative scales by a float32 1/alpha
            alpha = args[1] if len(args) > 1 else kwargs.get("alpha", 1.0)
            return alpha * F.elu(args[0] / alpha)  # F.celu's own branches, its derivatives at 0 included
        return func(*args, **kwargs)


@contextlib.contextmanager
def exact_layers() -> Iterator[None]:
    """Run ``u`` so that nested autograd through it is exact at every order (see the module docstring)."""
    with sdpa_kernel(SDPBackend.MATH), CompositeReference():
        yield


def _components(u, x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    with exact_layers():
        y = u(x)
    return y.reshape(x.shape[0], -1), y.shape[1:]


def partial(u, x: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
    """d^index u at ``x: (N, d)``: ``(N, *out)``; differentiable w.r.t. ``x`` if it requires grad."""
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    y, out_shape = _components(u, x)
    columns = []
    for m in range(y.shape[1]):
        g = y[:, m]
        for i in index:
            (full,) = torch.autograd.grad(g.sum(), x, create_graph=True, allow_unused=True, materialize_grads=True)
            g = full[:, i]
        columns.append(g)
    return torch.stack(columns, dim=1).reshape(x.shape[0], *out_shape)


def jacobian(u, x: torch.Tensor) -> torch.Tensor:
    """``(N, *out, d)``."""
    return torch.stack([partial(u, x, (i,)) for i in range(x.shape[1])], dim=-1)


def hessian(u, x: torch.Tensor) -> torch.Tensor:
    """``(N, *out, d, d)``."""
    d = x.shape[1]
    rows = [torch.stack([partial(u, x, (i, j)) for j in range(d)], dim=-1) for i in range(d)]
    return torch.stack(rows, dim=-2)


def laplacian(u, x: torch.Tensor) -> torch.Tensor:
    """``(N, *out)``."""
    return sum(partial(u, x, (i, i)) for i in range(x.shape[1]))


def parameter_gradients(module: torch.nn.Module, value: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of a fixed nonlinear loss of ``value`` w.r.t. the module's parameters."""
    loss = (value**2).sum() + value.sin().sum()
    params = [p for p in module.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))
