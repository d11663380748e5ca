"""The import rules of docs/architecture.md hold (import-linter contracts in pyproject.toml),
a planted violation is caught with the offending import named, the client side loads
without torch, and the C++ core's stub lists everything the bindings define."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recserve import _core

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "recserve"


def lint_imports() -> subprocess.CompletedProcess[str]:
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert command is not None, "lint-imports not installed: pip install -e '.[test]'"
    return subprocess.run(
        [command, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_import_contracts_hold() -> None:
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_a_planted_violation_fails_naming_the_import() -> None:
    """A kernel facade importing the engine breaks the layers (core is the bottom)."""
    planted = PACKAGE / "core" / "_planted_violation.py"
    planted.write_text("from recserve.engine import artifact  # planted by a test\n")
    try:
        result = lint_imports()
    finally:
        planted.unlink()
    assert result.returncode == 1
    assert "BROKEN" in result.stdout
    assert "recserve.core._planted_violation -> recserve.engine.artifact" in result.stdout


def imports_of(path: Path) -> set[str]:
    """Modules ``path`` imports, relative imports resolved against its package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return names


def test_only_recserve_core_imports_the_compiled_core() -> None:
    """The compiled module is invisible to import-linter (it reads .py files only), so
    this rule is checked here, on every module's import statements."""
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.parent.name != "core" and "recserve._core" in imports_of(path)
    ]
    assert offenders == []
    assert "recserve._core" in imports_of(PACKAGE / "core" / "kernels.py")  # the check sees


def test_the_client_loads_without_torch_or_the_cpp_core() -> None:
    code = (
        "import sys; from recserve import Client, ScoredItem; import recserve.loadtest; "
        "heavy = {'torch', 'recserve._core', 'recserve.engine', 'recserve.server'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"


def stub_names() -> set[str]:
    tree = ast.parse((PACKAGE / "_core.pyi").read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    names |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}  # type: ignore[union-attr]
    return names


def bound_names() -> set[str]:
    """Every name the binding sources give the module (m.def / m.attr), CUDA ones included."""
    text = "".join(p.read_text() for p in (ROOT / "csrc" / "bindings").glob("*.cpp"))
    return set(re.findall(r'm\.(?:def|attr)\(\s*"(\w+)"', text))


def test_the_stub_lists_every_name_the_bindings_define() -> None:
    bound = bound_names()
    assert {"topk_scores", "crossing_deepfm", "cuda_crossing_deepfm"} <= bound  # parsed
    assert bound == stub_names()
    built = {n for n in dir(_core) if not n.startswith("__") or n == "__version__"}
    assert built <= stub_names(), built - stub_names()


@pytest.mark.parametrize("module", ["core", "engine", "client", "server", "training"])
def test_each_subpackage_says_what_it_is_for(module: str) -> None:
    doc = ast.get_docstring(ast.parse((PACKAGE / module / "__init__.py").read_text()))
    assert doc, f"recserve.{module} has no docstring"
