"""What diffops adds around an engine: the Burgers residual by diffops and by hand-written nested autograd.

The everyday PINN residual {u, u_x, u_xx, u_t} of Raissi's Burgers network
(8 hidden tanh layers of 20, inputs (x, t)), as a training step (residual
``u_t + u u_x - nu u_xx``, MSE loss, backward to the parameters), three ways:

* ``nested autograd``: two ``torch.autograd.grad`` calls written by hand;
* ``diffops autograd``: ``Derivatives(u, u=(), u_x=(0,), u_xx=(0, 0), u_t=(1,), method="autograd")``,
  the same nested autograd behind the operator's input checks and dispatch;
* ``diffops auto``: the same operator with the default ``method="auto"``.

Each is timed as a whole training step and as its forward pass alone (the
derivatives, no backward), where the cost of the operator around the engine
shows most plainly.  The methods run in one process, interleaved round by
round, and each time is the best of the rounds (``_measure.best_seconds``:
other load on a shared machine only ever adds time); the ratios are to
hand-written nested autograd.

Usage::

    python benchmarks/overhead.py [--threads 1] [--repeats 100] [--dtype float32]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _measure import best_seconds, cpu_model, tanh_mlp  # noqa: E402

import diffops as do  # noqa: E402

NU = 0.01 / torch.pi
BATCHES = (256, 2000)
Fields = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def by_hand(net: torch.nn.Module) -> Fields:
    """``(u, u_x, u_xx, u_t)`` by two nested ``torch.autograd.grad`` calls."""

    def fields(x: torch.Tensor):
        x = x.detach().requires_grad_(True)
        u = net(x)
        (g,) = torch.autograd.grad(u.sum(), x, create_graph=True)
        u_x, u_t = g[:, :1], g[:, 1:]
        (gg,) = torch.autograd.grad(u_x.sum(), x, create_graph=True)
        return u, u_x, gg[:, :1], u_t

    return fields


def by_diffops(net: torch.nn.Module, method: str) -> Fields:
    op = do.Derivatives(net, u=(), u_x=(0,), u_xx=(0, 0), u_t=(1,), method=method)

    def fields(x: torch.Tensor):
        d = op(x)
        return d["u"], d["u_x"], d["u_xx"], d["u_t"]

    return fields


def forward_pass(fields: Fields, x: torch.Tensor) -> Callable[[], None]:
    """The derivatives alone."""
    return lambda: fields(x)


def burgers_step(net: torch.nn.Module, fields: Fields, x: torch.Tensor) -> Callable[[], None]:
    """One training step on the Burgers residual."""

    def step() -> None:
        for p in net.parameters():
            p.grad = None
        u, u_x, u_xx, u_t = fields(x)
        residual = u_t + u * u_x - NU * u_xx
        residual.pow(2).mean().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    net = tanh_mlp(2, 20, 8).to(dtype)
    methods = {
        "nested autograd": by_hand(net),
        "diffops autograd": by_diffops(net, "autograd"),
        "diffops auto": by_diffops(net, "auto"),
    }
    print(
        f"Burgers {{u, u_x, u_xx, u_t}}, 8x20 tanh, {args.dtype}; {cpu_model()}, {args.threads} thread(s), "
        f"best of {args.repeats} interleaved rounds; ratios to nested autograd"
    )
    header = f"{'batch':>6} {'timed':>8} | " + " | ".join(f"{name:>16}" for name in methods)
    header += " | " + " | ".join(f"{name + ' / nested':>25}" for name in list(methods)[1:])
    print(header)
    print("-" * len(header))
    for batch in BATCHES:
        x = torch.rand(batch, 2, dtype=dtype)
        for timed in ("step", "forward"):
            works = {
                name: burgers_step(net, f, x) if timed == "step" else forward_pass(f, x) for name, f in methods.items()
            }
            best = best_seconds(works, x.device, args.repeats, warmup=3)
            cells = " | ".join(f"{best[name] * 1e3:13.3f} ms" for name in methods)
            ratios = " | ".join(f"{best[name] / best['nested autograd']:25.3f}" for name in list(methods)[1:])
            print(f"{batch:>6} {timed:>8} | {cells} | {ratios}")


if __name__ == "__main__":
    main()
