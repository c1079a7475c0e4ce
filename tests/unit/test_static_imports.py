"""tools/static_imports.py (the canary's name resolution) on small synthetic source trees."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from tools.static_imports import Tree


def tree_of(root: Path, files: dict[str, str]) -> Tree:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return Tree(root)


def test_module_files_are_found_as_import_finds_them(tmp_path: Path) -> None:
    tree = tree_of(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/mod.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/both.py": "",  # a package and a module of one name: import takes the package
            "pkg/both/__init__.py": "",
            "pkg/ns/leaf.py": "",  # `ns` has no __init__.py: a namespace package
            "pkg/native.abi3.so": "",  # not a source
        },
    )
    assert tree.module_file("pkg") == tmp_path / "pkg" / "__init__.py"
    assert tree.module_file("pkg.mod") == tmp_path / "pkg" / "mod.py"
    assert tree.module_file("pkg.sub") == tmp_path / "pkg" / "sub" / "__init__.py"
    assert tree.module_file("pkg.both") == tmp_path / "pkg" / "both" / "__init__.py"
    assert tree.module_file("pkg.ns") is None
    assert tree.module_file("pkg.ns.leaf") == tmp_path / "pkg" / "ns" / "leaf.py"
    assert tree.module_file("pkg.native") is None
    assert tree.module_file("pkg.mod.inner") is None  # a module has no submodules
    assert tree.module_file("pkg.missing") is None
    assert tree.module_file("other") is None


def test_names_resolve_through_reexports_stars_and_relative_imports(tmp_path: Path) -> None:
    tree = tree_of(
        tmp_path,
        {
            "pkg/__init__.py": "from .api import handler as public_handler\n",
            "pkg/api.py": "from pkg.impl.core import *\n",
            "pkg/impl/__init__.py": "",
            "pkg/impl/core.py": """
                from ..util import helper

                async def handler(request):
                    return helper(request)
            """,
            "pkg/util.py": "def helper(x):\n    return x\n",
        },
    )
    found = tree.resolve("pkg", "public_handler")
    assert found is not None
    assert (found.module.name, found.binding.kind, found.binding.lineno) == ("pkg.impl.core", "async def", 3)
    assert found.chain == ("pkg", "pkg.api")
    helper = tree.resolve("pkg.impl.core", "helper")
    assert helper is not None and helper.module.name == "pkg.util" and helper.chain == ("pkg.impl.core",)
    assert tree.resolve("pkg", "nothing") is None


def test_type_checking_imports_do_not_bind_and_both_try_branches_do(tmp_path: Path) -> None:
    tree = tree_of(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def only_typed():\n    pass\n",
            "pkg/b.py": """
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from pkg.a import only_typed
                try:
                    from pkg.fast import speedy
                except ImportError:
                    def fallback():
                        pass
            """,
        },
    )
    info = tree.module("pkg.b")
    assert info is not None
    assert "only_typed" not in info.bindings
    assert {"speedy", "fallback"} <= set(info.bindings)
    assert tree.resolve("pkg.b", "speedy") is not None  # bound, though pkg.fast is not in the tree
    assert tree.resolve("pkg.b", "speedy").module.name == "pkg.b"  # type: ignore[union-attr]


def test_members_are_found_in_bases_named_across_modules(tmp_path: Path) -> None:
    tree = tree_of(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/base.py": """
                class Base:
                    field_a: int = 0

                    def inherited(self):
                        pass
            """,
            "pkg/child.py": """
                from typing import Generic, TypeVar

                from pkg import base

                T = TypeVar("T")


                class Child(base.Base, Generic[T]):
                    field_b: str = ""

                    async def own(self):
                        pass
            """,
        },
    )
    info = tree.module("pkg.child")
    assert info is not None
    child = info.bindings["Child"].node
    assert isinstance(child, ast.ClassDef)
    own = tree.find_member(info, child, "own")
    assert own is not None and own[1] is child and isinstance(own[2], ast.AsyncFunctionDef)
    inherited = tree.find_member(info, child, "inherited")
    assert inherited is not None and inherited[0].name == "pkg.base" and inherited[1].name == "Base"
    assert tree.find_member(info, child, "missing") is None
    assert tree.fields(info, child) == {"field_a", "field_b"}


@pytest.mark.parametrize(
    ("source", "writes"),
    [
        ("import sys\nsys.modules[__name__] = object()\n", [2]),
        ("import sys\nfrom x import real\nsys.modules.update({'a': real})\n", [3]),
        ("import sys\n\ndef later():\n    sys.modules['a'] = None\n", []),  # only when called
        ("import sys\nname = sys.modules['a']\n", []),  # a read
    ],
)
def test_module_level_sys_modules_writes_are_recorded(tmp_path: Path, source: str, writes: list[int]) -> None:
    tree = tree_of(tmp_path, {"pkg/__init__.py": "", "pkg/shim.py": source})
    info = tree.module("pkg.shim")
    assert info is not None and info.sys_modules_writes == writes


def test_a_module_that_does_not_parse_is_none_but_has_a_file(tmp_path: Path) -> None:
    tree = tree_of(tmp_path, {"pkg/__init__.py": "", "pkg/broken.py": "def (:\n"})
    assert tree.module("pkg.broken") is None
    assert tree.module_file("pkg.broken") == tmp_path / "pkg" / "broken.py"
