"""vLLM's real HTTP app around a fake engine, for any release 0.15+ (picked by introspection, not by
version number): vLLM's arg parser, engine config, renderer/tokenizer and input processor, `build_app`,
`init_app_state`, middlewares and routes. Only the engine is fake: it records the prompt it is given
and replays a scripted completion, so both routes can be compared on the same engine output.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import json
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import wrapt


def _first_attr(candidates: Sequence[tuple[str, str]]) -> Any:
    errors = []
    for module_name, attribute in candidates:
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{module_name}.{attribute}: {exc}")
    raise ImportError("; ".join(errors))


def _call_with_supported(fn: Any, **kwargs: Any) -> Any:
    """Call `fn` with the keyword arguments its signature accepts (signatures differ per release)."""
    params = inspect.signature(fn).parameters
    return fn(**{name: value for name, value in kwargs.items() if name in params})


def make_arg_parser() -> Any:
    make = _first_attr(
        [
            ("vllm.entrypoints.common.cli_args", "make_arg_parser"),
            ("vllm.entrypoints.launchers.cli_args", "make_arg_parser"),
            ("vllm.entrypoints.openai.cli_args", "make_arg_parser"),
        ]
    )
    flexible = _first_attr(
        [("vllm.utils.argparse_utils", "FlexibleArgumentParser"), ("vllm.utils", "FlexibleArgumentParser")]
    )
    return make(flexible(description="test"))


def app_functions() -> tuple[Any, Any]:
    """`build_app` and `init_app_state` of this release."""
    build_app = _first_attr(
        [("vllm.entrypoints.launchers.app", "build_app"), ("vllm.entrypoints.openai.api_server", "build_app")]
    )
    init_app_state = _first_attr(
        [
            ("vllm.entrypoints.launchers.api_server.app_state", "init_app_state"),
            ("vllm.entrypoints.openai.api_server", "init_app_state"),
        ]
    )
    return build_app, init_app_state


# --- the fake engine ---------------------------------------------------------------------------------


@dataclass
class Script:
    """What the fake engine "samples": output text and its token ids, streamed one token per step."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    """Empty: the tokenizer's encoding of `text`."""
    finish_reason: str = "stop"
    error: str | None = None
    """Raise `ValueError(error)` instead of the first output, as vLLM's engine does for inputs only it
    checks (e.g. an out-of-vocabulary `logit_bias` id)."""
    others: list[str] = field(default_factory=list)
    """With `n > 1`: choice `i > 0` samples the tokenizer's encoding of `others[(i - 1) % len(others)]`
    (the same as choice 0 when empty)."""
    hold: asyncio.Event | None = None
    """Wait for it before the first output (a long prefill or a full queue): the request sits in the
    engine until the event is set, or until it is aborted."""


@dataclass(frozen=True)
class _Piece:
    """One choice's part of one engine output."""

    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None


def _output_objects(request_id: str, prompt: dict[str, Any], pieces: list[_Piece], finished: bool) -> Any:
    from vllm.outputs import CompletionOutput, RequestOutput

    names = {f.name for f in dataclasses.fields(CompletionOutput)}
    completions = []
    for piece in pieces:
        completion_kwargs = {
            "index": piece.index,
            "text": piece.text,
            "token_ids": list(piece.token_ids),
            "cumulative_logprob": None,
            "logprobs": None,
            "finish_reason": piece.finish_reason,
            "stop_reason": None,
        }
        if "weight_versions" in names:  # 0.34+: which weights sampled which output tokens
            from vllm.outputs import WeightVersionSpan

            completion_kwargs["weight_versions"] = [
                WeightVersionSpan("fake-weights", 0, len(piece.token_ids))
            ]
        completions.append(CompletionOutput(**{k: v for k, v in completion_kwargs.items() if k in names}))
    return _call_with_supported(
        RequestOutput,
        request_id=request_id,
        prompt=prompt.get("prompt"),
        prompt_token_ids=list(prompt["prompt_token_ids"]),
        prompt_logprobs=None,
        outputs=completions,
        finished=finished,
    )


def _settable_property(name: str, default: Any) -> property:
    """Replaces a (possibly abstract, read-only) property of `EngineClient` with a plain attribute."""
    key = f"_fake_{name}"
    return property(
        lambda self: self.__dict__.get(key, default),
        lambda self, value: self.__dict__.__setitem__(key, value),
    )


def _input_processor(vllm_config: Any) -> tuple[Any, Any, Any]:
    """(input processor, renderer, tokenizer) built the way this release's `AsyncLLM.__init__` does."""
    processor_class = _first_attr(
        [("vllm.v1.engine.input_processor", "InputProcessor"), ("vllm.v1.engine.processor", "Processor")]
    )
    params = inspect.signature(processor_class).parameters
    if "renderer" in params:  # 0.17+
        from vllm.renderers import renderer_from_config

        renderer = renderer_from_config(vllm_config)
        return processor_class(vllm_config, renderer), renderer, renderer.tokenizer
    if "tokenizer" not in params:  # 0.15-0.16: the processor owns the renderer
        processor = processor_class(vllm_config)
        return processor, processor.renderer, processor.renderer.tokenizer
    model_config = vllm_config.model_config
    make_tokenizer = _first_attr(
        [
            ("vllm.tokenizers", "cached_tokenizer_from_config"),  # 0.13-0.14
            ("vllm.tokenizers", "init_tokenizer_from_config"),  # 0.12
            ("vllm.transformers_utils.tokenizer", "init_tokenizer_from_configs"),  # 0.11
            ("vllm.transformers_utils.tokenizer_group", "init_tokenizer_from_configs"),  # 0.10
        ]
    )
    if "scheduler_config" in inspect.signature(make_tokenizer).parameters:  # a TokenizerGroup
        tokenizer = make_tokenizer(
            model_config=model_config,
            scheduler_config=vllm_config.scheduler_config,
            lora_config=vllm_config.lora_config,
        )
    else:
        tokenizer = make_tokenizer(model_config)
    return processor_class(vllm_config, tokenizer), None, tokenizer


def make_engine_class() -> type:
    """A concrete subclass of this release's `EngineClient`: abstract members get harmless stubs."""
    from vllm.engine.protocol import EngineClient

    namespace: dict[str, Any] = {}
    defaults = {"is_running": True, "is_stopped": False, "errored": False, "dead_error": RuntimeError("dead")}
    for name in getattr(EngineClient, "__abstractmethods__", ()):
        static = inspect.getattr_static(EngineClient, name)
        if isinstance(static, property):
            namespace[name] = _settable_property(name, defaults.get(name))
        elif inspect.iscoroutinefunction(static):

            async def _async_stub(self: Any, *args: Any, **kwargs: Any) -> Any:
                return None

            namespace[name] = _async_stub
        else:

            def _stub(self: Any, *args: Any, **kwargs: Any) -> Any:
                return None

            namespace[name] = _stub
    for name, value in defaults.items():
        namespace[name] = _settable_property(name, value)
    for name in (
        "renderer",
        "input_processor",
        "processor",
        "io_processor",
        "tokenizer",
        "model_config",
        "vllm_config",
    ):
        if isinstance(inspect.getattr_static(EngineClient, name, None), property):
            namespace[name] = _settable_property(name, None)
    for name in (
        "generate",
        "get_supported_tasks",
        "get_tokenizer",
        "is_tracing_enabled",
        "get_model_config",
        "get_vllm_config",
        "check_health",
        "do_log_stats",
        "check_admission",
    ):
        namespace[name] = getattr(FakeEngineMixin, name)
    return type("FakeEngineClient", (FakeEngineMixin, EngineClient), namespace)


class FakeEngineMixin:
    """Records every prompt and replays `script`."""

    def _setup(self, vllm_config: Any) -> None:
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.prompts: list[dict[str, Any]] = []
        self.generate_kwargs: list[dict[str, Any]] = []
        """The keyword arguments of each `generate` call (e.g. 0.34's `session_id`)."""
        self.sampling_params: list[Any] = []
        self.ended: dict[str, str] = {}
        """Per request id, how its output generator ended: `finished`, or `aborted` (closed or cancelled
        before its last output: vLLM's engine client aborts the request then)."""
        self.script = Script(text="Hello there")
        self.io_processor = None
        processor, self.renderer, tokenizer = _input_processor(vllm_config)
        self.input_processor = self.processor = processor
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # unwrap a TokenizerGroup (<= 0.11.0)

    async def generate(
        self, prompt: Any, sampling_params: Any, request_id: str, *args: Any, **kwargs: Any
    ) -> AsyncIterator[Any]:
        if hasattr(prompt, "prompt_token_ids") and not isinstance(prompt, dict):  # an EngineCoreRequest
            prompt = {"prompt_token_ids": list(prompt.prompt_token_ids), "prompt": kwargs.get("prompt_text")}
        prompt = dict(prompt)
        self.prompts.append(prompt)
        self.generate_kwargs.append(dict(kwargs))
        self.sampling_params.append(sampling_params)
        script = self.script
        if script.error is not None:
            raise ValueError(script.error)
        self.ended[request_id] = "aborted"
        if script.hold is not None:
            await script.hold.wait()
        choices = [
            self._sampled(script, index, sampling_params)
            for index in range(getattr(sampling_params, "n", 1) or 1)
        ]
        delta = str(getattr(sampling_params, "output_kind", "")).endswith("DELTA")
        if not delta:  # one output with every choice, as vLLM's FINAL_ONLY does
            pieces = [
                _Piece(i, ids, self.tokenizer.decode(ids), finish) for i, (ids, finish) in enumerate(choices)
            ]
            self.ended[request_id] = "finished"
            yield _output_objects(request_id, prompt, pieces, True)
            return
        # One token of one choice per output, the choices interleaved, as vLLM's fan-out for n > 1 does.
        steps = [
            (i, step) for step in range(max(len(ids) for ids, _ in choices)) for i in range(len(choices))
        ]
        steps = [(i, step) for i, step in steps if step < len(choices[i][0])]
        for position, (i, step) in enumerate(steps):
            ids, finish = choices[i]
            last = step == len(ids) - 1
            await asyncio.sleep(0)
            piece = _Piece(i, [ids[step]], self.tokenizer.decode([ids[step]]), finish if last else None)
            if position == len(steps) - 1:
                self.ended[request_id] = "finished"
            yield _output_objects(request_id, prompt, [piece], position == len(steps) - 1)

    def _sampled(self, script: Script, index: int, sampling_params: Any) -> tuple[list[int], str]:
        """Choice `index`'s ids and finish reason (cut to `max_tokens`)."""
        if index == 0 or not script.others:
            token_ids = script.token_ids or self.tokenizer.encode(script.text, add_special_tokens=False)
        else:
            other = script.others[(index - 1) % len(script.others)]
            token_ids = self.tokenizer.encode(other, add_special_tokens=False)
        max_tokens = getattr(sampling_params, "max_tokens", None)
        if max_tokens is not None and len(token_ids) > max_tokens:
            return list(token_ids[:max_tokens]), "length"
        return list(token_ids), script.finish_reason

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    async def get_tokenizer(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer

    async def is_tracing_enabled(self) -> bool:
        return False

    async def get_model_config(self) -> Any:
        return self.model_config

    async def get_vllm_config(self) -> Any:
        return self.vllm_config

    async def check_health(self) -> None:
        return None

    async def do_log_stats(self, *args: Any, **kwargs: Any) -> None:
        return None

    def check_admission(self, *args: Any, **kwargs: Any) -> None:
        return None


# --- the app -------------------------------------------------------------------------------------------


@dataclass
class VllmApp:
    app: Any
    engine: Any
    args: Any
    client: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://test",
            timeout=60,
        )

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def chat_ids(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> list[int]:
        """The ids vLLM's stock route renders for `messages` (via the HF chat template)."""
        rendered = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **template_kwargs
        )
        return list(self.tokenizer.encode(rendered, add_special_tokens=False))


async def build_vllm_app(model: Path, extra_args: Sequence[str] = (), max_model_len: int = 256) -> VllmApp:
    """Parse a `vllm serve` command line with vLLM's own parser and build its app around a fake engine."""
    parser = make_arg_parser()
    argv = [
        "--model",
        str(model),
        "--max-model-len",
        str(max_model_len),
        "--dtype",
        "float32",
        "--enforce-eager",
        *extra_args,
    ]
    args = parser.parse_args(argv)
    validate = _first_attr(
        [
            ("vllm.entrypoints.common.cli_args", "validate_parsed_serve_args"),
            ("vllm.entrypoints.launchers.cli_args", "validate_parsed_serve_args"),
            ("vllm.entrypoints.openai.cli_args", "validate_parsed_serve_args"),
        ]
    )
    validate(args)

    from vllm.engine.arg_utils import AsyncEngineArgs

    engine_args = AsyncEngineArgs.from_cli_args(args)  # loads general plugins, as `vllm serve` does
    vllm_config = engine_args.create_engine_config()
    engine = make_engine_class()()
    engine._setup(vllm_config)

    build_app, init_app_state = app_functions()
    supported_tasks = ("generate",)
    app = _call_with_supported(
        build_app, args=args, supported_tasks=supported_tasks, model_config=vllm_config.model_config
    )
    await _call_with_supported(
        init_app_state,
        engine_client=engine,
        state=app.state,
        args=args,
        supported_tasks=supported_tasks,
        vllm_config=vllm_config,
    )
    return VllmApp(app=app, engine=engine, args=args)


def parse_sse(body: str) -> list[Any]:
    """`data:` payloads of an SSE body, JSON-decoded except `[DONE]`."""
    import json

    events = []
    for line in body.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def normalize(payload: Any) -> Any:
    """Blank the fields that differ between any two requests (ids, timestamps)."""
    if isinstance(payload, list):
        return [normalize(item) for item in payload]
    if isinstance(payload, dict):
        return {
            key: ("<varies>" if key in {"id", "created", "system_fingerprint"} else normalize(value))
            for key, value in payload.items()
        }
    return payload


# --- where a patch can sit, seen from outside the plugin --------------------------------------------------

PROXY = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)
"""Every wrapt wrapper (ours or anyone's) is one (wrapt 2 has a base class under `ObjectProxy`)."""
WATCHED = ("vllm", "fastapi", "starlette")
"""The packages whose code a plugin of vLLM's HTTP app could patch."""


def namespaces() -> Iterator[tuple[str, Any]]:
    """Every loaded module of `WATCHED` packages and every class each defines (`module:Class`)."""
    for name, module in sorted(sys.modules.items()):
        if module is None or name.partition(".")[0] not in WATCHED:
            continue
        yield name, module
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == name:
                yield f"{name}:{value.__qualname__}", value


def _code_like(value: Any) -> bool:
    """Functions, classes and descriptors: what a patch replaces (plain module data legitimately changes)."""
    return callable(value) or isinstance(value, staticmethod | classmethod | property)


def code_objects() -> dict[tuple[str, str], Any]:
    """`(namespace, attribute) -> object` for everything code-like stored in `namespaces()`."""
    return {
        (where, attribute): value
        for where, owner in namespaces()
        for attribute, value in list(vars(owner).items())
        if _code_like(value)
    }


def wrappers() -> dict[tuple[str, str], Any]:
    """`(namespace, attribute) -> wrapper` for every wrapt wrapper stored in `namespaces()`."""
    return {key: value for key, value in code_objects().items() if isinstance(value, PROXY)}


def owner_of(where: str) -> Any:
    module, _, qualname = where.partition(":")
    owner: Any = sys.modules[module]
    for part in filter(None, qualname.split(".")):
        owner = getattr(owner, part)
    return owner


# --- the model directory, loaded by vLLM in a process with no network ------------------------------------


def load_offline(model: str, max_model_len: int) -> dict[str, Any]:
    """vLLM's own config and tokenizer loading for `model` (as `build_vllm_app` and `AsyncLLM` do), with
    every outbound TCP connection and name lookup refused and recorded."""
    attempts: list[str] = []
    connect = socket.socket.connect

    def refuse_connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and self.type == socket.SOCK_STREAM:
            attempts.append(f"connect {address!r}")
            raise OSError(f"no network in this test: connect {address!r}")
        connect(self, address)

    def refuse_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(f"getaddrinfo {host!r}")
        raise socket.gaierror(f"no network in this test: {host!r}")

    socket.socket.connect = refuse_connect  # type: ignore[method-assign]
    socket.getaddrinfo = refuse_lookup

    from vllm.engine.arg_utils import EngineArgs

    engine_args = EngineArgs(model=model, max_model_len=max_model_len, dtype="float32", enforce_eager=True)
    vllm_config = engine_args.create_engine_config()
    _, _, tokenizer = _input_processor(vllm_config)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    messages = [{"role": "user", "content": "Hello world"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return {
        "attempts": attempts,
        "max_model_len": vllm_config.model_config.max_model_len,
        "vocab_size": vllm_config.model_config.get_vocab_size(),
        "architectures": list(getattr(vllm_config.model_config.hf_config, "architectures", None) or []),
        "text": text,
        "ids": list(tokenizer.encode(text, add_special_tokens=False)),
        "decoded": tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)),
        "im_start": tokenizer.convert_tokens_to_ids("<|im_start|>"),
    }


if __name__ == "__main__":  # `python harness.py MODEL MAX_MODEL_LEN`: what `load_offline` found, as JSON
    print("\n" + json.dumps(load_offline(sys.argv[1], int(sys.argv[2]))))
