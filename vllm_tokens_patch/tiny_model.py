"""A tiny Llama model written offline in about a second, for trying the route without a download:

    vllm-tokens-patch tiny-model DIR        # then: vllm serve DIR ...

Byte-level BPE trained on local text, ChatML template, and the special tokens that vLLM's hermes tool
parser and `<think>` reasoning parsers look up in the vocabulary. Weights are random (~3 MB): a random model
samples random ids, which makes the retokenization drift this project removes almost certain. The README,
`nox -s demo`, the e2e suites and the benchmarks all serve this model. Needs `tokenizers`, `numpy` and
`safetensors`, which every vLLM environment has (imported only when a model is written).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<think>",
    "</think>",
]
VOCAB_SIZE = 1024

TEMPLATE_TURN_END = (
    "{% if message.get('tool_calls') %}{% for call in message['tool_calls'] %}"
    "{{ '<tool_call>' + call['function']['name'] + '</tool_call>' }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""After a message's content: its tool calls, the turn's end, the generation prompt (the tiny VLM's too)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}"
    "{% endif %}" + TEMPLATE_TURN_END
)

_CORPUS = """
The quick brown fox jumps over the lazy dog. A reinforcement learning trainer needs the exact tokens
the policy sampled; re-tokenizing decoded text is not the identity. Hello world, how are you today?
What is the weather in Paris? It is sunny and warm. Tell me a story about a robot that learns to paint.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2026. Punctuation: , . ; : ! ? ( ) [ ] { } " ' - _ / \\ @ # $ %.
def add(a, b): return a + b. {"name": "get_weather", "arguments": {"city": "Paris"}}
User assistant system tool function call result answer question think reason step first then finally.
"""


def write_tokenizer(
    path: Path,
    special_tokens: list[str],
    chat_template: str,
    max_position_embeddings: int,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, int], int]:
    """Train a byte-level BPE on the local corpus with `special_tokens`, write it with its config
    (`extra`: more `tokenizer_config.json` keys); return the special tokens' ids and the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 50, trainer=trainer)
    tokenizer.save(str(path / "tokenizer.json"))
    ids: dict[str, int] = {}
    for token in special_tokens:
        found = tokenizer.token_to_id(token)
        assert found is not None, token  # a special token the trainer was given
        ids[token] = found

    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                **(extra or {}),  # may name another tokenizer class
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "model_max_length": max_position_embeddings,
                "chat_template": chat_template,
                "clean_up_tokenization_spaces": False,
                "added_tokens_decoder": {
                    str(ids[token]): {
                        "content": token,
                        "lstrip": False,
                        "normalized": False,
                        "rstrip": False,
                        "single_word": False,
                        "special": token.startswith("<|"),
                    }
                    for token in special_tokens
                },
            },
            indent=1,
        )
    )
    (path / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    )
    return ids, tokenizer.get_vocab_size()


def build_tiny_model(path: Path, *, with_weights: bool = True, max_position_embeddings: int = 4096) -> Path:
    """Write tokenizer, config (dtype bfloat16) and, optionally, random float32 weights; return `path`."""
    ids, vocab_size = write_tokenizer(path, SPECIAL_TOKENS, CHAT_TEMPLATE, max_position_embeddings)
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "torch_dtype": "bfloat16",
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": ids["<|im_end|>"]}))
    if with_weights:
        _write_weights(path, config)
    return path


def _write_weights(path: Path, config: dict[str, Any]) -> None:
    import numpy as np
    import numpy.typing as npt
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    hidden = int(config["hidden_size"])
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    head_dim = int(config["head_dim"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config["num_key_value_heads"])

    def tensor(*shape: int) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    weights = {"model.embed_tokens.weight": tensor(vocab, hidden), "lm_head.weight": tensor(vocab, hidden)}
    weights["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    for layer in range(int(config["num_hidden_layers"])):
        prefix = f"model.layers.{layer}."
        weights[prefix + "self_attn.q_proj.weight"] = tensor(heads * head_dim, hidden)
        weights[prefix + "self_attn.k_proj.weight"] = tensor(kv_heads * head_dim, hidden)
        weights[prefix + "self_attn.v_proj.weight"] = tensor(kv_heads * head_dim, hidden)
        weights[prefix + "self_attn.o_proj.weight"] = tensor(hidden, heads * head_dim)
        weights[prefix + "mlp.gate_proj.weight"] = tensor(inter, hidden)
        weights[prefix + "mlp.up_proj.weight"] = tensor(inter, hidden)
        weights[prefix + "mlp.down_proj.weight"] = tensor(hidden, inter)
        weights[prefix + "input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
        weights[prefix + "post_attention_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
