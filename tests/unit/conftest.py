"""The unit tests of the checkout's tools (`from tools import canary`, ...) get the `tools` package from
this checkout, imported by its file location (importlib's recipe for importing a source file directly, as
a package) and registered in `sys.modules` before any test module is collected.

Nothing is added to `sys.path`: the checkout's root stays off it, so `vllm_tokens_patch` is still the
installed wheel, for the tests and for the tools they import alike.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _import_tools() -> None:
    spec = importlib.util.spec_from_file_location(
        "tools", TOOLS / "__init__.py", submodule_search_locations=[str(TOOLS)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tools"] = module
    spec.loader.exec_module(module)


_import_tools()
