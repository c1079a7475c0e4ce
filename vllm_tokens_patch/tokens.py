"""Validate the client's prompt ids, compare them with vLLM's rendering, and swap them in.

This is the version-free heart of the patch: it talks to vLLM only through an `Adapter`. The wrapper
runs inside vLLM's render method, i.e. before `get_max_tokens`, sampling params, request logging,
reasoning bookkeeping and `generate`, and before any stream exists: everything downstream sees the
client's ids, and every refusal here is a real HTTP 4xx.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vllm_tokens_patch import metrics, splice
from vllm_tokens_patch.adapters.base import Adapter, RenderContext, RenderTarget

logger = logging.getLogger("vllm.tokens_patch")

TOKEN_KINDS = frozenset({"token"})
"""Engine-input `type`s whose ids may be replaced; a missing type means a plain token prompt."""
MEDIA_KEYS = ("multi_modal_data", "mm_placeholders", "prompt_embeds", "encoder_prompt")
"""Engine-input keys that tie the ids to something else (media, embeddings, an encoder prompt)."""


class TokensRejected(ValueError):
    """The client's ids cannot be served; the message is the client-facing reason."""

    def __init__(self, message: str, param: str | None = "tokens", reason: str = "invalid_request") -> None:
        super().__init__(message)
        self.param = param
        self.reason = reason
        """The `reason` label of the refusal metric."""


@dataclass(frozen=True)
class Verification:
    """How the client's ids compare with what vLLM rendered from `messages`."""

    rendered_len: int
    tokens_len: int
    first_mismatch: int | None
    """Index of the first differing position; None when the lists are equal; -1 when not compared."""

    @property
    def compared(self) -> bool:
        return self.first_mismatch != -1

    @property
    def matched(self) -> bool:
        return self.first_mismatch is None

    def header_value(self) -> str:
        if not self.compared:
            return "skipped"
        return "match" if self.matched else "mismatch"


CHUNK = 512
"""Ids compared per slice when locating a difference: slices compare at C speed, one chunk in Python."""


def first_difference(rendered: Sequence[int], tokens: Sequence[int]) -> int | None:
    """The first index at which the lists differ (a length difference counts), or None if equal."""
    if rendered == tokens:  # the common case, compared at C speed
        return None
    shorter = min(len(rendered), len(tokens))
    start = 0
    while start < shorter and rendered[start : start + CHUNK] == tokens[start : start + CHUNK]:
        start += CHUNK
    for index in range(start, min(start + CHUNK, shorter)):
        if rendered[index] != tokens[index]:
            return index
    return shorter


def prompt_text(tokens: list[int], context: RenderContext) -> str | None:
    """The text of the ids the engine is fed, for `return_prompt_text` (None without a tokenizer)."""
    if context.tokenizer is None:
        return None
    text: str = context.tokenizer.decode(tokens, skip_special_tokens=False)
    return text


def vocabulary_bound(context: RenderContext) -> int | None:
    """The largest id vLLM's engine accepts: `max(tokenizer.max_token_id, vocab_size - 1)`."""
    bounds = []
    if context.vocab_size is not None:
        bounds.append(context.vocab_size - 1)
    tokenizer = context.tokenizer
    if tokenizer is not None:
        max_token_id = getattr(tokenizer, "max_token_id", None)
        if max_token_id is None:
            try:
                max_token_id = len(tokenizer) - 1
            except TypeError:
                max_token_id = None
        if max_token_id is not None:
            bounds.append(int(max_token_id))
    return max(bounds) if bounds else None


def validate_ids(tokens: Sequence[int], context: RenderContext) -> None:
    """Raise `TokensRejected` for what vLLM would only notice inside the engine (mid-stream).

    The request model already refused empty lists and negative or non-integer ids, so one C-speed `max`
    is the whole scan; the offending position is located only on failure.
    """
    if not tokens:
        raise TokensRejected("`tokens` must contain at least one token id")
    bound = vocabulary_bound(context)
    if bound is not None and max(tokens) > bound:
        index, token_id = next((i, t) for i, t in enumerate(tokens) if t > bound)
        raise TokensRejected(
            f"Token id {token_id} at tokens[{index}] is out of vocabulary (valid ids are 0 to {bound})",
            reason="out_of_vocabulary",
        )
    if len(tokens) >= context.max_model_len:
        raise TokensRejected(
            f"This model's maximum context length is {context.max_model_len} tokens. However, your "
            f"request has {len(tokens)} input tokens in `tokens`, which leaves no room for output. "
            "Please reduce the length of the input.",
            reason="context_length",
        )


def check_engine_prompt(prompt: Mapping[str, Any]) -> None:
    """Refuse engine inputs whose ids are bound to media, embeddings or an encoder prompt."""
    kind = prompt.get("type", "token")
    if kind not in TOKEN_KINDS or any(key in prompt for key in MEDIA_KEYS):
        raise TokensRejected(
            f"`tokens` cannot replace a {kind!r} prompt with media or embeddings; send text-only messages",
            param="messages",
            reason="multimodal",
        )


def report_mismatch(request_id: str, rendered: Sequence[int], tokens: Sequence[int], index: int) -> None:
    logger.log(
        metrics.mismatch_log_level(),
        "vllm-tokens-patch: request %s: `tokens` differ from the ids vLLM rendered from `messages` "
        "(rendered %d ids, tokens %d ids, first difference at index %d); the engine is fed `tokens`",
        request_id,
        len(rendered),
        len(tokens),
        index,
    )
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("vllm-tokens-patch: request %s rendered ids: %s", request_id, list(rendered))
        logger.debug("vllm-tokens-patch: request %s tokens: %s", request_id, list(tokens))


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
        """Skip vLLM's render: only unverified, where this vLLM has a native branch, and not for `echo`
        (which echoes the rendered conversation, so it is rendered as on the stock route)."""
        return not verify and self.adapter.fast_path and not getattr(request, "echo", False)

    def render_sync(
        self, render: Callable[..., Any], serving: Any, target: RenderTarget, args: Any, kwargs: Any
    ) -> Any:
        calls = self._render_calls(serving, target, args, kwargs)
        ask = _next_call(calls, _Outcome())
        while not isinstance(ask, _Finished):
            ask = _next_call(calls, _Outcome.of(render, ask))
        return ask.value

    async def render_async(
        self, render: Callable[..., Any], serving: Any, target: RenderTarget, args: Any, kwargs: Any
    ) -> Any:
        calls = self._render_calls(serving, target, args, kwargs)
        ask = _next_call(calls, _Outcome())
        while not isinstance(ask, _Finished):
            ask = _next_call(calls, await _Outcome.of_awaited(render, ask))
        return ask.value

    def _render_calls(self, serving: Any, target: RenderTarget, args: Any, kwargs: Any) -> _RenderCalls:
        """The render calls of one token request (the splice's stand-ins, then the request's own), written
        once for the sync and async render methods: it yields each call's arguments and is sent the result
        or thrown the exception; it returns what the render method returns."""
        request = args[0] if args else kwargs["request"]
        steps = self._splice_plan(request)
        step = _advance(steps.send, None)
        while isinstance(step, splice.RenderAsk):
            try:
                rendered = yield self._stand_in(target, args, kwargs, step)
            except Exception as exc:  # a template that refuses the stand-in conversation
                rendered = exc
            step = self._answer(steps, rendered)
        if isinstance(step, splice.SpliceError):
            metrics.refused("splice")
            return self.adapter.error_from_render(serving, str(step), step.param)
        call, refused = self.begin(serving, request, self._spliced(request, step.value), args, kwargs)
        if refused is not None:
            return refused
        try:
            result = yield tuple(args), dict(kwargs)
        finally:
            call.undo()
        return self.finish(call, serving, args, kwargs, result)

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
        request._tokens_splice = result
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
        if not self.uses_fast_path(request, call.verify):
            return call, None
        context = self.adapter.render_context(serving, args, kwargs)
        try:
            validate_ids(tokens, context)
        except TokensRejected as exc:
            metrics.refused(exc.reason)
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
            check_engine_prompt(prompt)
            context = call.context
            if context is None:
                context = self.adapter.render_context(serving, args, kwargs)
                validate_ids(tokens, context)
            self.adapter.check_length(serving, request, tokens, context)
        except TokensRejected as exc:
            metrics.refused(exc.reason)
            return self.adapter.error_from_render(serving, str(exc), exc.param)
        except Exception as exc:
            # vLLM's own length check: a ValueError, or (0.27+) a VLLMValidationError that is not one.
            if not isinstance(exc, ValueError) and not hasattr(exc, "parameter"):
                raise
            metrics.refused("context_length")
            return self.adapter.error_from_render(serving, str(exc), getattr(exc, "parameter", "tokens"))

        rendered = prompt["prompt_token_ids"]
        request._tokens_verification = self._verify(request, call.verify, rendered, tokens)
        wants_text = getattr(request, self.adapter.prompt_text_switch, None)
        text = prompt.get("prompt") if wants_text and rendered == tokens else None
        prompt["prompt_token_ids"] = tokens
        for key in self.adapter.derived_prompt_keys:
            prompt.pop(key, None)
        if wants_text:  # the text of what the engine is fed: the render's when the ids are the same
            prompt["prompt"] = text if text is not None else prompt_text(tokens, context)
        self.adapter.after_swap(result, tokens)
        return result

    def _verify(self, request: Any, verify: bool, rendered: Sequence[int], tokens: list[int]) -> Verification:
        if not verify:
            return Verification(len(rendered), len(tokens), -1)
        index = first_difference(rendered, tokens)
        if index is not None:
            report_mismatch(str(getattr(request, "request_id", "?")), rendered, tokens, index)
        return Verification(len(rendered), len(tokens), index)


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
class _Outcome:
    """A render call's result or exception, to send or throw into `_render_calls`."""

    value: Any = None
    error: BaseException | None = None

    @classmethod
    def of(cls, render: Callable[..., Any], call: _CallArgs) -> _Outcome:
        try:
            return cls(render(*call[0], **call[1]))
        except BaseException as exc:  # thrown back in: the request's own render re-raises it
            return cls(error=exc)

    @classmethod
    async def of_awaited(cls, render: Callable[..., Any], call: _CallArgs) -> _Outcome:
        try:
            return cls(await render(*call[0], **call[1]))
        except BaseException as exc:  # cancellation included: the undo in `_render_calls` must run
            return cls(error=exc)


def _next_call(calls: _RenderCalls, outcome: _Outcome) -> _CallArgs | _Finished:
    try:
        return calls.send(outcome.value) if outcome.error is None else calls.throw(outcome.error)
    except StopIteration as done:
        return _Finished(done.value)


def _no_splice(tokens: list[int]) -> _Steps:
    return tokens
    yield  # steps that finish at once with `tokens`
