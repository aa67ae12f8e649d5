"""The GPU suite and its benchmark, rehearsed on the CPU; their timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gpu  # noqa: E402
import gpu_suite  # noqa: E402
from bench_taylor import nested_laplacian, nested_partial  # noqa: E402

from .nets import mlp  # noqa: E402


def dry_run(out: Path, *options: str) -> dict:
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), str(out), "--dry-run", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads((out / "summary.json").read_text())


def test_dry_run_of_the_cuda_tests_and_the_benchmark(tmp_path):
    summary = dry_run(tmp_path, "--only", "cuda-tests", "bench")
    steps = summary["steps"]
    assert list(steps) == ["environment", "cuda-tests", "bench"]
    assert all(record["status"] == "passed" for record in steps.values())
    assert steps["cuda-tests"]["tests"]["tests"] > 0 and steps["cuda-tests"]["tests"]["failures"] == 0
    bench = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert bench["hardware"]["device"] == "cpu" and bench["hardware"]["model"]
    assert [len(bench["tables"][t]) for t in ("laplacian", "jet", "order")] == [1, 1, 2]
    report = (tmp_path / "summary.md").read_text()
    assert "| cuda-tests | passed |" in report and "| d=3 |" in report and "| k=3 |" in report


@pytest.mark.slow
def test_dry_run_of_every_step(tmp_path):
    steps = dry_run(tmp_path)["steps"]
    assert list(steps) == ["environment", *(step.name for step in gpu_suite.steps("python", tmp_path, _args()))]
    assert all(record["status"] == "passed" for record in steps.values()), steps
    assert steps["test-suite"]["collected"] > 100


def _args(**options) -> Namespace:
    return Namespace(**{"dry_run": False, "jobs": 4, **options})


def test_every_step_writes_under_the_output_folder_and_the_cuda_tests_come_first(tmp_path):
    steps = gpu_suite.steps("python", tmp_path, _args())
    assert [step.name for step in steps][:2] == ["cuda-tests", "bench"]
    assert "-m" in steps[0].command and "cuda" in steps[0].command
    assert all("--device" in step.command and "cuda" in step.command for step in steps if "bench" in step.name)
    for step in steps:
        for command in step.parallel or [step.command]:
            written = [arg for flag, arg in zip(command, command[1:]) if flag in ("--json", "--junitxml")]
            assert all(Path(path).parent == tmp_path for path in written)
    suite = next(step for step in steps if step.name == "test-suite")
    assert len(suite.parallel) == 4 and suite.background
    assert not any("test_gpu_suite.py" in arg for command in suite.parallel for arg in command)
    assert all(step.quiet for step in steps if step.name.startswith("bench"))


def test_shards_hold_every_test_file_once():
    files = gpu_suite.test_files()
    groups = gpu_suite.shards(files, 3)
    assert len(groups) == 3 and all(groups)
    assert sorted(path for group in groups for path in group) == sorted(str(f.relative_to(ROOT)) for f in files)


def test_a_step_past_its_time_is_stopped(tmp_path):
    sleep = "import time; print('started', flush=True); time.sleep(60)"
    step = gpu_suite.Step("sleep", [sys.executable, "-c", sleep], 1)
    record = gpu_suite.run_step(step, tmp_path, 1.0, {"missing": []})
    assert record["status"] == "timeout" and record["seconds"] < 30
    assert "started" in (tmp_path / "sleep.log").read_text()


def test_a_step_without_its_packages_is_skipped(tmp_path):
    step = gpu_suite.Step("tests", ["true"], 10, needs=("pytest",))
    assert gpu_suite.run_step(step, tmp_path, 10, {"missing": ["pytest"]})["status"] == "skipped"


def test_junit_counts_add_up_the_reports(tmp_path):
    for i, failures in enumerate((0, 2)):
        (tmp_path / f"r{i}.xml").write_text(
            f'<testsuites><testsuite tests="5" failures="{failures}" errors="0" skipped="1"/></testsuites>'
        )
    counts = gpu_suite.junit_counts([tmp_path / "r0.xml", tmp_path / "r1.xml", tmp_path / "absent.xml"])
    assert counts == {"tests": 10, "failures": 2, "errors": 0, "skipped": 2}


def test_the_nested_jvp_baselines_compute_the_derivatives_they_are_compared_with():
    net = mlp(3)
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(bench_gpu.func_jvp_laplacian(net, x), nested_laplacian(net, x))
    for k in (1, 3):
        torch.testing.assert_close(bench_gpu.func_jvp_partial(net, x, k), nested_partial(net, x, (0,) * k))


def test_the_table_shows_times_ratios_and_memory():
    row = {"case": "d=2", "ms": {"diffops": 1.0, "autograd": 3.0}, "ratio_to_diffops": {"autograd": 2.9},
           "peak_mib": {"diffops": 1.5, "autograd": 4.0}, "compile_s": {}}  # fmt: skip
    table = bench_gpu.markdown("title", [row])
    assert "| d=2 | 1.00 | 3.00 | 2.90x | 1.5 | 4.0 |" in table
    assert bench_gpu.cpu_model()


def test_missing_test_packages_come_from_the_wheelhouse_beside_the_machines_torch(tmp_path, monkeypatch):
    probes, commands = [], []

    def probe(python, site=None):
        probes.append(site)
        missing = ["pytest"] if site is None else []
        return {"torch": "2.5.1+cu124", "cuda": True, "missing": missing, **({"site": str(site)} if site else {})}

    monkeypatch.setattr(gpu_suite, "probe", probe)
    monkeypatch.setattr(gpu_suite, "SITE", tmp_path / "site")
    monkeypatch.setattr(gpu_suite.subprocess, "run", lambda command, **_: commands.append(command) or Namespace(
        stdout="", stderr=""))  # fmt: skip
    (tmp_path / "wheels").mkdir()
    args = Namespace(dry_run=False, wheelhouse=str(tmp_path / "wheels"), allow_download=False)
    info, log = gpu_suite.prepare("python", tmp_path, args)
    (command,) = commands
    assert command[-1] == "pytest" and ["--no-index", "--find-links", str(tmp_path / "wheels")] == command[-4:-1]
    assert ["--target", str(tmp_path / "site")] == command[5:7]
    assert (tmp_path / "torch-constraint.txt").read_text() == "torch==2.5.1+cu124\n"
    assert info["site"] == str(tmp_path / "site") and not info["missing"]


def test_without_a_wheelhouse_nothing_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(
        gpu_suite, "probe", lambda python, site=None: {"torch": "2.5", "cuda": True, "missing": ["pytest"]}
    )
    monkeypatch.setattr(gpu_suite.subprocess, "run", lambda *a, **k: pytest.fail("nothing may run"))
    args = Namespace(dry_run=False, wheelhouse=str(tmp_path / "absent"), allow_download=False)
    info, log = gpu_suite.prepare("python", tmp_path, args)
    assert info["missing"] == ["pytest"] and "downloads not allowed" in log[0]


def test_a_torch_without_cuda_is_refused_outside_a_dry_run(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_suite, "probe", lambda python, site=None: {"torch": "2.5", "cuda": False, "missing": []})
    with pytest.raises(SystemExit, match="sees no CUDA device"):
        gpu_suite.prepare("python", tmp_path, Namespace(dry_run=False, wheelhouse="", allow_download=False))
