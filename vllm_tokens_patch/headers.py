"""The response headers of the token route (the route sets them, the client and the demo read them)."""

from __future__ import annotations

VERIFICATION_HEADER = "x-vllm-tokens-verification"
"""`match`, `mismatch` or `skipped` (not compared): `tokens` vs the ids vLLM rendered from `messages`."""
FIRST_MISMATCH_HEADER = "x-vllm-tokens-first-mismatch"
"""On `mismatch`: the first index at which `tokens` differ from the rendered ids."""
SPLICE_HEADER = "x-vllm-tokens-splice"
"""On `prefix_tokens` requests: `prefix=N; bridge=M; close=sampled|added|none` (see `splice.Splice`)."""
