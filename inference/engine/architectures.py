"""What the engine refuses to serve, checked at start-up: models whose output through the paged
attention would silently differ from `transformers`' own.

The engine runs every scheduled token of a step in one packed forward pass and keeps nothing but
keys and values per token. A model is refused when its output depends on more than that:
- layers that are not softmax attention over the KV cache (linear attention, state-space layers)
  or attend through a mask shape the paged attention does not build (Llama 4's chunked attention);
- attention scaled by a token's position taken from the batch layout rather than its position
  ids (Llama 4's temperature tuning in its NoPE layers);
- RoPE whose frequencies `transformers` picks from the largest position in the forward pass
  (LongRoPE, dynamic NTK) beyond the length where that choice is fixed: in a packed batch one long
  sequence would switch the frequencies of every other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from transformers import PretrainedConfig

# Layer types whose attention the paged attention computes exactly.
SUPPORTED_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})
# RoPE types whose frequencies depend on the longest position of the forward pass.
_LENGTH_DEPENDENT_ROPE = frozenset({"longrope", "dynamic"})


class UnsupportedArchitectureError(ValueError):
    """The model would run with silently different output in the engine; the message says why."""


def _rope_parameter_sets(config: PretrainedConfig) -> Iterator[dict[str, Any]]:
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if not isinstance(parameters, dict):
        return
    if "rope_type" in parameters or "type" in parameters:
        yield parameters
    else:  # one set per layer type
        yield from (value for value in parameters.values() if isinstance(value, dict))


def check_supported(config: PretrainedConfig, max_model_len: int) -> None:
    """Raise UnsupportedArchitectureError if serving `config` up to `max_model_len` tokens would not
    give `transformers`' output."""
    name = config.model_type
    layer_types = getattr(config, "layer_types", None) or []
    unsupported = sorted(set(layer_types) - SUPPORTED_LAYER_TYPES)
    if unsupported:
        raise UnsupportedArchitectureError(
            f"{name}: layers of type {', '.join(unsupported)} are not computed by the paged attention "
            f"(it computes {', '.join(sorted(SUPPORTED_LAYER_TYPES))})"
        )
    no_rope_layers = getattr(config, "no_rope_layers", None) or []
    if getattr(config, "attn_temperature_tuning", False) and not all(no_rope_layers):
        raise UnsupportedArchitectureError(
            f"{name}: attention temperature tuning scales the queries of its NoPE layers by positions "
            "taken from the cache layout, not the position ids of a packed batch"
        )
    for rope in _rope_parameter_sets(config):
        rope_type = rope.get("rope_type", rope.get("type"))
        if rope_type not in _LENGTH_DEPENDENT_ROPE:
            continue
        fixed_up_to = rope.get("original_max_position_embeddings") or config.max_position_embeddings
        if max_model_len > fixed_up_to:
            raise UnsupportedArchitectureError(
                f"{name}: {rope_type} RoPE switches frequencies once a forward pass holds a position past "
                f"{fixed_up_to}, which in a packed batch would change every other request's output; "
                f"serve it with max_model_len <= {fixed_up_to} (asked: {max_model_len})"
            )


def check_attention_layers(config: PretrainedConfig, attention_layers: set[int]) -> None:
    """Every decoder layer must have gone through the paged attention in the start-up probe."""
    missing = sorted(set(range(getattr(config, "num_hidden_layers", 0))) - attention_layers)
    if missing or not attention_layers:
        raise UnsupportedArchitectureError(
            f"{config.model_type}: layers {missing or 'all'} do not attend through AttentionInterface, "
            "so their state would not be kept in the paged KV cache"
        )
