"""The object patching's settings (config section patching) and its conditions: light (no torch),
so the Snakefile's config checks read them without loading a model's libraries;
`experiments.object_patching` re-exports them.
"""
from __future__ import annotations

from dataclasses import dataclass

from vlminterp.specs import configured


CONDITIONS = ("object", "same_object", "background")


@dataclass(frozen=True)
@configured("patching")
class PatchingSpec:
    """Settings of the object patching, config section patching (types, defaults, meanings:
    workflow/schemas/config.schema.yaml); seed: the pairing's shuffle (the run's seed)."""

    enabled: bool
    n_pairs: int | None
    batch_size: int
    seed: int = 0

    def __post_init__(self):
        if (self.n_pairs is not None and self.n_pairs < 1) or self.batch_size < 1:
            raise ValueError("n_pairs and batch_size must be >= 1")
