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
    ],
)
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_environ(env)
