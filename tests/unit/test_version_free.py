"""Every vLLM-specific fact lives in the adapter layer (`vllm_tokens_patch/adapters/`), where `doctor` and the
canary check it against a release: the other modules name no vLLM module path and read no vLLM attribute.

Read statically (ast), so a fact that moved back into a shared module fails here whether or not any test
exercises the line. Docstrings and messages are text, not facts, and are not read.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import vllm_tokens_patch
from vllm_tokens_patch.log import LOGGER_NAME

PACKAGE = Path(vllm_tokens_patch.__file__).parent
VERSION_FREE = sorted(p for p in PACKAGE.rglob("*.py") if "adapters" not in p.relative_to(PACKAGE).parts)

VLLM_NAMES = frozenset(
    {
        # on vLLM's app, serving object and model config
        "openai_serving_chat",
        "create_error_response",
        "_validate_input",
        "build_tok_params",
        "apply_post_tokenization",
        "model_config",
        "renderer",
        "get_vocab_size",
        "max_token_id",
        # on vLLM's chat request and its base class
        "request_id",
        "echo",
        "kv_transfer_params",
        "prompt_token_ids",
        "truncate_prompt_tokens",
        "return_prompt_text",
        "field_names",
        # in vLLM's engine-input dicts
        "prompt",
        "multi_modal_data",
        "mm_placeholders",
        "prompt_embeds",
        "encoder_prompt",
        "prompt_token_offsets",
        "assistant_tokens_mask",
        # on vLLM's exceptions, route hooks and render methods
        "parameter",
        "VLLMValidationError",
        "attach_router",
        "build_app",
        "render_chat_request",
        "_preprocess_chat",
        "_make_request_with_harmony",
        "_reused_prompt_token_ids",
        # prometheus_client's private registry map (not vLLM's, but no private attributes of others either)
        "_names_to_collectors",
    }
)
"""vLLM attribute, field and key names (and one private prometheus_client attribute) that only an adapter
may name."""

WIRE_CLIENTS = {"client.py", "demo.py", "tiny_model.py", "tiny_vlm.py"}
"""HTTP clients of the server: they read the response's JSON (vLLM's documented `prompt_token_ids` among
it), the wire contract, not vLLM's objects; and the tiny models' writers, which read the `tokenizers`
library (`get_vocab_size`), not vLLM. They are held to the module-path rule only."""

ACCESSORS = frozenset({"getattr", "hasattr", "setattr", "delattr"})


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (of modules, classes, functions, attributes)."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for statement in body:
                if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                    found.add(id(statement.value))
    return found


def reads_fields(node: ast.Attribute) -> bool:
    """`adapter.fields.echo`: the adapter's `RequestFields` says what a field is called (no read of it)."""
    owner = node.value
    return (isinstance(owner, ast.Name) and owner.id == "fields") or (
        isinstance(owner, ast.Attribute) and owner.attr == "fields"
    )


def _is_vllm_module(name: str | None) -> bool:
    return name is not None and (name == "vllm" or name.startswith("vllm."))


def _constant(node: ast.AST | None) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def finding(node: ast.AST, names: frozenset[str], docs: set[int]) -> str | None:
    """What `node` names of vLLM, if anything."""
    if isinstance(node, ast.Import):
        modules = [alias.name for alias in node.names if _is_vllm_module(alias.name)]
        return f"import {', '.join(modules)}" if modules else None
    if isinstance(node, ast.ImportFrom):
        return f"from {node.module} import ..." if _is_vllm_module(node.module) else None
    if isinstance(node, ast.Attribute):
        return f"attribute .{node.attr}" if node.attr in names and not reads_fields(node) else None
    if isinstance(node, ast.Subscript):
        key = _constant(node.slice)
        return f"[{key!r}]" if key in names else None
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ACCESSORS and len(node.args) > 1:
            name = _constant(node.args[1])
            return f"{func.id}(..., {name!r})" if name in names else None
        if isinstance(func, ast.Attribute) and func.attr in {"get", "pop"}:
            key = _constant(node.args[0])
            return f".{func.attr}({key!r})" if key in names else None
        return None
    if isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
        key = _constant(node.left)
        return f"{key!r} in ..." if key in names else None
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
        text = node.value
        return repr(text) if text.startswith("vllm.") and text != LOGGER_NAME else None
    return None


def violations(source: str, names: frozenset[str] = VLLM_NAMES) -> Iterator[str]:
    """Each place in `source` that names a vLLM module path or reads a vLLM attribute (one of `names`)."""
    tree = ast.parse(source)
    docs = docstrings(tree)
    for node in ast.walk(tree):
        found = finding(node, names, docs)
        if found is not None:
            yield f"line {getattr(node, 'lineno', '?')}: {found}"


def test_the_version_free_modules_are_found() -> None:
    names = {p.name for p in VERSION_FREE}
    assert {"tokens.py", "route.py", "request.py", "plugin.py", "mounting.py", "metrics.py"} <= names
    assert not any("adapters" in p.parts for p in VERSION_FREE)


@pytest.mark.parametrize("path", VERSION_FREE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_version_free_module_names_no_vllm_path_or_attribute(path: Path) -> None:
    names = frozenset[str]() if path.name in WIRE_CLIENTS else VLLM_NAMES
    found = list(violations(path.read_text(encoding="utf-8"), names))
    assert found == [], f"{path.relative_to(PACKAGE)} names vLLM facts (move them to an adapter): {found}"


def test_the_logger_name_is_stated_once() -> None:
    stated = [
        path.name
        for path in VERSION_FREE
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value == LOGGER_NAME
    ]
    assert stated == ["log.py"]


@pytest.mark.parametrize(
    "planted",
    [
        'API_SERVER_MODULES = ("vllm.entrypoints.openai.api_server",)',
        "import vllm",
        "from vllm.exceptions import VLLMValidationError",
        'serving = getattr(app.state, "openai_serving_chat", None)',
        "serving = app.state.openai_serving_chat",
        "if hasattr(exc, 'parameter'): pass",
        'ids = prompt["prompt_token_ids"]',
        'text = prompt.get("prompt")',
        'if "prompt_token_ids" in kv_params: pass',
        "names = REGISTRY._names_to_collectors",
    ],
)
def test_a_planted_vllm_fact_is_caught(planted: str) -> None:
    """The check itself can fail: each fact that used to sit in a shared module is caught."""
    assert list(violations(planted)) != []
    assert (
        list(violations('"""A docstring may say vllm.entrypoints.openai."""\nLOG = "vllm-tokens-patch"'))
        == []
    )
