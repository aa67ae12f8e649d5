"""Soak test: many training steps on a Laplacian loss keep memory flat.

Prints the peak resident set size after a warm-up and at the end; a graph kept
alive between steps would make it grow with every step.

    python benchmarks/soak.py --steps 10000 [--method auto] [--device cpu]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
from torch import nn

import diffops as do


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def soak(steps: int, method: str = "auto", device: str = "cpu", report_every: int = 0) -> tuple[float, float]:
    """Train ``steps`` Adam steps on ``(Δu + f)^2``; returns (peak RSS after warm-up, peak RSS at the end) in MiB."""
    torch.manual_seed(0)
    u = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)).to(device)
    lap = do.Laplacian(u, method=method)
    opt = torch.optim.Adam(lap.parameters(), lr=1e-3)
    warmup = min(200, steps // 10)
    start = 0.0
    for step in range(steps):
        x = torch.rand(128, 2, device=device)
        f = torch.sin(x.sum(-1, keepdim=True))
        opt.zero_grad(set_to_none=True)
        loss = (lap(x) + f).pow(2).mean()
        loss.backward()
        opt.step()
        if step + 1 == warmup:
            start = peak_rss_mib()
        if report_every and (step + 1) % report_every == 0:
            print(f"step {step + 1:6d}  loss {loss.item():.3e}  peak RSS {peak_rss_mib():.1f} MiB", flush=True)
    return start, peak_rss_mib()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--method", default="auto")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    start, end = soak(args.steps, args.method, args.device, report_every=max(args.steps // 10, 1))
    print(f"peak RSS after warm-up: {start:.1f} MiB, at the end: {end:.1f} MiB, growth {end - start:+.1f} MiB "
          f"over {args.steps} steps ({time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
