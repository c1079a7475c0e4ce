"""Swap the client's prompt ids in around vLLM's render call: the render plumbing.

This is the version-free heart of the patch: it talks to vLLM only through an `Adapter`. The wrapper
runs inside vLLM's render method, i.e. before `get_max_tokens`, sampling params, request logging,
reasoning bookkeeping and `generate`, and before any stream exists: everything downstream sees the
client's ids, and every refusal here is a real HTTP 4xx. What happened (verification, splice, refusal)
goes to the request's `Outcome`, never onto vLLM's objects.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from vllm_tokens_patch import media, outcome, splice
from vllm_tokens_patch.adapters.base import Adapter, RenderContext, RenderTarget
from vllm_tokens_patch.id_fields import is_nemo_dialect
from vllm_tokens_patch.mismatch_log import report_mismatch
from vllm_tokens_patch.outcome import SKIPPED, Verification
from vllm_tokens_patch.validation import (
    TokensRejected,
    check_engine_prompt,
    first_difference,
    prompt_text,
    validate_ids,
)


def _nothing() -> None:
    return None


@dataclass
class _Render:
    """One render call of a token request, from `TokensSwap.begin` to `TokensSwap.finish`."""

    request: Any
    tokens: list[int]
    """What the engine is fed: `tokens`, or `prefix_tokens` + the bridge."""
    verify: bool
    context: RenderContext | None = None
    """Set when the ids were validated before rendering (the fast path)."""
    undo: Callable[[], None] = _nothing


@dataclass
class TokensSwap:
    """Applies the client's ids around a render call; built with its adapter each time the route mounts."""

    adapter: Adapter
    is_tokens_request: Callable[[Any], bool]
    verify: bool = True
    """The server default (`VLLM_TOKENS_PATCH_VERIFY`); the request's `vllm_tokens_patch_verify` wins."""

    def wants_verify(self, request: Any) -> bool:
        choice = getattr(request, "vllm_tokens_patch_verify", None)
        return self.verify if choice is None else bool(choice)

    def uses_fast_path(self, request: Any, verify: bool) -> bool:
        """Skip vLLM's render: only unverified, where this vLLM has a native branch, not for `echo` (which
        echoes the rendered conversation, so it is rendered as on the stock route), and not with media
        (which only the render processes: vLLM's native branch drops or ignores them)."""
        return (
            not verify
            and self.adapter.fast_path
            and not getattr(request, self.adapter.fields.echo, False)
            and not media.has_media(getattr(request, "messages", ()))
        )

    def render_sync(
        self, render: Callable[..., Any], serving: Any, target: RenderTarget, args: Any, kwargs: Any
    ) -> Any:
        calls = self._render_calls(serving, target, args, kwargs)
        ask = _next_call(calls, _CallResult())
        while not isinstance(ask, _Finished):
            ask = _next_call(calls, _CallResult.of(render, ask))
        return ask.value

    async def render_async(
        self, render: Callable[..., Any], serving: Any, target: RenderTarget, args: Any, kwargs: Any
    ) -> Any:
        calls = self._render_calls(serving, target, args, kwargs)
        ask = _next_call(calls, _CallResult())
        while not isinstance(ask, _Finished):
            ask = _next_call(calls, await _CallResult.of_awaited(render, ask))
        return ask.value

    def _render_calls(self, serving: Any, target: RenderTarget, args: Any, kwargs: Any) -> _RenderCalls:
        """The render calls of one token request (the splice's stand-ins, then the request's own), written
        once for the sync and async render methods: it yields each call's arguments and is sent the result
        or thrown the exception; it returns what the render method returns."""
        request = args[0] if args else kwargs["request"]
        if self.adapter.places_media and media.has_media(getattr(request, "messages", ())):
            return (yield from self._media_render_calls(serving, target, args, kwargs, request))
        step = yield from self._planned(target, args, kwargs, request)
        if isinstance(step, splice.SpliceError):
            outcome.current().refusal = "splice"
            return self.adapter.error_from_render(serving, str(step), step.param)
        call, refused = self.begin(serving, request, self._spliced(request, step.value), args, kwargs)
        if refused is not None:
            return refused
        try:
            result = yield tuple(args), dict(kwargs)
        finally:
            call.undo()
        return self.finish(call, serving, args, kwargs, result)

    def _media_render_calls(
        self, serving: Any, target: RenderTarget, args: Any, kwargs: Any, request: Any
    ) -> _RenderCalls:
        """A request with images: the request's own render first (never the fast path), then the splice's
        stand-ins. vLLM's API server keeps a shadow of the engine's media cache and sends an item without
        its data once it has processed it; the render that first processes an image must therefore be the
        one whose items reach the engine (a stand-in first would leave the engine without the data).
        Refused after the render, the request's items are dropped from that shadow (`forget_media`)."""
        result = yield tuple(args), dict(kwargs)
        if self.adapter.engine_prompts(result) is None:  # vLLM refused the rendered request
            return result
        step = yield from self._planned(target, args, kwargs, request)
        if isinstance(step, splice.SpliceError):
            outcome.current().refusal = "splice"
            self.adapter.forget_media(serving, result)
            return self.adapter.error_from_render(serving, str(step), step.param)
        call = _Render(request, self._spliced(request, step.value), self.wants_verify(request))
        if is_nemo_dialect(request):
            max_model_len = self.adapter.render_context(serving, args, kwargs).max_model_len
            self._clamp_output(request, len(call.tokens), max_model_len)
        answer = self.finish(call, serving, args, kwargs, result)
        if answer is not result:
            self.adapter.forget_media(serving, result)
        return answer

    def _planned(
        self, target: RenderTarget, args: Any, kwargs: Any, request: Any
    ) -> Generator[_CallArgs, Any, _Done | splice.SpliceError]:
        """Run the splice steps, rendering each stand-in they ask for; their end (or refusal)."""
        steps = self._splice_plan(request)
        step = _advance(steps.send, None)
        while isinstance(step, splice.RenderAsk):
            try:
                rendered = yield self._stand_in(target, args, kwargs, step)
            except Exception as exc:  # a template that refuses the stand-in conversation
                rendered = exc
            step = self._answer(steps, rendered)
        return step

    # --- splicing: `prefix_tokens` + the bridge ----------------------------------------------------

    @staticmethod
    def _splice_plan(request: Any) -> _Steps:
        """The splice steps of a `prefix_tokens` request; for `tokens`, steps that ask for nothing."""
        prefix = getattr(request, "prefix_tokens", None)
        if prefix is None:
            return _no_splice(request.tokens)
        return splice.plan(
            request.messages,
            prefix,
            add_generation_prompt=bool(request.add_generation_prompt),
            continue_final_message=bool(request.continue_final_message),
        )

    @staticmethod
    def _spliced(request: Any, result: splice.Splice | list[int]) -> list[int]:
        if isinstance(result, list):  # a `tokens` request
            return result
        outcome.current().splice = result
        return [*request.prefix_tokens, *result.bridge]

    def _stand_in(
        self, target: RenderTarget, args: Any, kwargs: Any, ask: splice.RenderAsk
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return self.adapter.stand_in_call(target, args, kwargs, ask.messages, ask.add_generation_prompt)

    def _answer(self, steps: _Steps, rendered: Any) -> _Step:
        """Send the stand-in's ids into the splice steps, or throw vLLM's refusal into them."""
        ids = None if isinstance(rendered, BaseException) else self.adapter.rendered_ids(rendered)
        if ids is not None:
            return _advance(steps.send, ids)
        reason = (
            str(rendered) if isinstance(rendered, BaseException) else self.adapter.error_message(rendered)
        )
        return _advance(steps.throw, splice.RenderRefused(reason))

    # --- the ids -----------------------------------------------------------------------------------

    def begin(
        self, serving: Any, request: Any, tokens: list[int], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> tuple[_Render, Any]:
        """Before vLLM renders: on the fast path, validate the ids and hand them to vLLM's reuse branch.

        Returns the call and, for bad ids, this vLLM's client error (the render is then not run).
        """
        call = _Render(request, tokens, self.wants_verify(request))
        if is_nemo_dialect(request):  # before vLLM renders: 0.10-0.14 check the output length there
            max_model_len = self.adapter.render_context(serving, args, kwargs).max_model_len
            self._clamp_output(request, len(tokens), max_model_len)
        if not self.uses_fast_path(request, call.verify):
            return call, None
        context = self.adapter.render_context(serving, args, kwargs)
        try:
            validate_ids(tokens, context)
        except TokensRejected as exc:
            outcome.current().refusal = exc.reason
            return call, self.adapter.error_from_render(serving, str(exc), exc.param)
        call.context = context
        call.undo = self.adapter.offer_ids(request, tokens)
        return call, None

    def finish(
        self, call: _Render, serving: Any, args: Sequence[Any], kwargs: dict[str, Any], result: Any
    ) -> Any:
        """Return `result` with the ids swapped, or this vLLM's client error for bad ids."""
        request, tokens = call.request, call.tokens
        prompts = self.adapter.engine_prompts(result)
        if prompts is None:  # vLLM already refused the rendered request: keep its answer
            return result
        try:
            if len(prompts) != 1:
                raise TokensRejected(
                    f"expected one engine prompt, vLLM rendered {len(prompts)}", None, "engine_prompts"
                )
            (prompt,) = prompts
            check_engine_prompt(prompt, self.adapter)
            context = call.context
            if context is None:
                context = self.adapter.render_context(serving, args, kwargs)
                validate_ids(tokens, context)
            self.adapter.check_length(serving, request, tokens, context)
            items = self.adapter.media_items(prompt)
            offsets = media.place(prompt[self.adapter.prompt_ids_key], items, tokens) if items else []
        except TokensRejected as exc:
            outcome.current().refusal = exc.reason
            return self.adapter.error_from_render(serving, str(exc), exc.param)
        except Exception as exc:  # this release's own length check refusing (else a bug: re-raised)
            refusal = self.adapter.refusal_of(exc)
            if refusal is None:
                raise
            outcome.current().refusal = "context_length"
            return self.adapter.error_from_render(serving, *refusal)

        ids_key, text_key = self.adapter.prompt_ids_key, self.adapter.prompt_text_key
        rendered = prompt[ids_key]
        outcome.current().verification = self._verify(request, call.verify, rendered, tokens)
        wants_text = getattr(request, self.adapter.prompt_text_switch, None)
        text = prompt.get(text_key) if wants_text and rendered == tokens else None
        prompt[ids_key] = tokens
        for key in self.adapter.derived_prompt_keys:
            prompt.pop(key, None)
        if items:  # each item's features at its run in the client's ids
            self.adapter.with_media_offsets(prompt, items, offsets)
        if wants_text:  # the text of what the engine is fed: the render's when the ids are the same
            prompt[text_key] = text if text is not None else prompt_text(tokens, context)
        self.adapter.after_swap(result, tokens)
        return result

    def _clamp_output(self, request: Any, prompt_len: int, max_model_len: int) -> None:
        """NeMo's dialect: an output length past the room left is cut to it (as NeMo-RL's servers do), so a
        long rollout ends its turn with `finish_reason: "length"`; no room at all is still this vLLM's
        "maximum context length" 400, which NeMo-Gym ends the turn on."""
        room = max_model_len - prompt_len
        if room < 1:
            return
        for name in self.adapter.fields.max_output:
            asked = getattr(request, name, None)
            if isinstance(asked, int) and asked > room:
                setattr(request, name, room)

    def _verify(self, request: Any, verify: bool, rendered: Sequence[int], tokens: list[int]) -> Verification:
        if not verify:
            return SKIPPED
        index = first_difference(rendered, tokens)
        if index is not None:
            request_id = getattr(request, self.adapter.fields.request_id, "?")
            report_mismatch(str(request_id), rendered, tokens, index)
        return Verification.of(index)


_Steps = Generator[splice.RenderAsk, list[int], "splice.Splice | list[int]"]


@dataclass(frozen=True)
class _Done:
    value: splice.Splice | list[int]


_Step = splice.RenderAsk | _Done | splice.SpliceError


def _advance(move: Callable[[Any], splice.RenderAsk], value: Any) -> _Step:
    """One step of the splice steps, as a value (a StopIteration must not cross an `await`)."""
    try:
        return move(value)
    except StopIteration as done:
        return _Done(done.value)
    except splice.SpliceError as exc:
        return exc


_CallArgs = tuple[tuple[Any, ...], dict[str, Any]]
_RenderCalls = Generator[_CallArgs, Any, Any]


@dataclass(frozen=True)
class _Finished:
    value: Any
    """What the render method returns."""


@dataclass(frozen=True)
class _CallResult:
    """A render call's result or exception, to send or throw into `_render_calls`."""

    value: Any = None
    error: BaseException | None = None

    @classmethod
    def of(cls, render: Callable[..., Any], call: _CallArgs) -> _CallResult:
        try:
            return cls(render(*call[0], **call[1]))
        except BaseException as exc:  # thrown back in: the request's own render re-raises it
            return cls(error=exc)

    @classmethod
    async def of_awaited(cls, render: Callable[..., Any], call: _CallArgs) -> _CallResult:
        try:
            return cls(await render(*call[0], **call[1]))
        except BaseException as exc:  # cancellation included: the undo in `_render_calls` must run
            return cls(error=exc)


def _next_call(calls: _RenderCalls, result: _CallResult) -> _CallArgs | _Finished:
    try:
        return calls.send(result.value) if result.error is None else calls.throw(result.error)
    except StopIteration as done:
        return _Finished(done.value)


def _no_splice(tokens: list[int]) -> _Steps:
    return tokens
    yield  # steps that finish at once with `tokens`
