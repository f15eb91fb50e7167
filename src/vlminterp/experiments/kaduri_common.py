"""What the four Kaduri et al. experiments (K1-K4) share: images, prompts, the description, its attention.

    images = select_images(dataset, n_images=30, seed=0)          # image_id, file_name, categories, ...
    session = KaduriSession.open(ModelSpec("results/run/model"), dataset, prompt=DescribePrompt())
    item = session.encode(image_id)                               # describe prompt + groups of one image
    generated = session.describe(item, max_new_tokens=300)        # greedy, unablated (the engine)
    attention = session.description_attention(item, generated, image_rows=[p])   # one extra forward

The description's attention. K1, K3 and K4 need the attention rows of the generated tokens during
decoding. Rather than capturing inside the step-by-step decode (one call per token, rows of
growing width), we re-run ONE forward pass over prompt + generated tokens (the last one excluded:
it is never fed back) and record the rows of positions P-1 .. P+n-2, where P is the prompt length:
row P-1+t is exactly the attention computed when the model produced generated token t (causal
attention gives each row the same keys and values as the cached decode step).
tests/unit/test_kaduri.py checks this against a per-step capture during `InterventionEngine.generate`.
Only what the experiments need is kept, reduced inside the attention function (see
`DescriptionAttention`): per layer and head, each row's attention mass per token group, the full
image row of a few chosen positions (K3), and the attention each image token received summed over
the rows (K4) -- never the T x T x L x H tensor.

Row conventions (documented in each table):
- the *decode rows* are the generated tokens read back during decoding, positions P .. P+n-2
  (the knockout engine's `From(P)`): K1 reports their attention, with the prefill's last row P-1
  as the authors' code does (`AttentionFractionSpec.include_prefill_row`);
- the *predicting row* of generated token t is P-1+t, the row whose output is token t.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vlminterp.data.cells import exclusion_reason, mask_tokens
from vlminterp.data.coco import CocoDataset
from vlminterp.interventions import InterventionEngine
from vlminterp.interventions.attention import edit_attention
from vlminterp.models.adapters import TokenGroups, VLMAdapter, adapter_for
from vlminterp.models.loading import ModelSpec, load_model
from vlminterp.scoring.vocabulary import SynonymVocabulary, load_vocabulary

log = logging.getLogger(__name__)

#: Key groups of the attention tables: BOS apart from the rest of the system group.
KEY_GROUPS: tuple[str, ...] = ("bos", "system", "image", "query", "generated")
IMAGE_COLUMNS = ("image_id", "file_name", "width", "height", "categories")
LIST_SEPARATOR = ";"

#: The LLaVA-1.5 system prompt Kaduri et al. use (configs/llava-1.5-7b.yaml sets it).
LLAVA_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)


@dataclass(frozen=True)
class DescribePrompt:
    """The describe prompt: user text, system prompt (None: the template's default, "" = none),
    image geometry ("crop", "pad", "resize"; None: the family's default)."""

    text: str = "Describe this image."
    system_prompt: str | None = None
    geometry: str | None = None


# ---- images ---------------------------------------------------------------------------------------
def select_images(dataset: CocoDataset, n_images: int, seed: int) -> pd.DataFrame:
    """`n_images` annotated images of the split, a seeded sample in a fixed order (all if fewer).

    Columns IMAGE_COLUMNS; `categories` is the ";"-joined sorted set of category names present.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    ids = [i for i in dataset.image_ids() if dataset.annotations_of(i)]
    order = np.random.default_rng(seed).permutation(len(ids))[:n_images]
    names = dataset.category_names()
    rows = []
    for index in order:
        image_id = ids[int(index)]
        info = dataset.image_info(image_id)
        categories = sorted({names[c] for c in dataset.image_categories(image_id)})
        rows.append({"image_id": int(image_id), "file_name": info["file_name"], "width": int(info["width"]),
                     "height": int(info["height"]), "categories": LIST_SEPARATOR.join(categories)})
    return pd.DataFrame(rows, columns=list(IMAGE_COLUMNS))


def dataset_vocabulary(name: str, dataset: CocoDataset) -> SynonymVocabulary:
    """The judge's vocabulary (packaged name or YAML path), extended by the dataset's categories."""
    return load_vocabulary(name, categories=list(dataset.category_names().values()))


def category_mask(dataset: CocoDataset, image_id: int, category: str) -> np.ndarray:
    """Union of the masks of every instance of `category` in the image (crowd included)."""
    info = dataset.image_info(image_id)
    mask = np.zeros((info["height"], info["width"]), dtype=bool)
    for ann in dataset.annotations_of(image_id):
        if dataset.category_name(ann["category_id"]) == category:
            mask |= dataset.annotation_mask(ann["id"])
    return mask


def object_tokens(adapter: VLMAdapter, mask: np.ndarray, geometry: str | None = None,
                  min_overlap: float = 0.0) -> tuple[np.ndarray, str]:
    """((N,) bool over the image's tokens (image-token order), exclusion reason): the tokens whose
    box holds a mask pixel (covers more than `min_overlap` of it), through the adapter's exact
    geometry (`adapter.image_cells` of the mask's (width, height); any family: InternVL's tiles and
    thumbnail alike, Qwen2-VL's dynamic grid; for LLaVA its grid's cells, row-major). The reason is
    "" when some token holds the object, else why none does (`data.cells.exclusion_reason`, e.g.
    "object outside the crop")."""
    height, width = mask.shape
    overlap, selected = mask_tokens(mask, adapter.image_cells((width, height), geometry).pixel_boxes, min_overlap)
    return selected, exclusion_reason(mask, overlap, selected)


def mask_cells(adapter: VLMAdapter, mask: np.ndarray, geometry: str | None = None,
               min_overlap: float = 0.0) -> np.ndarray:
    """The tokens of `object_tokens` alone."""
    return object_tokens(adapter, mask, geometry, min_overlap)[0]


# ---- text ---------------------------------------------------------------------------------------
def token_spans(tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of `ids` and each token's character span [start, end) in it.

    Spans come from decoding growing prefixes, so they follow the tokenizer's own detokenisation
    (spaces, merged pieces); special tokens decode to nothing and get empty spans.
    """
    spans, previous = [], 0
    for k in range(len(ids)):
        length = len(tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=True))
        spans.append((previous, max(previous, length)))
        previous = max(previous, length)
    return tokenizer.decode(list(ids), skip_special_tokens=True), spans


@dataclass(frozen=True)
class TokenMention:
    """A category named in generated text: the mention and the generated tokens it covers."""

    category: str
    surface: str
    start: int  # character span in the decoded text
    end: int
    first_token: int  # index into the generated tokens
    last_token: int


def token_mentions(text: str, spans: Sequence[tuple[int, int]], vocabulary: SynonymVocabulary) -> list[TokenMention]:
    """Every vocabulary mention of `text` (the judge's matching) with the tokens it covers."""
    out = []
    for mention in vocabulary.find(text):
        covered = [k for k, (s, e) in enumerate(spans) if e > s and s < mention.end and e > mention.start]
        if covered:
            out.append(TokenMention(mention.category, mention.surface, mention.start, mention.end,
                                    covered[0], covered[-1]))
    return out


# ---- attention of the description ---------------------------------------------------------------
class DescriptionAttention:
    """An attention edit (observe only) reducing the rows of queries >= `first_row`, per layer.

    After the forward pass, for each layer l:
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

    def blocked(self, layer, q_slots, num_keys, batch_size, num_heads):
        return None

    def _group_matrix(self, num_keys: int, device) -> torch.Tensor:
        key = (num_keys, device)
        if key not in self._onehot:
            labels = self.groups.labels(num_keys)
            matrix = torch.zeros(num_keys, len(KEY_GROUPS), dtype=torch.float32)
            for g, name in enumerate(KEY_GROUPS):
                matrix[torch.as_tensor(labels == name), g] = 1.0
            self._onehot[key] = matrix.to(device)
        return self._onehot[key]

    def observe(self, layer, q_slots, probabilities) -> None:
        selected = torch.nonzero(q_slots >= self.first_row).flatten()
        if len(selected) == 0:
            return
        probs = probabilities(selected)  # (B, H, n, K)
        if probs.shape[0] != 1:
            raise ValueError("DescriptionAttention observes one sequence (batch of 1)")
        probs = probs[0].float()
        slots = q_slots[selected].cpu()
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


@dataclass
class EncodedImage:
    """One image's describe prompt, ready for the engine."""

    image_id: int
    size: tuple[int, int]  # original (width, height)
    input_ids: torch.Tensor  # (1, P)
    image_inputs: dict  # pixel_values and whatever else the family's vision tower needs
    groups: TokenGroups
    prepared: object = field(repr=False, default=None)  # engine.PreparedInput

    @property
    def prompt_length(self) -> int:
        return int(self.input_ids.shape[1])


@dataclass
class KaduriSession:
    """A loaded model with its adapter, engine, processor, the dataset and the describe prompt."""

    model: object
    processor: object
    adapter: VLMAdapter
    engine: InterventionEngine
    dataset: CocoDataset
    prompt: DescribePrompt

    @classmethod
    def open(cls, model_spec: ModelSpec, dataset: CocoDataset, prompt: DescribePrompt,
             max_batch_size: int = 64) -> "KaduriSession":
        model, processor = load_model(model_spec)
        adapter = adapter_for(model, processor)
        return cls(model, processor, adapter, InterventionEngine(model, adapter, max_batch_size=max_batch_size),
                   dataset, prompt)

    @classmethod
    def from_model(cls, model, processor, dataset: CocoDataset, prompt: DescribePrompt,
                   max_batch_size: int = 64) -> "KaduriSession":
        adapter = adapter_for(model, processor)
        return cls(model, processor, adapter, InterventionEngine(model, adapter, max_batch_size=max_batch_size),
                   dataset, prompt)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends an answer (the adapter's: text and generation config)."""
        return self.adapter.eos_token_ids

    def describe_text(self) -> str:
        return self.adapter.format_prompt(self.prompt.text, self.prompt.system_prompt)

    def encode(self, image_id: int, text: str | None = None) -> EncodedImage:
        """The describe prompt (or `text`, a full prompt with the image placeholder) for one image."""
        image = self.dataset.load_image(image_id)
        shown = self.adapter.prepare_image(image, self.prompt.geometry)
        enc = self.processor(images=shown, text=text if text is not None else self.describe_text(), return_tensors="pt")
        ids = enc["input_ids"]
        image_inputs = self.adapter.image_inputs(enc)
        item = EncodedImage(int(image_id), image.size, ids, image_inputs, self.adapter.token_groups(ids))
        item.prepared = self.engine.prepare(ids, **image_inputs)
        return item

    def describe(self, item: EncodedImage, max_new_tokens: int) -> list[int]:
        """The unablated greedy description (token ids, EOS included when produced)."""
        return self.engine.generate(item.prepared, [None], max_new_tokens, self.eos_token_ids).tokens[0]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @torch.no_grad()
    def description_attention(self, item: EncodedImage, generated: Sequence[int],
                              image_rows: Sequence[int] = ()) -> DescriptionAttention:
        """Attention of the rows P-1 .. P+n-2 while producing `generated` (module docstring)."""
        P = item.prompt_length
        fed = torch.as_tensor(list(generated[:-1]), dtype=torch.long, device=self.engine.device)[None]
        embeds = item.prepared.inputs_embeds
        if fed.shape[1]:
            embeds = torch.cat([embeds, self.adapter.embed_tokens(fed).to(embeds.dtype)], dim=1)
        record = DescriptionAttention(item.groups, P - 1, self.adapter.n_layers, image_rows)
        positions = item.prepared.rope.span(0, embeds.shape[1])  # RoPE ids continue after the prompt
        with edit_attention(self.adapter, record):
            self.adapter.language_model_forward(embeds, position_ids=positions, use_cache=False)
        return record


def load_images_table(path: str | Path) -> pd.DataFrame:
    from vlminterp.io import read_table

    table = read_table(path)
    table["categories"] = table["categories"].fillna("")
    return table


def open_session(model: dict, dataset_dir: str | Path, split: str, prompt: DescribePrompt | dict,
                 batch_size: int = 64) -> KaduriSession:
    """Load the model (`model`: ModelSpec keyword arguments) and the dataset split for a K stage;
    `prompt` is a DescribePrompt or its keyword arguments."""
    dataset = CocoDataset.load(dataset_dir, split)
    prompt = prompt if isinstance(prompt, DescribePrompt) else DescribePrompt(**prompt)
    return KaduriSession.open(ModelSpec(**model), dataset, prompt, max_batch_size=batch_size)


def run_shard(run, spec, *, images: str | Path, shard: str | int, images_per_shard: int, session: dict,
              vocabulary: str | None = None, **inputs) -> pd.DataFrame:
    """One shard job of a per-image K stage: `run(session, shard_images, spec=spec, **inputs)`.

    `images`: the images table (select_images); `shard`, `images_per_shard`: which of its rows
    (`sharding.shard_rows`); `session`: open_session's keyword arguments; `vocabulary` (a name or
    path, optional): passed on as `vocabulary=`, extended by the dataset's categories; `inputs`:
    further keyword arguments of `run` (K4: questions).

        table = run_shard(group_knockouts, KnockoutSpec(), images="results/run/kaduri/images.csv",
                          shard="0", images_per_shard=8, session=params.session, vocabulary="coco")
    """
    from vlminterp.sharding import shard_rows

    rows = shard_rows(load_images_table(images), shard, images_per_shard)
    opened = open_session(**session)
    if vocabulary is not None:
        inputs["vocabulary"] = dataset_vocabulary(vocabulary, opened.dataset)
    return run(opened, rows, spec=spec, **inputs)
