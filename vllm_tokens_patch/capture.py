"""What the engine was fed and sampled for one request, observed at vLLM's engine client (for the
conversation memory).

The memory records the exact ids; the response only carries them when the client asked
(`return_token_ids`), and rewriting a response is not ours to do. So the engine client's `generate` is
wrapped once per process (on the instance the chat serving object uses, reversibly): while a request's
`Capture` is current (a ContextVar its route opens), every output that passes is read into it and handed
on untouched; any other call passes straight through. The adapter says how an output reads
(`Adapter.engine_step`) and whether a call's outputs are cumulative.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from vllm_tokens_patch.adapters.base import Adapter
from vllm_tokens_patch.patches import Patch, Wrapper, wrap_attribute


@dataclass
class Capture:
    """One request's engine prompt and, per choice index, its sampled ids and finish reason."""

    prompt_ids: list[int] | None = None
    sampled: dict[int, list[int]] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)
    calls: int = 0
    """`generate` calls seen: anything but one (e.g. a harmony or beam request) is not recorded."""
    complete: bool = False
    """The engine's output ran to its end (not cancelled, no error)."""

    @property
    def usable(self) -> bool:
        return self.calls == 1 and self.complete and self.prompt_ids is not None


_current: ContextVar[Capture | None] = ContextVar("vllm_tokens_patch_capture", default=None)


@contextmanager
def capturing() -> Iterator[Capture]:
    """A fresh capture, current until the block ends (the request's route opens it)."""
    capture = Capture()
    token = _current.set(capture)
    try:
        yield capture
    finally:
        _current.reset(token)


def observe_engine(adapter: Adapter, serving: Any) -> Patch | None:
    """Wrap the `generate` of `serving`'s engine client (None if already wrapped or there is none)."""
    client = adapter.engine_client_of(serving)
    if client is None:
        return None
    return wrap_attribute(client, adapter.engine_generate, _generate_wrapper(adapter))


def _generate_wrapper(adapter: Adapter) -> Wrapper:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        capture = _current.get()
        if capture is None:
            return wrapped(*args, **kwargs)
        capture.calls += 1
        return _observed(wrapped(*args, **kwargs), capture, adapter, adapter.cumulative_outputs(args, kwargs))

    return wrapper


async def _observed(outputs: Any, capture: Capture, adapter: Adapter, cumulative: bool) -> AsyncIterator[Any]:
    """`outputs`, each read into `capture` and yielded unchanged; closing this closes them (vLLM aborts
    the request when its generator is closed or cancelled)."""
    try:
        async for output in outputs:
            step = adapter.engine_step(output)
            if step.prompt_ids is not None:
                capture.prompt_ids = step.prompt_ids
            for index, ids, finish in step.choices:
                if cumulative:
                    capture.sampled[index] = ids
                else:
                    capture.sampled.setdefault(index, []).extend(ids)
                if finish is not None:
                    capture.finish[index] = finish
            yield output
        capture.complete = True
    finally:
        close = getattr(outputs, "aclose", None)
        if close is not None:
            await close()
