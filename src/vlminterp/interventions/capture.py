"""Capture what the experiments need, and only that.

    with capture_residual(adapter, positions=image_positions) as resid:
        model(**inputs)
    resid.layer(l)          # (B, P, d): output of decoder layer l (before the final norm) at positions
    resid.embeddings()      # (B, P, d): input of layer 0
    with capture_attention(adapter, query_positions=[T - 1], average_heads=True) as att:
        model(**inputs)
    slots, probs = att.layer(l)   # probs (B, H or 1, len(slots), K): attention rows of those queries only
    with capture_image_embeddings(adapter) as img:
        model(**inputs)
    img.features            # (G, n, d), post-projector: G = images (LLaVA), tiles (InternVL), 1 (Qwen2-VL)

Positions are sequence indices (cache slots); capture works for a full forward, a cached prefill
+ decode, and `generate`. Attention is captured inside the patched attention function for the
chosen query rows (never the full T x T x L x H), so it works with sdpa as well as eager, and it
composes with an active knockout (captured probabilities are those the model really used).
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch

from .attention import edit_attention
from .positions import From, Positions, PositionSet


def _chunks_to_tensor(chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge (indices, values[B, n, ...]) chunks (batch 1 broadcast) into sorted indices and values."""
    if not chunks:
        raise KeyError("nothing was captured for this layer")
    batch = max(values.shape[0] for _, values in chunks)
    indices = torch.cat([i for i, _ in chunks])
    values = torch.cat([v.expand(batch, *v.shape[1:]) for _, v in chunks], dim=1)
    order = torch.argsort(indices, stable=True)
    return indices[order], values[:, order]


class ResidualRecord:
    """Residual-stream vectors per layer at the chosen positions."""

    def __init__(self):
        self._chunks: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)

    def _add(self, layer: int, indices: torch.Tensor, values: torch.Tensor) -> None:
        self._chunks[layer].append((indices.cpu(), values))

    def layer(self, layer: int) -> torch.Tensor:
        """(B, P, d) output of decoder layer `layer` at the captured positions (ascending)."""
        return _chunks_to_tensor(self._chunks[layer])[1]

    def embeddings(self) -> torch.Tensor:
        """(B, P, d) input embeddings of the language model (input of layer 0)."""
        return _chunks_to_tensor(self._chunks[-1])[1]

    def positions(self) -> torch.Tensor:
        return _chunks_to_tensor(self._chunks[-1])[0]

    def stack(self) -> torch.Tensor:
        """(L, B, P, d) all layers' outputs."""
        layers = sorted(k for k in self._chunks if k >= 0)
        return torch.stack([self.layer(l) for l in layers])


def _cache_length(kwargs: dict, layer: int) -> int:
    cache = kwargs.get("past_key_values")
    return 0 if cache is None else cache.get_seq_length(layer)


@contextlib.contextmanager
def capture_residual(
    adapter, positions: Positions | None = None, layers: Sequence[int] | None = None, to_cpu: bool = False
) -> Iterator[ResidualRecord]:
    """Record layer outputs (and layer-0 inputs) at `positions` (None = all) in `layers` (None = all)."""
    record = ResidualRecord()
    wanted = PositionSet([positions if positions is not None else From(0)], device="cpu")
    chosen = set(range(adapter.n_layers) if layers is None else [int(l) % adapter.n_layers for l in layers])

    def keep(layer_key: int, hidden: torch.Tensor, start: int) -> None:
        slots = torch.arange(start, start + hidden.shape[1])
        selected = wanted.contains(slots)[0]
        if bool(selected.any()):
            values = hidden[:, selected.to(hidden.device)].detach()
            record._add(layer_key, slots[selected], values.cpu() if to_cpu else values)

    def input_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        keep(-1, hidden, _cache_length(kwargs, 0))

    def make_output_hook(layer: int):
        def output_hook(module, args, kwargs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            keep(layer, hidden, _cache_length(kwargs, layer) - hidden.shape[1])

        return output_hook

    handles = [adapter.decoder_layers[0].register_forward_pre_hook(input_hook, with_kwargs=True)]
    try:
        for layer in sorted(chosen):
            handles.append(
                adapter.decoder_layers[layer].register_forward_hook(make_output_hook(layer), with_kwargs=True)
            )
        yield record
    finally:
        for handle in handles:
            handle.remove()


class AttentionRecord:
    """An `AttentionEdit` that records attention probabilities of chosen query slots."""

    def __init__(self, query_positions: Positions, layers: set[int], average_heads: bool, to_cpu: bool):
        self.queries = PositionSet([query_positions], device="cpu")
        self.layers = layers
        self.average_heads = average_heads
        self.to_cpu = to_cpu
        self._chunks: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)

    def blocked(self, layer, q_slots, num_keys, batch_size, num_heads):
        return None

    def observe(self, layer, q_slots, probabilities) -> None:
        if layer not in self.layers:
            return
        selected = self.queries.contains(q_slots.cpu())[0]
        if not bool(selected.any()):
            return
        rows = torch.nonzero(selected).flatten()
        probs = probabilities(rows.to(q_slots.device))  # (B, H, n, K)
        if self.average_heads:
            probs = probs.mean(dim=1, keepdim=True)
        probs = probs.detach().cpu() if self.to_cpu else probs.detach()
        self._chunks[layer].append((q_slots[rows].cpu(), probs.transpose(1, 2)))  # (B, n, H, K)

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(query slots, probabilities (B, H or 1, n_queries, K_max)); rows from shorter calls are zero-padded."""
        chunks = self._chunks[layer]
        if not chunks:
            raise KeyError(f"no attention captured for layer {layer}")
        width = max(p.shape[-1] for _, p in chunks)
        padded = [(i, torch.nn.functional.pad(p, (0, width - p.shape[-1]))) for i, p in chunks]
        slots, values = _chunks_to_tensor(padded)
        return slots, values.transpose(1, 2)


@contextlib.contextmanager
def capture_attention(
    adapter,
    query_positions: Positions,
    layers: Sequence[int] | None = None,
    average_heads: bool = False,
    to_cpu: bool = False,
) -> Iterator[AttentionRecord]:
    """Record the attention rows of `query_positions` in `layers` (None = all)."""
    chosen = set(range(adapter.n_layers) if layers is None else [int(l) % adapter.n_layers for l in layers])
    record = AttentionRecord(query_positions, chosen, average_heads, to_cpu)
    with edit_attention(adapter, record):
        yield record


class ImageEmbeddingRecord:
    def __init__(self):
        self.outputs: list[torch.Tensor] = []

    @property
    def features(self) -> torch.Tensor:
        """(G, n, d) post-projector embeddings of every image seen, the layout of
        `adapter.image_features` (G = images, tiles, or 1 per forward for Qwen2-VL's flat output)."""
        return torch.cat([o if o.ndim == 3 else o[None] for o in self.outputs])


@contextlib.contextmanager
def capture_image_embeddings(adapter, to_cpu: bool = False) -> Iterator[ImageEmbeddingRecord]:
    """Record the projector's output (post-projector image embeddings)."""
    record = ImageEmbeddingRecord()

    def hook(module, args, output):
        record.outputs.append(output.detach().cpu() if to_cpu else output.detach())

    handle = adapter.projector.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()
