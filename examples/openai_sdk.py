"""Two turns with the OpenAI SDK: the stock route with `return_token_ids`, then `prefix_tokens`."""

import os

import httpx
from openai import OpenAI
from openai.types.chat import ChatCompletion

client = OpenAI(
    base_url=os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1"),
    api_key=os.environ.get("VLLM_API_KEY", "EMPTY"),
)
model = os.environ.get("MODEL", "Qwen/Qwen3-8B")
messages = [{"role": "user", "content": "What is the weather in Paris?"}]

turn1 = client.chat.completions.create(
    model=model, messages=messages, max_tokens=32, extra_body={"return_token_ids": True}
)
ids_so_far = turn1.prompt_token_ids + turn1.choices[0].token_ids  # vLLM's extra response fields
print("turn 1 ids:", ids_so_far)

messages += [
    {"role": "assistant", "content": turn1.choices[0].message.content or ""},
    {"role": "user", "content": "And in Rome?"},
]
# cast_to=httpx.Response: the SDK returns the HTTP response itself, so the plugin's headers can be read.
response = client.post(
    "/chat/completions/tokens",
    body={
        "model": model,
        "messages": messages,
        "prefix_tokens": ids_so_far,
        "return_token_ids": True,
        "max_tokens": 32,
    },
    cast_to=httpx.Response,
)
turn2 = ChatCompletion.model_validate(response.json())
print("turn 2 prompt ids:", turn2.prompt_token_ids)
print("turn 2 sampled ids:", turn2.choices[0].token_ids)
print("x-vllm-tokens-splice:", response.headers["x-vllm-tokens-splice"])
print("x-vllm-tokens-verification:", response.headers["x-vllm-tokens-verification"])
