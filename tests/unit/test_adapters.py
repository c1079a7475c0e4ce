"""The adapters the matrix names against what ships: each side read from its own source (the YAML file,
the package directory, the base class's declarations), never from the list being checked."""

from __future__ import annotations

import pkgutil
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from vllm_tokens_patch import adapters
from vllm_tokens_patch.adapters import Adapter, Location

ROOT = Path(__file__).resolve().parents[2]
NOT_ADAPTERS = {"base"}
"""Modules of the adapters package that hold the interface, not an era."""


def matrix_adapters() -> set[str]:
    """Adapter names as compat_matrix.yaml spells them (parsed here, not through `compat`)."""
    rows = yaml.safe_load((ROOT / "compat_matrix.yaml").read_text(encoding="utf-8"))["releases"]
    return {row["adapter"] for row in rows if row.get("adapter") is not None}


def adapter_modules() -> set[str]:
    """Era modules in the installed `vllm_tokens_patch/adapters/` directory."""
    return {m.name for m in pkgutil.iter_modules(adapters.__path__) if m.name not in NOT_ADAPTERS}


def required_declarations() -> dict[str, Any]:
    """What the base class declares without a value: every era must supply these (name -> type hint)."""
    hints = typing.get_type_hints(Adapter)
    return {
        name: typing.get_args(hint)[0]
        for name, hint in hints.items()
        if typing.get_origin(hint) is typing.ClassVar and name not in vars(Adapter)
    }


def test_the_required_surface_is_what_the_base_leaves_open() -> None:
    """Guards the helper itself: an empty surface would make the completeness test vacuous."""
    required = required_declarations()
    assert {"route_hook", "render_targets"} <= set(required), required
    assert all(not hasattr(Adapter, name) for name in required)


def test_every_matrix_adapter_is_a_shipped_module_and_every_module_is_used() -> None:
    named, shipped = matrix_adapters(), adapter_modules()
    assert named, "the matrix names no adapter"
    assert named - shipped == set(), "named in compat_matrix.yaml, no module in vllm_tokens_patch/adapters"
    assert shipped - named == set(), "an adapter module no matrix row uses"


def _conforms(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) is tuple:
        (item, *_) = typing.get_args(hint)
        return isinstance(value, tuple) and bool(value) and all(isinstance(v, item) for v in value)
    return isinstance(value, hint)


def _locations(value: Any) -> list[Location]:
    if isinstance(value, Location):
        return [value]
    return [getattr(item, "location", item) for item in value]


@pytest.mark.parametrize("module", sorted(adapter_modules()))
def test_each_adapter_module_defines_the_whole_interface(module: str) -> None:
    adapter = adapters.load(module)
    assert isinstance(adapter, Adapter) and type(adapter) is not Adapter
    assert adapter.name == module, "the matrix and `load` name an adapter by its module"
    for name, hint in required_declarations().items():
        value = getattr(adapter, name, None)
        assert _conforms(value, hint), f"{module}.{name} = {value!r} is not a {hint}"
        for location in _locations(value):
            assert location.module.startswith("vllm.") and location.attribute, (module, name, location)
    if adapter.native_reuse is not None:  # a fast path needs the hand-off the base leaves unimplemented
        assert type(adapter).offer_ids is not Adapter.offer_ids, module
