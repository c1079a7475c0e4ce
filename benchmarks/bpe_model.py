"""A weightless model directory around a realistic tokenizer: a 65k-vocab byte-level BPE.

The tokenizer is `anthropic/tokenizer.json` from the PyPI package `anthropic==0.34.2` (the bench session
fetches it without dependencies). The directory is the tiny test model's (config, generation config,
ChatML template from vllm_tokens_patch.tiny_model) with its tokenizer swapped for this one, plus the
ChatML and tool-call/think special tokens that vLLM's parsers look up. No weights: the engine is fake.
"""

from __future__ import annotations

import json
from pathlib import Path

from vllm_tokens_patch.tiny_model import SPECIAL_TOKENS, build_tiny_model


def build_bpe_model(path: Path, tokenizer_json: Path, *, max_position_embeddings: int) -> Path:
    """Write the tiny model's files into `path`, then replace its tokenizer with `tokenizer_json`."""
    from tokenizers import AddedToken, Tokenizer

    build_tiny_model(path, with_weights=False, max_position_embeddings=max_position_embeddings)
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.add_special_tokens(
        [AddedToken(token, normalized=False, special=token.startswith("<|")) for token in SPECIAL_TOKENS]
    )
    tokenizer.save(str(path / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}

    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    entries = {entry["content"]: entry for entry in tokenizer_config["added_tokens_decoder"].values()}
    tokenizer_config["added_tokens_decoder"] = {str(ids[token]): entries[token] for token in SPECIAL_TOKENS}
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))

    config = json.loads((path / "config.json").read_text())
    config["vocab_size"] = tokenizer.get_vocab_size(with_added_tokens=True)
    config["bos_token_id"] = ids["<|endoftext|>"]
    config["eos_token_id"] = ids["<|im_end|>"]
    (path / "config.json").write_text(json.dumps(config, indent=1))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": ids["<|im_end|>"]}))
    return path
