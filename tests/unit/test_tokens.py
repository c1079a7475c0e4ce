from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from vllm_tokens_patch import outcome
from vllm_tokens_patch.adapters.base import Adapter, Location, RenderContext, RenderTarget
from vllm_tokens_patch.outcome import Outcome, Verification
from vllm_tokens_patch.tokens import TokensSwap
from vllm_tokens_patch.validation import (
    CHUNK,
    TokensRejected,
    check_engine_prompt,
    first_difference,
    validate_ids,
)


class Tokenizer:
    max_token_id = 99


CONTEXT = RenderContext(max_model_len=16, vocab_size=128, tokenizer=Tokenizer())


@pytest.mark.parametrize(
    ("rendered", "tokens", "index"),
    [
        ([1, 2, 3], [1, 2, 3], None),
        ([1, 2, 3], [1, 9, 3], 1),
        ([1, 2], [1, 2, 3], 2),
        ([1, 2, 3], [1], 1),
        ([], [5], 0),
    ],
)
def test_first_difference(rendered: list[int], tokens: list[int], index: int | None) -> None:
    assert first_difference(rendered, tokens) == index


@pytest.mark.parametrize("at", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK - 1, 5000 - 1])
def test_first_difference_on_long_lists_at_chunk_edges(at: int) -> None:
    rendered = list(range(5000))
    changed = [*rendered[:at], -1, *rendered[at + 1 :]]
    assert first_difference(rendered, changed) == at
    assert first_difference(rendered, rendered[:at]) == at
    assert first_difference(rendered[:at], rendered) == at


@pytest.mark.parametrize(("same", "at"), [(True, None), (False, 3000)])
def test_first_difference_across_sequence_types(same: bool, at: int | None) -> None:
    """A render may hand back a tuple (or an array) where the client sent a list: equal ids are equal."""
    rendered = list(range(5000))
    tokens = list(rendered) if same else [*rendered[:3000], -1, *rendered[3001:]]
    assert first_difference(tuple(rendered), tokens) == at
    assert first_difference(rendered, tuple(tokens)) == at


def test_vocabulary_bound_is_the_engines() -> None:
    assert CONTEXT.id_bound == 127
    assert RenderContext(16, 50, Tokenizer()).id_bound == 99
    assert RenderContext(16, None, None).id_bound is None


@pytest.mark.parametrize(
    ("tokens", "fragment"),
    [
        ([], "at least one"),
        ([1, 128], r"tokens\[1\] is out of vocabulary"),
        ([1] * 16, "maximum context length"),
    ],
)
def test_validate_ids_rejects(tokens: list[int], fragment: str) -> None:
    with pytest.raises(TokensRejected, match=fragment):
        validate_ids(tokens, CONTEXT)


def test_validate_ids_accepts_the_edges() -> None:
    validate_ids([0, 127] + [1] * 13, CONTEXT)


@pytest.mark.parametrize(
    "prompt",
    [
        {"type": "multimodal", "prompt_token_ids": [1]},
        {"prompt_token_ids": [1], "multi_modal_data": {}},
        {"type": "embeds"},
    ],
)
def test_engine_prompts_tied_to_media_are_refused(prompt: dict[str, Any]) -> None:
    with pytest.raises(TokensRejected):
        check_engine_prompt(prompt, Adapter())


class Request:
    def __init__(
        self,
        tokens: list[int],
        max_tokens: int | None = None,
        verify: bool | None = None,
        echo: bool = False,
    ) -> None:
        self.tokens = tokens
        self.max_tokens = max_tokens
        self.vllm_tokens_patch_verify = verify
        self.echo = echo
        self.kv_transfer_params: dict[str, Any] | None = None
        self.request_id = "req-1"


class Serving:
    def create_error_response(self, message: str, param: str | None = None) -> dict[str, Any]:
        return {"error": message, "param": param}


class FakeAdapter(Adapter):
    name = "fake"
    route_hook = Location("fake", "hook")
    chat_route = json_validator = request_base = Location("fake", "x")
    render_targets = ()

    def render_context(self, serving: Any, args: Any, kwargs: Any) -> RenderContext:
        return CONTEXT

    def check_length(self, serving: Any, request: Any, tokens: list[int], context: RenderContext) -> None:
        if request.max_tokens is not None and len(tokens) + request.max_tokens > context.max_model_len:
            raise ValueError("'max_tokens' is too large")


def rendered_result(ids: list[int]) -> tuple[list[Any], list[dict[str, Any]]]:
    return (
        [{"role": "user", "content": "hi"}],
        [
            {
                "type": "token",
                "prompt_token_ids": ids,
                "prompt": "hi",
                "prompt_token_offsets": [0],
                "cache_salt": "s",
            }
        ],
    )


class FastAdapter(FakeAdapter):
    """An adapter with a native reuse branch: records what it was offered and whether it was undone."""

    name = "fast"
    native_reuse = Location("fake", "reuse")

    def __init__(self) -> None:
        self.offered: list[list[int]] = []
        self.undone = 0

    def offer_ids(self, request: Any, tokens: list[int]) -> Any:
        self.offered.append(tokens)

        def undo() -> None:
            self.undone += 1

        return undo


def swap(verify: bool = True, adapter: Adapter | None = None) -> TokensSwap:
    return TokensSwap(adapter or FakeAdapter(), lambda request: True, verify=verify)


class Render:
    """Stands in for vLLM's render method: counts calls, returns a given result (or raises)."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls = 0

    def __call__(self, request: Any) -> Any:
        self.calls += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


TARGET = RenderTarget(Location("fake", "Serving.render"), is_async=False)


def render_with(swapper: TokensSwap, request: Request, result: Any) -> Any:
    return swapper.render_sync(Render(result), Serving(), TARGET, (request,), {})


@pytest.fixture
def seen() -> Iterator[Outcome]:
    """The request's outcome, open as the route opens it around vLLM's chat route."""
    with outcome.recording() as opened:
        yield opened


def test_swap_feeds_tokens_and_drops_what_described_the_rendered_ids(seen: Outcome) -> None:
    request = Request([5, 6, 7])
    result = render_with(swap(), request, rendered_result([5, 6, 8]))
    prompt = result[1][0]
    assert prompt == {"type": "token", "prompt_token_ids": [5, 6, 7], "cache_salt": "s"}
    assert seen.verification == Verification("mismatch", 2)
    assert seen.refusal is None and seen.splice is None


def test_mismatch_logs_one_warning_and_match_none(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="vllm.tokens_patch"):
        render_with(swap(), Request([5, 6, 7]), rendered_result([5, 6, 7]))
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        render_with(swap(), Request([5, 6, 7]), rendered_result([5, 6]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert (
        "req-1" in warnings[0] and "rendered 2 ids, tokens 3 ids" in warnings[0] and "index 2" in warnings[0]
    )
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("[5, 6, 7]" in m for m in debug) and any("[5, 6]" in m for m in debug)


def test_verify_off_skips_the_comparison(seen: Outcome) -> None:
    request = Request([5, 6, 7])
    render_with(swap(verify=False), request, rendered_result([1]))
    assert seen.verification == Verification("skipped")


@pytest.mark.parametrize(
    ("request_obj", "fragment"),
    [
        (Request([1, 500]), "out of vocabulary"),
        (Request([1] * 20), "maximum context length"),
        (Request([1, 2], max_tokens=15), "too large"),
    ],
)
def test_bad_tokens_return_the_render_error_and_leave_the_prompt(
    request_obj: Request, fragment: str, seen: Outcome
) -> None:
    result = rendered_result([1, 2])
    answer = render_with(swap(), request_obj, result)
    assert fragment in answer["error"]
    assert result[1][0]["prompt_token_ids"] == [1, 2]
    assert seen.refusal in {"out_of_vocabulary", "context_length"} and seen.verification is None


def test_vllm_errors_pass_through_untouched() -> None:
    error = {"error": "vLLM said no"}
    assert render_with(swap(), Request([1]), error) is error


@pytest.mark.parametrize(
    ("server", "request_switch", "compared"),
    [(True, None, True), (False, None, False), (True, False, False), (False, True, True)],
)
def test_the_request_switch_overrides_the_server_default(
    server: bool, request_switch: bool | None, compared: bool, seen: Outcome
) -> None:
    request = Request([5, 6, 7], verify=request_switch)
    render_with(swap(verify=server), request, rendered_result([5, 6, 8]))
    assert seen.verification is not None
    assert (seen.verification.result != "skipped") is compared


def test_fast_path_offers_the_ids_renders_once_and_undoes(seen: Outcome) -> None:
    adapter = FastAdapter()
    request = Request([5, 6, 7], verify=False)
    render = Render(rendered_result([5, 6, 7]))
    result = swap(adapter=adapter).render_sync(render, Serving(), TARGET, (request,), {})
    assert adapter.offered == [[5, 6, 7]] and adapter.undone == 1 and render.calls == 1
    assert result[1][0]["prompt_token_ids"] == [5, 6, 7] and "prompt" not in result[1][0]
    assert seen.verification == Verification("skipped")


def test_fast_path_undoes_when_vllm_raises() -> None:
    adapter = FastAdapter()
    with pytest.raises(RuntimeError):
        swap(adapter=adapter).render_sync(
            Render(RuntimeError("boom")), Serving(), TARGET, (Request([5], verify=False),), {}
        )
    assert adapter.undone == 1


def test_fast_path_undoes_before_a_cancellation_leaves_the_async_render() -> None:
    """The client goes away while vLLM's (async) render is awaited: the task is cancelled, and the ids
    offered to vLLM's reuse branch are taken back before the `CancelledError` leaves the wrapper (a
    cancellation is a BaseException, not an Exception)."""
    adapter = FastAdapter()

    async def main() -> tuple[int, int]:
        started = asyncio.Event()

        async def render(request: Any) -> Any:
            started.set()
            await asyncio.Event().wait()  # never set: vLLM still rendering

        request = Request([5, 6], verify=False)
        task = asyncio.create_task(
            swap(adapter=adapter).render_async(render, Serving(), TARGET, (request,), {})
        )
        await started.wait()
        offered_then_undone = adapter.undone
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return offered_then_undone, adapter.undone
        raise AssertionError("the cancellation did not reach the caller")

    assert asyncio.run(main()) == (0, 1)
    assert adapter.offered == [[5, 6]]


def test_the_outcome_reaches_a_render_in_a_task_the_route_awaits() -> None:
    """vLLM's `with_cancellation` runs the chat route in a task of its own: the task copies the context,
    so the swap writes into the outcome the route opened."""

    async def route() -> Outcome:
        with outcome.recording() as seen:
            request = Request([5, 6, 7])
            render = Render(rendered_result([5, 6, 7]))

            async def vllm_route() -> Any:
                async def render_async(request: Any) -> Any:
                    return render(request)

                return await swap().render_async(render_async, Serving(), TARGET, (request,), {})

            await asyncio.create_task(vllm_route())
            return seen

    assert asyncio.run(route()).verification == Verification("match")


@pytest.mark.parametrize(
    ("request_obj", "fragment"),
    [
        (Request([1, 500], verify=False), "out of vocabulary"),
        (Request([1] * 20, verify=False), "maximum context"),
    ],
)
def test_fast_path_refuses_bad_ids_before_vllm_renders(request_obj: Request, fragment: str) -> None:
    adapter = FastAdapter()
    render = Render(rendered_result([1]))
    answer = swap(adapter=adapter).render_sync(render, Serving(), TARGET, (request_obj,), {})
    assert fragment in answer["error"] and answer["param"] == "tokens"
    assert render.calls == 0 and adapter.offered == []


def test_fast_path_still_runs_the_release_length_check() -> None:
    adapter = FastAdapter()
    answer = render_with(
        swap(adapter=adapter), Request([1, 2], max_tokens=15, verify=False), rendered_result([1, 2])
    )
    assert "too large" in answer["error"]


@pytest.mark.parametrize(
    ("adapter", "request_obj"),
    [
        (FastAdapter(), Request([5], verify=True)),  # verification asked for: render to compare
        (FastAdapter(), Request([5], verify=False, echo=True)),  # echo needs the rendered conversation
        (FakeAdapter(), Request([5], verify=False)),  # this vLLM has no native branch
    ],
)
def test_no_fast_path_without_its_conditions(adapter: Adapter, request_obj: Request) -> None:
    assert not swap(adapter=adapter).uses_fast_path(request_obj, swap().wants_verify(request_obj))
