"""The GPU suite: the CUDA tests, the GPU benchmarks and the whole test suite, logged to one folder.

On a CUDA machine, from the working tree::

    bash benchmarks/gpu_suite.sh [OUT] [--budget 480]     # or: python benchmarks/gpu_suite.py [OUT]

runs, most valuable first, each step under its own timeout and all of them
within ``--budget`` seconds (a step that would start past the budget is
skipped, and the summary says so):

1. ``environment``: the GPU, driver, torch and CUDA versions, a C compiler
   (Triton needs one for ``torch.compile``), the test packages present;
2. ``cuda-tests``: every test marked ``cuda`` (``tests/test_cuda.py``: every
   operator and engine in float32 and float64, estimators, DDP), compilation aside;
3. ``bench``: ``bench_gpu.py --device cuda``, the Laplacian, jet-configuration
   and k-th derivative tables, alone on the machine;
4. ``test-suite``: the rest of the test suite, split over parallel pytest
   processes, in the background of
5. ``cuda-compile-tests``: the ``torch.compile`` tests on the device;
6. ``bench-compile``: ``bench_gpu.py --tables compile``, alone again;
7. ``bench-estimators`` and ``gauss-newton``: the other benchmarks with ``--device cuda``.

Every log, table (Markdown and JSON) and JUnit report lands in ``OUT``
(default ``$OUT``, else ``outputs/gpu_suite``), with ``summary.md`` and
``summary.json`` last.  The suite uses the Python it runs on when its torch
sees a GPU; it never downloads anything unless ``--allow-download`` is given.
Test packages it lacks (pytest, hypothesis) are installed into
``outputs/gpu-site``, on the steps' ``PYTHONPATH``, from ``--wheelhouse`` (a
folder of wheels) when one exists; without them the steps that need them are
skipped.

``--dry-run`` rehearses every step on the CPU with tiny sizes: the CUDA tests
run on the CPU (``DIFFOPS_CUDA_TESTS_DEVICE=cpu``, a subset), the benchmarks
with ``--device cpu --quick``, the test suite is only collected.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_PACKAGES = ("pytest", "hypothesis")  # what the suite's own steps import; the examples' tests skip without theirs
OPTIONAL_PACKAGES = ("pytorch_lightning", "matplotlib", "jsonargparse", "numpy", "scipy")
SITE = ROOT / "outputs" / "gpu-site"  # test packages installed for the suite, when the machine lacks them


@dataclass
class Step:
    """One command of the suite, with the seconds it may take and where its output goes."""

    name: str
    command: list[str]
    timeout: float
    needs: tuple[str, ...] = ()  # modules the command imports besides torch
    env: dict[str, str] = field(default_factory=dict)
    parallel: list[list[str]] | None = None  # several commands at once (the test-suite shards)
    junit: list[str] = field(default_factory=list)  # report files, for the counts in the summary
    quiet: bool = False  # timed: waits for the steps running in the background, runs alone
    background: bool = False  # the next steps start while it runs (until one needs quiet)


# -- the environment ------------------------------------------------------------------------

PROBE = """
import importlib.util, json, shutil, subprocess, sys
info = {"python": sys.executable, "version": sys.version.split()[0]}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda=torch.cuda.is_available())
    if info["cuda"]:
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["nccl"] = torch.distributed.is_nccl_available()
except Exception as error:
    info["torch_error"] = repr(error)
info["missing"] = [m for m in %r if importlib.util.find_spec(m) is None]
info["compiler"] = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
print(json.dumps(info))
"""


def probe(python: str, site: Path | None = None) -> dict:
    """What ``python`` offers (with ``site`` on its path): torch and CUDA, the GPUs, missing packages, a C compiler."""
    script = PROBE % ((*TEST_PACKAGES, *OPTIONAL_PACKAGES),)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site or ""), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=120, check=False, env=env)
    if result.returncode != 0:
        return {"python": python, "error": result.stderr.strip()[-2000:]}
    return {**json.loads(result.stdout.strip().splitlines()[-1]), **({"site": str(site)} if site else {})}


def prepare(python: str, out: Path, args: argparse.Namespace) -> tuple[dict, list[str]]:
    """The probe of the Python that runs the steps, after installing what it lacks; and a log of that.

    That Python is used as it is when it has torch (with CUDA unless this is a
    dry run).  Missing test packages are installed into ``outputs/gpu-site``,
    which the steps find on their ``PYTHONPATH`` (so they keep the machine's
    torch, which a constraint file also pins), from the wheelhouse, or from the
    package index only with ``--allow-download``.
    """
    log = []
    info = probe(python, SITE if SITE.is_dir() else None)
    if "torch" not in info:
        raise SystemExit(f"{python}: torch does not import ({info.get('torch_error') or info.get('error')})")
    if not args.dry_run and not info.get("cuda"):
        raise SystemExit(
            f"{python}: torch {info['torch']} sees no CUDA device; run the suite with a Python whose torch is a "
            "CUDA build (PYTHON=/path/to/python bash benchmarks/gpu_suite.sh), or use --dry-run"
        )
    missing = [m for m in info["missing"] if m in TEST_PACKAGES]
    wheelhouse = Path(args.wheelhouse)
    if not missing or not (wheelhouse.is_dir() or args.allow_download):
        if missing:
            log.append(f"missing {missing}: no wheelhouse at {wheelhouse} and downloads not allowed")
        return info, log
    constraint = out / "torch-constraint.txt"  # never replace the machine's torch
    constraint.write_text(f"torch=={info['torch']}\n")
    source = ["--no-index", "--find-links", str(wheelhouse)] if wheelhouse.is_dir() else ["--timeout", "20"]
    command = [python, "-m", "pip", "install", "--quiet", "--target", str(SITE), "-c", str(constraint), *source]
    result = subprocess.run([*command, *missing], capture_output=True, text=True, check=False)
    log.append(f"$ {' '.join([*command, *missing])}\n{result.stdout}{result.stderr}".strip())
    return probe(python, SITE), log


# -- the steps ------------------------------------------------------------------------------


def test_files() -> list[Path]:
    return sorted(ROOT.glob("tests/**/test_*.py"))


def shards(files: list[Path], jobs: int) -> list[list[str]]:
    """Test files in ``jobs`` groups of about equal size (the largest files dealt out first)."""
    groups: list[list[Path]] = [[] for _ in range(max(1, min(jobs, len(files))))]
    sizes = [0] * len(groups)
    for path in sorted(files, key=lambda p: -p.stat().st_size):
        smallest = sizes.index(min(sizes))
        groups[smallest].append(path)
        sizes[smallest] += path.stat().st_size
    return [[str(p.relative_to(ROOT)) for p in group] for group in groups]


def steps(python: str, out: Path, args: argparse.Namespace) -> list[Step]:
    """The suite's commands, most valuable first (see the module docstring)."""
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    pytest = [python, "-m", "pytest", "-p", "no:cacheprovider", "-rfEs", "--durations=15"]
    rehearsal = {"DIFFOPS_CUDA_TESTS_DEVICE": "cpu"} if dry else {}
    # the rehearsal runs a sample of the CUDA tests on the CPU; compilation on the CPU takes minutes
    sample = "Laplacian and float64 and not field and not residual and not sigma and not compile"
    cuda_selection = ["tests/test_cuda.py", "-k", sample] if dry else ["tests", "-m", "cuda", "-k", "not compile"]
    compile_selection = ["tests/test_cuda.py", "-k", "one_graph and Laplacian"] if dry else (
        ["tests", "-m", "cuda", "-k", "compile"]
    )  # fmt: skip
    bench = [python, "benchmarks/bench_gpu.py", "--device", device] + ["--quick", "--repeats", "1"] * dry
    jobs = args.jobs or max(1, min(4, (os.cpu_count() or 2) // 4))
    suite = [*pytest, "-m", "not slow and not cuda", "--collect-only" if dry else "-q"]
    # the suite's own dry run (tests/test_gpu_suite.py) rehearses on the CPU what this run does for real
    groups = shards([f for f in test_files() if dry or f.name != "test_gpu_suite.py"], 2 if dry else jobs)
    examples = [] if dry else ["--device", device]
    return [
        Step("cuda-tests", [*pytest, *cuda_selection, "--junitxml", str(out / "cuda-tests.xml")], 150, ("pytest",),
             rehearsal, junit=["cuda-tests.xml"]),
        Step("bench", [*bench, "--tables", "laplacian", "jet", "order", "--json", str(out / "bench_gpu.json"),
                       "--budget", str(30 if dry else 140)], 180, quiet=True),
        # the rest of the suite shares the machine with the compile tests, whose times do not matter
        Step("test-suite", [], 240, ("pytest",), {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // jobs))},
             parallel=[[*suite, *group, "--junitxml", str(out / f"test-suite-{i}.xml")] for i, group in
                       enumerate(groups)], junit=[f"test-suite-{i}.xml" for i in range(len(groups))], background=True),
        Step("cuda-compile-tests", [*pytest, *compile_selection, "--junitxml",
                                    str(out / "cuda-compile-tests.xml")], 150, ("pytest",), rehearsal,
             junit=["cuda-compile-tests.xml"]),
        Step("bench-compile", [*bench, "--tables", "compile", "--json", str(out / "bench_gpu_compile.json"),
                               "--budget", str(30 if dry else 110)] + ["--compile-backend", "eager"] * dry, 150,
             quiet=True),
        Step("bench-estimators", [python, "benchmarks/bench_estimators.py", *examples,
                                  *(["--quick"] * dry)], 60, quiet=True),
        Step("gauss-newton", [python, "benchmarks/gauss_newton_poisson.py", *examples, *(["--quick"] * dry)], 60,
             quiet=True),
    ]  # fmt: skip


# -- running --------------------------------------------------------------------------------


@dataclass
class Running:
    """A step's processes while they run."""

    step: Step
    processes: list[subprocess.Popen]
    logs: list[Path]
    deadline: float  # time.perf_counter() by which it is stopped
    start: float = field(default_factory=time.perf_counter)
    end: float | None = None  # when the last process exited, noted by a watcher thread

    def __post_init__(self) -> None:
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        for process in self.processes:
            process.wait()
        self.end = time.perf_counter()


def start_step(step: Step, out: Path, seconds: float, info: dict) -> Running | dict:
    """Start ``step``, to be stopped after ``seconds``; output goes to ``OUT/<name>.log`` (one per shard).

    Returns the skip record instead when a package the step needs is missing.
    """
    missing = [m for m in step.needs if m in info.get("missing", [])]
    if missing:
        return {"status": "skipped", "why": f"{', '.join(missing)} not importable"}
    path = [str(ROOT), info.get("site"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path)), **step.env}
    env.setdefault("MPLBACKEND", "Agg")
    commands = step.parallel or [step.command]
    logs = [out / (f"{step.name}-{i}.log" if step.parallel else f"{step.name}.log") for i in range(len(commands))]
    processes = []
    for command, log in zip(commands, logs):
        with log.open("w") as handle:
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            # a session of its own, so that a timeout ends the step's children (pytest's, spawn's) with it
            processes.append(
                subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    return Running(step, processes, logs, time.perf_counter() + seconds)


def finish_step(running: Running | dict, out: Path) -> dict:
    """Wait for a started step until its deadline, stop it there; its record for the summary."""
    if isinstance(running, dict):
        return running
    codes, timed_out = [], False
    for process in running.processes:
        try:
            codes.append(process.wait(timeout=max(0.1, running.deadline - time.perf_counter())))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, 9)
            codes.append(process.wait())
    record = {
        "status": "timeout" if timed_out else "passed" if all(c == 0 for c in codes) else "failed",
        "seconds": round((running.end or time.perf_counter()) - running.start, 1),
        "returncodes": codes,
        "logs": [log.name for log in running.logs],
    }
    counts = junit_counts([out / name for name in running.step.junit])
    if counts:
        record["tests"] = counts
    collected = [re.search(r"(\d+)(?:/\d+)? tests? collected", log.read_text()) for log in running.logs]
    if any(collected):  # a collection-only run: how many tests it found
        record["collected"] = sum(int(match.group(1)) for match in collected if match)
    return record


def run_step(step: Step, out: Path, seconds: float, info: dict) -> dict:
    """Run ``step`` for at most ``seconds``: :func:`start_step`, then :func:`finish_step`."""
    return finish_step(start_step(step, out, seconds, info), out)


def junit_counts(paths: list[Path]) -> dict[str, int]:
    """Tests, failures, errors and skips summed over the JUnit reports that exist."""
    totals: dict[str, int] = {}
    for path in paths:
        if not path.exists():
            continue
        for suite in ET.parse(path).getroot().iter("testsuite"):
            for key in ("tests", "failures", "errors", "skipped"):
                totals[key] = totals.get(key, 0) + int(suite.get(key, 0))
    return totals


def summary(out: Path, info: dict, setup: list[str], results: dict[str, dict], budget: float) -> str:
    """``summary.md``: the machine, each step's outcome, and the benchmark tables."""
    machine = ", ".join(info.get("devices", [])) or "CPU (dry run)"
    lines = [
        "# GPU suite", "",
        f"Machine: {machine}; torch {info.get('torch')} (CUDA {info.get('torch_cuda')}), Python {info.get('version')}, "
        f"C compiler: {info.get('compiler') or 'none'}; budget {budget:.0f} s.", "",
        "| step | status | seconds | tests (failed, errors, skipped) | logs |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for name, record in results.items():
        tests = record.get("tests")
        counted = f"{tests['tests']} ({tests['failures']}, {tests['errors']}, {tests['skipped']})" if tests else ""
        counted = f"{record['collected']} collected" if "collected" in record else counted
        status = record["status"] + (f": {record['why']}" if "why" in record else "")
        logs = ", ".join(record.get("logs", []))
        lines.append(f"| {name} | {status} | {record.get('seconds', '')} | {counted} | {logs} |")
    lines += ["", *(f"    {line}" for entry in setup for line in entry.splitlines())]
    for name in ("bench", "bench-compile"):  # the tables, with their headings
        log = out / f"{name}.log"
        if log.exists():
            lines += ["", *(line for line in log.read_text().splitlines()[1:] if not line.startswith("$"))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT") or str(ROOT / "outputs" / "gpu_suite"))
    parser.add_argument("--dry-run", action="store_true", help="rehearse every step on the CPU with tiny sizes")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all the steps together")
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps")
    parser.add_argument("--skip", nargs="+", default=[], help="leave out these steps")
    parser.add_argument("--jobs", type=int, default=None, help="parallel pytest processes for the test suite")
    parser.add_argument("--wheelhouse", default=str(ROOT / "outputs" / "wheelhouse"), help="wheels of test packages")
    parser.add_argument("--allow-download", action="store_true", help="install missing test packages from the index")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    python = sys.executable
    info, setup = prepare(python, out, args)
    (out / "environment.json").write_text(json.dumps(info, indent=1))
    if not args.dry_run and shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False)
        (out / "nvidia-smi.txt").write_text(smi.stdout + smi.stderr)
    print(f"python={python} torch={info.get('torch')} cuda={info.get('cuda')} devices={info.get('devices')}")
    results: dict[str, dict] = {"environment": {"status": "passed", "seconds": round(time.perf_counter() - start, 1),
                                                "logs": ["environment.json"]}}  # fmt: skip
    background: list[Running] = []

    def wait_for_background() -> None:
        while background:
            running = background.pop(0)
            results[running.step.name] = finish_step(running, out)
            print(f"{running.step.name}: {results[running.step.name]['status']}", flush=True)

    for step in steps(python, out, args):
        if (args.only and step.name not in args.only) or step.name in args.skip:
            continue
        if step.quiet:  # its timings need the machine to itself
            wait_for_background()
        left = args.budget - (time.perf_counter() - start)
        if left < 20:
            results[step.name] = {"status": "skipped", "why": f"past the budget of {args.budget:.0f} s"}
        else:
            print(f"{step.name}: up to {min(step.timeout, left):.0f} s ...", flush=True)
            running = start_step(step, out, min(step.timeout, left), info)
            if step.background and isinstance(running, Running):
                background.append(running)
                results[step.name] = {"status": "running"}  # keeps its place in the summary
                continue
            results[step.name] = finish_step(running, out)
        print(f"{step.name}: {results[step.name]['status']}", flush=True)
        (out / "summary.json").write_text(json.dumps({"environment": info, "setup": setup, "steps": results}, indent=1))
    wait_for_background()
    (out / "summary.json").write_text(json.dumps({"environment": info, "setup": setup, "steps": results}, indent=1))
    (out / "summary.md").write_text(summary(out, info, setup, results, args.budget))
    print(f"summary: {out / 'summary.md'}")
    return 0 if all(r["status"] in ("passed", "skipped") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
