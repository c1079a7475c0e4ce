"""The conversation memory's storage layer (`vllm_tokens_patch.memory_store`): the entry encoding, the
behaviour every backend shares (`StoreBehaviour`, run here on SQLite and by test_memory_store_redis.py on a
real redis-server), and what only the SQLite backend does (size bound, several processes, fork).

Plain `asyncio.run` in sync tests: the unit session installs no pytest plugin.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from vllm_tokens_patch import memory_store
from vllm_tokens_patch.memory_store import (
    DEFAULT_LIMITS,
    Entry,
    Limits,
    MemoryStore,
    RedisStore,
    SqliteStore,
    StoreStats,
    decode_entry,
    encode_entry,
    open_store,
)

KEY_A, KEY_B, KEY_C, KEY_D, KEY_E = (bytes([n]) * 32 for n in range(1, 6))
MISSING = b"\xff" * 32


def entry(
    ids: tuple[int, ...] = (1, 2, 3),
    *,
    turns: tuple[tuple[int, int], ...] | None = None,
    logprobs: tuple[float | None, ...] | None = None,
    session: str | None = None,
    created: float = 1000.0,
) -> Entry:
    if turns is None:
        turns = ((1, len(ids)),) if ids else ()
    return Entry(ids=ids, turns=turns, logprobs=logprobs, session=session, created=created)


def big_entries(count: int, n: int = 32768) -> list[Entry]:
    """`count` distinct entries of `n` ids with logprobs (the size of a long agent trajectory)."""
    base = tuple((i * 7919) % 151_936 for i in range(n))
    logprobs = tuple(None if i < n // 2 else -((i % 97) / 13.0) for i in range(n))
    return [
        Entry(
            ids=base[i:] + base[:i], turns=((n // 2, n),), logprobs=logprobs, session=None, created=float(i)
        )
        for i in range(count)
    ]


# ---------------------------------------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize(
    "value",
    [
        entry(),
        entry((), turns=()),
        entry((5,), turns=()),
        entry((0, 1, 2**32 - 2, 2**32 - 1), turns=((0, 0), (1, 2), (3, 4))),
        entry((7, 8, 9), logprobs=(None, -0.5, -math.inf), session="user-42 ✓"),
        entry((7, 8), logprobs=(None, None)),
        entry(tuple(range(32768)), turns=((16000, 16384), (20000, 32768)), created=1.7e9 + 0.123456789),
        big_entries(1)[0],
    ],
    ids=["plain", "empty", "no-turns", "ids-near-2**32", "logprobs", "logprobs-all-none", "32k", "32k-lp"],
)
def test_encode_decode_round_trip(value):
    data = encode_entry(value)
    assert isinstance(data, bytes)
    assert decode_entry(data) == value
    assert decode_entry(bytearray(data)) == value


def test_encoding_is_compact():
    """uint32 + float64 arrays, compressed when it pays; tiny entries are not compressed."""
    ids = tuple(range(100_000, 100_000 + 32768))
    assert len(encode_entry(entry(ids))) < 4 * len(ids)  # compressed below the raw uint32 array
    tiny = encode_entry(entry((1, 2, 3)))
    assert tiny[:3] == b"VTM" and tiny[4] == 0 and len(tiny) < 120


def test_nan_logprob_reads_back_as_none():
    assert decode_entry(encode_entry(entry((1, 2), logprobs=(math.nan, -1.0)))).logprobs == (None, -1.0)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (entry((1, -1)), "ids"),
        (entry((1, 2**32)), "ids"),
        (entry((1, 2.5)), "ids"),  # type: ignore[arg-type]
        (entry((1, 2, 3), turns=((2, 1),)), "turns"),
        (entry((1, 2, 3), turns=((1, 4),)), "turns"),
        (entry((1, 2, 3), turns=((1, 3), (2, 3))), "turns"),  # overlapping calls
        (entry((1, 2, 3), logprobs=(None, -1.0)), "logprobs"),
        (entry((1, 2), logprobs=(None, "x")), "logprobs"),  # type: ignore[arg-type]
        (entry((1, 2), created=math.nan), "Out of range|NaN|nan"),
    ],
)
def test_encode_rejects_invalid_entries(bad, match):
    with pytest.raises(ValueError, match=match):
        encode_entry(bad)


def test_decode_rejects_garbage():
    good = encode_entry(entry((1, 2, 3), logprobs=(None, -1.0, -2.0)))
    big = encode_entry(entry(tuple(range(5000))))
    assert big[4] == 1  # compressed
    header_len = int.from_bytes(good[5:9], "little")
    header = json.loads(good[9 : 9 + header_len])
    bad_headers = [
        {**header, "n": 4},
        {**header, "n": -1},
        {**header, "n": True},
        {**header, "turns": [[3, 1]]},
        {**header, "turns": [1]},
        {**header, "session": 5},
        {**header, "created": "now"},
        {**header, "logprobs": 1},
        {k: v for k, v in header.items() if k != "session"},
        {**header, "extra": 1},
        [1, 2],
    ]
    samples = [
        b"",
        b"VTM",
        b"junk that is long enough",
        b"VTM\x02\x00" + good[5:],  # another version
        b"VTM\x01\x04" + good[5:],  # unknown flag
        good[:-1],
        good + b"\x00",
        big[:-10],
        big[:40] + bytes(b ^ 0xFF for b in big[40:60]) + big[60:],
        good[:9] + b"\xff" * header_len + good[9 + header_len :],
        good[:5] + (10**6).to_bytes(4, "little") + good[9:],
    ]
    for bad in bad_headers:
        raw = json.dumps(bad).encode()
        samples.append(b"VTM\x01\x00" + len(raw).to_bytes(4, "little") + raw + good[9 + header_len :])
    samples += [good[:cut] for cut in range(len(good))]
    for sample in samples:
        with pytest.raises(ValueError):
            decode_entry(sample)


def test_limits_are_checked():
    assert Limits() == Limits(max_bytes=1 << 30, max_age=3600.0)
    for bad in ({"max_bytes": 0}, {"max_age": 0.0}, {"max_age": math.inf}, {"max_age": math.nan}):
        with pytest.raises(ValueError, match="Limits"):
            Limits(**bad)


# ---------------------------------------------------------------------------------------------------------
# open_store and the optional redis package


def test_open_store_local(tmp_path):
    for setting in ("local", " LOCAL "):
        store = open_store(setting, tmp_path / "m.sqlite3", Limits(max_bytes=10))
        assert isinstance(store, SqliteStore) and isinstance(store, MemoryStore)
        assert store.path == tmp_path / "m.sqlite3" and store.limits == Limits(max_bytes=10)
    assert not (tmp_path / "m.sqlite3").exists()  # opened on first use, not when made


@pytest.mark.parametrize("setting", ["", "sqlite", "http://host:6379", "redis:/host", "/tmp/file.sqlite3"])
def test_open_store_rejects_other_settings(setting, tmp_path):
    with pytest.raises(ValueError) as raised:
        open_store(setting, tmp_path / "m.sqlite3")
    message = str(raised.value)
    assert repr(setting) in message and "'local'" in message and "redis://" in message and "\n" not in message


def test_open_store_error_hides_a_password(tmp_path):
    with pytest.raises(ValueError) as raised:
        open_store("http://user:s3cret@host:6379/0", tmp_path / "m.sqlite3")
    assert "s3cret" not in str(raised.value) and "user:***@host:6379/0" in str(raised.value)


def test_redis_store_without_the_redis_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "redis", None)  # what `import redis` does when it is not installed
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    for make in (lambda: RedisStore("redis://localhost:6379"), lambda: open_store("redis://h", tmp_path)):
        with pytest.raises(ImportError, match="pip install redis"):
            make()


# ---------------------------------------------------------------------------------------------------------
# What every backend does (test_memory_store_redis.py runs the same class on Redis)


class Backend:
    """Makes a test's stores (all on the same file or Redis prefix) and moves time forward for them."""

    counts_evictions = True  # SQLite counts what `put` evicted; Redis evicts by itself and says 0

    def store(self, limits: Limits = DEFAULT_LIMITS) -> MemoryStore:
        raise NotImplementedError

    async def advance(self, seconds: float) -> None:
        raise NotImplementedError


def run(
    backend: Backend, body: Callable[[MemoryStore], Awaitable[Any]], limits: Limits = DEFAULT_LIMITS
) -> Any:
    """`body(store)` on a new event loop, closing the store after."""

    async def main() -> Any:
        store = backend.store(limits)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


class StoreBehaviour:
    """Collected through subclasses that provide a `backend` fixture."""

    def test_put_and_get_many(self, backend):
        one, two = entry((1, 2, 3), session="s"), entry((4, 5), logprobs=(None, -0.25))

        async def body(store):
            assert await store.stats() == StoreStats(entries=0, bytes=0)
            assert await store.get_many([KEY_A]) == {}
            assert await store.put(KEY_A, one) == 0
            assert await store.put(KEY_B, two) == 0
            found = await store.get_many([KEY_A, MISSING, KEY_B, KEY_A])
            assert found == {KEY_A: [one], KEY_B: [two]}
            assert await store.get_many([]) == {}
            assert await store.stats() == StoreStats(2, len(encode_entry(one)) + len(encode_entry(two)))

        run(backend, body)

    def test_one_key_holds_entries_distinct_by_ids_newest_first(self, backend):
        older, newer = entry((1, 2, 3), created=100.0), entry((1, 2, 4), created=200.0)
        again = entry((1, 2, 3), created=300.0, session="again", logprobs=(None, -1.0, -2.0))

        async def body(store):
            await store.put(KEY_A, newer)
            await store.put(KEY_A, older)  # put later, created earlier: order is by `created`
            await store.put(KEY_B, entry((9,), turns=()))
            assert (await store.get_many([KEY_A]))[KEY_A] == [newer, older]
            assert await store.put(KEY_A, again) == 0  # same ids: replaces, evicts nothing
            assert (await store.get_many([KEY_A]))[KEY_A] == [again, newer]
            assert (await store.stats()).entries == 3

        run(backend, body)

    def test_many_keys_in_one_call(self, backend):
        keys = [i.to_bytes(32, "big") for i in range(1200)]  # more than one SQL chunk

        async def body(store):
            for i, key in enumerate(keys[::2]):
                await store.put(key, entry((i, i + 1), turns=()))
            found = await store.get_many(keys)
            assert sorted(found) == sorted(keys[::2])
            assert found[keys[10]] == [entry((5, 6), turns=())]

        run(backend, body)

    def test_entries_expire_max_age_after_last_use(self, backend):
        limits = Limits(max_age=1.0)

        later = entry((7,), turns=(), created=2000.0)

        async def body(store):
            await store.put(KEY_A, entry())
            await store.put(KEY_B, entry())
            await backend.advance(0.6)
            assert KEY_A in await store.get_many([KEY_A])  # a get refreshes...
            await store.put(KEY_B, later)  # ...and so does a put (the whole key)
            await backend.advance(0.6)  # 1.2 s since the first puts, 0.6 s since the last use
            assert await store.get_many([KEY_A, KEY_B]) == {KEY_A: [entry()], KEY_B: [later, entry()]}
            await backend.advance(1.5)
            assert await store.get_many([KEY_A, KEY_B]) == {}
            evicted = await store.put(KEY_C, entry())
            assert evicted == (3 if backend.counts_evictions else 0)
            assert await store.stats() == StoreStats(1, len(encode_entry(entry())))

        run(backend, body, limits)

    def test_stores_on_the_same_place_share_entries(self, backend):
        async def body(store):
            other = backend.store()
            try:
                await store.put(KEY_A, entry((1,), turns=()))
                await other.put(KEY_B, entry((2,), turns=()))
                assert set(await other.get_many([KEY_A, KEY_B])) == {KEY_A, KEY_B}
                assert set(await store.get_many([KEY_A, KEY_B])) == {KEY_A, KEY_B}
            finally:
                await other.close()

        run(backend, body)

    def test_get_many_does_not_block_the_event_loop(self, backend):
        """A ticker task keeps ticking while a large get (30 entries of 32k ids) runs. A loaded machine can
        stall any thread for a while, so the best of 3 gets counts: a blocking get stalls all of them."""
        entries = big_entries(30)
        keys = [i.to_bytes(32, "big") for i in range(len(entries))]

        async def timed_get(store):
            gaps: list[float] = []
            done = False

            async def tick():
                last = time.perf_counter()
                while not done:
                    await asyncio.sleep(0.001)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.create_task(tick())
            await asyncio.sleep(0.01)
            start = time.perf_counter()
            found = await store.get_many(keys)
            elapsed = time.perf_counter() - start
            done = True
            await ticker
            assert [found[key][0] for key in keys] == entries
            return elapsed, max(gaps)

        async def body(store):
            for key, value in zip(keys, entries, strict=True):
                await store.put(key, value)
            return [await timed_get(store) for _ in range(3)]

        elapsed, worst_gap = min(run(backend, body), key=lambda timing: timing[1] / timing[0])
        assert elapsed > 0.04, f"the get took {elapsed:.3f} s: too short to tell"
        assert worst_gap < elapsed / 2, f"the loop stalled {worst_gap:.3f} s of a {elapsed:.3f} s get"

    def test_closed_store(self, backend):
        async def body(store):
            await store.put(KEY_A, entry())
            await store.close()
            await store.close()  # twice is fine
            with pytest.raises(RuntimeError, match="closed"):
                await store.get_many([KEY_A])

        run(backend, body)

    def test_keys_are_bytes(self, backend):
        async def body(store):
            with pytest.raises(TypeError, match="bytes"):
                await store.put("key", entry())
            with pytest.raises(TypeError, match="bytes"):
                await store.get_many(["key"])

        run(backend, body)

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
    @pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+: fork with a thread alive
    def test_a_store_used_before_a_fork_works_in_the_child(self, backend):
        """vLLM may fork its API servers after the store was made (and even used) in the parent."""
        store = backend.store()

        async def before():
            await store.put(KEY_A, entry((1,), turns=()))

        asyncio.run(before())  # the parent now has a connection (and, for SQLite, a worker thread)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                os.close(read)

                async def in_child():
                    found = await store.get_many([KEY_A])
                    await store.put(KEY_B, entry((2,), turns=()))
                    await store.close()
                    return found

                found = asyncio.run(in_child())
                os.write(write, b"ok" if found == {KEY_A: [entry((1,), turns=())]} else repr(found).encode())
                code = 0
            except BaseException as error:
                os.write(write, repr(error).encode())
            finally:
                os._exit(code)
        os.close(write)
        ready: list[int] = []
        try:
            ready, _, _ = select.select([read], [], [], 60)
            report = os.read(read, 4096) if ready else b"the child did not answer in 60 s"
        finally:
            os.close(read)
            if not ready:
                os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert report == b"ok"

        async def after():
            try:
                return await store.get_many([KEY_A, KEY_B])
            finally:
                await store.close()

        assert set(asyncio.run(after())) == {KEY_A, KEY_B}  # the parent's store still works


class SqliteBackend(Backend):
    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        self.clock = time.time()
        monkeypatch.setattr(memory_store, "_now", lambda: self.clock)

    def store(self, limits: Limits = DEFAULT_LIMITS) -> SqliteStore:
        return SqliteStore(self.path, limits)

    async def advance(self, seconds: float) -> None:
        self.clock += seconds


@pytest.fixture
def sqlite_backend(tmp_path, monkeypatch):
    return SqliteBackend(tmp_path / "new" / "dir" / "memory.sqlite3", monkeypatch)


class TestSqlite(StoreBehaviour):
    @pytest.fixture
    def backend(self, sqlite_backend):
        return sqlite_backend


# ---------------------------------------------------------------------------------------------------------
# SQLite only


def db_totals(path: Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """(the totals row, COUNT and SUM over the entries): the row must always equal the sums."""
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT entries, bytes FROM totals").fetchone()
        counted = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries").fetchone()
    conn.close()
    return tuple(row), tuple(counted)


def test_sqlite_file_settings(sqlite_backend):
    run(sqlite_backend, lambda store: store.put(KEY_A, entry()))
    with sqlite3.connect(sqlite_backend.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        indexes = [row[1] for row in conn.execute("PRAGMA index_list(entries)")]
    conn.close()
    assert "entries_last_used" in indexes


def test_sqlite_max_bytes_evicts_least_recently_used_first(sqlite_backend):
    small = [entry((n, n, n)) for n in range(10, 15)]
    size = len(encode_entry(small[0]))
    assert {len(encode_entry(e)) for e in small} == {size}
    n = 3
    while len(encode_entry(entry(tuple(range(n))))) <= size * 1.3:
        n += 1
    large = entry(tuple(range(n)))
    assert size < len(encode_entry(large)) < 2 * size
    clock = sqlite_backend.advance

    async def body(store):
        for key, value in zip((KEY_A, KEY_B, KEY_C), small, strict=False):
            assert await store.put(key, value) == 0
            await clock(1)
        await store.get_many([KEY_A])  # A is now more recently used than B and C
        await clock(1)
        assert await store.put(KEY_D, small[3]) == 1  # evicts B
        await clock(1)
        assert await store.stats() == StoreStats(3, 3 * size)
        assert await store.put(KEY_E, large) == 2  # evicts C, then A
        assert set(await store.get_many([KEY_A, KEY_B, KEY_C, KEY_D, KEY_E])) == {KEY_D, KEY_E}
        too_big = entry(tuple(range(400)))  # larger than max_bytes on its own: not kept
        assert await store.put(KEY_A, too_big) == 1
        assert set(await store.get_many([KEY_A, KEY_D, KEY_E])) == {KEY_D, KEY_E}

    run(sqlite_backend, body, Limits(max_bytes=3 * size))
    row, counted = db_totals(sqlite_backend.path)
    assert row == counted == (2, size + len(encode_entry(large)))


def test_sqlite_skips_damaged_values(sqlite_backend):
    run(sqlite_backend, lambda store: store.put(KEY_A, entry()))
    with sqlite3.connect(sqlite_backend.path) as conn:
        conn.execute("UPDATE entries SET value = ?", (b"VTM\x09garbage",))
    conn.close()
    assert run(sqlite_backend, lambda store: store.get_many([KEY_A])) == {}


def test_sqlite_refuses_another_schema_version(sqlite_backend):
    run(sqlite_backend, lambda store: store.stats())
    with sqlite3.connect(sqlite_backend.path) as conn:
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version 7"):
        run(sqlite_backend, lambda store: store.stats())


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from pathlib import Path
    from vllm_tokens_patch.memory_store import Entry, SqliteStore

    path, count = sys.argv[1], int(sys.argv[4])
    read_key, prefix = bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])

    async def main():
        store = SqliteStore(Path(path))
        try:
            seen = await store.get_many([read_key])
            for i in range(count):
                value = Entry((i, 1, 2), ((1, 3),), logprobs=None, session=f"child-{i}", created=time.time())
                await store.put(prefix + i.to_bytes(4, "big"), value)
        finally:
            await store.close()
        print(json.dumps([list(e.ids) for e in seen.get(read_key, [])]))

    asyncio.run(main())
    """
)


def child(path: Path, read_key: bytes, prefix: bytes, count: int, cwd: Path) -> subprocess.Popen[str]:
    """Another process of the same server: a fresh interpreter with its own SqliteStore on `path`."""
    command = [sys.executable, "-c", CHILD, str(path), read_key.hex(), prefix.hex(), str(count)]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen[str]) -> Any:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return json.loads(out)


def test_sqlite_processes_share_the_file(tmp_path):
    path = tmp_path / "shared" / "memory.sqlite3"

    async def parent_put():
        store = SqliteStore(path)
        await store.put(KEY_A, entry((42, 43), turns=()))
        await store.close()

    asyncio.run(parent_put())
    assert finished(child(path, KEY_A, b"child-1:", 1, tmp_path)) == [[42, 43]]  # sees the parent's put

    async def parent_get():
        store = SqliteStore(path)
        try:
            return await store.get_many([b"child-1:" + (0).to_bytes(4, "big")])
        finally:
            await store.close()

    found = asyncio.run(parent_get())  # sees the child's put
    assert [(e.ids, e.session) for entries in found.values() for e in entries] == [((0, 1, 2), "child-0")]


def test_sqlite_processes_write_at_the_same_time(tmp_path):
    path = tmp_path / "memory.sqlite3"  # created by whichever process comes first
    children = [child(path, MISSING, f"writer-{n}:".encode(), 150, tmp_path) for n in range(2)]

    async def parent():
        store = SqliteStore(path)
        try:
            for i in range(150):
                await store.put(b"parent:" + i.to_bytes(4, "big"), entry((i, 1, 2)))
        finally:
            await store.close()

    asyncio.run(parent())
    assert [finished(process) for process in children] == [[], []]
    row, counted = db_totals(path)
    assert row == counted and row[0] == 450
