"""verifiers' later-turn body and prime-rl's teacher-logprob body, sent with the OpenAI SDK."""

import os

import httpx
from openai import OpenAI
from openai.types.chat import ChatCompletion

BASE_URL = os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1")
MODEL = os.environ.get("MODEL", "Qwen/Qwen3-8B")
client = OpenAI(base_url=BASE_URL, api_key=os.environ.get("VLLM_API_KEY", "EMPTY"))
sampling = {"max_completion_tokens": 16, "logprobs": True, "temperature": 1.0}

# Turn 1: verifiers uses the stock route (nothing to stitch yet).
messages = [{"role": "user", "content": "What is 2 + 2?"}]
turn1 = client.chat.completions.create(
    model=MODEL, messages=messages, **sampling, extra_body={"return_token_ids": True}
)
turn1_ids = turn1.prompt_token_ids + turn1.choices[0].token_ids

# Turn 2: verifiers' later-turn body; its `tokens` are ids it stitches together (here simply vLLM's
# /tokenize of the conversation; with `prefix_tokens` the server would stitch).
messages += [
    {
        "role": "assistant",
        "content": turn1.choices[0].message.content or "",
        "tool_calls": None,
        "reasoning_content": None,
    },
    {"role": "user", "content": "And 3 + 3?"},
]
root = client.with_options(base_url=BASE_URL.removesuffix("/v1"))  # vLLM's /tokenize is not under /v1
tokenized = root.post("/tokenize", body={"model": MODEL, "messages": messages}, cast_to=httpx.Response)
tokens = tokenized.json()["tokens"]
body = {"model": MODEL, "messages": messages, "tools": None, "tokens": tokens, "return_token_ids": True}
turn2 = client.post("/chat/completions/tokens", body={**body, **sampling}, cast_to=ChatCompletion)
print("verifiers tokens:", tokens)
print("verifiers prompt_token_ids:", turn2.prompt_token_ids)
print("verifiers sampled ids:", turn2.choices[0].token_ids)
print("verifiers finish_reason:", turn2.choices[0].finish_reason)
print("verifiers logprobs:", len(turn2.choices[0].logprobs.content))

# prime-rl's teacher: the logprobs of every id of turn 1 (prompt and sampled) under this model.
teacher_body = {
    "model": MODEL,
    "messages": [{"role": "user", "content": ""}],
    "tokens": turn1_ids,
    "prompt_logprobs": 1,
    "max_tokens": 1,
}
teacher = client.post("/chat/completions/tokens", body=teacher_body, cast_to=ChatCompletion)
print("prime-rl scored ids:", turn1_ids)
print("prime-rl prompt_logprobs:", len(teacher.prompt_logprobs))
