"""Per-era adapters. `compat_matrix.yaml` names one per vLLM release; `load` imports it by that name."""

from __future__ import annotations

import importlib

from vllm_tokens_patch.adapters.base import Adapter, AdapterMismatch, Location, RenderContext, RenderTarget

__all__ = ["Adapter", "AdapterMismatch", "Location", "RenderContext", "RenderTarget", "load"]


def load(name: str) -> Adapter:
    """The adapter instance of module `vllm_tokens_patch.adapters.<name>`."""
    module = importlib.import_module(f"{__name__}.{name}")
    adapter: Adapter = module.ADAPTER
    return adapter
