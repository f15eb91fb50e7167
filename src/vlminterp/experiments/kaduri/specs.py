"""The settings of Kaduri et al.'s stages (K1-K4 and K2's LLM judge), one spec dataclass per
config section, and the choices they check: light (no torch, no model), so the Snakefile's config
checks and the stage registry read them without loading a model's libraries. Each experiment
module re-exports its own (`from vlminterp.experiments.kaduri.knockout import KnockoutSpec`).
"""
from __future__ import annotations

from dataclasses import dataclass

from vlminterp.specs import configured

from vlminterp.experiments.shared.key_groups import KEY_GROUPS  # noqa: F401  (re-exported)



@dataclass(frozen=True)
@configured("kaduri.attention")
class AttentionFractionSpec:
    """Settings of K1, config section kaduri.attention (types, defaults, meanings:
    workflow/schemas/config.schema.yaml); the description cap is the session's
    (`DescribePrompt.description_tokens`)."""

    per_head: bool
    include_prefill_row: bool


TARGETS = ("generated", "query", "query+generated")
SWEEP_LAYERS = ("after_l", "from_l")


@dataclass(frozen=True)
@configured("kaduri.llm_judge")
class LLMJudgeConfig:
    """The optional LLM judge of K2 (config section kaduri.llm_judge, beside kaduri.knockout: the
    judge is its own rule, and changing it never reruns the knockouts): `enabled` runs rule
    judge_group_knockouts_llm; `cache` is its answer cache under results/<run>/; the other fields
    are the request's (`scoring.llm_judge.LLMJudgeSpec`, built by `client_spec`)."""

    enabled: bool
    base_url: str
    model: str
    api_key_env: str | None
    seed: int
    temperature: float
    timeout: float
    retries: int
    max_tokens: int
    cache: str

    def client_spec(self, cache_path: str | None):
        """The judge client's spec, its answers cached in `cache_path` (the run's `cache`)."""
        from vlminterp.scoring.llm_judge import LLMJudgeSpec

        return LLMJudgeSpec(base_url=self.base_url, model=self.model, api_key_env=self.api_key_env, seed=self.seed,
                            temperature=self.temperature, timeout=self.timeout, retries=self.retries,
                            max_tokens=self.max_tokens, cache_path=cache_path)


@dataclass(frozen=True)
@configured("kaduri.knockout")
class KnockoutSpec:
    """Settings of K2, config section kaduri.knockout (types, defaults, meanings:
    workflow/schemas/config.schema.yaml); the description cap is the session's
    (`DescribePrompt.description_tokens`)."""

    window_step: int
    start_layer_step: int
    sweep_target: str
    window_targets: tuple[str, ...]
    fixed_windows: tuple[tuple[float, float], ...]
    sweep_layers: str

    def __post_init__(self):
        if self.sweep_target not in TARGETS:
            raise ValueError(f"sweep_target must be one of {TARGETS}, got {self.sweep_target!r}")
        if self.sweep_layers not in SWEEP_LAYERS:
            raise ValueError(f"sweep_layers must be one of {SWEEP_LAYERS}, got {self.sweep_layers!r}")
        if not set(self.window_targets) <= set(TARGETS):
            raise ValueError(f"window_targets must be some of {TARGETS}, got {self.window_targets}")
        windows = tuple(tuple(float(x) for x in w) for w in self.fixed_windows)
        if any(len(w) != 2 or not 0.0 <= w[0] < w[1] <= 1.0 for w in windows):
            raise ValueError(f"a fixed window is [start, end) with 0 <= start < end <= 1, got {self.fixed_windows}")
        object.__setattr__(self, "fixed_windows", windows)  # YAML lists -> hashable tuples
        if self.window_step < 0 or self.start_layer_step < 0:
            raise ValueError("window_step and start_layer_step must be >= 0")


ROW_KINDS = ("token", "predicting")
SCOPES = ("disappearing", "all")


@dataclass(frozen=True)
@configured("kaduri.localization")
class LocalizationSpec:
    """Settings of K3, config section kaduri.localization (types, defaults, meanings:
    workflow/schemas/config.schema.yaml); the description cap is the session's
    (`DescribePrompt.description_tokens`)."""

    tolerance: int
    attention_row: str
    min_overlap: float
    per_head: bool
    scope: str
    band_width: int

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.attention_row not in ROW_KINDS:
            raise ValueError(f"attention_row must be one of {ROW_KINDS}, got {self.attention_row!r}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")


#: Where the question continues after the top-k-only cache -> the method it gives.
TOPK_POSITION_METHODS = {"after_kept": "image_topk", "after_prompt": "image_topk_after_prompt"}


@dataclass(frozen=True)
@configured("kaduri.reprompt")
class RepromptSpec:
    """Settings of K4, config section kaduri.reprompt (types, defaults, meanings:
    workflow/schemas/config.schema.yaml); the description cap is the session's
    (`DescribePrompt.description_tokens`)."""

    answer_tokens: int
    top_k_fractions: tuple[float, ...]
    questions_per_image: int
    continuation: str
    image_topk_positions: tuple[str, ...]

    def __post_init__(self):
        unknown = set(self.image_topk_positions) - set(TOPK_POSITION_METHODS)
        if not self.image_topk_positions or unknown:
            raise ValueError(f"image_topk_positions must be some of {tuple(TOPK_POSITION_METHODS)}, "
                             f"got {self.image_topk_positions}")
        if not self.top_k_fractions or any(not 0 < f <= 1 for f in self.top_k_fractions):
            raise ValueError(f"top_k_fractions must be in (0, 1], got {self.top_k_fractions}")
        if "{question}" not in self.continuation:
            raise ValueError("continuation must contain {question}")
