"""A tiny Qwen2-VL-style vision-language model written offline in about a second, for images with token-in:

    vllm-tokens-patch tiny-vlm DIR    # then: vllm serve DIR --limit-mm-per-prompt '{"image": 3}' ...

Everything is written from family facts (what a Qwen2-VL checkpoint's config keys, special tokens and
processor parameters are), nothing is copied from a model repository:
- tokenizer: byte-level BPE trained on the same local corpus as `tiny_model.py`, with the ChatML tokens and
  the Qwen2-VL vision tokens as special tokens;
- chat template: our own ChatML template; an image content part renders as
  `<|vision_start|><|image_pad|><|vision_end|>` (a video part with `<|video_pad|>`), which the processor then
  expands to one `<|image_pad|>` per merged 2x2 patch group;
- config: `Qwen2VLForConditionalGeneration`, text model hidden 64 / 2 layers / 2 heads of 32 (the CPU
  attention backend supports head sizes 32, 64, 80, ...), M-RoPE `mrope_section` [4, 6, 6] (sums to
  head_dim / 2), vision tower depth 2 / embed 64 / 2 heads, patch 14, merge 2, temporal patch 2;
- preprocessor: `Qwen2VLImageProcessor` with min_pixels 28*28*4 and max_pixels 28*28*16, so an image becomes
  4..16 placeholder tokens (a 56x56 image: a 4x4 patch grid, 4 tokens after the 2x2 merge);
- weights: random bfloat16 tensors under the names a transformers>=4.52 Qwen2-VL checkpoint uses
  (`model.language_model.*`, `model.visual.*`, `lm_head.*`); vLLM's `hf_to_vllm_mapper` maps them (~0.7 MB).

Needs `tokenizers`, `numpy` and `safetensors` (every vLLM environment has them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vllm_tokens_patch.tiny_model import TEMPLATE_TURN_END, write_tokenizer  # the tiny text model's

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<think>",
    "</think>",
]

# Patch geometry (Qwen2-VL family facts): 14x14 patches, 2 frames per temporal patch, 2x2 spatial merge.
PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
UNIT = PATCH_SIZE * MERGE_SIZE  # 28: image sides are resized to multiples of this
MIN_PIXELS = UNIT * UNIT * 4  # at least 4 placeholder tokens per image
MAX_PIXELS = UNIT * UNIT * 16  # at most 16 placeholder tokens per image
# CLIP normalisation constants, as the Qwen2-VL processor family uses.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' or 'image' in part %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' or part['type'] == 'video_url' or 'video' in part %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}"
    "{% endif %}" + TEMPLATE_TURN_END
)

QWEN2_TOKENIZER = {"tokenizer_class": "Qwen2TokenizerFast", "processor_class": "Qwen2VLProcessor"}
"""transformers 4's Qwen2-VL processor accepts only a Qwen2 tokenizer class (5 accepts any); a Qwen2 fast
tokenizer built from `tokenizer.json` is the same tokenizer."""

TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1}  # fmt: skip
HEAD_DIM = TEXT["hidden_size"] // TEXT["num_attention_heads"]  # 32
MROPE_SECTION = [4, 6, 6]  # temporal, height, width rotary pairs: sums to HEAD_DIM // 2
VISION = {"depth": 2, "embed_dim": 64, "num_heads": 2, "mlp_ratio": 2}


def num_image_tokens(height: int, width: int) -> int:
    """Placeholder tokens the processor expands one image of this size to (Qwen2-VL `smart_resize`)."""
    import math

    h_bar = max(UNIT, round(height / UNIT) * UNIT)
    w_bar = max(UNIT, round(width / UNIT) * UNIT)
    if h_bar * w_bar > MAX_PIXELS:
        beta = math.sqrt(height * width / MAX_PIXELS)
        h_bar = max(UNIT, math.floor(height / beta / UNIT) * UNIT)
        w_bar = max(UNIT, math.floor(width / beta / UNIT) * UNIT)
    elif h_bar * w_bar < MIN_PIXELS:
        beta = math.sqrt(MIN_PIXELS / (height * width))
        h_bar = math.ceil(height * beta / UNIT) * UNIT
        w_bar = math.ceil(width * beta / UNIT) * UNIT
    return (h_bar // PATCH_SIZE) * (w_bar // PATCH_SIZE) // (MERGE_SIZE * MERGE_SIZE)


def build_tiny_vlm(path: Path, *, with_weights: bool = True, max_position_embeddings: int = 4096) -> Path:
    """Write tokenizer, processor configs, config (bfloat16) and random bfloat16 weights; return `path`."""
    ids, vocab_size = write_tokenizer(
        path, SPECIAL_TOKENS, CHAT_TEMPLATE, max_position_embeddings, QWEN2_TOKENIZER
    )
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    pixels = {
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "merge_size": MERGE_SIZE,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "resample": 3,  # bicubic
    }
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": "Qwen2VLProcessor",
                **pixels,
            },
            indent=1,
        )
    )
    (path / "video_preprocessor_config.json").write_text(
        json.dumps(
            {
                "video_processor_type": "Qwen2VLVideoProcessor",
                "processor_class": "Qwen2VLProcessor",
                **pixels,
            },
            indent=1,
        )
    )

    rope_scaling = {"type": "mrope", "rope_type": "default", "mrope_section": MROPE_SECTION}
    text_config: dict[str, Any] = {
        "model_type": "qwen2_vl_text",
        **TEXT,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": rope_scaling,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": TEXT["num_hidden_layers"],
        "attention_dropout": 0.0,
        "vocab_size": vocab_size,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    config: dict[str, Any] = {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        # The text keys at the top level too: releases before the text_config split read them there.
        **{key: value for key, value in text_config.items() if key != "model_type"},
        "text_config": text_config,
        "vision_config": {
            **VISION,
            "hidden_size": TEXT["hidden_size"],  # the merger projects into the text model's width
            "hidden_act": "quick_gelu",
            "in_channels": 3,
            "in_chans": 3,
            "patch_size": PATCH_SIZE,
            "spatial_patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        },
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]})
    )
    if with_weights:
        _write_weights(path, config)
    return path


def weight_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor names (transformers>=4.52 layout) and shapes for `config`."""
    hidden = int(config["hidden_size"])
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config["num_key_value_heads"])
    head_dim = hidden // heads
    vision = config["vision_config"]
    embed = int(vision["embed_dim"])
    mlp = int(embed * vision["mlp_ratio"])
    patch, temporal, merge = (
        int(vision[k]) for k in ("patch_size", "temporal_patch_size", "spatial_merge_size")
    )
    merged = embed * merge * merge

    shapes: dict[str, tuple[int, ...]] = {
        "model.language_model.embed_tokens.weight": (vocab, hidden),
        "model.language_model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for layer in range(int(config["num_hidden_layers"])):
        p = f"model.language_model.layers.{layer}."
        shapes |= {
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.q_proj.bias": (heads * head_dim,),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.k_proj.bias": (kv_heads * head_dim,),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.bias": (kv_heads * head_dim,),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    shapes["model.visual.patch_embed.proj.weight"] = (
        embed,
        int(vision["in_channels"]),
        temporal,
        patch,
        patch,
    )
    for block in range(int(vision["depth"])):
        p = f"model.visual.blocks.{block}."
        shapes |= {
            p + "norm1.weight": (embed,),
            p + "norm1.bias": (embed,),
            p + "norm2.weight": (embed,),
            p + "norm2.bias": (embed,),
            p + "attn.qkv.weight": (3 * embed, embed),
            p + "attn.qkv.bias": (3 * embed,),
            p + "attn.proj.weight": (embed, embed),
            p + "attn.proj.bias": (embed,),
            p + "mlp.fc1.weight": (mlp, embed),
            p + "mlp.fc1.bias": (mlp,),
            p + "mlp.fc2.weight": (embed, mlp),
            p + "mlp.fc2.bias": (embed,),
        }
    shapes |= {
        "model.visual.merger.ln_q.weight": (embed,),
        "model.visual.merger.ln_q.bias": (embed,),
        "model.visual.merger.mlp.0.weight": (merged, merged),
        "model.visual.merger.mlp.0.bias": (merged,),
        "model.visual.merger.mlp.2.weight": (int(vision["hidden_size"]), merged),
        "model.visual.merger.mlp.2.bias": (int(vision["hidden_size"]),),
    }
    return shapes


def _write_weights(path: Path, config: dict[str, Any]) -> None:
    """Random weights stored as bfloat16 (the config's dtype: vLLM then loads them without a cast warning)."""
    import numpy as np

    rng = np.random.default_rng(0)
    weights = {}
    for name, shape in weight_shapes(config).items():
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layernorm.weight", "ln_q.weight")):
            weights[name] = np.ones(shape, dtype=np.float32)
        elif name.endswith(".bias"):
            weights[name] = np.zeros(shape, dtype=np.float32)
        else:
            weights[name] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    _save_bf16(weights, path / "model.safetensors")


def _save_bf16(weights: dict[str, Any], file: Path) -> None:
    """Write float32 arrays as a BF16 safetensors file (numpy has no bfloat16; the format is simple)."""
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(weights):
        bits = np.ascontiguousarray(weights[name], dtype=np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")  # round to nearest even
        blob = rounded.tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(weights[name].shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with file.open("wb") as out:
        out.write(len(encoded).to_bytes(8, "little"))
        out.write(encoded)
        for blob in blobs:
            out.write(blob)
