"""Small networks the tests differentiate, all float64 unless converted."""

from __future__ import annotations

import torch
from torch import nn


class Sin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


ACTIVATIONS = {"tanh": nn.Tanh, "silu": nn.SiLU, "sin": Sin}


def mlp(d_in: int, d_out: int = 1, width: int = 16, depth: int = 2, activation: str = "tanh") -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(d_in, width), ACTIVATIONS[activation]()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers).double()


class Residual(nn.Module):
    """x -> Linear -> [h + tanh(W h)] x 2 -> Linear."""

    def __init__(self, d_in: int, d_out: int = 1, width: int = 12):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(2))
        self.out = nn.Linear(width, d_out)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        return self.out(h)


class Ansatz(nn.Module):
    """u(x) = x0 * g(x) + 1: a hard-constrained initial condition around a network."""

    def __init__(self, d_in: int, d_out: int = 1):
        super().__init__()
        self.g = mlp(d_in, d_out, activation="silu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :1] * self.g(x) + 1.0


class TwoInputs(nn.Module):
    """u(x, t) on the concatenation of both inputs."""

    def __init__(self, d_x: int, d_t: int, d_out: int = 1):
        super().__init__()
        self.net = mlp(d_x + d_t, d_out)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t], dim=-1))


class Squeezed(nn.Module):
    """A scalar network returning (B,) instead of (B, 1)."""

    def __init__(self, d_in: int):
        super().__init__()
        self.net = mlp(d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def networks(d: int, d_out: int = 1) -> dict[str, nn.Module]:
    """The architectures every operator is checked on."""
    nets = {f"mlp-{name}": mlp(d, d_out, activation=name) for name in ACTIVATIONS}
    nets["residual"] = Residual(d, d_out)
    nets["ansatz"] = Ansatz(d, d_out)
    return nets
