"""The documentation cannot rot: its code runs, and every public name has a reference entry.

Every fenced block whose info string is exactly ``python`` in ``docs/**/*.md`` and in the
README runs here; the blocks of one page share a namespace and run in order, as a reader
would paste them. Blocks that need another package (DeepXDE, PINA, TorchPhysics, jet) are
fenced as ``py`` instead: they are shown with the same highlighting, and not run. Blocks inside
content tabs (indented under ``=== "..."``) count like any other.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

import diffops

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
                   re.MULTILINE | re.DOTALL)  # fmt: skip
# the README's training loop, shortened so that the suite stays fast
SHORTER = {"range(1000)": "range(3)"}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every block fenced as ``python``, dedented."""
    blocks = []
    for match in FENCE.finditer(text):
        if match["info"].strip() != "python":
            continue
        line = text.count("\n", 0, match.start()) + 2
        blocks.append((line, textwrap.dedent(match["body"])))
    return blocks


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", [p for p in pages() if python_blocks(p.read_text())], ids=page_id)
def test_page_runs(path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    torch.manual_seed(0)
    # a page may change the default dtype, as a reader's session would; the suite must not see it
    dtype = torch.get_default_dtype()
    try:
        run_blocks(path, {"__name__": f"docs_{path.stem}"})
    finally:
        torch.set_default_dtype(dtype)


def run_blocks(path: Path, namespace: dict) -> None:
    for line, code in python_blocks(path.read_text()):
        if path.name == "README.md":
            for old, new in SHORTER.items():
                code = code.replace(old, new)
        try:
            exec(compile(code, f"{page_id(path)}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the block at {page_id(path)} line {line} fails: {error!r}") from error


def test_extractor_reads_tabs_and_skips_other_fences():
    text = '=== "diffops"\n\n    ```python\n    a = 1\n    ```\n\n```py\nimport deepxde\n```\n\n```bash\nmake\n```\n'
    assert python_blocks(text) == [(4, "a = 1\n")]


def reference_entries() -> set[str]:
    entries = set()
    for path in (DOCS / "reference").rglob("*.md"):
        entries |= set(re.findall(r"^:::\s+diffops\.(\w+)\s*$", path.read_text(), re.MULTILINE))
    return entries


def test_every_public_name_has_a_reference_entry():
    missing = sorted(set(diffops.__all__) - reference_entries())
    assert not missing, f"add '::: diffops.NAME' entries to docs/reference/ for {missing}"


def test_reference_names_are_public():
    stale = sorted(reference_entries() - set(diffops.__all__))
    assert not stale, f"docs/reference/ documents names that diffops.__all__ does not export: {stale}"


def test_nav_lists_every_page():
    nav = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r"([\w/.-]+\.md)\s*$", nav, re.MULTILINE))
    pages_on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert not pages_on_disk - listed, f"pages missing from mkdocs.yml's nav: {sorted(pages_on_disk - listed)}"
