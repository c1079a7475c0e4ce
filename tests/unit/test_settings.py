from __future__ import annotations

import pytest

from vllm_tokens_patch.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_environ({})
    assert settings == Settings(
        strict=False, disabled=False, route_path="/v1/chat/completions/tokens", verify="warn"
    )


def test_switches() -> None:
    env = {
        "VLLM_TOKENS_PATCH_STRICT": "1",
        "VLLM_TOKENS_PATCH_DISABLE": "yes",
        "VLLM_TOKENS_PATCH_ROUTE": "/v1/tokens",
        "VLLM_TOKENS_PATCH_VERIFY": "OFF",
    }
    assert Settings.from_environ(env) == Settings(
        strict=True, disabled=True, route_path="/v1/tokens", verify="off"
    )


@pytest.mark.parametrize(
    "env",
    [
        {"VLLM_TOKENS_PATCH_STRICT": "maybe"},
        {"VLLM_TOKENS_PATCH_ROUTE": "no-slash"},
        {"VLLM_TOKENS_PATCH_VERIFY": "reject"},
        {"VLLM_TOKENS_PATCH_MEMORY": "yes"},
        {"VLLM_TOKENS_PATCH_MEMORY": "http://cache:6379"},
        {"VLLM_TOKENS_PATCH_MEMORY": "local", "VLLM_TOKENS_PATCH_MEMORY_MAX_AGE": "0"},
        {"VLLM_TOKENS_PATCH_MEMORY": "local", "VLLM_TOKENS_PATCH_MEMORY_MAX_BYTES": "lots"},
    ],
)
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_environ(env)


def test_the_conversation_memory_is_off_unless_named() -> None:
    assert Settings.from_environ({}).memory is None
    assert Settings.from_environ({"VLLM_TOKENS_PATCH_MEMORY": "0"}).memory is None
    local = Settings.from_environ(
        {"VLLM_TOKENS_PATCH_MEMORY": "Local", "VLLM_TOKENS_PATCH_MEMORY_MAX_AGE": "60"}
    )
    assert (local.memory, local.memory_max_age, local.memory_max_bytes) == ("local", 60.0, 1 << 30)
    url = "redis://cache:6379/2"
    assert Settings.from_environ({"VLLM_TOKENS_PATCH_MEMORY": url}).memory == url


def test_the_doctor_checks_the_memory_store() -> None:
    """`local` needs nothing; a Redis URL needs the client package and a server that answers (the unit
    session has no `redis` package: the doctor says how to get it; `nox -s memory-redis` has both)."""
    from vllm_tokens_patch import doctor

    assert doctor._memory("local")[0] is True
    ok, detail = doctor._memory("redis://127.0.0.1:9/0")
    assert ok is False and ("redis" in detail), detail
