"""capture.py: the engine client's outputs read into the request's capture, handed on untouched, and the
engine's generator closed when the reader stops (vLLM aborts the request then)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from vllm_tokens_patch.adapters.base import Adapter
from vllm_tokens_patch.capture import Capture, capturing, observe_engine


@dataclass
class Choice:
    index: int
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class Output:
    prompt_token_ids: list[int]
    outputs: list[Choice]


@dataclass
class Kind:
    name: str


@dataclass
class Sampling:
    output_kind: Kind


@dataclass
class Engine:
    steps: list[Output]
    closed: int = 0
    calls: list[Any] = field(default_factory=list)

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> AsyncIterator[Output]:
        self.calls.append(prompt)
        try:
            for step in self.steps:
                await asyncio.sleep(0)
                yield step
        finally:
            self.closed += 1


@dataclass
class Serving:
    engine_client: Engine


ADAPTER = Adapter()
DELTAS = [
    Output([1, 2, 3], [Choice(0, [7]), Choice(1, [9])]),
    Output([1, 2, 3], [Choice(0, [8], "stop")]),
    Output([1, 2, 3], [Choice(1, [10], "length")]),
]


async def drain(engine: Engine, kind: str, stop_after: int | None = None) -> tuple[Capture, list[Output]]:
    seen: list[Output] = []
    with capturing() as capture:
        outputs = engine.generate("prompt", Sampling(Kind(kind)), "r1")
        async for output in outputs:
            seen.append(output)
            if stop_after is not None and len(seen) == stop_after:
                await outputs.aclose()  # type: ignore[attr-defined]
                break
    return capture, seen


def test_delta_outputs_are_read_per_choice_and_handed_on_untouched() -> None:
    engine = Engine(DELTAS)
    patch = observe_engine(ADAPTER, Serving(engine))
    assert patch is not None
    capture, seen = asyncio.run(drain(engine, "DELTA"))
    assert seen == DELTAS
    assert (capture.prompt_ids, capture.sampled, capture.finish) == (
        [1, 2, 3],
        {0: [7, 8], 1: [9, 10]},
        {0: "stop", 1: "length"},
    )
    assert capture.complete and capture.usable
    patch.undo()
    assert "generate" not in vars(engine), "the instance attribute is gone again"


def test_cumulative_outputs_replace_what_was_read() -> None:
    engine = Engine([Output([5], [Choice(0, [1])]), Output([5], [Choice(0, [1, 2], "stop")])])
    observe_engine(ADAPTER, Serving(engine))
    capture, _ = asyncio.run(drain(engine, "CUMULATIVE"))
    assert capture.sampled == {0: [1, 2]}


def test_a_reader_that_stops_closes_the_engines_generator_and_nothing_is_usable() -> None:
    engine = Engine(DELTAS)
    observe_engine(ADAPTER, Serving(engine))
    capture, seen = asyncio.run(drain(engine, "DELTA", stop_after=1))
    assert len(seen) == 1 and engine.closed == 1
    assert not capture.complete and not capture.usable


def test_without_a_capture_the_call_is_the_engines_own() -> None:
    engine = Engine(DELTAS)
    observe_engine(ADAPTER, Serving(engine))
    assert observe_engine(ADAPTER, Serving(engine)) is None, "wrapped once"

    async def plain() -> list[Output]:
        return [output async for output in engine.generate("p", Sampling(Kind("DELTA")), "r")]

    assert asyncio.run(plain()) == DELTAS


def test_two_generate_calls_in_one_request_are_not_recorded() -> None:
    engine = Engine(DELTAS[:1])
    observe_engine(ADAPTER, Serving(engine))

    async def twice() -> Capture:
        with capturing() as capture:
            for _ in range(2):
                async for _output in engine.generate("p", Sampling(Kind("DELTA")), "r"):
                    pass
        return capture

    capture = asyncio.run(twice())
    assert capture.calls == 2 and not capture.usable
