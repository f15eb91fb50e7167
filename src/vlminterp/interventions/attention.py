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

`attend_shared_prefix(adapter, cache)` (the engine, with a `SharedPrefixCache`): the keys a layer
call receives are each row's own positions, and the batch-1 prefix they continue is read from the
cache in place (`LayerKeys`): scored for all rows in one batch-1 matmul, never copied per row. When
a call's scores would outgrow a per-row copy of the prefix (a long suffix after a short prefix) the
prefix is expanded for that layer call only and the model's backend runs as usual.
The scores of a row over the prefix are as large as the prefix (heads x queries x P + S floats per
layer call): for a one-token suffix that is more than the row's own KV cache in all layers at small
widths. So a call's scores are computed a chunk at a time, each chunk's at most
WORKSPACE_SHARE_OF_OWN_KV of the rows' own KV cache, one buffer turned into probabilities in
place: chunks of key/value heads (the same bits as one chunk on one CPU thread), and of rows too
only when one key/value head of every row is over the budget. The attention's working memory is
then a fixed share of what the rows hold anyway, and an extra condition costs its own KV, that
share of it, and its hidden states (benchmarks/memory_prefix.py). At LLaVA-1.5-7B sizes on the
paper's 634-position sequence one chunk holds everything.

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
# The scores of one layer call over a shared prefix are computed a chunk (of heads, of rows) at a
# time, each chunk's at most this share of the rows' own KV cache (module docstring); None: at once.
WORKSPACE_SHARE_OF_OWN_KV: float | None = 0.25
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


class SharedPrefix(Protocol):
    """KV-cache positions shared by every row of a batch, stored once (batch 1)."""

    def prefix(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values) of the shared positions at `layer`, each (1, kv_heads, P, head_dim); None if P = 0."""

    def own_kv_bytes(self) -> int:
        """Bytes held for every row's own keys and values, all layers (what the rows cost anyway)."""


def _fold_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, Hkv, M, n) -> (1, Hkv, B*M, n): every row's query rows side by side, for one batch-1 matmul."""
    batch, kv_heads, rows, n = x.shape
    return x.transpose(0, 1).reshape(1, kv_heads, batch * rows, n)


def _unfold_rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of `_fold_rows`: (1, Hkv, B*M, n) -> (B, Hkv, M, n)."""
    _, kv_heads, rows, n = x.shape
    return x.reshape(kv_heads, batch, rows // batch, n).transpose(0, 1)


class LayerKeys:
    """The keys and values one attention call reads: optionally a batch-1 prefix shared by every row,
    then each row's own keys (B, kv_heads, S, head_dim).

    The prefix is never expanded to the batch: its scores and its share of the output come from one
    batch-1 matmul with every row's queries side by side (`_fold_rows`), the query heads of one
    key/value head grouped together (grouped-query attention without repeating keys)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None):
        self.keys, self.values = keys, values
        self.prefix_keys, self.prefix_values = prefix if prefix is not None else (None, None)
        self.prefix_length = 0 if prefix is None else prefix[0].shape[2]

    @property
    def length(self) -> int:
        return self.prefix_length + self.keys.shape[2]

    def materialized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) over the whole key range, (B, kv_heads, P + S, head_dim): with a prefix, a
        copy of it per row (for this layer call only)."""
        if not self.prefix_length:
            return self.keys, self.values
        batch = self.keys.shape[0]
        return tuple(
            torch.cat([shared.expand(batch, *shared.shape[1:]), own], dim=2)
            for shared, own in ((self.prefix_keys, self.keys), (self.prefix_values, self.values))
        )

    def split_is_smaller(self, num_heads: int, num_queries: int) -> bool:
        """Whether this call's attention scores (float32, per row) take less memory than a per-row copy
        of the prefix's keys and values. Then `attend` reads the prefix in place (knockouts at the last
        prompt tokens, decode steps); else the backend gets `materialized` keys (a long suffix after a
        short prefix, e.g. ablations of image tokens: the fused sdpa kernel never holds the scores)."""
        scores = num_heads * num_queries * self.length * 4
        copy = 2 * self.prefix_keys[0].numel() * self.prefix_keys.element_size()
        return scores <= copy

    def scores(self, query: torch.Tensor, scaling: float, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(B, H, Q, P + S) scaled dot products of `query` (B, H, Q, head_dim) with every key."""
        batch, heads, num_queries, head_dim = query.shape
        dtype = dtype or query.dtype
        kv_heads = self.keys.shape[1]
        grouped = query.to(dtype).reshape(batch, kv_heads, heads // kv_heads * num_queries, head_dim)
        scores = grouped @ self.keys.to(dtype).transpose(2, 3)
        if self.prefix_length:
            shared = _fold_rows(grouped) @ self.prefix_keys.to(dtype).transpose(2, 3)
            scores = torch.cat([_unfold_rows(shared, batch), scores], dim=-1)
        return scores.reshape(batch, heads, num_queries, self.length) * scaling

    def probabilities(self, module, query: torch.Tensor, allowed: torch.Tensor, scaling: float) -> torch.Tensor:
        """Softmax attention probabilities (B, H, Q, P + S) in float32 (what `AttentionEdit.observe` sees)."""
        if not self.prefix_length:
            return attention_probabilities(module, query, self.keys, allowed, scaling)
        scores = self.scores(query, scaling, torch.float32).masked_fill(~allowed, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def workspace_bytes_per_row(self, num_heads: int, num_queries: int, dtype: torch.dtype, device) -> int:
        """Bytes `attend` holds at once per batch row: the scores in `dtype`, plus a float32 softmax
        unless float32 scores are turned into probabilities in place (CPU)."""
        itemsize = torch.empty(0, dtype=dtype).element_size()
        in_place = dtype == torch.float32 and torch.device(device).type == "cpu"
        return num_heads * num_queries * self.length * (itemsize + (0 if in_place else 4))

    def attend(
        self,
        module,
        query: torch.Tensor,
        allowed: torch.Tensor,
        scaling: float,
        dropout: float,
        workspace_bytes: float | None = None,
    ) -> tuple[torch.Tensor, None]:
        """(output (B, Q, H, head_dim), None), computed as transformers' eager attention does (scores in
        the query dtype, softmax in float32), reading the prefix in place, with at most
        `workspace_bytes` of scores at a time (None: all at once): in chunks of key/value heads, each
        head's matmuls exactly those of one chunk (same bits on one CPU thread), and in chunks of rows
        as well only when one key/value head of every row is over it (matmuls of fewer rows: the
        rounding may differ)."""
        batch, heads, num_queries, _ = query.shape
        kv_heads = self.keys.shape[1]
        group = heads // kv_heads
        # blocked pairs in the (B, kv_heads, group, Q, P + S) layout of `_attend_chunk`'s scores
        heads_shape = (kv_heads, group) if allowed.shape[1] == heads else (1, 1)
        blocked = ~allowed.reshape(allowed.shape[0], *heads_shape, allowed.shape[2], self.length)
        one_head_one_row = self.workspace_bytes_per_row(group, num_queries, query.dtype, query.device)
        head_step, row_step = kv_heads, batch
        if workspace_bytes is not None and batch * kv_heads * one_head_one_row > workspace_bytes:
            head_step = max(1, int(workspace_bytes // (batch * one_head_one_row)))
            if head_step == 1:
                row_step = max(1, int(workspace_bytes // one_head_one_row))
        head_step, row_step = _even_step(kv_heads, head_step), _even_step(batch, row_step)
        if (head_step, row_step) == (kv_heads, batch):
            output = self._attend_chunk(module, query, blocked, self.keys, self.values,
                                        self.prefix_keys, self.prefix_values, scaling, dropout)
            return output, None
        output = query.new_empty(batch, num_queries, heads, self.values.shape[-1])
        for first_head in range(0, kv_heads, head_step):
            kv = slice(first_head, first_head + head_step)
            query_heads = slice(first_head * group, (first_head + head_step) * group)
            mask_heads = kv if heads_shape[0] > 1 else slice(None)
            for first_row in range(0, batch, row_step):
                rows = slice(first_row, first_row + row_step)
                mask_rows = rows if blocked.shape[0] == batch else slice(None)
                output[rows, :, query_heads] = self._attend_chunk(
                    module,
                    query[rows, query_heads],
                    blocked[mask_rows, mask_heads],
                    self.keys[rows, kv],
                    self.values[rows, kv],
                    self.prefix_keys[:, kv],
                    self.prefix_values[:, kv],
                    scaling,
                    dropout,
                )
        return output, None

    @staticmethod
    def _attend_chunk(module, query, blocked, keys, values, prefix_keys, prefix_values, scaling, dropout):
        """`attend` for the rows and heads of `query` (B, H, Q, head_dim): their own `keys` / `values`,
        the prefix's `prefix_keys` / `prefix_values` of the same key/value heads; (B, Q, H, head_dim)."""
        batch, heads, num_queries, head_dim = query.shape
        kv_heads, prefix = keys.shape[1], prefix_keys.shape[2]
        length, group = prefix + keys.shape[2], heads // kv_heads
        grouped = query.reshape(batch, kv_heads, group * num_queries, head_dim)
        scores = query.new_empty(1, kv_heads, batch * group * num_queries, length)
        torch.matmul(_fold_rows(grouped), prefix_keys.transpose(2, 3), out=scores[..., :prefix])
        scores[..., prefix:] = _fold_rows(grouped @ keys.transpose(2, 3))
        scores.mul_(scaling)
        by_head = scores.view(kv_heads, batch, group, num_queries, length).transpose(0, 1)  # a view
        by_head.masked_fill_(blocked, float("-inf"))
        if scores.dtype == torch.float32 and scores.device.type == "cpu":  # in place: same bits as softmax()
            probabilities = torch.softmax(scores, dim=-1, out=scores)
        else:  # float32 softmax, rounded back into the scores' buffer (in-place aliasing unverified on GPUs)
            probabilities = scores.copy_(torch.softmax(scores, dim=-1, dtype=torch.float32))
        if dropout and module.training:
            probabilities = torch.nn.functional.dropout(probabilities, p=dropout, training=True)
        output = probabilities[..., :prefix] @ prefix_values
        own_probabilities = _unfold_rows(probabilities[..., prefix:], batch)
        output = _unfold_rows(output, batch) + own_probabilities @ values
        output = output.reshape(batch, heads, num_queries, output.shape[-1])
        return output.transpose(1, 2).contiguous()


def _even_step(total: int, step: int) -> int:
    """The chunk size that splits `total` into as many chunks as `step` does, all (nearly) equal."""
    chunks = -(-total // max(1, step))
    return -(-total // chunks)


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


# Attention arguments this module's attention would not honour (it computes plain softmax attention
# itself when reading a shared prefix or observing): refused, naming the family, never dropped.
DROPPED_ARGUMENTS = {"softcap": "logit softcapping", "s_aux": "attention sinks", "sinks": "attention sinks"}


def refuse_dropped_arguments(adapter, kwargs: dict, attention_mask) -> None:
    """Raise `AttentionPatchError` naming the family if the model hands the attention function
    anything the edited attention would silently drop (softcapping, sinks, a non-boolean mask)."""
    family = getattr(adapter, "family", type(adapter).__name__)
    for name, what in DROPPED_ARGUMENTS.items():
        if kwargs.get(name) is not None:
            raise AttentionPatchError(
                f"{family}: the attention function was given {name}= ({what}), which the intervention "
                "attention does not implement; refusing rather than computing another model's attention")
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        raise AttentionPatchError(
            f"{family}: the attention function was given a {attention_mask.dtype} mask; the intervention "
            "attention composes boolean masks only (its mask function is registered with the backend)")


def model_constraint_blocked(adapter, layer: int, q_slots: torch.Tensor, num_keys: int,
                             batch: int) -> torch.Tensor | None:
    """The (query, key) pairs the model's own constraint blocks in one call ((B or 1, 1, Q, K) bool,
    None: none): a planted organism's routing (models/routing.py). The attention function
    ANDs its complement into every mask, so an edit composes with the model's mask, never replaces it."""
    from vlminterp.models.routing import constraint_blocked

    return constraint_blocked(adapter.language_model, layer, q_slots, num_keys, batch)


class AttentionEdit(Protocol):
    """What an edit may do inside the attention function of one layer call."""

    def blocked(
        self, layer: int, q_slots: torch.Tensor, num_keys: int, batch_size: int, num_heads: int
    ) -> torch.Tensor | None:
        """Boolean (B or 1, 1 or H, Q, K) tensor of (query, key) pairs to block, or None."""

    def observe(self, layer: int, q_slots: torch.Tensor, probabilities: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Called with a function mapping selected query rows (indices into this call) to probabilities."""


class AttentionEditor:
    """The single patched attention function of one language model, applying all active edits.

    With `shared_prefix` set (see `attend_shared_prefix`), the keys/values a layer call receives are
    each row's own suffix, and the batch-1 prefix they follow is read from `shared_prefix` in place."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.edits: list[AttentionEdit] = []
        self.backend = adapter.text_config._attn_implementation
        self.shared_prefix: SharedPrefix | None = None

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        refuse_dropped_arguments(self.adapter, kwargs, attention_mask)
        batch, heads, num_queries, _ = query.shape
        layer = module.layer_idx
        prefix = self.shared_prefix.prefix(layer) if self.shared_prefix is not None else None
        keys = LayerKeys(key, value, prefix)
        num_keys = keys.length
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
        own = model_constraint_blocked(self.adapter, layer, q_slots, num_keys, batch)
        if own is not None:  # the model's own mask (a planted routing) is kept, edits are added to it
            allowed = allowed & ~own
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
                lambda rows: keys.probabilities(module, query[:, :, rows], allowed[:, :, rows], scale),
            )
        if keys.prefix_length and keys.split_is_smaller(heads, num_queries):
            budget = None
            if WORKSPACE_SHARE_OF_OWN_KV is not None:
                budget = WORKSPACE_SHARE_OF_OWN_KV * self.shared_prefix.own_kv_bytes()
            return keys.attend(module, query, allowed, scale, dropout, workspace_bytes=budget)
        full_key, full_value = keys.materialized()
        return run_backend(self.backend, module, query, full_key, full_value, allowed, scaling, dropout, kwargs)


_EDITOR_ATTRIBUTE = "_vlminterp_attention_editor"


@contextlib.contextmanager
def _active_editor(adapter) -> Iterator[AttentionEditor]:
    """The language model's editor: the one already active, or a new one installed for the block."""
    owner = adapter.language_model
    editor: AttentionEditor | None = getattr(owner, _EDITOR_ATTRIBUTE, None)
    if editor is not None:
        yield editor
        return
    editor = AttentionEditor(adapter)
    with use_attention_function(adapter, editor, label="vlminterp_edits"):
        setattr(owner, _EDITOR_ATTRIBUTE, editor)
        try:
            yield editor
        finally:
            delattr(owner, _EDITOR_ATTRIBUTE)


@contextlib.contextmanager
def edit_attention(adapter, edit: AttentionEdit) -> Iterator[AttentionEdit]:
    """Activate `edit` on the language model's attention; composable with other active edits."""
    with _active_editor(adapter) as editor:
        editor.edits.append(edit)
        try:
            yield edit
        finally:
            editor.edits.remove(edit)


@contextlib.contextmanager
def attend_shared_prefix(adapter, shared_prefix: SharedPrefix) -> Iterator[SharedPrefix]:
    """Inside the block, every attention call of the language model reads `shared_prefix.prefix(layer)`
    (batch 1, shared by every row) before the keys/values it is handed (each row's own suffix)."""
    with _active_editor(adapter) as editor:
        previous, editor.shared_prefix = editor.shared_prefix, shared_prefix
        try:
            yield shared_prefix
        finally:
            editor.shared_prefix = previous
