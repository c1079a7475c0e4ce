"""A 4-turn rollout with the bundled client."""

import os

from vllm_tokens_patch.client import TokenChatClient

BASE_URL = os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1")
MODEL = os.environ.get("MODEL", "Qwen/Qwen3-8B")
API_KEY = os.environ.get("VLLM_API_KEY", "EMPTY")
questions = ["What is the weather in Paris?", "And in Rome?", "Which is warmer?", "Thanks!"]

with TokenChatClient(BASE_URL, MODEL, api_key=API_KEY) as client:
    messages = [{"role": "user", "content": questions[0]}]
    turn = client.chat(messages, max_tokens=24)  # the stock route, with return_token_ids
    print("turn 1:", turn.prompt_ids, turn.completion_ids)
    for number, question in enumerate(questions[1:], start=2):
        messages += [turn.assistant_message(), {"role": "user", "content": question}]
        turn = client.next_turn(messages, turn, max_tokens=24)  # prefix_tokens = turn.ids; the server splices
        print(f"turn {number}:", turn.prompt_ids, turn.completion_ids, turn.headers["x-vllm-tokens-splice"])
