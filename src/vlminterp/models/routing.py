"""Planted routing: an attention constraint in the organism's language model that fixes, by
construction, how the image reaches the answer (issue #24; docs/PROTOCOLS.md).

    spec = OrganismSpec(routing="query_routed")          # or "window", routing_layers=(1, 2)
    model = build_model(spec, ...)                       # config.vlminterp_routing + the constraint
    blocked = constraint_blocked(language_model, layer, q_slots, num_keys, batch)   # engine's AND

The variants (``ROUTINGS``: direct, query_routed, window) and what each method must then find:
docs/PROTOCOLS.md, "Planted routings: validating the methods".

The constraint is part of the model: ``build_model`` writes it to ``config.vlminterp_routing`` (saved
with ``save_pretrained``) and ``install_routing`` (called by ``build_model`` and ``load_model``)
adds it to every attention call of the language model as an ordinary boolean mask: a forward
pre-hook on each attention module ANDs it into the mask the module receives, in training and
inference, whatever the backend. The edit engine's attention function (interventions/attention.py)
ANDs ``constraint_blocked`` into its own mask, so a knockout composes with the constraint.

Which slots are image tokens and where the answer starts (the layout) is read from the ids of the
sequence being run: the model's forward with ``input_ids`` and no cache (training, ``generate``,
the naive reference), the adapter's ``embed`` and every engine run of a prepared input (the
engine's and the cache's prefill). The answer starts after the first occurrence of the answer
marker (``answer_marker``: the ids of the template's " ASSISTANT:", saved with the routing), so a
question appended after a prompt (K4) is generated text too; without a marker, or without its
occurrence, the answer starts after the sequence (a prompt). Training sets the layout explicitly
with ``routing_layout`` (the answer starts where the loss starts). A cache that dropped positions
(``interventions.cache.select_cache``) carries its layout re-indexed to its kept slots
(``kept_layout``). A call whose rows match neither the layout's batch nor 1 fails by name: the
constraint is never silently dropped.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from vlminterp.models import ROUTINGS

CONFIG_KEY = "vlminterp_routing"
_ATTRIBUTE = "_vlminterp_routing"


class RoutingError(RuntimeError):
    """The planted constraint cannot be applied to a call (it would otherwise be dropped)."""


@dataclass
class Layout:
    """image: (B, T) bool, True at image-token slots; answer_start: (B,) first generated slot;
    by_layer: per layer, an image mask replacing ``image`` (a cache that kept other slots per layer)."""

    image: torch.Tensor
    answer_start: torch.Tensor
    by_layer: tuple[torch.Tensor, ...] | None = None


class RoutingConstraint:
    """The planted constraint of one language model and the layout of the sequence it runs on."""

    def __init__(self, routing: str, layers: Sequence[int], image_token_id: int, num_layers: int,
                 answer_marker: Sequence[int] = ()):
        if routing not in ROUTINGS:
            raise ValueError(f"routing={routing!r}: must be one of {ROUTINGS}")
        self.routing, self.layers, self.image_token_id = routing, tuple(int(x) for x in layers), int(image_token_id)
        self.num_layers = num_layers
        self.answer_marker = tuple(int(x) for x in answer_marker)
        self.layout: Layout | None = None
        self.pinned = False  # training: the layout is set explicitly, not read from ids

    def observe(self, input_ids: torch.Tensor) -> None:
        """Read the layout from the ids of a full sequence (the prompt: the answer starts after it)."""
        if self.pinned or input_ids is None:
            return
        ids = input_ids if input_ids.ndim == 2 else input_ids[None]
        self.layout = Layout(ids == self.image_token_id, self.answer_starts(ids))

    def answer_starts(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) the slot after the first answer marker of each row (the row's length without one)."""
        starts = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
        n = len(self.answer_marker)
        if not n or ids.shape[1] < n:
            return starts
        marker = torch.tensor(self.answer_marker, device=ids.device)
        hits = (ids.unfold(1, n, 1) == marker).all(dim=-1)  # (B, T - n + 1)
        found = hits.any(dim=1)
        starts[found] = hits.int().argmax(dim=1)[found] + n
        return starts

    def blocked(self, layer: int, q_slots: torch.Tensor, num_keys: int, batch: int) -> torch.Tensor | None:
        """(B or 1, 1, Q, K) bool: the (query, key) pairs the constraint blocks in `layer`; None: none."""
        if self.routing == "direct" or self.layout is None:
            return None
        if self.routing == "window" and layer in self.layers:
            return None
        image, start = self.layout.image, self.layout.answer_start
        if self.layout.by_layer is not None:
            image = self.layout.by_layer[layer]
        if image.shape[0] not in (batch, 1) and batch != 1:
            raise RoutingError(f"planted routing {self.routing!r}: a call of {batch} rows on a layout of "
                               f"{image.shape[0]} rows")
        device = q_slots.device
        image = image.to(device)
        length = image.shape[1]
        if num_keys > length:
            image = torch.cat([image, image.new_zeros(image.shape[0], num_keys - length)], dim=1)
        image_keys = image[:, :num_keys]  # (b, K)
        if self.routing == "query_routed":
            generated = q_slots[None, :] >= start.to(device)[:, None]  # (b, Q)
            return (generated[:, :, None] & image_keys[:, None, :])[:, None]
        image_queries = image[:, q_slots.clamp(max=image.shape[1] - 1)] & (q_slots < image.shape[1])[None]
        return (~image_queries[:, :, None] & image_keys[:, None, :])[:, None]


def constraint_of(module) -> RoutingConstraint | None:
    """The planted constraint of a model or language model (None: direct, or none installed)."""
    for candidate in (module, getattr(module, "model", None),
                      getattr(getattr(module, "model", None), "language_model", None)):
        constraint = getattr(candidate, _ATTRIBUTE, None) if candidate is not None else None
        if constraint is not None:
            return constraint
    return None


def constraint_blocked(language_model, layer: int, q_slots: torch.Tensor, num_keys: int,
                       batch: int) -> torch.Tensor | None:
    """What the model's own planted constraint blocks in one attention call (None: nothing)."""
    constraint = getattr(language_model, _ATTRIBUTE, None)
    return None if constraint is None else constraint.blocked(layer, q_slots, num_keys, batch)


def routing_config(routing: str, layers: Sequence[int], answer_marker: Sequence[int] = ()) -> dict | None:
    """The value of ``config.vlminterp_routing`` (None for direct: the default model is unchanged)."""
    if routing == "direct":
        return None
    return {"routing": routing, "layers": [int(x) for x in layers], "answer_marker": [int(x) for x in answer_marker]}


def observe_ids(module, input_ids: torch.Tensor) -> None:
    """Read the layout of the sequence about to run (a no-op for a model without a constraint)."""
    constraint = constraint_of(module)
    if constraint is not None:
        constraint.observe(input_ids)


def kept_layout(module, kept_positions: Sequence[torch.Tensor], width: int) -> Layout | None:
    """The current layout re-indexed to a cache keeping ``kept_positions`` (per layer, padded to
    ``width``): what text appended after that cache sees (it is generated text)."""
    constraint = constraint_of(module)
    if constraint is None or constraint.layout is None:
        return None
    image = constraint.layout.image
    by_layer = []
    for kept in kept_positions:
        mask = image.new_zeros(image.shape[0], width)
        index = kept.to(image.device)
        mask[:, : len(index)] = image[:, index]
        by_layer.append(mask)
    start = torch.full_like(constraint.layout.answer_start, width)
    return Layout(by_layer[0], start, tuple(by_layer))


@contextlib.contextmanager
def using_layout(module, layout: Layout | None) -> Iterator[None]:
    """Inside the block the constraint uses ``layout`` (None: as it is)."""
    constraint = constraint_of(module)
    if constraint is None or layout is None:
        yield
        return
    previous = (constraint.layout, constraint.pinned)
    constraint.layout, constraint.pinned = layout, True
    try:
        yield
    finally:
        constraint.layout, constraint.pinned = previous


def _attention_pre_hook(constraint: RoutingConstraint, layer: int):
    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        batch, num_queries = hidden.shape[0], hidden.shape[1]
        cache = kwargs.get("past_key_values")
        if mask is not None:
            num_keys = mask.shape[-1]
        elif cache is not None:  # the keys cached before this call, then this call's
            num_keys = int(cache.get_seq_length(layer)) + num_queries
        else:
            num_keys = num_queries
        q_slots = torch.arange(num_keys - num_queries, num_keys, device=hidden.device)
        blocked = constraint.blocked(layer, q_slots, num_keys, batch)
        if blocked is None:
            return None
        if mask is None:
            allowed = q_slots[:, None] >= torch.arange(num_keys, device=hidden.device)[None, :]
            allowed = allowed[None, None]
        elif mask.dtype == torch.bool:
            allowed = mask
        else:  # additive float mask (eager)
            allowed = mask > torch.finfo(mask.dtype).min / 2
        allowed = allowed & ~blocked
        # every row keeps its own position (no fully masked row, no NaN)
        allowed = allowed | (q_slots[:, None] == torch.arange(num_keys, device=hidden.device)[None, :])[None, None]
        if mask is not None and mask.dtype != torch.bool:
            new_mask = torch.zeros(allowed.shape, dtype=mask.dtype, device=mask.device).masked_fill(
                ~allowed, torch.finfo(mask.dtype).min)
        else:
            new_mask = allowed
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = new_mask
        if args:  # attention_mask given positionally: pass everything but hidden_states by keyword
            return args[:1], kwargs
        return args, kwargs
    return hook


def _model_pre_hook(constraint: RoutingConstraint):
    def hook(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        if input_ids is not None and (cache is None or int(cache.get_seq_length()) == 0):
            constraint.observe(input_ids)
        return None
    return hook


def install_routing(model) -> RoutingConstraint | None:
    """Install the constraint named in ``model.config.vlminterp_routing`` (None: direct, nothing
    installed). Idempotent."""
    settings = getattr(model.config, CONFIG_KEY, None)
    if not settings:
        return None
    existing = constraint_of(model)
    if existing is not None:
        return existing
    language_model = model.model.language_model
    num_layers = len(language_model.layers)
    constraint = RoutingConstraint(settings["routing"], settings.get("layers", ()), model.config.image_token_id,
                                   num_layers, settings.get("answer_marker", ()))
    for index, layer in enumerate(language_model.layers):
        layer.self_attn.register_forward_pre_hook(_attention_pre_hook(constraint, index), with_kwargs=True)
    model.register_forward_pre_hook(_model_pre_hook(constraint), with_kwargs=True)
    setattr(language_model, _ATTRIBUTE, constraint)
    setattr(model, _ATTRIBUTE, constraint)
    return constraint


@contextlib.contextmanager
def routing_layout(model, image: torch.Tensor, answer_start: torch.Tensor) -> Iterator[None]:
    """Inside the block the constraint uses this layout (training: the answer starts at the loss)."""
    with using_layout(model, Layout(image, answer_start)):
        yield
