"""The adapters loaded on a model: their names and ids, and the wrapped layers that hold their weights.

Id 0 is the base model. A layer is wrapped in a `LoraLinear` while some adapter targets it and put
back as it was when the last one leaves, so a model without adapters runs exactly as loaded.
Not thread-safe: the engine adds and removes adapters only between forward passes.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from inference.engine.packed_linear import PackedLinear
from inference.lora.layer import LoraLinear
from inference.lora.weights import LoraAdapter, LoraAdapterError
from inference.quantize.int8_linear import Int8Linear

BASE_LORA_ID = 0


def _is_lora_target(module: nn.Module) -> bool:
    # Exact nn.Linear: subclasses (MultiheadAttention's out_proj) are read as raw weights by their parent.
    return type(module) is nn.Linear or isinstance(module, Int8Linear | LoraLinear | PackedLinear)


class LoraRegistry:
    def __init__(self, model: nn.Module, base_name: str, max_loras: int, max_rank: int) -> None:
        self._model = model
        self.base_name = base_name
        self.max_loras = max_loras
        self.max_rank = max_rank
        self._loaded: dict[str, tuple[int, LoraAdapter]] = {}
        self._next_id = BASE_LORA_ID + 1  # ids are never re-used, so a stale id finds no weights

    def __contains__(self, name: str) -> bool:
        return name in self._loaded

    def __len__(self) -> int:
        return len(self._loaded)

    def __iter__(self) -> Iterator[LoraAdapter]:
        """The loaded adapters, in the order they were loaded."""
        return iter([adapter for _, adapter in self._loaded.values()])

    def id_of(self, name: str | None) -> int:
        """The id of a loaded adapter, BASE_LORA_ID for None; KeyError for a name not loaded."""
        return BASE_LORA_ID if name is None else self._loaded[name][0]

    def add(self, adapter: LoraAdapter) -> int:
        """Wrap the layers the adapter targets and give them its weights; all checked before any change."""
        self._check_fits(adapter)
        lora_id = self._next_id
        self._next_id += 1
        for module_name, weights in adapter.layers.items():
            self._wrapped(module_name).add(lora_id, weights)
        self._loaded[adapter.name] = (lora_id, adapter)
        return lora_id

    def remove(self, name: str) -> int:
        """Take the adapter's weights out (KeyError if not loaded); returns the id it had."""
        lora_id, adapter = self._loaded.pop(name)
        for module_name in adapter.layers:
            parent_name, _, child_name = module_name.rpartition(".")
            parent = self._model.get_submodule(parent_name)
            layer = getattr(parent, child_name)
            layer.remove(lora_id)
            if not layer.adapters:
                setattr(parent, child_name, layer.base)
        return lora_id

    def _check_fits(self, adapter: LoraAdapter) -> None:
        where = f"adapter {adapter.name!r} ({adapter.path})"
        if adapter.name == self.base_name:
            raise LoraAdapterError(f"{where}: the name is the base model's")
        if adapter.name in self._loaded:
            raise LoraAdapterError(f"{where}: an adapter named {adapter.name!r} is already loaded")
        if len(self._loaded) >= self.max_loras:
            raise LoraAdapterError(f"{where}: {len(self._loaded)} adapters are loaded, the max_loras limit")
        if adapter.rank > self.max_rank:
            raise LoraAdapterError(f"{where}: rank {adapter.rank} is above max_lora_rank ({self.max_rank})")
        output_layer = self._model.get_output_embeddings()
        for module_name, weights in adapter.layers.items():
            try:
                module = self._model.get_submodule(module_name)
            except AttributeError:
                raise LoraAdapterError(f"{where}: the base model has no layer {module_name!r}") from None
            if module is output_layer or (isinstance(module, LoraLinear) and module.base is output_layer):
                # The engine computes logits for sampled rows only: no per-token adapter grouping there.
                raise LoraAdapterError(f"{where}: LoRA on the output layer {module_name!r} is not supported")
            if not _is_lora_target(module):
                raise LoraAdapterError(
                    f"{where}: {module_name!r} is a {type(module).__name__}; LoRA is served on linear layers"
                )
            expected = (module.in_features, module.out_features)
            if (weights.a.shape[1], weights.b.shape[0]) != expected:
                raise LoraAdapterError(
                    f"{where}: {module_name!r} maps {expected[0]} -> {expected[1]} features, the adapter "
                    f"{weights.a.shape[1]} -> {weights.b.shape[0]}: it was trained for another base model"
                )

    def _wrapped(self, module_name: str) -> LoraLinear:
        parent_name, _, child_name = module_name.rpartition(".")
        parent = self._model.get_submodule(parent_name)
        layer = getattr(parent, child_name)
        if not isinstance(layer, LoraLinear):
            layer = LoraLinear(layer)
            setattr(parent, child_name, layer)
        return layer
