"""The tiny demo model: a small random-weight Llama with a byte-level tokenizer, in Hugging Face format.

The server makes it when no model is given, and loads it through the same code as a real
checkpoint, so every path of the server runs without downloading anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>")

# Hermes-style tools: their signatures in a system block, calls as <tool_call> JSON blocks, results as
# <tool_response> blocks; `--tool-call-parser hermes` reads this format back.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<system><tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    'Call a tool with <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call></system>\n{% endif %}'
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "<tool><tool_response>\n{{ message['content'] }}\n</tool_response></tool>\n"
    "{% else %}"
    "<{{ message['role'] }}>{{ message['content'] }}"
    "{% for call in message.get('tool_calls') or [] %}{% set function = call['function'] %}"
    "<tool_call>\n{{ {'name': function['name'], 'arguments': function['arguments']} | tojson }}\n</tool_call>"
    "{% endfor %}"
    "</{{ message['role'] }}>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (ids 0-255) plus three special tokens: any UTF-8 text round-trips."""
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    bos, eos, pad = SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad, model_max_length=512
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


TINY_DIMENSIONS = {
    "hidden_size": 64,
    "intermediate_size": 172,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def byte_level_token_ids() -> dict[str, int]:
    """The vocabulary size and special token ids a model config needs to match the byte-level tokenizer."""
    tokenizer = byte_level_tokenizer()
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def save_random_model(
    config: PretrainedConfig, out_dir: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """A random-weight causal LM of `config` with the byte-level tokenizer, in Hugging Face format."""
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).to(dtype).eval().save_pretrained(out_dir)
    byte_level_tokenizer().save_pretrained(out_dir)
    return out_dir


def llama_config(dimensions: Mapping[str, int], **config: Any) -> LlamaConfig:
    """A Llama config of `dimensions` that matches the byte-level tokenizer."""
    return LlamaConfig(**{**byte_level_token_ids(), **dimensions}, tie_word_embeddings=False, **config)


def write_random_llama(
    out_dir: Path,
    dimensions: Mapping[str, int],
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **config: Any,
) -> Path:
    """A random-weight Llama with the byte-level tokenizer, saved to `out_dir` in Hugging Face format."""
    return save_random_model(llama_config(dimensions, **config), out_dir, seed=seed, dtype=dtype)


def tiny_model_config(context_length: int = 512) -> LlamaConfig:
    return llama_config(
        TINY_DIMENSIONS,
        max_position_embeddings=context_length,
        # A wide init makes the logits peaked, so greedy decoding has no near-ties that rounding
        # differences between batched and single-request kernels could flip.
        initializer_range=0.3,
    )


def make_tiny_model(out_dir: Path, seed: int = 0, context_length: int = 512) -> Path:
    """Write the demo model to `out_dir` (created if needed) and return it."""
    return save_random_model(tiny_model_config(context_length), out_dir, seed=seed)
