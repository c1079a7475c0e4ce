"""Conversation memory storage: a bounded key -> entries store for the exact token ids a model was fed and
sampled, so a later request of the same conversation can reuse them instead of re-tokenizing text.

Only the storage layer: keys are opaque bytes (hashes made elsewhere); nothing here knows vLLM, HTTP or chat
messages. Two backends behind one `MemoryStore` protocol:

- `SqliteStore` ("local"): one SQLite file (WAL mode) shared by the processes of ONE server on one machine;
  bounded by `Limits.max_bytes` (least recently used evicted first) and `Limits.max_age`.
- `RedisStore` (redis://, rediss://, unix://): a Redis or Valkey server shared by many servers; entries
  expire `Limits.max_age` after their key's last use, and the server's own memory bound evicts: run it
  with `maxmemory <bytes>` and `maxmemory-policy allkeys-lru`.

An entry's last use is the last `put` or `get_many` of its key (all entries of a key are used together).
Store errors (a locked file past the busy timeout, an unreachable Redis) propagate: callers should treat
them as a miss, not fail the request.
"""

from __future__ import annotations

import array
import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
import sqlite3
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    # `redis` is optional: the unused-ignore lets mypy pass with and without it installed.
    import redis.asyncio  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "Entry",
    "Limits",
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "StoreStats",
    "decode_entry",
    "encode_entry",
    "open_store",
]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Entry:
    """What one branch of a conversation fed the engine and sampled, exactly as token ids.

    `turns` holds one `(prompt_end, sampled_end)` pair of offsets into `ids` per model call, in order, so a
    caller can tell prompt ids from sampled ones. `logprobs` is None or one value per id (None where not
    sampled or not recorded)."""

    ids: tuple[int, ...]
    turns: tuple[tuple[int, int], ...]
    logprobs: tuple[float | None, ...] | None
    session: str | None
    created: float


@dataclass(frozen=True)
class Limits:
    """How much a store keeps: `max_bytes` of encoded entries (SQLite only: Redis bounds itself with
    `maxmemory`), each for `max_age` seconds after its key's last use."""

    max_bytes: int = 1 << 30
    max_age: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or not self.max_age > 0 or math.isinf(self.max_age):
            raise ValueError(f"Limits need max_bytes > 0 and a finite max_age > 0, got {self}")


@dataclass(frozen=True)
class StoreStats:
    """What a store holds now (for tests, `doctor` and gauges)."""

    entries: int
    bytes: int


DEFAULT_LIMITS = Limits()


@runtime_checkable
class MemoryStore(Protocol):
    """A bounded key -> entries store; a key maps to a set of entries distinct by their ids."""

    async def put(self, key: bytes, entry: Entry) -> int:
        """Store `entry` under `key`, replacing an entry of that key with the same ids; return how many
        entries this call evicted (age or size: for a metric)."""
        ...

    async def get_many(self, keys: Sequence[bytes]) -> dict[bytes, list[Entry]]:
        """All entries of each key that has any, newest (`Entry.created`; equal ones in any order) first,
        in one round trip; the keys' last use becomes now. Absent keys are not in the result."""
        ...

    async def stats(self) -> StoreStats:
        """How many entries and encoded bytes are stored."""
        ...

    async def close(self) -> None:
        """Release the connection (and the worker thread); the store is unusable afterwards."""
        ...


# ---------------------------------------------------------------------------------------------------------
# Encoding: b"VTM" + version + flags, then (zlib-compressed when it saves >= 10%): u32 header length, a JSON
# header, the ids as uint32 little-endian, and the logprobs as float64 little-endian (NaN for None).

_MAGIC = b"VTM"
_VERSION = 1
_FLAG_ZLIB = 1
_PREAMBLE = len(_MAGIC) + 2
_HEADER_LEN = struct.Struct("<I")
_U32 = "I" if array.array("I").itemsize == 4 else "L"  # "I" is 4 bytes on every platform CPython runs on
_SWAP = sys.byteorder == "big"
_COMPRESS_MIN = 512  # bytes of body: below that zlib's overhead eats the gain
_COMPRESS_LEVEL = 1  # 32k ids: level 6 saves < 1% more at 5-7x the time (15-28 ms)
_HEADER_KEYS = frozenset({"n", "turns", "session", "created", "logprobs"})


def _ids_bytes(ids: Sequence[int]) -> bytes:
    try:
        packed = array.array(_U32, ids)
    except (OverflowError, TypeError) as error:
        raise ValueError(f"Entry.ids must be ints in [0, 2**32): {error}") from None
    if _SWAP:
        packed.byteswap()
    return packed.tobytes()


def _check_turns(turns: Sequence[Sequence[int]], n: int) -> None:
    previous = 0
    for turn in turns:
        if len(turn) != 2 or not all(type(offset) is int for offset in turn):
            raise ValueError(f"Entry.turns: each turn is (prompt_end, sampled_end), got {turn!r}")
        prompt_end, sampled_end = turn
        if not previous <= prompt_end <= sampled_end <= n:
            raise ValueError(
                f"Entry.turns: offsets must be ordered and within the {n} ids, got {[list(t) for t in turns]}"
            )
        previous = sampled_end


def _encode(entry: Entry) -> tuple[bytes, bytes]:
    """The encoded entry and the digest of its ids (what makes entries of one key distinct)."""
    n = len(entry.ids)
    ids = _ids_bytes(entry.ids)
    _check_turns(entry.turns, n)
    if entry.session is not None and not isinstance(entry.session, str):
        raise ValueError(f"Entry.session must be a str or None, got {type(entry.session).__name__}")
    header: dict[str, Any] = {
        "n": n,
        "turns": [[p, s] for p, s in entry.turns],
        "session": entry.session,
        "created": float(entry.created),
        "logprobs": entry.logprobs is not None,
    }
    parts = [b"", json.dumps(header, separators=(",", ":"), allow_nan=False).encode(), ids]
    parts[0] = _HEADER_LEN.pack(len(parts[1]))
    if entry.logprobs is not None:
        if len(entry.logprobs) != n:
            raise ValueError(f"Entry.logprobs has {len(entry.logprobs)} values for {n} ids")
        try:
            values = array.array("d", [math.nan if v is None else v for v in entry.logprobs])
        except TypeError as error:
            raise ValueError(f"Entry.logprobs must be floats or None: {error}") from None
        if _SWAP:
            values.byteswap()
        parts.append(values.tobytes())
    body = b"".join(parts)
    flags = 0
    if len(body) >= _COMPRESS_MIN:
        packed = zlib.compress(body, _COMPRESS_LEVEL)
        if len(packed) <= len(body) * 0.9:
            body, flags = packed, _FLAG_ZLIB
    digest = hashlib.blake2b(ids, digest_size=16).digest()
    return _MAGIC + bytes((_VERSION, flags)) + body, digest


def encode_entry(entry: Entry) -> bytes:
    """Compact bytes for `entry` (JSON cannot carry 32k ids cheaply); ValueError if the entry is invalid.

    A logprob that is NaN reads back as None."""
    return _encode(entry)[0]


def decode_entry(data: bytes) -> Entry:
    """The entry `encode_entry` made; ValueError on anything else (other versions, truncation, garbage)."""
    data = bytes(data)
    if len(data) < _PREAMBLE or data[: len(_MAGIC)] != _MAGIC:
        raise ValueError("not an encoded memory entry (bad magic)")
    version, flags = data[len(_MAGIC)], data[len(_MAGIC) + 1]
    if version != _VERSION or flags & ~_FLAG_ZLIB:
        raise ValueError(f"unsupported memory entry encoding (version {version}, flags {flags})")
    body = data[_PREAMBLE:]
    if flags & _FLAG_ZLIB:
        try:
            body = zlib.decompress(body)
        except zlib.error as error:
            raise ValueError(f"corrupt memory entry: {error}") from None
    if len(body) < _HEADER_LEN.size:
        raise ValueError("corrupt memory entry: truncated header")
    (header_len,) = _HEADER_LEN.unpack_from(body)
    start = _HEADER_LEN.size + header_len
    try:
        header = json.loads(body[_HEADER_LEN.size : start].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"corrupt memory entry header: {error}") from None
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        raise ValueError("corrupt memory entry header: wrong fields")
    n, turns, session, created, has_logprobs = (
        header[k] for k in ("n", "turns", "session", "created", "logprobs")
    )
    if type(n) is not int or n < 0 or not isinstance(turns, list) or not isinstance(has_logprobs, bool):
        raise ValueError("corrupt memory entry header: wrong field types")
    if not (session is None or isinstance(session, str)) or type(created) not in (int, float):
        raise ValueError("corrupt memory entry header: wrong field types")
    if not all(isinstance(turn, list) for turn in turns):
        raise ValueError("corrupt memory entry header: wrong field types")
    _check_turns(turns, n)
    ids_end = start + 4 * n
    if len(body) != ids_end + (8 * n if has_logprobs else 0):
        raise ValueError(f"corrupt memory entry: {len(body)} bytes do not hold {n} ids as the header says")
    ids = array.array(_U32)
    ids.frombytes(body[start:ids_end])
    logprobs: tuple[float | None, ...] | None = None
    if has_logprobs:
        values = array.array("d")
        values.frombytes(body[ids_end:])
        if _SWAP:
            values.byteswap()
        logprobs = tuple([None if v != v else v for v in values])  # v != v: NaN
    if _SWAP:
        ids.byteswap()
    return Entry(
        ids=tuple(ids),
        turns=tuple((p, s) for p, s in turns),
        logprobs=logprobs,
        session=session,
        created=float(created),
    )


def _now() -> float:
    return time.time()


def _unique(keys: Sequence[bytes]) -> list[bytes]:
    for key in keys:
        if not isinstance(key, bytes):
            raise TypeError(f"memory store keys are bytes, got {type(key).__name__}")
    return list(dict.fromkeys(keys))


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# What a forked child inherited and must neither use nor close (closing could touch the parent's locks and
# sockets): kept referenced so no finalizer runs.
_ABANDONED: list[object] = []


# ---------------------------------------------------------------------------------------------------------
# SQLite

_SCHEMA_VERSION = 1
_BUSY_TIMEOUT_MS = 5000
_SQL_CHUNK = 500  # bound parameters per IN (...): old SQLite builds allow 999
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries(
        key BLOB NOT NULL, ids_digest BLOB NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL,
        last_used REAL NOT NULL, value BLOB NOT NULL, PRIMARY KEY (key, ids_digest))""",
    "CREATE INDEX IF NOT EXISTS entries_last_used ON entries(last_used)",
    # The totals the eviction reads on every put: O(1) here, where SUM(size) scans every row.
    """CREATE TABLE IF NOT EXISTS totals(
        id INTEGER PRIMARY KEY CHECK (id = 0), entries INTEGER NOT NULL, bytes INTEGER NOT NULL)""",
    "INSERT OR IGNORE INTO totals VALUES (0, 0, 0)",
    """CREATE TRIGGER IF NOT EXISTS entries_insert AFTER INSERT ON entries BEGIN
        UPDATE totals SET entries = entries + 1, bytes = bytes + new.size WHERE id = 0; END""",
    """CREATE TRIGGER IF NOT EXISTS entries_delete AFTER DELETE ON entries BEGIN
        UPDATE totals SET entries = entries - 1, bytes = bytes - old.size WHERE id = 0; END""",
    """CREATE TRIGGER IF NOT EXISTS entries_resize AFTER UPDATE OF size ON entries BEGIN
        UPDATE totals SET bytes = bytes - old.size + new.size WHERE id = 0; END""",
    f"PRAGMA user_version = {_SCHEMA_VERSION}",
)


def _transaction(conn: sqlite3.Connection, work: Callable[[], _T]) -> _T:
    """`work` in one short write transaction; BEGIN IMMEDIATE takes the write lock up front (waiting up to
    the busy timeout) so a transaction never fails half-way on a lock upgrade."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # also after a failed COMMIT: the next BEGIN must not find one open
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


class SqliteStore:
    """The embedded backend: one SQLite file shared by the processes of one server on one machine.

    All SQLite work (and the encoding and decoding of entries) runs on one worker thread per store that owns
    the connection, so the event loop never waits on disk or a lock. The file is opened on first use: the
    object may be made before the event loop runs, or in a parent process before it forks (a store used
    before a fork opens its own connection and thread in the child; better make it after the fork)."""

    def __init__(self, path: Path, limits: Limits = DEFAULT_LIMITS) -> None:
        self.path = Path(path)
        self.limits = limits
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # only touched on the worker thread
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r}, {self.limits})"

    async def put(self, key: bytes, entry: Entry) -> int:
        if not isinstance(key, bytes):
            raise TypeError(f"memory store keys are bytes, got {type(key).__name__}")
        return await self._run(lambda conn: self._put(conn, key, entry))

    async def get_many(self, keys: Sequence[bytes]) -> dict[bytes, list[Entry]]:
        unique = _unique(keys)
        if not unique:
            return {}
        return await self._run(lambda conn: self._get_many(conn, unique))

    async def stats(self) -> StoreStats:
        def count(conn: sqlite3.Connection) -> StoreStats:
            entries, size = conn.execute("SELECT entries, bytes FROM totals WHERE id = 0").fetchone()
            return StoreStats(entries=int(entries), bytes=int(size))

        return await self._run(count)

    async def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
            forked = self._pid != os.getpid()
        if executor is None:
            return
        if forked:
            _ABANDONED.extend(x for x in (executor, self._conn) if x is not None)
            self._conn = None
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_connection)
        finally:
            executor.shutdown(wait=False)

    # The worker thread's side.

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        executor = self._worker()
        return await asyncio.get_running_loop().run_in_executor(executor, self._call, work)

    def _worker(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._pid != os.getpid():  # forked: the parent's connection and thread are not ours
                _ABANDONED.extend(x for x in (self._executor, self._conn) if x is not None)
                self._pid, self._executor, self._conn = os.getpid(), None, None
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="vllm-tokens-patch-memory"
                )
            return self._executor

    def _call(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._conn is None:
            self._conn = self._open()
        return work(self._conn)

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; ours are explicit and short.
        conn = sqlite3.connect(str(self.path), timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(
                    f"{self.path}: SQLite could not use WAL mode (got {mode!r}); a network filesystem?"
                )
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable but for the last commits
            conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate a checkpointed WAL to 64 MiB
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version != _SCHEMA_VERSION:
                if version != 0:
                    raise sqlite3.DatabaseError(
                        f"{self.path}: memory store schema version {version}, this version reads "
                        f"{_SCHEMA_VERSION}: remove the file (it is only a cache)"
                    )
                _transaction(conn, lambda: [conn.execute(statement) for statement in _SCHEMA])
        except BaseException:
            conn.close()
            raise
        return conn

    def _put(self, conn: sqlite3.Connection, key: bytes, entry: Entry) -> int:
        value, digest = _encode(entry)
        size = len(value)
        limits = self.limits

        def work() -> int:
            now = _now()
            conn.execute("DELETE FROM entries WHERE key = ? AND ids_digest = ?", (key, digest))
            evicted = conn.execute(
                "DELETE FROM entries WHERE last_used < ?", (now - limits.max_age,)
            ).rowcount
            if size > limits.max_bytes:  # larger than the whole budget: kept no time at all
                return evicted + 1
            conn.execute(
                "INSERT INTO entries(key, ids_digest, size, created, last_used, value) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key, digest, size, entry.created, now, value),
            )
            conn.execute("UPDATE entries SET last_used = ? WHERE key = ?", (now, key))
            (total,) = conn.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()
            if total > limits.max_bytes:
                evicted += self._evict_lru(conn, total - limits.max_bytes)
            return int(evicted)

        return _transaction(conn, work)

    @staticmethod
    def _evict_lru(conn: sqlite3.Connection, excess: int) -> int:
        """Delete the least recently used entries until `excess` bytes are freed; how many went."""
        victims: list[tuple[int]] = []
        freed = 0
        cursor = conn.execute("SELECT rowid, size FROM entries ORDER BY last_used, rowid")
        try:
            for rowid, size in cursor:
                victims.append((rowid,))
                freed += size
                if freed >= excess:
                    break
        finally:
            cursor.close()
        conn.executemany("DELETE FROM entries WHERE rowid = ?", victims)
        return len(victims)

    def _get_many(self, conn: sqlite3.Connection, keys: list[bytes]) -> dict[bytes, list[Entry]]:
        now = _now()
        cutoff = now - self.limits.max_age  # older ones are gone but for the next put's eviction
        rows: list[tuple[bytes, bytes]] = []
        for chunk in _chunks(keys, _SQL_CHUNK):
            marks = ",".join("?" * len(chunk))
            rows += conn.execute(
                f"SELECT key, value FROM entries WHERE key IN ({marks}) AND last_used >= ? "
                "ORDER BY created DESC, rowid DESC",
                (*chunk, cutoff),
            ).fetchall()
        found = list(dict.fromkeys(bytes(key) for key, _ in rows))
        for chunk in _chunks(found, _SQL_CHUNK):  # the refresh: its own short autocommit write
            marks = ",".join("?" * len(chunk))
            conn.execute(
                f"UPDATE entries SET last_used = ? WHERE key IN ({marks}) AND last_used >= ?",
                (now, *chunk, cutoff),
            )
        result: dict[bytes, list[Entry]] = {}
        for key, value in rows:
            try:
                entry = decode_entry(value)
            except ValueError:  # written by another version, or damaged: a miss, not an error
                continue
            result.setdefault(bytes(key), []).append(entry)
        return result


# ---------------------------------------------------------------------------------------------------------
# Redis / Valkey

# Off the event loop (the loop's default executor): encoding more ids than this (32k ids: 3-8 ms), and
# decoding more encoded bytes than this (a 32k-id entry with logprobs: ~220 kB, ~4 ms).
_OFFLOAD_IDS = 4096
_OFFLOAD_BYTES = 1 << 16


def _import_redis() -> Any:
    try:
        import redis.asyncio as aioredis  # type: ignore[import-not-found, unused-ignore]
    except ImportError as error:
        raise ImportError(
            "the redis memory store needs the `redis` package (redis-py >= 5.0.1): pip install redis"
        ) from error
    return aioredis


def _glob_escape(raw: bytes) -> bytes:
    return b"".join(b"\\" + bytes((c,)) if c in b"*?[]\\" else bytes((c,)) for c in raw)


class RedisStore:
    """The shared backend: a Redis/Valkey server for many servers.

    Per key one hash (field: the ids' digest, value: the encoded entry) whose TTL is `max_age`, refreshed by
    every put and get of the key; each call is one pipeline (one round trip). Size is bounded by the server:
    run it with `maxmemory` and `maxmemory-policy allkeys-lru`, so `put` reports 0 evictions. Not for Redis
    Cluster (a call's keys may live on several nodes). `redis` is imported here, not by the module."""

    def __init__(self, url: str, limits: Limits = DEFAULT_LIMITS, prefix: str = "vllm-tokens-patch:") -> None:
        self._redis = _import_redis()
        self.url = url
        self.limits = limits
        self.prefix = prefix.encode()
        self._ttl_ms = max(1, math.ceil(limits.max_age * 1000))
        self._client: redis.asyncio.Redis | None = None
        self._client_owner: tuple[int, asyncio.AbstractEventLoop] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisStore({_redact(self.url)!r}, {self.limits}, prefix={self.prefix.decode()!r})"

    def _connection(self) -> redis.asyncio.Redis:
        """The client of this process and event loop (made lazily: a client is bound to its loop, and a
        forked child must not share the parent's sockets)."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._client is None or self._client_owner != owner:
            if self._client_owner is not None and self._client_owner[0] != owner[0]:
                _ABANDONED.append(self._client)  # forked: the parent's sockets are not ours to close
            # (another loop of this process: dropped; its loop is gone, so it cannot be awaited)
            self._client = self._redis.from_url(self.url)
            self._client_owner = owner
        return self._client

    async def put(self, key: bytes, entry: Entry) -> int:
        if not isinstance(key, bytes):
            raise TypeError(f"memory store keys are bytes, got {type(key).__name__}")
        client = self._connection()
        if len(entry.ids) > _OFFLOAD_IDS:
            value, digest = await asyncio.get_running_loop().run_in_executor(None, _encode, entry)
        else:
            value, digest = _encode(entry)
        name = self.prefix + key
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(name, digest, value)
            pipe.pexpire(name, self._ttl_ms)
            await pipe.execute()
        return 0

    async def get_many(self, keys: Sequence[bytes]) -> dict[bytes, list[Entry]]:
        unique = _unique(keys)
        if not unique:
            return {}
        client = self._connection()
        async with client.pipeline(transaction=False) as pipe:
            for key in unique:
                pipe.hgetall(self.prefix + key)
                pipe.pexpire(self.prefix + key, self._ttl_ms)
            replies = await pipe.execute()
        found = {
            key: list(fields.values()) for key, fields in zip(unique, replies[::2], strict=True) if fields
        }
        if sum(len(v) for values in found.values() for v in values) > _OFFLOAD_BYTES:
            return await asyncio.get_running_loop().run_in_executor(None, _decode_all, found)
        return _decode_all(found)

    async def stats(self) -> StoreStats:
        """O(number of keys): scans every key of the prefix. For tests and `doctor`, not per request."""
        client = self._connection()
        entries = size = 0
        names: list[bytes] = []
        async for name in client.scan_iter(match=_glob_escape(self.prefix) + b"*", count=1000):
            names.append(name)
        for chunk in _chunks(names, 500):
            async with client.pipeline(transaction=False) as pipe:
                for name in chunk:
                    pipe.hkeys(name)
                fields = await pipe.execute()
            async with client.pipeline(transaction=False) as pipe:
                for name, digests in zip(chunk, fields, strict=True):
                    for digest in digests:
                        pipe.hstrlen(name, digest)
                lengths = await pipe.execute()
            entries += len(lengths)
            size += sum(int(length) for length in lengths)
        return StoreStats(entries=entries, bytes=size)

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is None:
            return
        owner = self._client_owner
        if owner is not None and owner[0] != os.getpid():
            _ABANDONED.append(client)  # the parent's sockets: not ours to close
        elif owner is not None and owner[1] is asyncio.get_running_loop():
            await client.aclose()
        # (made on another event loop of this process: that loop is gone, the client cannot be awaited)


def _decode_all(found: dict[bytes, list[bytes]]) -> dict[bytes, list[Entry]]:
    result: dict[bytes, list[Entry]] = {}
    for key, values in found.items():
        entries = []
        for value in values:
            try:
                entries.append(decode_entry(value))
            except ValueError:  # written by another version, or damaged: a miss, not an error
                continue
        if entries:
            entries.sort(key=lambda entry: entry.created, reverse=True)
            result[key] = entries
    return result


# ---------------------------------------------------------------------------------------------------------


def _redact(setting: str) -> str:
    """`setting` without a password (redis://user:secret@host -> redis://user:***@host)."""
    scheme, sep, rest = setting.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return setting
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def open_store(setting: str, local_path: Path, limits: Limits = DEFAULT_LIMITS) -> MemoryStore:
    """The store a setting names: "local" (SQLite at `local_path`), or a redis://, rediss:// or unix://
    URL of a Redis/Valkey server."""
    value = setting.strip()
    if value.lower() == "local":
        return SqliteStore(local_path, limits)
    scheme, sep, _ = value.partition("://")
    if sep and scheme.lower() in ("redis", "rediss", "unix"):
        return RedisStore(value, limits)
    raise ValueError(
        f"conversation memory store {_redact(setting)!r}: expected 'local' or a redis://, rediss:// "
        "or unix:// URL"
    )
