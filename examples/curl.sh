#!/bin/sh
# Two turns: vLLM's stock route with "return_token_ids", then the token route with "prefix_tokens" =
# turn 1's prompt ids + sampled ids and the whole conversation (the server splices the new user turn on).
set -eu
BASE_URL="${BASE_URL:-http://127.0.0.1:8000/v1}"
MODEL="${MODEL:-Qwen/Qwen3-8B}"
VLLM_API_KEY="${VLLM_API_KEY:-EMPTY}"
export MODEL

turn1=$(curl -sS --fail-with-body "$BASE_URL/chat/completions" \
  -H "Content-Type: application/json" -H "Authorization: Bearer $VLLM_API_KEY" \
  -d "{\"model\": \"$MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}],
       \"return_token_ids\": true, \"max_tokens\": 32}")
printf 'turn 1: %s\n' "$turn1"  # not echo: sh's echo would expand the JSON's \n escapes

turn2_body=$(printf '%s' "$turn1" | python3 -c '
import json, os, sys
turn1 = json.load(sys.stdin)
choice = turn1["choices"][0]
print(json.dumps({
    "model": os.environ["MODEL"],
    "messages": [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": choice["message"]["content"] or ""},
        {"role": "user", "content": "Tell me more."},
    ],
    "prefix_tokens": turn1["prompt_token_ids"] + choice["token_ids"],
    "return_token_ids": True,
    "max_tokens": 32,
}))')

echo "turn 2:"
curl -sS --fail-with-body --dump-header - "$BASE_URL/chat/completions/tokens" \
  -H "Content-Type: application/json" -H "Authorization: Bearer $VLLM_API_KEY" -d "$turn2_body"
