"""The session of a model stage: the model behind its adapter, the intervention engine, the dataset
split and the vocabulary, opened once from a typed `StageConfig`. Every stage that runs the model
(N1-N3, the mean embedding, K1-K4) works through one.

    config = build_spec(StageConfig, {"model": {"id_or_path": "results/run/model"},
                                      "dataset_dir": "results/run/data/shapes", "split": "val",
                                      "prompt": {"description_tokens": 40}, "vocabulary": "shapes"},
                        where="session")
    session = Session.open(config)                    # the one place a stage loads its model
    item = session.encode(image_id)                   # the describe prompt of one image, prepared
    generated = session.describe(item)                # greedy, up to prompt.description_tokens
    attention = session.description_attention(item, generated)      # the rows that produced it
    prepared = session.prepare(image, "What shape is the red object?", answer_prefix="It is a")
    session.adapter, session.engine, session.dataset, session.vocabulary, session.tokenizer

Experiments take (session, rows, spec): they never load a model, build a `PreparedInput`, move a
tensor to a device or touch a KV cache themselves; the engine's operations do
(`InterventionEngine.extend`, `observe_generation`, `prompt_cache`, `continue_cache`).

Every engine of a stage is built here, with EXPERIMENT_BATCHING: the layout of conditions in
forward calls that the tables were recorded with (one shared prefix, `batch_size` rows per call).
The engine's default (`FAST`: groups by where conditions start, cache-sized calls) gives equal
results up to float rounding but other bits, so changing this line changes the tables.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vlminterp.data.coco import CocoDataset
from vlminterp.interventions import InterventionEngine, PreparedInput
from vlminterp.interventions.engine import ONE_PREFIX
from vlminterp.models.adapters import TokenGroups, VLMAdapter, adapter_for
from vlminterp.models.loading import ModelSpec, load_adapter
from vlminterp.scoring.vocabulary import SynonymVocabulary, load_vocabulary
from vlminterp.specs import configured

# The batching every stage's tables were recorded with (module docstring): pinned, not the engine's default.
EXPERIMENT_BATCHING = ONE_PREFIX


@dataclass(frozen=True)
@configured("kaduri", keys={"text": "prompt", "system_prompt": "system_prompt", "geometry": "geometry", "description_tokens": "description_tokens"})
class DescribePrompt:
    """How the session shows an image and formats a prompt, and the describe prompt itself.

    text: user text of the describe prompt (K1-K4); system_prompt: put before the user turn (None:
    the template's default, "" = none); geometry: how an image becomes the model input ("crop",
    "pad", "resize"; None: the family's default); description_tokens: greedy description length cap.
    """

    text: str
    system_prompt: str | None
    geometry: str | None
    description_tokens: int

    def __post_init__(self):
        if self.description_tokens < 1:
            raise ValueError(f"description_tokens must be >= 1, got {self.description_tokens}")


@dataclass(frozen=True)
@configured("kaduri", keys={"batch_size": "batch_size"})
class StageConfig:
    """What a model stage opens: the model (`ModelSpec`), the dataset split, the prompt format, the
    synonym vocabulary (packaged name or YAML path, extended by the dataset's categories; None:
    none) and the engine's batch size (halved on CUDA out-of-memory) with the stage's name."""

    model: ModelSpec
    dataset_dir: str
    split: str
    prompt: DescribePrompt = DescribePrompt()
    vocabulary: str | None = None
    batch_size: int
    stage: str = "intervention engine"


@dataclass
class EncodedImage:
    """One image's prompt, prepared for the engine, with its token groups."""

    image_id: int
    size: tuple[int, int]  # original (width, height)
    groups: TokenGroups
    prepared: PreparedInput = field(repr=False)
    image_inputs: dict = field(repr=False, default_factory=dict)  # the processor's (pixel_values, ...), on the CPU

    @property
    def input_ids(self) -> torch.Tensor:
        return self.prepared.input_ids

    @property
    def prompt_length(self) -> int:
        return self.prepared.length


@dataclass
class Session:
    """A loaded model behind its adapter, its engine, the dataset split, the prompt format and the
    vocabulary (module docstring)."""

    adapter: VLMAdapter
    engine: InterventionEngine
    dataset: CocoDataset
    prompt: DescribePrompt = DescribePrompt()
    vocabulary: SynonymVocabulary | None = None

    @classmethod
    def open(cls, config: StageConfig) -> "Session":
        """Load the model and the dataset split of `config`."""
        adapter = load_adapter(config.model)
        dataset = CocoDataset.load(config.dataset_dir, config.split)
        return cls.from_adapter(adapter, dataset, config.prompt, batch_size=config.batch_size,
                                vocabulary=config.vocabulary, stage=config.stage)

    @classmethod
    def from_model(cls, model, processor, dataset: CocoDataset, prompt: DescribePrompt = DescribePrompt(), *,
                   batch_size: int = 64, vocabulary: str | SynonymVocabulary | None = None,
                   stage: str = "intervention engine") -> "Session":
        """A session over a model already in memory (tests, notebooks)."""
        return cls.from_adapter(adapter_for(model, processor), dataset, prompt, batch_size=batch_size,
                                vocabulary=vocabulary, stage=stage)

    @classmethod
    def from_adapter(cls, adapter: VLMAdapter, dataset: CocoDataset, prompt: DescribePrompt = DescribePrompt(), *,
                     batch_size: int = 64, vocabulary: str | SynonymVocabulary | None = None,
                     stage: str = "intervention engine") -> "Session":
        if isinstance(vocabulary, str):
            vocabulary = load_vocabulary(vocabulary, categories=list(dataset.category_names().values()))
        return cls(adapter, _stage_engine(adapter, stage, batch_size), dataset, prompt, vocabulary)

    # ---- what the adapter holds ---------------------------------------------------------------------
    @property
    def model(self):
        return self.adapter.model

    @property
    def processor(self):
        return self.adapter.processor

    @property
    def tokenizer(self):
        return self.adapter.processor.tokenizer

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends an answer (the adapter's: text and generation config)."""
        return self.adapter.eos_token_ids

    # ---- prompts --------------------------------------------------------------------------------------
    def prepare(self, image, text: str, *, answer_prefix: str | None = None) -> PreparedInput:
        """One image and one user text in the model's chat format (the session's system prompt and
        geometry), the assistant turn started with `answer_prefix` when given; prepared for the engine."""
        prompt = self.adapter.format_prompt(text, self.prompt.system_prompt)
        if answer_prefix:
            prompt = f"{prompt} {answer_prefix}"
        input_ids, image_inputs = self._encode(image, prompt)
        return self.engine.prepare(input_ids, **image_inputs)

    def _encode(self, image, prompt: str) -> tuple[torch.Tensor, dict]:
        """(input_ids (1, T), image inputs) of a full prompt text with the image placeholder."""
        shown = self.adapter.prepare_image(image, self.prompt.geometry)
        encoding = self.processor(images=shown, text=prompt, return_tensors="pt")
        return encoding["input_ids"], self.adapter.image_inputs(encoding)

    @torch.no_grad()
    def image_features(self, images: Sequence) -> torch.Tensor:
        """(B, N, d) post-projector embeddings of PIL images shown with the session's geometry."""
        shown = [self.adapter.prepare_image(image, self.prompt.geometry) for image in images]
        image_inputs = self.adapter.image_inputs(self.processor.image_processor(images=shown, return_tensors="pt"))
        device = self.engine.device
        return self.adapter.image_features(**{k: v.to(device) for k, v in image_inputs.items()})

    def describe_text(self) -> str:
        return self.adapter.format_prompt(self.prompt.text, self.prompt.system_prompt)

    def encode(self, image_id: int, text: str | None = None) -> EncodedImage:
        """The describe prompt (or `text`, a full prompt with the image placeholder) of one image."""
        image = self.dataset.load_image(image_id)
        input_ids, image_inputs = self._encode(image, text if text is not None else self.describe_text())
        return EncodedImage(int(image_id), image.size, self.adapter.token_groups(input_ids),
                            self.engine.prepare(input_ids, **image_inputs), image_inputs)

    def tokenize(self, text: str, *, bos: bool) -> torch.Tensor:
        """(1, n) token ids of a text (with the tokenizer's BOS when `bos`)."""
        return self.tokenizer(text, add_special_tokens=bos, return_tensors="pt")["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # ---- generation -----------------------------------------------------------------------------------
    def describe(self, item: EncodedImage) -> list[int]:
        """The unablated greedy description (token ids, EOS included when produced)."""
        return self.engine.generate(item.prepared, [None], self.prompt.description_tokens, self.eos_token_ids).tokens[0]

    def description_attention(self, item: EncodedImage, generated: Sequence[int], image_rows: Sequence[int] = ()):
        """The attention of the rows P-1 .. P+n-2 that produced `generated`, reduced per layer
        (`description_attention.DescriptionAttention`)."""
        from vlminterp.experiments.shared.description_attention import DescriptionAttention
        from vlminterp.interventions import Capture, From

        read = Capture([f"attn.{l}" for l in range(self.adapter.n_layers)], From(item.prompt_length - 1))
        self.engine.observe_generation(item.prepared, generated, read)
        return DescriptionAttention.from_record(item.groups, read.record, self.adapter.n_layers, image_rows)


def _stage_engine(adapter: VLMAdapter, stage: str, batch_size: int) -> InterventionEngine:
    """The engine of an experiment stage: EXPERIMENT_BATCHING, `batch_size` rows per call at most."""
    return InterventionEngine(adapter.model, adapter, max_batch_size=batch_size, batching=EXPERIMENT_BATCHING,
                              stage=stage)
