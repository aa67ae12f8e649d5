"""Training-step benchmark on the architectures beyond tanh MLPs: a LayerNorm residual MLP, a transformer
encoder, a 1-D convolutional network and a determinant of orbitals.

A training step is the Laplacian's forward pass, an MSE loss and the backward
pass to the parameters (:func:`bench_taylor.training_step`).  For each case
four methods run in one process, interleaved round by round:

* ``auto``: ``diffops.Laplacian(net)`` with the default ``method="auto"``;
* ``taylor``: ``diffops.Laplacian(net, method="taylor")``;
* ``autograd``: nested ``torch.autograd.grad``, written here by hand (d + 1 backward passes);
* ``func``: ``torch.func`` ``vmap(hessian)``, traced.

The reference paths run under ``sdpa_kernel(SDPBackend.MATH)``: on a CPU
torch's fused attention kernels have no double backward.  Times are the
medians over rounds; ratios are the medians over rounds of the ratio within
a round (paired, so that other work on the machine cancels; above 1: ``auto``
is faster).  Peak memory is the largest total of live tensor storage created
during one step (``_measure.peak_bytes``), in MiB.

Networks (float32, scalar output):

* ``layernorm-mlp``: Linear(d, 128), tanh, three residual blocks ``h + tanh(Linear(LayerNorm(h)))``,
  LayerNorm, Linear(128, 1): 4 x 128, batch 256, d = 2 and 16;
* ``transformer``: Linear(2, 8 x 32), tanh, 8 tokens of 32 through one ``nn.TransformerEncoderLayer``
  (4 heads, feed-forward 64, dropout 0, batch_first, eval mode), Linear(8 x 32, 1): d = 2, batch 256;
* ``conv1d``: Linear(2, 32), tanh, as a signal of 32 through Conv1d(1, 8, 5), tanh, Conv1d(8, 8, 5), tanh,
  AvgPool1d(2), Conv1d(8, 4, 3), tanh (zero padding keeping the length), Linear(4 x 16, 1): d = 2, batch 256;
* ``determinant``: ``log |det A(x)|`` of the ``n x n`` orbitals ``A = MLP(x) + 2 I`` of n = 8 particles in
  3-D (MLP: Linear(24, 64), tanh, Linear(64, 64), tanh, Linear(64, 64)): d = 24, batch 256 (a
  wavefunction's Laplacian, the kinetic energy of quantum Monte Carlo).

Usage::

    python benchmarks/bench_architectures.py [--threads 1] [--quick] [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _measure import cpu_model, peak_bytes  # noqa: E402
from bench_taylor import grad, paired_ratio, time_rounds, training_step  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import hessian, vmap  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import diffops as do  # noqa: E402

METHODS = ("auto", "taylor", "autograd", "func")


@dataclass(frozen=True)
class Sizes:
    width: int = 128
    depth: int = 4
    batch: int = 256
    mlp_dims: tuple[int, ...] = (2, 16)
    tokens: int = 8
    embed: int = 32
    heads: int = 4
    signal: int = 32
    particles: int = 8
    repeats: int = 7


QUICK = Sizes(width=16, depth=2, batch=8, mlp_dims=(2,), tokens=2, embed=8, heads=2, signal=8, particles=2, repeats=1)


# -- the networks -------------------------------------------------------------------------------


class LayerNormMLP(nn.Module):
    """Linear(d, w), tanh, ``depth - 1`` blocks ``h + tanh(Linear(LayerNorm(h)))``, LayerNorm, Linear(w, 1)."""

    def __init__(self, d: int, width: int, depth: int):
        super().__init__()
        self.inp = nn.Linear(d, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for norm, block in zip(self.norms, self.blocks):
            h = h + torch.tanh(block(norm(h)))
        return self.out(self.norms[-1](h))


class Encoder(nn.Module):
    """``tokens`` tokens of ``embed`` made from x by a Linear, one TransformerEncoderLayer, a Linear read-out."""

    def __init__(self, d: int, tokens: int, embed: int, heads: int):
        super().__init__()
        self.tokens, self.embed = tokens, embed
        self.inp = nn.Linear(d, tokens * embed)
        self.layer = nn.TransformerEncoderLayer(embed, heads, 2 * embed, dropout=0.0, batch_first=True)
        self.out = nn.Linear(tokens * embed, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x)).reshape(x.shape[0], self.tokens, self.embed)
        return self.out(self.layer(h).reshape(x.shape[0], -1))


class ConvNet(nn.Module):
    """x lifted to a signal of ``length`` by a Linear, three tanh convolutions and a pool, a Linear read-out."""

    def __init__(self, d: int, length: int):
        super().__init__()
        self.inp = nn.Linear(d, length)
        self.convs = nn.Sequential(
            nn.Conv1d(1, 8, 5, padding=2), nn.Tanh(), nn.Conv1d(8, 8, 5, padding=2), nn.Tanh(),
            nn.AvgPool1d(2), nn.Conv1d(8, 4, 3, padding=1), nn.Tanh(),
        )  # fmt: skip
        self.out = nn.Linear(4 * (length // 2), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.convs(torch.tanh(self.inp(x)).unsqueeze(1)).flatten(1))


class Determinant(nn.Module):
    """``log |det A(x)|`` of ``particles x particles`` orbitals from an MLP of the ``3 particles`` coordinates."""

    def __init__(self, particles: int, width: int = 64):
        super().__init__()
        self.particles = particles
        self.orbitals = nn.Sequential(
            nn.Linear(3 * particles, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
            nn.Linear(width, particles * particles),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.orbitals(x).reshape(-1, self.particles, self.particles)
        a = a + 2 * torch.eye(self.particles, dtype=x.dtype, device=x.device)
        return torch.linalg.slogdet(a).logabsdet.unsqueeze(-1)


# -- the Laplacian by each method: (B, d) -> (B, 1) ------------------------------------------------


def math_attention(f: Callable) -> Callable:
    """``f`` with attention on torch's math kernel, which the reverse-mode references need on a CPU."""

    def wrapped(*args):
        with sdpa_kernel(SDPBackend.MATH):
            return f(*args)

    return wrapped


def nested_laplacian(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    g = grad(net(x)[:, 0], x)
    return sum(grad(g[:, i], x)[:, i] for i in range(x.shape[1]))[:, None]


def func_laplacian(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = vmap(hessian(lambda xi: net(xi[None])[0, 0]))(x)
    return h.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)


def methods(net: nn.Module) -> dict[str, Callable]:
    return {
        "auto": do.Laplacian(net),
        "taylor": do.Laplacian(net, method="taylor"),
        "autograd": math_attention(lambda x: nested_laplacian(net, x)),
        "func": math_attention(lambda x: func_laplacian(net, x)),
    }


def cases(sizes: Sizes) -> dict[str, Callable[[], tuple[nn.Module, int]]]:
    """Case name -> a builder of (network, d)."""
    built = {
        f"layernorm-mlp d={d}": (lambda d=d: (LayerNormMLP(d, sizes.width, sizes.depth), d)) for d in sizes.mlp_dims
    }
    built["transformer d=2"] = lambda: (Encoder(2, sizes.tokens, sizes.embed, sizes.heads).eval(), 2)
    built["conv1d d=2"] = lambda: (ConvNet(2, sizes.signal), 2)
    built[f"determinant d={3 * sizes.particles}"] = lambda: (Determinant(sizes.particles), 3 * sizes.particles)
    return built


# -- measuring -------------------------------------------------------------------------------------


def check_agreement(laplacians: dict[str, Callable], x: torch.Tensor) -> dict[str, float]:
    """Each method's largest relative difference from nested autograd's Laplacian (float32)."""
    expected = laplacians["autograd"](x).detach()
    scale = expected.abs().max().clamp_min(1e-30)
    return {m: float((laplacians[m](x).detach() - expected).abs().max() / scale) for m in METHODS if m != "autograd"}


def measure(name: str, build: Callable, sizes: Sizes) -> dict:
    torch.manual_seed(0)
    net, d = build()
    x = torch.rand(sizes.batch, d) * 2 - 1
    laplacians = methods(net)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agreement = check_agreement(laplacians, x)
    fallback = "; ".join(str(w.message)[:120] for w in caught if "method='auto' uses" in str(w.message))
    steps = {m: training_step(net, laplacians[m], x) for m in METHODS}
    rounds = time_rounds(steps, sizes.repeats, "cpu")
    memory = {m: _peak(steps[m]) for m in METHODS}
    return {"case": name, "rounds": rounds, "memory": memory, "agreement": agreement, "fallback": fallback}


def _peak(step: Callable) -> int | None:
    try:
        return peak_bytes(step, torch.device("cpu"))
    except Exception:  # noqa: BLE001 - a method the storage tracker cannot follow: no figure rather than a wrong one
        return None


def print_rows(rows: list[dict]) -> None:
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    header = f"{'case':>20} " + " ".join(f"{m + ' ms':>12}" for m in METHODS)
    header += " " + " ".join(f"{m + '/auto':>14}" for m in METHODS[1:])
    header += " " + " ".join(f"{m + ' MiB':>12}" for m in METHODS)
    print(header)
    for row in rows:
        line = f"{row['case']:>20} " + " ".join(f"{median(row['rounds'][m]) * 1e3:>12.2f}" for m in METHODS)
        line += " " + " ".join(f"{paired_ratio(row['rounds'], m, 'auto'):>13.2f}x" for m in METHODS[1:])
        line += " " + " ".join(f"{_mib(row['memory'][m]):>12}" for m in METHODS)
        print(line)
    for row in rows:
        differences = ", ".join(f"{m} {difference:.1e}" for m, difference in row["agreement"].items())
        note = f"  {row['case']}: largest relative difference from nested autograd: {differences}"
        print(note + (f"; auto fell back: {row['fallback']}" if row["fallback"] else "; auto ran the Taylor engine"))


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds (default 7, 1 with --quick)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else Sizes()
    if args.repeats is not None:
        sizes = Sizes(**{**sizes.__dict__, "repeats": args.repeats})
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; threads={torch.get_num_threads()}; float32")
    print(
        f"Laplacian training step (forward, MSE, backward); LayerNorm MLP {sizes.depth}x{sizes.width}, "
        f"transformer {sizes.tokens} tokens x {sizes.embed}, {sizes.heads} heads; batch {sizes.batch}; "
        f"{sizes.repeats} rounds"
    )
    rows = [measure(name, build, sizes) for name, build in cases(sizes).items()]
    print_rows(rows)


if __name__ == "__main__":
    main()
