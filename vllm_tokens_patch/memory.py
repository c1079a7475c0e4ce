"""Conversation memory (`VLLM_TOKENS_PATCH_MEMORY`): the server remembers the exact ids it fed and sampled
per conversation, and a request that extends a recorded conversation is served as if it had sent
`prefix_tokens` = those ids. For agent harnesses that only speak plain Chat Completions.

- Record: every successful completion served with memory on (stock route, token route; JSON and SSE) is
  stored under the key of its conversation (the request's `messages` plus the assistant message the
  server returned, one branch per choice), with the engine's prompt ids + sampled ids (`capture`), where
  each model call's prompt and sampled ids lie (`turns`), and the sampled logprobs the response carried.
- Reuse: the longest prefix of a request's `messages` that ends with an assistant message and was
  recorded gives the prefix; the splice adds the new messages. Two recorded branches with different ids
  for the same text are no reuse unless the request's `session_id` or `user` picks one.
- Export: `trajectory` gives a recorded branch as the trainer needs it.

Keys and the reading of responses are `conversation`'s; storage is `memory_store`'s. This module and the
ASGI glue below know nothing of vLLM's objects (the adapter reads the engine's outputs).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_tokens_patch import conversation
from vllm_tokens_patch.capture import Capture
from vllm_tokens_patch.conversation import AssistantMessage
from vllm_tokens_patch.memory_store import Entry, Limits, MemoryStore, open_store

MEMORY_HEADER = "x-vllm-tokens-memory"
"""On stock-route answers with memory on: `hit; messages=K; ids=N` or `miss; reason=R`."""
LOCAL_FILE = "vllm-tokens-patch-memory.sqlite3"
"""The local store's file, in the directory the server's API-server processes share."""


def local_path() -> Path:
    """Where `local` memory lives: vLLM gives the API servers of one `vllm serve --api-server-count N`
    one Prometheus multiprocess directory (`PROMETHEUS_MULTIPROC_DIR`), so they share the file there (its
    name does not end in `.db`, which that directory's collector reads); a single API server gets a
    directory of its own."""
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if shared:
        return Path(shared) / LOCAL_FILE
    return Path(tempfile.mkdtemp(prefix="vllm-tokens-patch-memory-")) / LOCAL_FILE


@dataclass(frozen=True)
class Lookup:
    """What the memory found for a request: the entry to reuse (a hit) or why not (a miss)."""

    keys: list[bytes | None]
    entry: Entry | None = None
    messages: int = 0
    """How many of the request's messages the entry covers (a hit)."""
    reason: str = "hit"
    """On a miss: `no_history` (no assistant message), `unknown`, `ambiguous`, `unkeyable` (e.g. media),
    `token_fields` (the request carries ids of its own), `not_json`, `refused` (a hit whose splice the
    token endpoint refused: vLLM's own route answered)."""

    @property
    def hit(self) -> bool:
        return self.entry is not None

    def header_value(self) -> str:
        if self.entry is not None:
            return f"hit; messages={self.messages}; ids={len(self.entry.ids)}"
        return f"miss; reason={self.reason}"


def miss(reason: str) -> Lookup:
    return Lookup([], reason=reason)


class Memory:
    """One process's view of the store (opened on first use, so after vLLM forks its API servers)."""

    def __init__(self, setting: str, limits: Limits, path: Callable[[], Path] = local_path) -> None:
        self.setting = setting
        self.limits = limits
        self._path = path
        self._store: MemoryStore | None = None

    @property
    def store(self) -> MemoryStore:
        if self._store is None:
            self._store = open_store(self.setting, self._path(), self.limits)
        return self._store

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def lookup(self, model: str, messages: Sequence[Any], session: str | None) -> Lookup:
        """The longest recorded prefix of `messages` that ends with an assistant message."""
        keys = conversation.conversation_keys(model, messages)
        candidates = conversation.assistant_prefixes(messages)
        if not candidates:
            return Lookup(keys, reason="no_history")
        keyed = {index: key for index in candidates if (key := keys[index]) is not None}
        if not keyed:
            return Lookup(keys, reason="unkeyable")
        found = await self.store.get_many(list(keyed.values()))
        for index, key in keyed.items():
            entries = found.get(key)
            if not entries:
                continue
            chosen = choose(entries, session)
            if chosen is None:
                return Lookup(keys, reason="ambiguous")
            return Lookup(keys, chosen, index + 1)
        return Lookup(keys, reason="unknown" if keys[candidates[0]] is not None else "unkeyable")

    async def record(
        self,
        lookup: Lookup,
        capture: Capture,
        answers: dict[int, AssistantMessage],
        logprobs: dict[int, list[float]],
        session: str | None,
    ) -> tuple[int, int]:
        """Store one branch per choice the engine finished and the response answered; how many were
        stored, and how many old entries that evicted."""
        if not capture.usable or not lookup.keys or lookup.keys[-1] is None:
            return 0, 0
        prompt = capture.prompt_ids or []
        parent = lookup.entry
        chained = parent is not None and prompt[: len(parent.ids)] == list(parent.ids)
        recorded = evicted = 0
        for index, answer in sorted(answers.items()):
            sampled = capture.sampled.get(index)
            if sampled is None:
                continue
            key = conversation.extend_key(lookup.keys[-1], answer.as_message())
            if key is None:
                continue
            ids = (*prompt, *sampled)
            turns = ((*parent.turns,) if chained and parent is not None else ()) + ((len(prompt), len(ids)),)
            entry = Entry(
                ids=ids,
                turns=turns,
                logprobs=_logprobs(
                    parent if chained else None, len(prompt), logprobs.get(index), len(sampled)
                ),
                session=session,
                created=time.time(),
            )
            evicted += await self.store.put(key, entry)
            recorded += 1
        return recorded, evicted

    async def trajectory(self, model: str, messages: Sequence[Any], session: str | None) -> Entry | str:
        """The recorded branch whose conversation is exactly `messages` (ending with the assistant message
        the server returned), or why there is none: `unknown`, `ambiguous`, `unkeyable`, `no_history`."""
        if not messages or conversation.assistant_prefixes(messages)[:1] != [len(messages) - 1]:
            return "no_history"
        key = conversation.conversation_keys(model, messages)[-1]
        if key is None:
            return "unkeyable"
        entries = (await self.store.get_many([key])).get(key)
        if not entries:
            return "unknown"
        chosen = choose(entries, session)
        return "ambiguous" if chosen is None else chosen


def choose(entries: Sequence[Entry], session: str | None) -> Entry | None:
    """The one branch `entries` (newest first, distinct by ids) stand for, or None when the same text was
    recorded with different ids and `session` does not pick exactly one."""
    if len(entries) == 1:
        return entries[0]
    if session is not None:
        mine = [entry for entry in entries if entry.session == session]
        if len(mine) == 1:
            return mine[0]
    return None


def _logprobs(
    parent: Entry | None, prompt_len: int, sampled: list[float] | None, sampled_len: int
) -> tuple[float | None, ...] | None:
    """One value per id: the parent's where it has them, None for other prompt ids, the sampled ones."""
    if sampled is not None and len(sampled) != sampled_len:
        sampled = None
    earlier = parent.logprobs if parent is not None else None
    if sampled is None and earlier is None:
        return None
    head: list[float | None] = list(earlier or ())[:prompt_len]
    head += [None] * (prompt_len - len(head))
    tail: list[float | None] = list(sampled) if sampled is not None else [None] * sampled_len
    return (*head, *tail)


def trajectory_body(entry: Entry) -> dict[str, Any]:
    """The export's JSON: the ids, which of them the model sampled, where each call's prompt and sampled
    ids end, and the sampled logprobs where recorded."""
    mask = [0] * len(entry.ids)
    for prompt_end, sampled_end in entry.turns:
        mask[prompt_end:sampled_end] = [1] * (sampled_end - prompt_end)
    logprobs = None
    if entry.logprobs is not None:
        logprobs = [None if v is None or math.isnan(v) else v for v in entry.logprobs]
    return {
        "token_ids": list(entry.ids),
        "sampled_mask": mask,
        "turns": [{"prompt_end": p, "sampled_end": s} for p, s in entry.turns],
        "logprobs": logprobs,
    }
