"""An unmodified agent loop for the conversation-memory tests (e2e and behind a router): only `openai`'s
`chat.completions.create`, the SDK's message appended to the history as is, a new connection per call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openai import OpenAI

from vllm_tokens_patch_testbed.e2e_suite import API_KEY, post

MEMORY_HEADER = "x-vllm-tokens-memory"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                "required": ["city"],
            },
        },
    }
]
CALL_TOOL = {"type": "function", "function": {"name": "get_weather"}}
"""A named `tool_choice`: the (random) model is made to call the tool (vLLM needs `--tool-call-parser`)."""


class Agent:
    """An agent harness as they are written: one `create` per step, the SDK's message appended as is."""

    def __init__(self, base_url: str, model: Path, tokenize_url: str | None = None) -> None:
        """`base_url`: where the agent sends its calls (a server, or a router in front of several);
        `tokenize_url`: a server's `/tokenize`, asked for vLLM's own render of each turn (for the drift
        count), or None."""
        self.base_url, self.model, self.tokenize_url = base_url, str(model), tokenize_url
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris and in Rome?"},
        ]
        self.turns: list[dict[str, Any]] = []

    def step(self, **options: Any) -> Any:
        client = OpenAI(base_url=f"{self.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model=self.model,
            messages=self.messages,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            temperature=1.0,
            extra_body={"return_token_ids": True},  # only for checking: the memory does not need it
            **options,
        )
        completion = raw.parse()
        client.close()
        choice = completion.choices[0]
        stock = None
        if self.tokenize_url is not None:
            render = {
                "model": self.model,
                "messages": self.messages,
                "tools": TOOLS,
                "add_generation_prompt": True,
            }
            answer = post(self.tokenize_url, json=render, headers={"Authorization": f"Bearer {API_KEY}"})
            assert answer.status_code == 200, answer.text
            stock = answer.json()["tokens"]
        self.turns.append(
            {
                "id": completion.id,
                "stock": stock,
                "prompt": list(completion.prompt_token_ids),  # type: ignore[attr-defined]
                "sampled": list(choice.token_ids),  # type: ignore[attr-defined]
                "memory": raw.headers.get(MEMORY_HEADER),
                "finish": choice.finish_reason,
                "logprobs": [c.logprob for c in choice.logprobs.content]
                if choice.logprobs and choice.logprobs.content
                else None,
            }
        )
        self.messages.append(choice.message.model_dump(exclude_none=True))
        return choice

    def tool_round(self, city: str) -> None:
        choice = self.step(tool_choice=CALL_TOOL, max_tokens=64)
        assert choice.message.tool_calls, choice
        for call in choice.message.tool_calls:
            self.messages.append({"role": "tool", "tool_call_id": call.id, "content": f"sunny in {city}"})

    def episode(self, **options: Any) -> None:
        """Two tool rounds, a turn cut short, a user turn; `options` go to the turns answered in text
        (e.g. a `logit_bias`)."""
        self.tool_round("Paris")
        self.tool_round("Rome")
        self.step(max_tokens=6, **options)  # cut short: finish_reason "length"
        self.messages.append({"role": "user", "content": "Go on, and be brief."})
        self.step(max_tokens=12, **options)


def starts_with_previous(turns: list[dict[str, Any]], index: int, prompt: str = "prompt") -> bool:
    """Turn `index`'s prompt (or vLLM's own render of it, `stock`) begins with the previous turn's ids."""
    before = turns[index - 1]["prompt"] + turns[index - 1]["sampled"]
    return bool(turns[index][prompt][: len(before)] == before)
