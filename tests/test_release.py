"""The built wheel installs into a fresh virtual environment and works there.

The wheel is ``$DIFFOPS_WHEEL`` when that names one (CI builds it with ``make dist``), or is
built here with ``pip wheel``. The fresh environment gets ``torch==2.13.0`` first, as the
project's set-up does, so that pip resolves the package's ``torch`` requirement without a
download of another build. Needs the package index for torch and the build backend: deselect
with ``-m "not release"`` offline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"

pytestmark = pytest.mark.release

CHECK = """
import pathlib, torch, diffops
package = pathlib.Path(diffops.__file__).parent
assert "site-packages" in str(package), package
assert (package / "py.typed").is_file()
print(diffops.__version__)
u = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
x = torch.rand(4, 2, dtype=torch.float64)
lap = diffops.Laplacian(u)(x)
torch.testing.assert_close(lap, diffops.Hessian(u)(x).diagonal(dim1=-2, dim2=-1).sum(-1))
"""


def run(*command: str | Path, cwd: Path) -> str:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def wheel(tmp_path: Path) -> Path:
    given = os.environ.get("DIFFOPS_WHEEL")
    if given:
        return Path(given)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path / "dist", ROOT,
        cwd=tmp_path)  # fmt: skip
    (built,) = (tmp_path / "dist").glob("diffops-*.whl")
    return built


def test_wheel_installs_into_a_fresh_environment(tmp_path: Path):
    version = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)[1]
    built = wheel(tmp_path)
    assert built.name.startswith(f"diffops-{version}-"), built.name
    run(sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv", cwd=tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    # this interpreter's pip installs into the new environment: no pip of its own to set up there,
    # and no byte-compiling of torch's thousands of modules, which is most of an install's time
    install = (sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-compile")
    run(*install, TORCH, cwd=tmp_path)
    run(*install, built, cwd=tmp_path)
    assert run(python, "-c", CHECK, cwd=tmp_path).strip() == version
