"""The conversation memory's Redis backend on a real `redis-server` (started here on a free port): the same
`StoreBehaviour` tests as SQLite, plus what only Redis does (TTLs, prefixes, one client per event loop).

Needs the `redis` package, which the `unit` session does not install: without it this module is skipped,
unless VLLM_TOKENS_PATCH_TEST_REDIS=1, which makes a missing package a failure. A missing `redis-server`
binary always fails (install it: `apt-get install -y redis-server` on Debian/Ubuntu).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRED = os.environ.get("VLLM_TOKENS_PATCH_TEST_REDIS") == "1"
if REQUIRED:
    if importlib.util.find_spec("redis") is None:
        pytest.fail(
            "VLLM_TOKENS_PATCH_TEST_REDIS=1 but the `redis` package is not installed: pip install redis",
            pytrace=False,
        )
    import redis
else:
    redis = pytest.importorskip(
        "redis",
        reason="the Redis memory store tests need the `redis` package (pip install redis); "
        "VLLM_TOKENS_PATCH_TEST_REDIS=1 makes its absence a failure",
    )

from vllm_tokens_patch_testbed.redis_server import redis_server  # noqa: E402

from vllm_tokens_patch.memory_store import DEFAULT_LIMITS, Entry, Limits, RedisStore, open_store  # noqa: E402


def _load_shared():
    """test_memory_store.py (its `StoreBehaviour` and `Backend`), imported by its file location: nothing is
    added to sys.path."""
    path = Path(__file__).with_name("test_memory_store.py")
    spec = importlib.util.spec_from_file_location("_memory_store_shared_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shared = _load_shared()
INSTALL = "install it: apt-get install -y redis-server (Debian/Ubuntu), or put redis-server on PATH"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server for this test session (the testbed's): no persistence, loopback only."""
    if shutil.which("redis-server") is None:
        pytest.fail(f"the Redis memory store tests need `redis-server`: {INSTALL}", pytrace=False)
    with redis_server() as url:
        yield url


class RedisBackend(shared.Backend):
    counts_evictions = False  # Redis evicts by itself (TTL, maxmemory): `put` says 0

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"test-{uuid.uuid4().hex}:"  # each test its own keys on the shared server

    def store(self, limits: Limits = DEFAULT_LIMITS) -> RedisStore:
        return RedisStore(self.url, limits, prefix=self.prefix)

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # the server's clock: only real time moves it


class TestRedis(shared.StoreBehaviour):
    @pytest.fixture
    def backend(self, redis_url: str) -> RedisBackend:
        return RedisBackend(redis_url)


def test_open_store_redis_urls(tmp_path: Path) -> None:
    for url in (
        "redis://localhost:6379/0",
        "rediss://user:pw@host:6380",
        "unix:///run/redis.sock",
        "REDIS://h",
    ):
        store = open_store(url, tmp_path / "unused.sqlite3", Limits(max_age=5.0))
        assert isinstance(store, RedisStore) and store.url == url and store.limits.max_age == 5.0
    assert "pw" not in repr(open_store("rediss://user:pw@host:6380", tmp_path))


def test_keys_are_prefixed_hashes_with_a_ttl(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    key = b"\x00k*?[]\\" * 4
    refreshed_ttl: list[int] = []

    async def body() -> None:
        store = backend.store(Limits(max_age=30.0))
        try:
            assert await store.put(key, _entry((1, 2, 3))) == 0
            await store.put(key, _entry((1, 2, 4)))
            raw = redis.asyncio.from_url(redis_url)
            name = backend.prefix.encode() + key
            assert await raw.type(name) == b"hash" and await raw.hlen(name) == 2
            assert 29_000 < await raw.pttl(name) <= 30_000
            await raw.pexpire(name, 5_000)
            await store.get_many([key])  # a get refreshes the TTL
            refreshed_ttl.append(await raw.pttl(name))
            await raw.aclose()
        finally:
            await store.close()

    asyncio.run(body())
    assert 29_000 < refreshed_ttl[0] <= 30_000


def test_stats_count_only_the_prefix_even_with_glob_characters(redis_url: str) -> None:
    tag = uuid.uuid4().hex

    async def body():
        star = RedisStore(redis_url, prefix=f"{tag}*:")
        plain = RedisStore(redis_url, prefix=f"{tag}1:")
        try:
            await star.put(b"a", _entry((1,)))
            await plain.put(b"a", _entry((2,)))
            await plain.put(b"b", _entry((3,)))
            return await star.stats(), await plain.stats()
        finally:
            await star.close()
            await plain.close()

    star, plain = asyncio.run(body())
    assert (star.entries, plain.entries) == (1, 2)


def test_one_store_on_two_event_loops(redis_url: str) -> None:
    """A client is bound to its event loop: the store makes a new one for a new loop."""
    store = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}:")
    asyncio.run(store.put(b"k", _entry((1,))))
    found = asyncio.run(store.get_many([b"k"]))
    asyncio.run(store.close())
    assert found == {b"k": [_entry((1,))]}


def _entry(ids: tuple[int, ...]) -> Entry:
    return Entry(ids=ids, turns=(), logprobs=None, session=None, created=1.0)


def test_the_doctor_reaches_the_store_or_says_why(redis_url: str) -> None:
    """With the client installed: a live server answers (with its entry count), a dead port does not."""
    from vllm_tokens_patch import doctor

    ok, detail = doctor._memory(redis_url)
    assert ok is True and detail.endswith("entries)"), detail
    ok, detail = doctor._memory("redis://127.0.0.1:9/0")
    assert ok is False and "does not answer" in detail, detail
