"""vLLM's own error format, learned from the release under test (never hard-coded: 0.10.2 answers a flat
`{"object": "error", "message", ...}`, later releases `{"error": {"message", ...}}`)."""

from __future__ import annotations

from typing import Any


def error_info(body: dict[str, Any]) -> dict[str, Any]:
    """The part of an error body that holds `message`, `type`, `param` and `code`, in either shape."""
    nested = body.get("error")
    return nested if isinstance(nested, dict) else body


def key_tree(value: Any) -> Any:
    """The nested key structure of a JSON value (what two error bodies of one format share)."""
    if isinstance(value, dict):
        return {key: key_tree(item) for key, item in value.items()}
    return None


def assert_vllm_error(response: Any, status: int, like: dict[str, Any]) -> dict[str, Any]:
    """`response` is a JSON (not SSE) error with `status`, shaped as `like`, an error body this vLLM's
    stock route produced; returns its `error_info`."""
    text = response.text[:600]
    assert response.status_code == status, (response.status_code, text)
    assert response.headers["content-type"].startswith("application/json"), (response.headers, text)
    body = response.json()
    assert key_tree(body) == key_tree(like), f"not this vLLM's error format: {body} vs {like}"
    info = error_info(body)
    assert info["code"] == status and isinstance(info["message"], str) and info["message"], body
    return info
