"""A KV cache for a batch of conditions that share their first P positions: the prefix is stored once.

    cache = SharedPrefixCache(prefix_cache, batch_size=36, capacity=T + new_tokens, adapter=adapter)
    with attend_shared_prefix(adapter, cache):        # attention.py: prefix read in place, then own keys
        hidden, cache = adapter.language_model_forward(suffix_embeds, past_key_values=cache, ...)

Each layer keeps the prefix's keys/values as the batch-1 prefix forward left them (the very tensors,
never expanded to the batch or copied) and, per row, a buffer for the row's own positions reserved
up front, so decode steps write in place instead of re-copying the cache with `torch.cat`.
`update` (called by the model's attention) stores a call's new keys/values and returns the rows'
own keys/values; the attention function installed by `attend_shared_prefix` puts `prefix(layer)`
in front of them. The cache's length is P + the rows' own positions, so masks, query slots and
positions are those of one full sequence. Extra memory per row is its own positions' keys/values
(and its activations), not the prefix's: 36 last-token knockouts at LLaVA-1.5-7B sizes hold one
prefix cache (~0.3 GB in bf16) instead of 36 copies (~12 GB; benchmarks/memory_prefix.py).

A `SharedPrefixCache` must be used inside `attend_shared_prefix` whenever P > 0: without it the
model's own attention would see only the rows' own keys.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class SharedPrefixLayer(DynamicLayer):
    """One layer: a batch-1 prefix (P positions) shared by every row + each row's own positions.

    `keys` / `values` are the rows' own positions only, (B, kv_heads, filled, head_dim), views of a
    buffer with room for `capacity - P` positions; `get_seq_length()` counts the prefix too."""

    def __init__(
        self,
        prefix: tuple[torch.Tensor, torch.Tensor] | None,
        batch_size: int,
        capacity: int,
        empty_keys: torch.Tensor,
        empty_values: torch.Tensor,
    ):
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix if prefix is not None else (None, None)
        self.prefix_length = 0 if prefix is None else prefix[0].shape[2]
        if prefix is not None and prefix[0].shape[0] != 1:
            raise ValueError(f"the shared prefix must have batch size 1, got {prefix[0].shape[0]}")
        if capacity < self.prefix_length:
            raise ValueError(f"capacity {capacity} < {self.prefix_length} prefix positions")
        own = capacity - self.prefix_length
        self._key_buffer = empty_keys.new_empty(batch_size, empty_keys.shape[1], own, empty_keys.shape[-1])
        self._value_buffer = empty_values.new_empty(batch_size, empty_values.shape[1], own, empty_values.shape[-1])
        self.dtype, self.device = empty_keys.dtype, empty_keys.device
        self.is_initialized = True
        self._set_own_length(0)

    def _set_own_length(self, length: int) -> None:
        self.own_length = length
        self.keys = self._key_buffer[:, :, :length]
        self.values = self._value_buffer[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.own_length + key_states.shape[-2]
        if end > self._key_buffer.shape[2]:
            raise RuntimeError(
                f"shared-prefix cache full ({self.prefix_length} prefix + {self._key_buffer.shape[2]} own slots)"
            )
        self._key_buffer[:, :, self.own_length : end] = key_states
        self._value_buffer[:, :, self.own_length : end] = value_states
        self._set_own_length(end)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.prefix_length + self.own_length


class SharedPrefixCache(DynamicCache):
    """`batch_size` rows that continue one batch-1 `prefix` cache (or start empty when it is None),
    with room for `capacity` positions in all (prefix included)."""

    def __init__(self, prefix: DynamicCache | None, batch_size: int, capacity: int, adapter):
        weight = adapter.embed_tokens.weight
        layers = []
        for index in range(adapter.n_layers):
            if prefix is not None:
                keys, values = prefix.layers[index].keys, prefix.layers[index].values
                shared = (keys, values) if keys.shape[2] else None
            else:
                keys = values = weight.new_empty(1, adapter.n_kv_heads, 0, adapter.head_dim)
                shared = None
            layers.append(SharedPrefixLayer(shared, batch_size, capacity, keys, values))
        Cache.__init__(self, layers=layers)

    @property
    def prefix_length(self) -> int:
        return self.layers[0].prefix_length

    def prefix(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values) of the shared prefix at `layer`, each (1, kv_heads, P, head_dim); None if P = 0."""
        own = self.layers[layer]
        return (own.prefix_keys, own.prefix_values) if own.prefix_length else None

    def own_kv_bytes(self) -> int:
        """Bytes of the buffers reserved for every row's own keys and values, all layers."""
        return sum(
            (layer._key_buffer.numel() + layer._value_buffer.numel()) * layer._key_buffer.element_size()
            for layer in self.layers
        )
