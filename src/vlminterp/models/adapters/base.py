"""The architecture-adapter contract: the only place that knows a model family's module paths.

    adapter = adapter_for(model, processor)          # from vlminterp.models.adapters
    adapter.image_positions(input_ids)               # per batch row: sequence indices of image tokens
    cells = adapter.image_cells((width, height))     # per image token: (tile, row, col) and its pixel box
    cells.boxes                                      # (N, 4) box of every token in the ORIGINAL image
    adapter.cell_boxes((width, height), "crop")      # the same boxes (single-grid families: LLaVA)
    adapter.grid.cell_of_token(k)                    # (row, col) of the k-th image token (single grid only)
    groups = adapter.token_groups(input_ids)         # system (BOS first) / image / query / generated positions
    adapter.decoder_layers, adapter.final_norm, adapter.lm_head, adapter.embed_tokens
    image_inputs = adapter.image_inputs(encoding)    # what the processor gave beyond input_ids
    embeds = adapter.embed(input_ids, **image_inputs)   # text embeddings with post-projector image features
    positions = adapter.rope_positions(input_ids, **image_inputs)  # RoPE ids (1-D, or Qwen2-VL's 3-D M-RoPE)
    hidden, cache = adapter.language_model_forward(embeds, position_ids=positions.span(0, T))

Image geometry ("crop", "pad" or "resize", `geometry.patch_grid`) says how an original image
became the model input. A single-grid family (LLaVA) maps image token k to cell (k // cols,
k % cols) of one `PatchGrid`. Tiled or dynamic-resolution families have no single grid: the
number of tokens and their layout depend on the original image size, so geometry is asked per
image with `image_cells(original_size)`, a `geometry.tokens.ImageCells` table with one row per
image token (tile, row, col, box in the original image). For LLaVA that table is the grid with
tile 0 everywhere.

The parts an adapter hands out live in their own modules: `prompt.PromptTemplate`,
`positions.RopePositions` (RoPE ids and how they continue after a prompt),
`token_groups.TokenGroups`; `conditional_generation.ConditionalGenerationAdapter` implements the
module paths transformers' `*ForConditionalGeneration` classes share.
Adding a family = one new file with a `VLMAdapter` subclass + `register_adapter`.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from vlminterp.geometry import ImageCells, ImageGeometry, PatchGrid

from .config_values import token_ids
from .positions import RopePositions
from .prompt import PromptTemplate
from .token_groups import TokenGroups


# ---- named sites ---------------------------------------------------------------------------------
SITE_KINDS = ("embed", "image_features", "resid_pre", "resid_post", "attn_out", "mlp_out", "head_out", "attn",
              "logits")
LAYER_SITE_KINDS = frozenset({"resid_pre", "resid_post", "attn_out", "mlp_out", "head_out", "attn"})


class SiteError(KeyError):
    """A site name this family cannot map (unknown kind, layer out of range, or absent in the family)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Site:
    """Where a named site lives in one model (`VLMAdapter.site`).

    kind:    one of SITE_KINDS; `layer`: its decoder layer (None for embed, image_features, logits)
    module:  the module whose input ("input") or output ("output") is the site's tensor; for `attn`
             the decoder layer's attention module, edited inside the attention function ("attention")
    sequence: whether dim 1 of the tensor is the sequence (cache slots); False for image_features
    """

    name: str
    kind: str
    layer: int | None
    module: nn.Module
    hook: str
    sequence: bool = True


def parse_site(name: str) -> tuple[str, int | None]:
    """("resid_post", 3) for "resid_post.3"; ("embed", None) for "embed"."""
    kind, _, layer = name.partition(".")
    if kind not in SITE_KINDS:
        raise SiteError(f"unknown site {name!r}; sites are {', '.join(k + '.{l}' if k in LAYER_SITE_KINDS else k for k in SITE_KINDS)}")
    if (kind in LAYER_SITE_KINDS) != bool(layer):
        raise SiteError(f"site {name!r}: {kind} " + ("needs a layer, e.g. " + kind + ".0" if kind in LAYER_SITE_KINDS
                                                     else "takes no layer"))
    return kind, (int(layer) if layer else None)


# The engine's operations, each supported by a family or refused by name (docs/COMPATIBILITY.md).
OPERATIONS = ("forward", "ablation", "knockout", "generation", "kept_caches", "capture", "prefix_sharing")


class UnsupportedOperationError(NotImplementedError):
    """An engine operation this model family refuses (raised before any work, naming family and reason)."""


class VLMAdapter(ABC):
    """Canonical names for one model family's parts. Subclasses implement the abstract members."""

    family: ClassVar[str]
    # Image geometries this family supports (see the module docstring); the first is the default.
    geometries: ClassVar[tuple[str, ...]] = ("crop", "pad")
    # Processor outputs (besides input_ids) that the vision tower / positions need.
    image_input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    # Site kinds this family lacks or means otherwise -> why (`site` raises SiteError naming the family).
    absent_sites: ClassVar[dict[str, str]] = {}
    # Engine operations (OPERATIONS) this family refuses -> why (`check_operation` raises naming the family).
    refused_operations: ClassVar[dict[str, str]] = {}
    # True where image tokens attend to each other in both directions (Gemma 3): the model's mask is not causal.
    bidirectional_image_block: ClassVar[bool] = False

    def __init__(self, model: nn.Module, processor=None):
        self.model = model
        self.processor = processor

    def check_operation(self, operation: str) -> None:
        """Raise `UnsupportedOperationError` naming the family if it refuses `operation` (one of OPERATIONS)."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; expected one of {OPERATIONS}")
        if operation in self.refused_operations:
            raise UnsupportedOperationError(f"{self.family}: {operation} is refused: {self.refused_operations[operation]}")

    def observe(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> None:
        """The engine is about to run `input_ids` (1, T) (embedded as `inputs_embeds`, where known);
        families whose masks or injections depend on the layout (Gemma 3's bidirectional image block,
        Qwen3-VL's DeepStack) remember it. Default: nothing."""

    def ablating(self, rows: Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
        """Inside the block the engine's token ablations of `rows` (per batch row, or one for all: the
        ablated positions) are in force; a family that adds image information after the input
        embedding (Qwen3-VL's DeepStack) removes it at those positions too. Default: nothing."""
        return contextlib.nullcontext()

    def shared_prefix_limit(self, input_ids: torch.Tensor, prefix: int) -> int:
        """The longest prefix <= `prefix` the engine may compute once and share (default: `prefix`)."""
        return prefix

    # ---- which models this adapter serves -------------------------------------------------
    @classmethod
    @abstractmethod
    def matches(cls, config) -> bool:
        """True if this adapter handles a model with this (top-level) config."""

    @classmethod
    @abstractmethod
    def model_class(cls) -> type[nn.Module]:
        """The transformers class to instantiate for this family."""

    @classmethod
    def load_processor(cls, id_or_path: str, **kwargs):
        """The processor of a checkpoint (`kwargs`: revision etc., as for `from_pretrained`)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(id_or_path, **kwargs)

    # ---- structure --------------------------------------------------------------------------
    @property
    @abstractmethod
    def language_model(self) -> nn.Module:
        """The decoder stack (takes inputs_embeds, returns normed last hidden state + cache)."""

    @property
    @abstractmethod
    def decoder_layers(self) -> nn.ModuleList: ...

    @property
    @abstractmethod
    def final_norm(self) -> nn.Module: ...

    @property
    @abstractmethod
    def lm_head(self) -> nn.Module: ...

    @property
    @abstractmethod
    def embed_tokens(self) -> nn.Embedding: ...

    @property
    @abstractmethod
    def projector(self) -> nn.Module:
        """The module whose output is the post-projector image embedding."""

    @property
    @abstractmethod
    def text_config(self): ...

    @property
    def n_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def n_heads(self) -> int:
        return self.text_config.num_attention_heads

    @property
    def n_kv_heads(self) -> int:
        return getattr(self.text_config, "num_key_value_heads", None) or self.n_heads

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def head_dim(self) -> int:
        return getattr(self.text_config, "head_dim", None) or self.hidden_size // self.n_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends a generated answer: the text config's `eos_token_id` and the checkpoint's
        generation config's (generation_config.json), each an int or a list, in that order, no repeats
        (a chat model may end its turn with another id than its first EOS, e.g. Phi-3's `<|end|>`)."""
        generation_config = getattr(self.model, "generation_config", None)
        return token_ids(getattr(self.text_config, "eos_token_id", None),
                         getattr(generation_config, "eos_token_id", None))

    @property
    def sliding_window(self) -> int | None:
        """Keys a query of a sliding-window layer sees (itself included), None when no layer slides."""
        window = getattr(self.text_config, "sliding_window", None)
        if window is None or not self.sliding_layers:
            return None
        return int(window)

    @property
    def sliding_layers(self) -> frozenset[int]:
        """Indices of the text model's sliding-window attention layers (`layer_types`; every layer
        when the config sets a window without layer types, as Mistral's does)."""
        if getattr(self.text_config, "sliding_window", None) is None:
            return frozenset()
        layer_types = getattr(self.text_config, "layer_types", None)
        if layer_types is None:
            return frozenset(range(self.n_layers))
        return frozenset(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")

    # ---- image tokens and geometry ---------------------------------------------------------
    @property
    @abstractmethod
    def image_token_id(self) -> int: ...

    @property
    def default_geometry(self) -> str:
        return self.geometries[0]

    def _geometry(self, geometry: str | None) -> str:
        geometry = self.default_geometry if geometry is None else geometry
        if geometry not in self.geometries:
            raise ValueError(f"unknown geometry {geometry!r} for {self.family}; expected one of {self.geometries}")
        return geometry

    @property
    def has_single_grid(self) -> bool:
        """True if every image becomes the same `grid` of tokens (LLaVA); False for tiled/dynamic families."""
        return True

    @property
    def grid(self) -> PatchGrid:
        """The one token grid of every image (single-grid families only; others: `image_cells`)."""
        raise NotImplementedError(
            f"{self.family} has no single patch grid: the tokens of an image depend on its size; "
            "use adapter.image_cells((width, height))"
        )

    def image_positions(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """For each batch row, the sorted sequence indices holding image tokens."""
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        return [torch.nonzero(row == self.image_token_id).flatten() for row in input_ids]

    def image_blocks(self, input_ids: torch.Tensor) -> list[list[torch.Tensor]]:
        """For each batch row, the image-token positions of each image (in order).

        Single-grid families split every `grid.num_cells` tokens; tiled/dynamic families split at
        gaps (each image's tokens are one contiguous run, delimited by start/end tokens)."""
        out = []
        for positions in self.image_positions(input_ids):
            if self.has_single_grid:
                n = self.grid.num_cells
                if len(positions) % n:
                    raise ValueError(f"{len(positions)} image tokens is not a whole number of {n}-cell images")
                out.append(list(positions.split(n)))
            elif len(positions) == 0:
                out.append([])
            else:
                breaks = torch.nonzero(positions.diff() != 1).flatten() + 1
                sizes = torch.diff(torch.cat([breaks.new_zeros(1), breaks, breaks.new_tensor([len(positions)])]))
                out.append(list(positions.split(sizes.tolist())))
        return out

    def image_cells(self, original_size: tuple[int, int], geometry: ImageGeometry | None = None) -> ImageCells:
        """Per image token of one image of `original_size` (width, height): tile, row, col and box."""
        return ImageCells.from_grid(self.grid, original_size, self._geometry(geometry))

    def image_token_cells(
        self,
        input_ids: torch.Tensor,
        image_sizes: Sequence[Sequence[tuple[int, int]]] | None = None,
        geometry: ImageGeometry | None = None,
    ) -> list[np.ndarray]:
        """For each batch row, the cell of each image token, aligned with image_positions.

        Single-grid families: (N, 2) (row, col), `image_sizes` not needed. Tiled/dynamic
        families: (N, 3) (tile, row, col), and `image_sizes` (per row: (width, height) of each
        of its images, original sizes) is required.
        """
        if self.has_single_grid:
            return [np.concatenate([self.grid.cells()] * len(blocks)) if blocks else np.zeros((0, 2), np.int64)
                    for blocks in self.image_blocks(input_ids)]
        if image_sizes is None:
            raise ValueError(f"{self.family}: image_token_cells needs the original image_sizes (per row, per image)")
        out = []
        for blocks, sizes in zip(self.image_blocks(input_ids), image_sizes, strict=True):
            if len(blocks) != len(sizes):
                raise ValueError(f"{len(blocks)} images in the row but {len(sizes)} image sizes")
            tables = [self.image_cells(size, geometry) for size in sizes]
            for block, table in zip(blocks, tables):
                if len(block) != table.num_tokens:
                    raise ValueError(f"an image of size {table.original_size} has {table.num_tokens} tokens, "
                                     f"the input has {len(block)}: wrong size or processor settings")
            out.append(np.concatenate([t.cells() for t in tables]) if tables else np.zeros((0, 3), np.int64))
        return out

    def positions_of_cells(
        self,
        input_ids: torch.Tensor,
        cells,
        image_index: int = 0,
        image_size: tuple[int, int] | None = None,
        geometry: ImageGeometry | None = None,
    ) -> torch.Tensor:
        """Sequence indices (in a single row of input_ids) of the given cells of one image, sorted.

        `cells`: flat image-token indices (within the image), or (row, col) pairs (single-grid
        families), or (tile, row, col) triples (needs `image_size`, the original (width, height)).
        """
        row_ids = input_ids[0] if input_ids.ndim == 2 else input_ids
        (blocks,) = self.image_blocks(row_ids)
        block = blocks[image_index]
        flat, table = [], None
        for c in cells:
            if isinstance(c, (int, np.integer)):
                flat.append(int(c))
                continue
            c = tuple(int(v) for v in c)
            if len(c) == 2:
                if not self.has_single_grid:
                    raise ValueError(f"{self.family} images have several tiles: give (tile, row, col) cells")
                c = (0, *c)
            if len(c) != 3:
                raise ValueError(f"cell {c!r}: expected a flat index, (row, col) or (tile, row, col)")
            if table is None:
                if self.has_single_grid:  # token order does not depend on the image size
                    table = self.image_cells((self.grid.input_size, self.grid.input_size))
                elif image_size is None:
                    raise ValueError(f"{self.family}: (tile, row, col) cells need the original image_size")
                else:
                    table = self.image_cells(image_size, geometry)
            flat.append(table.token_index(*c))
        if any(not 0 <= f < len(block) for f in flat):
            raise IndexError(f"cell outside the image's {len(block)} tokens")
        return block[torch.as_tensor(sorted(flat), dtype=torch.long)]

    def cell_boxes(self, original_size: tuple[int, int], geometry: ImageGeometry | None = None) -> np.ndarray:
        """(N, 4) box in the ORIGINAL image of every image token of one image, in token order."""
        return self.image_cells(original_size, geometry).boxes

    @abstractmethod
    def prepare_image(self, image: Image.Image, geometry: ImageGeometry | None = None) -> Image.Image:
        """The image to hand the processor so that the chosen geometry is what the model sees."""

    def image_inputs(self, encoding) -> dict:
        """The processor outputs (besides input_ids) the vision tower and positions need."""
        names = [name for name in self.image_input_names if name in encoding]
        return {name: encoding[name] for name in names if encoding[name] is not None}

    def model_inputs(self, input_ids: torch.Tensor, **image_inputs) -> dict:
        """Keyword arguments for a full `model(...)` / `model.generate(...)` call on this input."""
        return {"input_ids": input_ids, **image_inputs}

    def rope_positions(self, input_ids: torch.Tensor, **image_inputs) -> RopePositions:
        """RoPE position ids of one input (batch 1); 1-D 0..T-1 unless the family says otherwise."""
        if input_ids.ndim == 2 and input_ids.shape[0] != 1:
            raise ValueError("rope_positions takes one input (batch 1)")
        return RopePositions.arange(input_ids.shape[-1], device=input_ids.device)

    # ---- prompts -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def prompt_template(self) -> PromptTemplate: ...

    @property
    def bos_token_id(self) -> int | None:
        bos = getattr(self.text_config, "bos_token_id", None)
        return bos[0] if isinstance(bos, (list, tuple)) else bos

    def token_groups(self, input_ids: torch.Tensor) -> TokenGroups:
        """System / image / query positions of a single-image prompt (see `TokenGroups`).

        The default suits templates with one contiguous block of image tokens between the system
        part and the user's text (LLaVA); families with other layouts (several image blocks,
        image tags around the tiles) override it.
        """
        ids = input_ids[0] if input_ids.ndim == 2 else input_ids
        if ids.ndim != 1:
            raise ValueError(f"token_groups takes one prompt, got input_ids of shape {tuple(input_ids.shape)}")
        (image,) = self.image_positions(ids)
        image = [int(p) for p in image]
        if not image:
            raise ValueError("the prompt holds no image token")
        first, last = image[0], image[-1]
        if last - first + 1 != len(image):
            raise ValueError("the image tokens are not one contiguous block; this family must override token_groups")
        length = int(ids.shape[0])
        bos = (0,) if self.bos_token_id is not None and length and int(ids[0]) == self.bos_token_id else ()
        return TokenGroups(prompt_length=length, bos=bos, system=tuple(range(first)), image=tuple(image),
                           query=tuple(range(last + 1, length)))

    def format_prompt(self, text: str, system_prompt: str | None = None) -> str:
        """A single user turn with one image, e.g. `USER: <image>\\n{text} ASSISTANT:`."""
        return self.prompt_template.format(text, system_prompt)

    def format_text_prompt(self, text: str, context: str, system_prompt: str | None = None) -> str:
        """A text-only turn with `context` where the image would be, e.g. `USER: {context}\\n{text} ASSISTANT:`."""
        return self.prompt_template.format_with(context, text, system_prompt)

    # ---- computation -----------------------------------------------------------------------------
    @abstractmethod
    def image_features(self, pixel_values: torch.Tensor, **image_inputs) -> torch.Tensor:
        """Post-projector image embeddings, (G, n, hidden), flattening to the image tokens in sequence
        order: G = images (LLaVA), tiles (InternVL), or 1 with every image's tokens (Qwen2-VL)."""

    @abstractmethod
    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **image_inputs) -> torch.Tensor:
        """Input embeddings of the language model: token embeddings, image features at image tokens."""

    def _scatter_image_features(self, input_ids, pixel_values, image_inputs) -> torch.Tensor:
        from vlminterp.models.routing import constraint_of

        constraint = constraint_of(self.model)
        if constraint is not None:  # a planted organism: the sequence the engine / cache will run
            constraint.observe(input_ids)
        embeds = self.embed_tokens(input_ids)
        is_image = input_ids == self.image_token_id
        if pixel_values is None:
            if bool(is_image.any()):
                raise ValueError("input_ids contain image tokens but no pixel_values were given")
            return embeds
        features = self.image_features(pixel_values, **image_inputs).to(embeds.dtype)
        features = features.reshape(-1, features.shape[-1])
        if int(is_image.sum()) != features.shape[0]:
            raise ValueError(f"{int(is_image.sum())} image tokens in input_ids but {features.shape[0]} image features")
        return embeds.masked_scatter(is_image[..., None], features)

    def language_model_forward(
        self,
        inputs_embeds: torch.Tensor,
        *,
        past_key_values=None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
    ):
        """Run the decoder stack; returns (final-normed last hidden state, cache)."""
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=use_cache,
            **self.language_model_extras(inputs_embeds, past_key_values),
        )
        return out.last_hidden_state, out.past_key_values

    def language_model_extras(self, inputs_embeds: torch.Tensor, past_key_values) -> dict:
        """Further keyword arguments of this call of the text model (`language_model_forward`), e.g.
        Qwen3-VL's DeepStack features; default: none."""
        return {}

    def unembed(self, normed_hidden: torch.Tensor) -> torch.Tensor:
        """Logits from final-normed hidden states (apply `final_norm` first for the residual stream)."""
        return self.lm_head(normed_hidden)

    # ---- named sites (interventions.sites) --------------------------------------------------------
    def site(self, name: str) -> Site:
        """The module behind a named site of this family (module docstring of `interventions.sites`):

            embed           input embeddings of the language model (image features at image tokens)
            image_features  the projector's output, (G, n, d) as `image_features` returns (not per position)
            resid_pre.{l}   input of decoder layer l (resid_pre.0 == embed); resid_post.{l}: its output
            attn_out.{l}    output of layer l's attention (o_proj applied, before the residual add)
            mlp_out.{l}     output of layer l's MLP (before the residual add)
            head_out.{l}    input of layer l's o_proj: every head's output side by side, (B, S, H * head_dim)
            attn.{l}        layer l's attention scores / pattern (knockouts, attention capture)
            logits          the unembedding's output

        A family where a site is absent or means something else names it in `absent_sites`."""
        kind, layer = parse_site(name)
        if kind in self.absent_sites:
            raise SiteError(f"{self.family}: no site {name!r}: {self.absent_sites[kind]}")
        if layer is not None:
            if not -self.n_layers <= layer < self.n_layers:
                raise SiteError(f"{self.family}: site {name!r} out of range; the text model has {self.n_layers} layers")
            layer %= self.n_layers
            block = self.decoder_layers[layer]
            attention = getattr(block, "self_attn", None)
            mlp = getattr(block, "mlp", None)
            missing = {"attn_out": attention, "attn": attention, "mlp_out": mlp,
                       "head_out": getattr(attention, "o_proj", None)}
            if kind in missing and missing[kind] is None:
                raise SiteError(f"{self.family}: no site {name!r}: decoder layer {type(block).__name__} has no module for it")
            module, hook = {
                "resid_pre": (block, "input"),
                "resid_post": (block, "output"),
                "attn_out": (attention, "output"),
                "mlp_out": (mlp, "output"),
                "head_out": (missing["head_out"], "input"),
                "attn": (attention, "attention"),
            }[kind]
            return Site(f"{kind}.{layer}", kind, layer, module, hook)
        if kind == "embed":
            return Site(name, kind, None, self.language_model, "input")
        if kind == "image_features":
            return Site(name, kind, None, self.projector, "output", sequence=False)
        return Site(name, kind, None, self.lm_head, "output")
