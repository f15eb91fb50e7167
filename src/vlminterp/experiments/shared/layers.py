"""Layer windows given as fractions of the model's depth (N3's fixed windows, K2's visible layers)."""
from __future__ import annotations


def fraction_window(n_layers: int, start: float, end: float) -> tuple[int, ...]:
    """Layers [round(start * L), round(end * L)) clipped to the depth, at least one layer."""
    first = min(int(round(start * n_layers)), n_layers - 1)
    last = max(min(int(round(end * n_layers)), n_layers), first + 1)
    return tuple(range(first, last))
