"""Plugin mechanics against a stand-in `vllm` package laid out like 0.16+ (no vLLM installed here).

The real behaviour is proven in tests/vllm on each release; this checks loading rules that must hold
whatever vLLM does: lazy hooks, idempotence, unpatch, fail-safe, strict, cheap engine processes.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vllm_tokens_patch import plugin, settings
from vllm_tokens_patch.adapters.base import API_SERVER_MODULES

CHAT = "vllm.entrypoints.openai.chat_completion"

FAKE = {
    "vllm/__init__.py": '__version__ = "0.33.0"\n',
    "vllm/entrypoints/__init__.py": "",
    "vllm/entrypoints/openai/__init__.py": "",
    "vllm/entrypoints/openai/chat_completion/__init__.py": "",
    "vllm/entrypoints/openai/chat_completion/protocol.py": """
        from typing import Any
        from pydantic import BaseModel, ConfigDict

        class _TokParams:
            def apply_post_tokenization(self, tokenizer, prompt):
                return prompt

        class ChatCompletionRequest(BaseModel):
            model_config = ConfigDict(extra="allow")
            messages: list[dict[str, Any]]
            max_tokens: int | None = None

            def build_tok_params(self, model_config):
                return _TokParams()
    """,
    "vllm/entrypoints/openai/chat_completion/serving.py": """
        class _ModelConfig:
            max_model_len = 64

            def get_vocab_size(self):
                return 100

        class OpenAIServingChat:
            model_config = _ModelConfig()

            async def render_chat_request(self, request):
                return ([], [{"prompt_token_ids": [7, 7, 7], "prompt": "rendered"}])
    """,
    "vllm/exceptions.py": """
        class VLLMValidationError(Exception):
            pass
    """,
    "vllm/renderers/__init__.py": "",
    "vllm/renderers/online_renderer.py": """
        def _reused_prompt_token_ids(request):
            return None
    """,
    "vllm/entrypoints/openai/chat_completion/api_router.py": """
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
        from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat

        def validate_json_request(raw_request: Request):
            return None

        async def create_chat_completion(request, raw_request):
            conversation, prompts = await OpenAIServingChat().render_chat_request(request)
            return JSONResponse({"engine_prompt": prompts[0]})

        def attach_router(app: FastAPI):
            app.state.chat_attached = True
    """,
}


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name, text in FAKE.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    for env in ("VLLM_TOKENS_PATCH_STRICT", "VLLM_TOKENS_PATCH_DISABLE"):
        monkeypatch.delenv(env, raising=False)
    plugin.unpatch()
    yield tmp_path
    plugin.unpatch()
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def build_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()
    importlib.import_module(f"{CHAT}.api_router").attach_router(app)
    return app


def call(app: Any, payload: dict[str, Any]) -> Any:
    import httpx

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post(settings.Settings.route_path, json=payload)

    return asyncio.run(go())


PAYLOAD = {"messages": [{"role": "user", "content": "hi"}], "tokens": [1, 2, 3]}


def test_hooks_wait_for_the_chat_module_then_serve_tokens(fake_vllm: Path) -> None:
    plugin.register()
    assert f"{CHAT}.api_router" not in sys.modules, "register() must not import vLLM's chat modules"
    app = build_app()
    assert app.state.chat_attached
    response = call(app, {**PAYLOAD, "tokens": [7, 7, 8]})
    assert response.status_code == 200, response.text
    assert response.json()["engine_prompt"] == {"prompt_token_ids": [7, 7, 8]}
    assert response.headers["x-vllm-tokens-verification"] == "mismatch"
    assert response.headers["x-vllm-tokens-first-mismatch"] == "2"


def test_an_alias_shim_at_the_hook_path_patches_the_real_module(fake_vllm: Path) -> None:
    """The `vllm/frontend` move leaves `sys.modules` alias shims at the old paths: the shim module object
    the import hook is handed has no `attach_router`; the module vLLM really uses does."""
    real = fake_vllm / "vllm" / "frontend" / "chat_completion" / "api_router.py"
    real.parent.mkdir(parents=True)
    (real.parent.parent / "__init__.py").write_text("")
    (real.parent / "__init__.py").write_text("")
    old = fake_vllm / "vllm" / "entrypoints" / "openai" / "chat_completion" / "api_router.py"
    real.write_text(old.read_text())
    old.write_text(
        "import importlib, sys\n"
        "sys.modules[__name__] = importlib.import_module('vllm.frontend.chat_completion.api_router')\n"
    )
    plugin.register()
    app = build_app()  # imports the old path, as vLLM's own code did before the move
    new = importlib.import_module("vllm.frontend.chat_completion.api_router")
    assert isinstance(new.attach_router, plugin.PatchWrapper)
    assert plugin.status()["failure"] is None
    assert call(app, PAYLOAD).status_code == 200


def test_register_is_idempotent_and_unpatch_restores(fake_vllm: Path) -> None:
    router = importlib.import_module(f"{CHAT}.api_router")
    serving = importlib.import_module(f"{CHAT}.serving").OpenAIServingChat
    original_hook, original_render = router.attach_router, serving.__dict__["render_chat_request"]
    plugin.register()
    plugin.register()
    app = build_app()
    plugin.register()
    again = build_app()  # a second app after a third register(): nothing may stack
    assert isinstance(router.attach_router, plugin.PatchWrapper)
    assert router.attach_router.__wrapped__ is original_hook
    assert serving.__dict__["render_chat_request"].__wrapped__ is original_render
    for built in (app, again):
        assert [r.path for r in built.routes].count(settings.Settings.route_path) == 1
        swapped = call(built, {**PAYLOAD, "tokens": [7, 7, 8]})  # a second swap would see its own ids
        assert swapped.headers["x-vllm-tokens-verification"] == "mismatch", "swapped twice"
    plugin.unpatch()
    plugin.unpatch()
    assert router.attach_router is original_hook
    assert serving.__dict__["render_chat_request"] is original_render
    assert call(app, PAYLOAD).status_code == 404


def test_a_stock_request_is_never_swapped(fake_vllm: Path) -> None:
    plugin.register()
    build_app()
    protocol = importlib.import_module(f"{CHAT}.protocol")
    serving = importlib.import_module(f"{CHAT}.serving").OpenAIServingChat
    stray = protocol.ChatCompletionRequest(messages=[], tokens=[1, 2])
    result = asyncio.run(serving().render_chat_request(stray))
    assert result[1][0]["prompt_token_ids"] == [7, 7, 7]


def test_missing_render_function_gives_501_and_one_error(
    fake_vllm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    serving = importlib.import_module(f"{CHAT}.serving").OpenAIServingChat
    del serving.render_chat_request
    with caplog.at_level(logging.ERROR, logger="vllm.tokens_patch"):
        plugin.register()
        app = build_app()
        build_app()
    response = call(app, PAYLOAD)
    assert response.status_code == 501
    assert "0.33.0" in response.json()["error"]["message"]
    assert "render_chat_request" in response.json()["error"]["message"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1


def test_an_unexpected_error_while_mounting_still_lets_vllm_start(
    fake_vllm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(state: Any, base: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(plugin.State, "request_model_for", broken)
    plugin.register()
    app = build_app()  # vLLM's build_app must not see our exception
    assert app.state.chat_attached
    response = call(app, PAYLOAD)
    assert response.status_code == 501
    assert "RuntimeError: boom" in response.json()["error"]["message"]


def test_strict_mode_fails_startup(fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    del importlib.import_module(f"{CHAT}.serving").OpenAIServingChat.render_chat_request
    monkeypatch.setenv("VLLM_TOKENS_PATCH_STRICT", "1")
    settings.current.cache_clear()
    plugin.register()
    with pytest.raises(plugin.PatchError, match="render_chat_request"):
        build_app()


def test_unknown_old_vllm_never_raises(fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.import_module("vllm"), "__version__", "0.9.0")
    plugin.register()
    assert plugin.status()["failure"] and "not supported" in plugin.status()["failure"]
    monkeypatch.setenv("VLLM_TOKENS_PATCH_STRICT", "1")
    plugin.unpatch()
    with pytest.raises(plugin.PatchError):
        plugin.register()


def test_route_hook_module_running_as_main_is_patched(
    fake_vllm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m vllm.entrypoints.openai.api_server` runs the hook's module as __main__ (<= 0.28)."""
    import importlib.util

    spec = importlib.util.find_spec(f"{CHAT}.api_router")
    main = types.ModuleType("__main__")
    main.__spec__ = spec
    exec(compile(Path(spec.origin).read_text(), spec.origin, "exec"), main.__dict__)
    monkeypatch.setitem(sys.modules, "__main__", main)
    plugin.register()
    assert isinstance(main.attach_router, plugin.PatchWrapper)
    plugin.unpatch()
    assert not isinstance(main.attach_router, plugin.PatchWrapper)


def test_a_malformed_setting_under_strict_fails_startup_naming_it(
    fake_vllm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_TOKENS_PATCH_VERIFY", "bogus")
    monkeypatch.setenv("VLLM_TOKENS_PATCH_STRICT", "1")
    settings.current.cache_clear()
    with pytest.raises(plugin.PatchError, match="VLLM_TOKENS_PATCH_VERIFY='bogus'"):
        plugin.register()


def test_a_malformed_setting_without_strict_logs_once_in_api_servers_only(
    fake_vllm: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VLLM_TOKENS_PATCH_VERIFY", "bogus")
    for name in API_SERVER_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    settings.current.cache_clear()
    with caplog.at_level(logging.ERROR, logger="vllm.tokens_patch"):
        plugin.register()  # an engine-core or worker process: silent
        assert caplog.records == []
        api_server = API_SERVER_MODULES[0]
        monkeypatch.setitem(sys.modules, api_server, types.ModuleType(api_server))
        plugin.register()
        plugin.register()
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and "VLLM_TOKENS_PATCH_VERIFY='bogus'" in errors[0], errors
    assert not plugin.status()["registered"]


def test_disabled_does_nothing(fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_TOKENS_PATCH_DISABLE", "1")
    settings.current.cache_clear()
    plugin.register()
    assert not plugin.status()["registered"]


def test_engine_process_import_is_cheap(fake_vllm: Path) -> None:
    """What an engine-core or worker process pays: no FastAPI, pydantic or vLLM chat module imports."""
    code = textwrap.dedent(
        f"""
        import sys
        from vllm_tokens_patch.plugin import register
        register()
        register()
        assert sys.modules["vllm"].__file__.startswith({str(fake_vllm)!r})  # the stand-in was loaded
        heavy = ["fastapi", "pydantic", "starlette", "vllm_tokens_patch.route"]
        heavy += ["{CHAT}.api_router", "{CHAT}.serving"]
        heavy = [m for m in heavy if m in sys.modules]
        assert not heavy, heavy
        """
    )
    env = {**os.environ, "PYTHONPATH": str(fake_vllm)}  # the stand-in `vllm` package
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_doctor_where_vllm_is_missing_says_to_run_it_with_the_servers_python(tmp_path: Path) -> None:
    """The usual cause is a doctor (and plugin) in another environment than `vllm serve`'s: say what to run
    instead. A fresh interpreter of this venv, which has no vLLM (no stand-in on PYTHONPATH)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, "-m", "vllm_tokens_patch", "doctor"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = [line for line in done.stdout.splitlines() if " vllm: " in line]
    assert line.startswith("  FAIL vllm: vllm cannot be imported by this Python (" + sys.executable), line
    assert "No module named 'vllm'" in line
    assert "installed in vLLM's own environment" in line
    assert "the Python that runs `vllm serve`, `<that python> -m vllm_tokens_patch doctor`" in line
    assert done.stdout.endswith("doctor: problems found\n")


@pytest.mark.parametrize(
    ("environ", "failed", "says"),
    [
        ({"VLLM_PLUGINS": "lora_resolver"}, "VLLM_PLUGINS", "'lora_resolver' excludes tokens_patch"),
        ({"VLLM_PLUGINS": "lora_resolver,tokens_patch"}, None, "_patch' lists tokens_patch"),
        ({"VLLM_TOKENS_PATCH_DISABLE": "1"}, "VLLM_TOKENS_PATCH_DISABLE", "the plugin loads as a no-op"),
    ],
)
def test_doctor_names_what_keeps_the_route_off(
    fake_vllm: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    environ: dict[str, str],
    failed: str | None,
    says: str,
) -> None:
    """The two settings behind a route that answers 404 (README: "The route answers 404?")."""
    from vllm_tokens_patch.__main__ import main

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings.current.cache_clear()
    try:
        status = main(["doctor", "--json"])
    finally:
        settings.current.cache_clear()
    assert status == (0 if failed is None else 1)
    report = json.loads(capsys.readouterr().out)
    failures = [check["name"] for check in report["checks"] if check["ok"] is False]
    assert failures == ([failed] if failed else []), report["checks"]
    assert any(says in check["detail"] for check in report["checks"]), report["checks"]


def test_doctor_on_a_sound_layout_and_on_a_renamed_render_method(
    fake_vllm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vllm_tokens_patch.__main__ import main

    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "target render:render_chat_request" in text and "route mounts" in text and "all good" in text
    assert not plugin.status()["registered"], "the doctor undoes the patch it applied itself"
    del importlib.import_module(f"{CHAT}.serving").OpenAIServingChat.render_chat_request
    assert main(["doctor", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    failed = [check["name"] for check in report["checks"] if check["ok"] is False]
    assert report["ok"] is False and failed == ["target render:render_chat_request"], report
