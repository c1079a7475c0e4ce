"""The plugin's logger: a child of vLLM's `vllm` logger, so vLLM's logging configuration (level, format,
handlers) applies to its lines as to vLLM's own."""

from __future__ import annotations

import logging

LOGGER_NAME = "vllm.tokens_patch"

logger = logging.getLogger(LOGGER_NAME)
