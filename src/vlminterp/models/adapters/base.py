"""The architecture-adapter contract: the only place that knows a model family's module paths.

    adapter = adapter_for(model, processor)          # from vlminterp.models.adapters
    adapter.image_positions(input_ids)               # per batch row: sequence indices of image tokens
    adapter.grid.cell_of_token(k)                    # (row, col) of the k-th image token
    adapter.cell_boxes((width, height), "crop")      # pixel box of every cell in the ORIGINAL image
    adapter.decoder_layers, adapter.final_norm, adapter.lm_head, adapter.embed_tokens
    embeds = adapter.embed(input_ids, pixel_values)  # text embeddings with post-projector image features
    hidden, cache = adapter.language_model_forward(embeds)

Image geometry ("crop" or "pad") says how an original image became the square model input:
- "crop": the HF LLaVA-1.5 processor: resize the shortest side to `shortest_edge`, centre-crop
  `input_size` x `input_size` (parts of a non-square image are cut away);
- "pad": the original LLaVA code: pad to a square with the mean colour (`pad_to_square`), then
  resize to `input_size` (nothing is cut; cells may fall wholly in the padding).
Adding a family (InternVL, Qwen2-VL) = one new file with a `VLMAdapter` subclass + `register_adapter`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

ImageGeometry = Literal["crop", "pad"]
GEOMETRIES: tuple[str, ...] = ("crop", "pad")


@dataclass(frozen=True)
class PromptTemplate:
    """A single-user-turn chat template; `{image}` marks where the image placeholder goes."""

    user_turn: str  # e.g. "USER: {image}\n{text} ASSISTANT:"
    system_turn: str = "{system} "  # prepended when a system prompt is given
    image_placeholder: str = "<image>"

    def format(self, text: str, system_prompt: str | None = None) -> str:
        prompt = self.user_turn.format(image=self.image_placeholder, text=text)
        if system_prompt:
            prompt = self.system_turn.format(system=system_prompt) + prompt
        return prompt


@dataclass(frozen=True)
class PatchGrid:
    """The square patch grid one image becomes: image token k sits at cell (k // cols, k % cols)."""

    rows: int
    cols: int
    patch_size: int  # pixels of the model input per cell side
    input_size: int  # side of the square model input in pixels (crop size)
    shortest_edge: int  # the processor resizes the shortest original side to this ("crop" geometry)

    @property
    def num_cells(self) -> int:
        return self.rows * self.cols

    def cell_of_token(self, k: int) -> tuple[int, int]:
        """(row, col) of the k-th image token of an image (row-major order)."""
        if not 0 <= k < self.num_cells:
            raise IndexError(f"image token {k} outside a {self.rows}x{self.cols} grid")
        return divmod(k, self.cols)

    def cells(self) -> np.ndarray:
        """(num_cells, 2) int array of (row, col), in image-token order."""
        k = np.arange(self.num_cells)
        return np.stack([k // self.cols, k % self.cols], axis=1)

    def cell_boxes(self, original_size: tuple[int, int], geometry: ImageGeometry = "crop") -> np.ndarray:
        """Pixel box [x0, y0, x1, y1) in the ORIGINAL image covered by each cell, in image-token order.

        `original_size` is (width, height) as PIL reports it. Boxes are floats (continuous pixel
        coordinates: pixel (x, y) covers [x, x+1) x [y, y+1)). Under "pad", boxes are clipped to
        the image, and a cell lying wholly in the padding gets a row of NaN.
        """
        width, height = original_size
        if geometry == "crop":
            # Mirrors transformers' get_resize_output_image_size (default_to_square=False) and
            # center_crop: short side -> shortest_edge, long side -> int(shortest_edge * long / short),
            # crop offset = (resized - crop) // 2.
            if width <= height:
                new_w, new_h = self.shortest_edge, int(self.shortest_edge * height / width)
            else:
                new_w, new_h = int(self.shortest_edge * width / height), self.shortest_edge
            left, top = (new_w - self.input_size) // 2, (new_h - self.input_size) // 2
            scale_x, scale_y = width / new_w, height / new_h
            offset_x, offset_y = left * scale_x, top * scale_y
            step_x, step_y = self.patch_size * scale_x, self.patch_size * scale_y
        elif geometry == "pad":
            side = max(width, height)
            pad_x, pad_y = (side - width) // 2, (side - height) // 2
            scale = side / self.input_size
            offset_x, offset_y = -pad_x, -pad_y
            step_x = step_y = self.patch_size * scale
        else:
            raise ValueError(f"unknown geometry {geometry!r}; expected one of {GEOMETRIES}")
        rc = self.cells()
        x0 = offset_x + rc[:, 1] * step_x
        y0 = offset_y + rc[:, 0] * step_y
        boxes = np.stack([x0, y0, x0 + step_x, y0 + step_y], axis=1).astype(np.float64)
        if geometry == "pad":
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
            empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            boxes[empty] = np.nan
        return boxes


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """The original LLaVA `expand2square`: paste the image centred on a `fill`-coloured square."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


class VLMAdapter(ABC):
    """Canonical names for one model family's parts. Subclasses implement the abstract members."""

    family: ClassVar[str]

    def __init__(self, model: nn.Module, processor=None):
        self.model = model
        self.processor = processor

    # ---- which models this adapter serves -------------------------------------------------
    @classmethod
    @abstractmethod
    def matches(cls, config) -> bool:
        """True if this adapter handles a model with this (top-level) config."""

    @classmethod
    @abstractmethod
    def model_class(cls) -> type[nn.Module]:
        """The transformers class to instantiate for this family."""

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
    def eos_token_id(self) -> int | None:
        eos = self.text_config.eos_token_id
        return eos[0] if isinstance(eos, (list, tuple)) else eos

    # ---- image tokens and geometry ---------------------------------------------------------
    @property
    @abstractmethod
    def image_token_id(self) -> int: ...

    @property
    @abstractmethod
    def grid(self) -> PatchGrid: ...

    def image_positions(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """For each batch row, the sorted sequence indices holding image tokens."""
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        return [torch.nonzero(row == self.image_token_id).flatten() for row in input_ids]

    def image_token_cells(self, input_ids: torch.Tensor) -> list[np.ndarray]:
        """For each batch row, the (row, col) cell of each image token, aligned with image_positions."""
        out = []
        for positions in self.image_positions(input_ids):
            if len(positions) % self.grid.num_cells:
                raise ValueError(
                    f"{len(positions)} image tokens is not a whole number of {self.grid.num_cells}-cell images"
                )
            out.append(np.tile(self.grid.cells(), (len(positions) // self.grid.num_cells, 1)))
        return out

    def positions_of_cells(self, input_ids: torch.Tensor, cells, image_index: int = 0) -> torch.Tensor:
        """Sequence indices (in a single row of input_ids) of the given cells of one image.

        `cells` is an iterable of (row, col) pairs or of flat cell indices (row * cols + col).
        """
        row_ids = input_ids[0] if input_ids.ndim == 2 else input_ids
        (positions,) = self.image_positions(row_ids)
        n = self.grid.num_cells
        flat = [c if isinstance(c, (int, np.integer)) else c[0] * self.grid.cols + c[1] for c in cells]
        if any(not 0 <= f < n for f in flat):
            raise IndexError(f"cell outside the {self.grid.rows}x{self.grid.cols} grid")
        return positions[image_index * n : (image_index + 1) * n][torch.as_tensor(sorted(flat), dtype=torch.long)]

    def cell_boxes(self, original_size: tuple[int, int], geometry: ImageGeometry = "crop") -> np.ndarray:
        return self.grid.cell_boxes(original_size, geometry)

    @abstractmethod
    def prepare_image(self, image: Image.Image, geometry: ImageGeometry = "crop") -> Image.Image:
        """The image to hand the processor so that the chosen geometry is what the model sees."""

    # ---- prompts -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def prompt_template(self) -> PromptTemplate: ...

    def format_prompt(self, text: str, system_prompt: str | None = None) -> str:
        """A single user turn with one image, e.g. `USER: <image>\\n{text} ASSISTANT:`."""
        return self.prompt_template.format(text, system_prompt)

    # ---- computation -----------------------------------------------------------------------------
    @abstractmethod
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Post-projector image embeddings, (num_images, tokens_per_image, hidden)."""

    @abstractmethod
    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings of the language model: token embeddings, image features at image tokens."""

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
        )
        return out.last_hidden_state, out.past_key_values

    def unembed(self, normed_hidden: torch.Tensor) -> torch.Tensor:
        """Logits from final-normed hidden states (apply `final_norm` first for the residual stream)."""
        return self.lm_head(normed_hidden)
