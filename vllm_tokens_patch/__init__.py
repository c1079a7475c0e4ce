"""vllm-tokens-patch: `POST /v1/chat/completions/tokens` for an unmodified `vllm serve`.

Loaded by vLLM through the `vllm.general_plugins` entry point; importing this package is cheap and
touches neither vLLM nor FastAPI.
"""

from __future__ import annotations

from vllm_tokens_patch.plugin import register, status, unpatch

__version__ = "0.1.0"
__all__ = ["__version__", "register", "status", "unpatch"]
