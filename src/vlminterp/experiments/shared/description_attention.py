"""The attention of a generated description, read by a Capture and reduced (K1, K3, K4 of Kaduri et al.).

    attention = session.description_attention(item, generated, image_rows=[p])   # experiments.shared.session
    attention.groups_of_layer(layer)     # (H, n_rows, len(KEY_GROUPS)) mass per key group
    attention.image_row(layer, p)        # (H, n_image) the image row of position p
    attention.image_received[layer]      # (H, n_image) attention each image token received

ONE forward pass over prompt + generated tokens (the last excluded) records the rows P-1 ..
P+n-2 by a `Capture` of `attn.{l}` at From(P - 1): row P-1+t is the attention that produced
token t (tests/unit/test_kaduri.py checks it against a per-step capture). Only reductions are
kept (`DescriptionAttention`). Why and the row conventions (decode rows P .. P+n-2, predicting
row P-1+t): docs/PROTOCOLS.md, "What all four share".
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from vlminterp.experiments.shared.key_groups import KEY_GROUPS
from vlminterp.models.adapters import TokenGroups


class DescriptionAttention:
    """The rows of queries >= `first_row`, reduced per layer (`from_record`: a `Capture` of attn.{l}).

    For each layer l:
    - group_mass[l]: (H, n_rows, len(KEY_GROUPS)) attention mass per key group (rows sum to 1);
    - image_rows[l]: (H, len(image_rows), n_image) full image rows of the chosen positions;
    - image_received[l]: (H, n_image) attention each image token received, summed over all rows.
    Heads are kept; average over dim 0 for the heads-averaged values.
    """

    def __init__(self, groups: TokenGroups, first_row: int, n_layers: int, image_rows: Sequence[int] = ()):
        self.groups = groups
        self.first_row = int(first_row)
        self.image = torch.as_tensor(groups.image, dtype=torch.long)
        self.image_row_positions = [int(p) for p in image_rows]
        self.group_mass: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self.image_rows_parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(n_layers)]
        self.image_received: list[torch.Tensor | None] = [None] * n_layers
        self.row_positions: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        self._onehot: dict[tuple[int, torch.device], torch.Tensor] = {}

    @classmethod
    def from_record(cls, groups: TokenGroups, record, n_layers: int,
                    image_rows: Sequence[int] = ()) -> "DescriptionAttention":
        """The reductions of a `Capture` record of `attn.{l}` for every layer (one forward over the
        description: `InterventionEngine.observe_generation`); the rows read are its first_row on."""
        first = int(record.positions("attn.0")[0])
        reduced = cls(groups, first, n_layers, image_rows)
        for layer in range(n_layers):
            site = f"attn.{layer}"
            reduced.add(layer, record.positions(site), record[site].transpose(0, 1).contiguous())
        return reduced

    def _group_matrix(self, num_keys: int, device) -> torch.Tensor:
        key = (num_keys, device)
        if key not in self._onehot:
            labels = self.groups.labels(num_keys)
            matrix = torch.zeros(num_keys, len(KEY_GROUPS), dtype=torch.float32)
            for g, name in enumerate(KEY_GROUPS):
                matrix[torch.as_tensor(labels == name), g] = 1.0
            self._onehot[key] = matrix.to(device)
        return self._onehot[key]

    def add(self, layer: int, slots: torch.Tensor, probs: torch.Tensor) -> None:
        """Reduce the attention rows `probs` (H, n, K) of query slots `slots` (n,) of one layer."""
        probs = probs.float()
        slots = slots.cpu()
        self.row_positions[layer].append(slots)
        self.group_mass[layer].append((probs @ self._group_matrix(probs.shape[-1], probs.device)).cpu())
        image = probs[..., self.image.to(probs.device)]  # (H, n, n_image)
        received = image.sum(dim=1).cpu()
        self.image_received[layer] = received if self.image_received[layer] is None else self.image_received[layer] + received
        wanted = [i for i, p in enumerate(slots.tolist()) if p in set(self.image_row_positions)]
        if wanted:
            self.image_rows_parts[layer].append((slots[wanted], image[:, wanted].cpu()))

    def rows(self, layer: int = 0) -> torch.Tensor:
        return torch.cat(self.row_positions[layer])

    def groups_of_layer(self, layer: int) -> torch.Tensor:
        """(H, n_rows, len(KEY_GROUPS)) for rows `rows()`."""
        return torch.cat(self.group_mass[layer], dim=1)

    def image_row(self, layer: int, position: int) -> torch.Tensor:
        """(H, n_image) attention of the row at `position` over the image tokens (token order)."""
        for slots, values in self.image_rows_parts[layer]:
            hits = (slots == position).nonzero().flatten()
            if len(hits):
                return values[:, int(hits[0])]
        raise KeyError(f"no image row recorded for position {position} in layer {layer}")
