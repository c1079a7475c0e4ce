"""A small client for multi-turn token-in rollouts against any vLLM server with this plugin.

The next turn's prompt is the previous prompt ids + the sampled ids + the template's end-of-turn ids +
the new user turn's ids. The template pieces come from the server's own `/tokenize` (probed once), so the
client needs no local tokenizer and agrees with the server's chat template. Needs `httpx` (a dependency
of `openai`; not of this package).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROUTE = "/v1/chat/completions/tokens"


class TemplateNotSplittable(RuntimeError):
    """The chat template does not render a conversation as prefix + turn (it is not append-only there)."""


@dataclass
class TokenChatClient:
    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    transport: Any = None
    """An `httpx` transport to use instead of the network (tests, custom proxies)."""
    _http: Any = field(init=False, repr=False)
    _close_ids: list[int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        root = self.base_url.rstrip("/").removesuffix("/v1")
        self._http = httpx.Client(
            base_url=root, headers=headers, timeout=self.timeout, transport=self.transport
        )

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        response = self._http.post(path, json=payload)
        response.raise_for_status()
        return response

    def tokenize_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> list[int]:
        payload = {"model": self.model, "messages": messages, "add_generation_prompt": add_generation_prompt}
        return list(self._post("/tokenize", payload).json()["tokens"])

    def tokenize_text(self, text: str) -> list[int]:
        payload = {"model": self.model, "prompt": text, "add_special_tokens": False}
        return list(self._post("/tokenize", payload).json()["tokens"])

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """The stock route (re-renders `messages`), with `return_token_ids`."""
        payload = {"model": self.model, "messages": messages, "return_token_ids": True, **params}
        return dict(self._post("/v1/chat/completions", payload).json())

    def chat_tokens(
        self, messages: list[dict[str, Any]], tokens: list[int], **params: Any
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The token route: the engine is fed `tokens`; returns the body and the response headers."""
        payload = {
            "model": self.model,
            "messages": messages,
            "tokens": tokens,
            "return_token_ids": True,
            **params,
        }
        response = self._post(ROUTE, payload)
        return dict(response.json()), dict(response.headers)

    def end_of_turn_ids(self) -> list[int]:
        """What the template puts after an assistant message's content (e.g. `<|im_end|>\\n`)."""
        if self._close_ids is None:
            user = [{"role": "user", "content": "a"}]
            opened = self.tokenize_chat(user, add_generation_prompt=True)
            content = self.tokenize_text("b")
            closed = self.tokenize_chat(
                [*user, {"role": "assistant", "content": "b"}], add_generation_prompt=False
            )
            if closed[: len(opened) + len(content)] != opened + content:
                raise TemplateNotSplittable("the assistant turn does not render as prefix + content + end")
            self._close_ids = closed[len(opened) + len(content) :]
        return self._close_ids

    def user_turn_ids(self, history: list[dict[str, Any]], user_message: str) -> list[int]:
        """Ids the template adds for a new user message after `history` (ending with an assistant turn)."""
        before = self.tokenize_chat(history, add_generation_prompt=False)
        after = self.tokenize_chat(
            [*history, {"role": "user", "content": user_message}], add_generation_prompt=True
        )
        if after[: len(before)] != before:
            raise TemplateNotSplittable("a new user turn changes how the earlier turns render")
        return after[len(before) :]

    def next_prompt(
        self,
        prompt_ids: list[int],
        completion_ids: list[int],
        history: list[dict[str, Any]],
        user_message: str,
    ) -> list[int]:
        """The exact ids of the next turn: what was fed + what was sampled + the template's glue."""
        close = self.end_of_turn_ids()
        sampled_close = 1 if close and completion_ids[-1:] == close[:1] else 0
        return [
            *prompt_ids,
            *completion_ids,
            *close[sampled_close:],
            *self.user_turn_ids(history, user_message),
        ]


def differing_positions(reference: list[int], other: list[int]) -> int:
    """Positions where `other` differs from `reference`, counting a length difference as differences."""
    same_length = sum(1 for left, right in zip(reference, other, strict=False) if left != right)
    return same_length + abs(len(reference) - len(other))
