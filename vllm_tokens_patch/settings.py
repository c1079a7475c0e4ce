"""Environment switches, parsed once per process.

Every vLLM process (API servers, engine core, workers) runs the plugin, so settings come from the
environment, which all of them inherit, rather than from CLI flags that only the API server sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

VERIFY_POLICIES = ("warn", "off")
STOCK_ROUTE = "VLLM_TOKENS_PATCH_STOCK_ROUTE"
"""The opt-in that puts the token fields on vLLM's own chat route."""
MEMORY = "VLLM_TOKENS_PATCH_MEMORY"
"""The opt-in conversation memory: `local` (this server) or a `redis://` URL (many replicas)."""
MEMORY_SCHEMES = ("redis://", "rediss://", "unix://")


class SettingsError(ValueError):
    """An environment switch has a value we do not understand."""


def _flag(environ: dict[str, str] | os._Environ[str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")


@dataclass(frozen=True)
class Settings:
    """What the environment asks of the plugin."""

    strict: bool = False
    """`VLLM_TOKENS_PATCH_STRICT=1`: fail vLLM's startup instead of serving without the patch."""
    disabled: bool = False
    """`VLLM_TOKENS_PATCH_DISABLE=1`: load as a no-op (the route is not added)."""
    route_path: str = "/v1/chat/completions/tokens"
    """`VLLM_TOKENS_PATCH_ROUTE`: where the token-in route is mounted."""
    verify: str = "warn"
    """`VLLM_TOKENS_PATCH_VERIFY`: `warn` compares `tokens` with the rendered ids, `off` skips it."""
    mismatch_log: int | None = 10
    """`VLLM_TOKENS_PATCH_MISMATCH_LOG`: mismatches logged at WARNING per API server (`all`: None)."""
    stock_route: bool = False
    """`VLLM_TOKENS_PATCH_STOCK_ROUTE=1`: vLLM's own chat route also takes the token fields (for routers and
    clients that only speak the stock path); off, it is exactly stock."""
    memory: str | None = None
    """`VLLM_TOKENS_PATCH_MEMORY`: off (unset), `local`, or a Redis/Valkey URL: the server remembers the ids
    it fed and sampled per conversation and reuses them for requests that extend one."""
    memory_max_bytes: int = 1 << 30
    """`VLLM_TOKENS_PATCH_MEMORY_MAX_BYTES`: the local store's bound (least recently used evicted first)."""
    memory_max_age: float = 3600.0
    """`VLLM_TOKENS_PATCH_MEMORY_MAX_AGE`: seconds since last use after which an entry is evicted."""

    @classmethod
    def from_environ(cls, environ: dict[str, str] | os._Environ[str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        route_path = env.get("VLLM_TOKENS_PATCH_ROUTE", cls.route_path).strip() or cls.route_path
        if not route_path.startswith("/"):
            raise SettingsError(f"VLLM_TOKENS_PATCH_ROUTE={route_path!r}: must start with '/'")
        verify = env.get("VLLM_TOKENS_PATCH_VERIFY", cls.verify).strip().lower() or cls.verify
        if verify not in VERIFY_POLICIES:
            raise SettingsError(f"VLLM_TOKENS_PATCH_VERIFY={verify!r}: expected one of {VERIFY_POLICIES}")
        return cls(
            strict=_flag(env, "VLLM_TOKENS_PATCH_STRICT"),
            disabled=_flag(env, "VLLM_TOKENS_PATCH_DISABLE"),
            route_path=route_path,
            verify=verify,
            mismatch_log=_mismatch_log(env),
            stock_route=_flag(env, STOCK_ROUTE),
            memory=_memory(env),
            memory_max_bytes=int(_positive(env, "VLLM_TOKENS_PATCH_MEMORY_MAX_BYTES", cls.memory_max_bytes)),
            memory_max_age=_positive(env, "VLLM_TOKENS_PATCH_MEMORY_MAX_AGE", cls.memory_max_age),
        )


def _mismatch_log(environ: dict[str, str] | os._Environ[str]) -> int | None:
    """A count of mismatches to log at WARNING (later ones are only counted), or `all`."""
    raw = environ.get("VLLM_TOKENS_PATCH_MISMATCH_LOG", "").strip().lower()
    if not raw:
        return Settings.mismatch_log
    if raw == "all":
        return None
    if raw.isascii() and raw.isdigit():
        return int(raw)
    raise SettingsError(f"VLLM_TOKENS_PATCH_MISMATCH_LOG={raw!r}: expected a count (0, 1, 2, ...) or 'all'")


def _memory(environ: dict[str, str] | os._Environ[str]) -> str | None:
    raw = environ.get(MEMORY, "").strip()
    if raw.lower() in _FALSE:
        return None
    if raw.lower() == "local":
        return "local"
    if raw.startswith(MEMORY_SCHEMES):
        return raw
    raise SettingsError(
        f"{MEMORY}={raw!r}: expected 'local' or a URL starting with {' / '.join(MEMORY_SCHEMES)}"
    )


def _positive(environ: dict[str, str] | os._Environ[str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SettingsError(f"{name}={raw!r}: expected a positive number")
    return value


def strict_requested(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """`VLLM_TOKENS_PATCH_STRICT` alone, read leniently: strict mode must hold even when another setting
    (or this one's spelling) cannot be parsed."""
    env = os.environ if environ is None else environ
    return env.get("VLLM_TOKENS_PATCH_STRICT", "").strip().lower() in _TRUE


@lru_cache(maxsize=1)
def current() -> Settings:
    """The settings of this process (cached; tests call `current.cache_clear()`)."""
    return Settings.from_environ()
