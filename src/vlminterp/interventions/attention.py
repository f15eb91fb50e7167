"""Editing the language model's attention through transformers' attention-function registry.

    with use_attention_function(adapter, my_attention):      # low level: any attention function
        model(**inputs)
    with edit_attention(adapter, edit):                      # composable edits (knockout, capture)
        model(**inputs)

`use_attention_function` registers a function (and the boolean causal/padding mask function it
needs: transformers hands a custom implementation `attention_mask=None` unless a mask function is
registered under the same name) under a fresh name, points the TEXT config at it (the vision tower
keeps its own attention), and on exit, even after an exception, restores the config and removes
both registrations.

`edit_attention` keeps one `AttentionEditor` per language model: its attention function asks every
active edit which (query, key) pairs to block (`AttentionEdit.blocked`) and lets edits observe
attention probabilities (`AttentionEdit.observe`), then runs the model's own backend (sdpa or
eager) with the explicit mask `allowed = causal AND padding AND NOT blocked`. Every query row keeps
at least one key (its own position), so no row is ever fully masked (no NaN).

Index convention: a query's index is its slot in the KV cache, i.e. its position in the sequence
for ordinary caches: with K keys and Q queries in a call, the queries are slots K-Q .. K-1.
"""
from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SUPPORTED_BACKENDS = ("sdpa", "eager")
_names = itertools.count()


class AttentionPatchError(RuntimeError):
    """The language model's attention cannot be patched as asked."""


def _boolean_mask(**kwargs) -> torch.Tensor | None:
    """The sdpa boolean mask (True = may attend), always materialised (never the is_causal shortcut)."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(**kwargs)


@contextlib.contextmanager
def use_attention_function(adapter, attention_function: Callable, label: str = "vlminterp") -> Iterator[str]:
    """Route the text model's attention through `attention_function` for the duration of the block.

    The function has transformers' attention signature
    `(module, query, key, value, attention_mask, *, scaling, dropout, **kwargs) -> (output, weights)`
    and receives a boolean `attention_mask` of shape (batch, 1, Q, K) (True = may attend).
    Yields the registered name.
    """
    config = adapter.text_config
    previous = config._attn_implementation
    if previous not in SUPPORTED_BACKENDS:
        raise AttentionPatchError(
            f"the text model uses attn_implementation={previous!r}; interventions support {SUPPORTED_BACKENDS} "
            "(load the model with attn_implementation='sdpa' or 'eager')"
        )
    name = f"{label}_{previous}_{next(_names)}"
    AttentionInterface.register(name, attention_function)
    AttentionMaskInterface.register(name, _boolean_mask)
    config._attn_implementation_internal = name
    try:
        yield name
    finally:
        config._attn_implementation_internal = previous
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


def query_slots(num_queries: int, num_keys: int, device) -> torch.Tensor:
    """Cache slots of the queries of one attention call (the last `num_queries` of `num_keys`)."""
    return torch.arange(num_keys - num_queries, num_keys, device=device)


def causal_allowed(num_queries: int, num_keys: int, device) -> torch.Tensor:
    """(1, 1, Q, K) boolean causal mask in cache-slot indices."""
    q = query_slots(num_queries, num_keys, device)
    return (torch.arange(num_keys, device=device)[None, :] <= q[:, None])[None, None]


def keep_one_key(allowed: torch.Tensor, q_slots: torch.Tensor) -> torch.Tensor:
    """Re-allow a query's own slot in any row left with no key at all (never a fully masked row)."""
    empty = ~allowed.any(dim=-1, keepdim=True)
    if not bool(empty.any()):
        return allowed
    own = torch.arange(allowed.shape[-1], device=allowed.device)[None, :] == q_slots[:, None]
    return allowed | (empty & own)


def attention_probabilities(
    module, query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Softmax attention probabilities (B, H, Q, K) in float32 for the given queries."""
    n_rep = query.shape[1] // key.shape[1]
    scores = torch.matmul(query.float(), repeat_kv(key, n_rep).float().transpose(2, 3)) * scaling
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


def _model_eager_function(module) -> Callable | None:
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def run_backend(
    backend: str,
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor,
    scaling: float | None,
    dropout: float,
    kwargs: dict,
):
    """Compute attention with the model's own sdpa or eager implementation under a boolean mask."""
    if backend == "sdpa":
        return sdpa_attention_forward(
            module, query, key, value, allowed, dropout=dropout, scaling=scaling, **kwargs
        )
    eager = _model_eager_function(module)
    if eager is None:
        raise AttentionPatchError(f"{type(module).__name__}'s module has no eager_attention_forward")
    additive = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(
        ~allowed, torch.finfo(query.dtype).min
    )
    return eager(module, query, key, value, additive, scaling=scaling, dropout=dropout, **kwargs)


class AttentionEdit(Protocol):
    """What an edit may do inside the attention function of one layer call."""

    def blocked(
        self, layer: int, q_slots: torch.Tensor, num_keys: int, batch_size: int, num_heads: int
    ) -> torch.Tensor | None:
        """Boolean (B or 1, 1 or H, Q, K) tensor of (query, key) pairs to block, or None."""

    def observe(self, layer: int, q_slots: torch.Tensor, probabilities: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Called with a function mapping selected query rows (indices into this call) to probabilities."""


class AttentionEditor:
    """The single patched attention function of one language model, applying all active edits."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.edits: list[AttentionEdit] = []
        self.backend = adapter.text_config._attn_implementation

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        batch, heads, num_queries, _ = query.shape
        num_keys = key.shape[2]
        layer = module.layer_idx
        q_slots = query_slots(num_queries, num_keys, query.device)
        if (
            attention_mask is not None
            and attention_mask.dtype == torch.bool
            and attention_mask.shape[-1] == num_keys
            and attention_mask.shape[-2] == num_queries
        ):
            allowed = attention_mask
        else:  # e.g. a cache whose layers hold different numbers of slots: causal in slot indices
            allowed = causal_allowed(num_queries, num_keys, query.device)
        for edit in self.edits:
            blocked = edit.blocked(layer, q_slots, num_keys, batch, heads)
            if blocked is not None:
                allowed = allowed & ~blocked
        allowed = keep_one_key(allowed, q_slots)
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        for edit in self.edits:
            edit.observe(
                layer,
                q_slots,
                lambda rows: attention_probabilities(module, query[:, :, rows], key, allowed[:, :, rows], scale),
            )
        return run_backend(self.backend, module, query, key, value, allowed, scaling, dropout, kwargs)


_EDITOR_ATTRIBUTE = "_vlminterp_attention_editor"


@contextlib.contextmanager
def edit_attention(adapter, edit: AttentionEdit) -> Iterator[AttentionEdit]:
    """Activate `edit` on the language model's attention; composable with other active edits."""
    owner = adapter.language_model
    editor: AttentionEditor | None = getattr(owner, _EDITOR_ATTRIBUTE, None)
    if editor is not None:
        editor.edits.append(edit)
        try:
            yield edit
        finally:
            editor.edits.remove(edit)
        return
    editor = AttentionEditor(adapter)
    editor.edits.append(edit)
    with use_attention_function(adapter, editor, label="vlminterp_edits"):
        setattr(owner, _EDITOR_ATTRIBUTE, editor)
        try:
            yield edit
        finally:
            delattr(owner, _EDITOR_ATTRIBUTE)

