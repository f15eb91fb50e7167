"""The organism's specification (config section model.organism): light (no torch, no
transformers), so the Snakefile's config checks build it without loading a model's libraries;
`organism.architecture` turns it into a Hugging Face LLaVA configuration and re-exports it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vlminterp.models import ROUTINGS  # the routing variants (what each plants: `models.routing`)
from vlminterp.specs import check_fields, configured


@dataclass(frozen=True)
@configured("model.organism")
class OrganismSpec:
    """Architecture sizes, tokenizer and the staged training recipe of the model organism (LLaVA's).

    Stage 0 ("vision") trains the vision tower alone with a per-patch loss: a temporary linear head
    predicts, for every patch, the shape and the colour of the object covering it (or background),
    labels read from the annotation masks. This stands in for LLaVA's pretrained CLIP encoder.
    Stage 1 ("text") pretrains the language model on the world's text alone (captions, and the
    task questions with a caption in place of the image: ``tasks.text_documents``), loss on every
    token, as LLaVA starts from a text-pretrained Vicuna. Stage 2 ("align") trains the projector
    alone on image -> description with the tower and the language model frozen (LLaVA-1.5's
    feature alignment). Stage 3 ("instruct") trains projector + language model on the task mix
    with the loss on answer tokens only (LLaVA-1.5's instruction tuning); the tower is frozen
    (``tower_lr_scale=0``) or fine-tuned at ``language_lr * tower_lr_scale``. 0 steps skips a stage.

    The tokenizer is a SentencePiece BPE model trained on the world's text before stage 0
    (``tokenizer.train_sentencepiece``), pieces at most ``tokenizer_max_piece_length`` characters.

    Config section model.organism (types, defaults, meanings: workflow/schemas/config.schema.yaml);
    seed: initialisation, data order and polling negatives (same seed, same weights on the CPU);
    num_threads: torch CPU threads of the training.
    """

    seed: int = 0
    patch_size: int
    vision_hidden_size: int
    vision_layers: int
    vision_heads: int
    vision_intermediate_size: int
    text_hidden_size: int
    text_layers: int
    text_heads: int
    text_intermediate_size: int
    max_position_embeddings: int
    vision_initializer_range: float
    text_initializer_range: float
    tokenizer_vocab_size: int
    tokenizer_max_piece_length: int
    vision_steps: int
    vision_batch_size: int
    vision_lr: float
    patch_pair_target: bool
    text_steps: int
    text_batch_size: int
    text_lr: float
    align_steps: int
    align_batch_size: int
    align_lr: float
    language_steps: int
    language_batch_size: int
    language_lr: float
    tower_lr_scale: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    task_weights: tuple[tuple[str, float], ...]
    log_every: int
    num_threads: int = 2
    max_train_images: int | None
    routing: str
    routing_layers: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_weights", tuple((str(t), float(w)) for t, w in dict(self.task_weights).items()))
        object.__setattr__(self, "routing_layers", tuple(int(x) for x in self.routing_layers))
        self.validate()

    @classmethod
    def tiny(cls, **overrides: Any) -> "OrganismSpec":
        """A small, fast organism for the test suite, the same four stages with fewer steps: about
        50 CPU-seconds of training on one thread on a busy machine (as the earlier 2-stage preset).

        One thread, because a model this small gains little from two and a busy machine makes
        OpenMP threads spin. Two LM layers keep the tiny DAG's per-layer experiments fast. On the
        tiny world (``ShapesWorldSpec.tiny``) it learns every task: seed 0 left the polling
        plateau after ~330 instruction steps of 600 (held-out: describe 99.2%, polling 100%,
        colour 99.2%, shape 100%); the 2-stage preset needed 1000 steps for seeds 0, 1 and 2.
        """
        values: dict[str, Any] = dict(vision_hidden_size=64, vision_intermediate_size=128, text_hidden_size=64,
                                      text_intermediate_size=128, text_layers=2, vision_steps=80, text_steps=150,
                                      align_steps=60, language_steps=600, language_batch_size=32,
                                      vision_batch_size=32,
                                      language_lr=3e-3, log_every=5, num_threads=1)
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        def fail(name: str, message: str) -> None:
            raise ValueError(f"OrganismSpec.{name}={getattr(self, name)!r}: {message}")

        for name in ("patch_size", "vision_hidden_size", "vision_layers", "vision_heads", "text_hidden_size",
                     "text_layers", "text_heads", "vision_batch_size", "language_batch_size", "log_every",
                     "num_threads", "max_position_embeddings", "text_batch_size", "align_batch_size",
                     "tokenizer_max_piece_length"):
            if getattr(self, name) < 1:
                fail(name, "must be >= 1")
        if self.vision_hidden_size % self.vision_heads:
            fail("vision_heads", f"must divide vision_hidden_size={self.vision_hidden_size}")
        if self.text_hidden_size % self.text_heads:
            fail("text_heads", f"must divide text_hidden_size={self.text_hidden_size}")
        if self.tokenizer_vocab_size < 300:
            fail("tokenizer_vocab_size", "must be >= 300 (256 byte pieces, the special pieces and ASCII characters)")
        for name in ("vision_steps", "text_steps", "align_steps", "language_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                fail(name, "must be >= 0")
        for name in ("vision_lr", "text_lr", "align_lr", "language_lr"):
            if getattr(self, name) <= 0:
                fail(name, "must be > 0")
        if self.tower_lr_scale < 0:
            fail("tower_lr_scale", "must be >= 0")
        from vlminterp.organism.tasks import TASKS

        weights = dict(self.task_weights)
        if set(weights) - set(TASKS) or any(w < 0 for w in weights.values()) or not any(weights.values()):
            fail("task_weights", f"tasks must be among {TASKS} with non-negative weights, not all zero")
        if self.max_train_images is not None and self.max_train_images < 1:
            fail("max_train_images", "must be >= 1 or None")
        if self.routing not in ROUTINGS:
            fail("routing", f"must be one of {ROUTINGS}")
        if self.routing == "window":
            if not self.routing_layers or any(not 0 <= x < self.text_layers for x in self.routing_layers):
                fail("routing_layers", f"window routing needs layers in 0..{self.text_layers - 1}")
            if len(set(self.routing_layers)) == self.text_layers:
                fail("routing_layers", "a window over every layer is the direct routing")
        elif self.routing_layers:
            fail("routing_layers", "only the window routing takes layers")

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["task_weights"] = dict(self.task_weights)
        values["routing_layers"] = list(self.routing_layers)
        if self.routing == "direct" and not self.routing_layers:  # the default organism's json is unchanged
            del values["routing"], values["routing_layers"]
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "OrganismSpec":
        check_fields(cls, values)
        values = dict(values)
        if isinstance(values.get("task_weights"), dict):
            values["task_weights"] = tuple(values["task_weights"].items())
        return cls(**values)
