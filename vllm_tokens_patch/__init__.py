"""vllm-tokens-patch: `POST /v1/chat/completions/tokens` for an unmodified `vllm serve`.

Loaded by vLLM through the `vllm.general_plugins` entry point. Importing this package is cheap: it
touches neither vLLM nor FastAPI, and the plugin module is loaded only when its names are used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "register", "status", "unpatch"]


def __getattr__(name: str) -> Any:
    if name in {"register", "status", "unpatch"}:
        from vllm_tokens_patch import plugin

        return getattr(plugin, name)
    raise AttributeError(name)
