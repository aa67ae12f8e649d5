"""Float64 nested ``torch.autograd.grad``: the reference every engine is checked against.

Written plainly, one output component and one row of partials at a time, and
independent of the package's own autograd engine.
"""

from __future__ import annotations

import torch


def _components(u, x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
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
