"""The settings of Neo et al.'s stages (N1 noising filter, mean embedding, N1-N3), one spec
dataclass per config section, and the choices they check: light (no torch, no model), so the
Snakefile's config checks and the stage registry read them without loading a model's libraries.
Each experiment module re-exports its own (`from vlminterp.experiments.neo.ablation import AblationSpec`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from vlminterp.experiments.neo.prompts import SETTINGS
from vlminterp.specs import configured


SCREEN_SETTINGS = ("generative", "polling")
NOISE_REGIONS = ("cells", "mask")


ORDERS = ("file", "seeded")


@dataclass(frozen=True)
@configured("neo.screening")
class ScreeningSpec:
    """The noising filter's settings, config section neo.screening (types, defaults, meanings:
    workflow/schemas/config.schema.yaml); seed: the noise's and the walk's (the run's seed)."""

    enabled: bool
    until_included: bool
    max_candidates: int | None
    order: str
    setting: str
    noise_region: str
    exempt_question_images: bool
    description_tokens: int
    seed: int = 0

    def __post_init__(self):
        for key, value, allowed in (("order", self.order, ORDERS), ("setting", self.setting, SCREEN_SETTINGS),
                                    ("noise_region", self.noise_region, NOISE_REGIONS)):
            if value not in allowed:
                raise ValueError(f"neo.screening.{key} must be one of {allowed}, got {value!r}")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ValueError(f"neo.screening.max_candidates must be >= 1 or null, got {self.max_candidates}")
        if self.description_tokens < 1:
            raise ValueError(f"neo.screening.description_tokens must be >= 1, got {self.description_tokens}")


@dataclass(frozen=True)
@configured("neo.mean")
class MeanSpec:
    """The mean image embedding's settings, config section neo.mean (types, defaults, meanings:
    workflow/schemas/config.schema.yaml)."""

    split: str
    max_images: int
    batch_size: int

    def __post_init__(self):
        if self.max_images < 1 or self.batch_size < 1:
            raise ValueError("max_images and batch_size must be >= 1")


IG_CHOICES = {"ig_target": ("polling_yes", "vqa_answer"), "ig_objective": ("logit", "probability"),
              "ig_ranking": ("sum_of_abs", "abs_of_sum"), "ig_points": ("linspace", "midpoint")}


@dataclass(frozen=True)
@configured("neo.ablation")
class AblationSpec:
    """Settings of N1, config section neo.ablation (types, defaults, meanings:
    workflow/schemas/config.schema.yaml); seed: the random baselines' and the absent polling
    category's (the run's seed)."""

    replacement: str
    mean_vector: str
    settings: tuple[str, ...]
    random_counts: tuple[int, ...]
    register_std: float
    ig_steps: int
    ig_batch_size: int
    ig_target: str
    ig_objective: str
    ig_ranking: str
    ig_points: str
    description_tokens: int
    answer_tokens: int
    batch_size: int
    seed: int = 0

    def __post_init__(self):
        if self.replacement not in ("mean", "zero"):
            raise ValueError(f"replacement must be 'mean' or 'zero', got {self.replacement!r}")
        if self.mean_vector not in ("run", "authors"):
            raise ValueError(f"mean_vector must be 'run' or 'authors', got {self.mean_vector!r}")
        unknown = set(self.settings) - set(SETTINGS)
        if unknown or not self.settings:
            raise ValueError(f"settings must be a non-empty subset of {SETTINGS}, got {self.settings}")
        if self.ig_steps < 1 or self.ig_batch_size < 1:
            raise ValueError("ig_steps and ig_batch_size must be >= 1")
        if any(n < 1 for n in self.random_counts):
            raise ValueError(f"random_counts must be positive, got {self.random_counts}")
        for key, allowed in IG_CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")


@dataclass(frozen=True)
@configured("neo.logit_lens")
class LensSpec:
    """Settings of N2, config section neo.logit_lens (types, defaults, meanings:
    workflow/schemas/config.schema.yaml)."""

    top_k: int
    background_buffer: int
    html_images: int

    def __post_init__(self):
        if self.top_k < 1 or self.background_buffer < 0:
            raise ValueError("top_k must be >= 1 and background_buffer >= 0")


class FixedWindow(NamedTuple):
    """A fixed window of layers: [start, end) as fractions of the depth (config neo.blocking.fixed_windows)."""

    name: str
    start: float
    end: float


BLOCK_SETS = ("object", "non_object", "object_to_last_row", "image_to_last_row", "object_to_text")
LAST_ROW_QUERIES = ("all", "outside_object")


#: What N3's drop measures (BlockingSpec.drop_of): the correct token's probability, or each run's
#: own top-1 probability (the authors'), base minus blocked.
DROP_OF = ("correct", "top1")


@dataclass(frozen=True)
@configured("neo.blocking")
class BlockingSpec:
    """Settings of N3, config section neo.blocking (types, defaults, meanings:
    workflow/schemas/config.schema.yaml)."""

    window: int
    fixed_windows: tuple[FixedWindow, ...]
    block_sets: tuple[str, ...]
    control_buffer: int
    last_row_buffer: int
    last_row_queries: str
    batch_size: int
    drop_of: str

    def __post_init__(self):
        if self.drop_of not in DROP_OF:
            raise ValueError(f"drop_of must be one of {DROP_OF}, got {self.drop_of!r}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        unknown = set(self.block_sets) - set(BLOCK_SETS)
        if unknown:
            raise ValueError(f"unknown block sets {sorted(unknown)}")
        if self.control_buffer < 0 or self.last_row_buffer < 0:
            raise ValueError(f"control_buffer and last_row_buffer must be >= 0, got "
                             f"{self.control_buffer}, {self.last_row_buffer}")
        if self.last_row_queries not in LAST_ROW_QUERIES:
            raise ValueError(f"last_row_queries must be one of {LAST_ROW_QUERIES}, got {self.last_row_queries!r}")
        for entry in self.fixed_windows:
            if len(entry) != 3 or not 0.0 <= float(entry[1]) < float(entry[2]) <= 1.0:
                raise ValueError(f"a fixed window is (name, start, end) with 0 <= start < end <= 1, got {entry}")
