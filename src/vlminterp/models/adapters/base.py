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

Image geometry ("crop" or "pad") says how an original image became the square model input:
- "crop": the HF LLaVA-1.5 processor: resize the shortest side to `shortest_edge`, centre-crop
  `input_size` x `input_size` (parts of a non-square image are cut away);
- "pad": the original LLaVA code: pad to a square with the mean colour (`pad_to_square`), then
  resize to `input_size` (nothing is cut; cells may fall wholly in the padding);
- "resize": the whole image is resized (aspect ratio may change slightly, nothing is cut or padded):
  InternVL's tiles + thumbnail, Qwen2-VL's dynamic resolution.

Image cells. A single-grid family (LLaVA) maps image token k to cell (k // cols, k % cols) of one
`PatchGrid`. Tiled or dynamic-resolution families have no single grid: the number of tokens and
their layout depend on the original image size, so geometry is asked per image with
`image_cells(original_size)`, an `ImageCells` table with one row per image token (tile, row, col,
box in the original image). For LLaVA that table is the grid with tile 0 everywhere.

Positions. `rope_positions` gives the RoPE position ids of an input as a `RopePositions`: (1, T)
for ordinary 1-D RoPE, (3, 1, T) for Qwen2-VL's M-RoPE (temporal, height, width). A text token
appended at sequence index s >= T gets position s + delta in every component (delta = 0 for 1-D
RoPE), so cached continuation (prefix sharing, decoding, cache surgery) is exact for both.
Adding a family = one new file with a `VLMAdapter` subclass + `register_adapter`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Sequence
from fractions import Fraction
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from vlminterp.data.cells import PixelBoxes, TokenLayoutSizes, even_edges

ImageGeometry = Literal["crop", "pad", "resize"]
GEOMETRIES: tuple[str, ...] = ("crop", "pad", "resize")
PATCH_GRID_GEOMETRIES: tuple[str, ...] = ("crop", "pad")  # what a square PatchGrid supports


@dataclass(frozen=True)
class PromptTemplate:
    """A single-user-turn chat template; `{image}` marks where the image placeholder goes."""

    user_turn: str  # e.g. "USER: {image}\n{text} ASSISTANT:"
    system_turn: str = "{system} "  # prepended when a system prompt is given
    image_placeholder: str = "<image>"
    default_system_prompt: str | None = None  # used when system_prompt is None ("" = no system turn)

    def format(self, text: str, system_prompt: str | None = None) -> str:
        return self.format_with(self.image_placeholder, text, system_prompt)

    def format_with(self, image: str, text: str, system_prompt: str | None = None) -> str:
        """The same turn with `image` (any text, e.g. a description of the image) in the image's place."""
        prompt = self.user_turn.format(image=image, text=text)
        if system_prompt is None:
            system_prompt = self.default_system_prompt
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

    def pixel_boxes(self, original_size: tuple[int, int], geometry: ImageGeometry = "crop") -> PixelBoxes:
        """Exact box [x0, x1) x [y0, y1) in the ORIGINAL image of each cell, in image-token order.

        `original_size` is (width, height) as PIL reports it; pixel (x, y) covers [x, x+1) x [y, y+1).
        A cell covers a patch of the model input; inverting the resize (and crop or padding) maps it
        to a box with rational edges, kept exact (`data.cells.PixelBoxes`). Under "crop" what lies
        outside the crop is in no box. Under "pad" boxes are clipped to the image, and a cell lying
        wholly in the padding has no box.
        """
        width, height = original_size
        # cell edges in model-input pixels, per axis
        patch_edges = ([self.patch_size * k for k in range(self.cols + 1)],
                       [self.patch_size * k for k in range(self.rows + 1)])
        if geometry == "crop":
            # Mirrors transformers' get_resize_output_image_size (default_to_square=False) and
            # center_crop: short side -> shortest_edge, long side -> int(shortest_edge * long / short),
            # crop offset = (resized - crop) // 2. Resized pixel u is original u * width / new_w.
            if width <= height:
                new_w, new_h = self.shortest_edge, int(self.shortest_edge * height / width)
            else:
                new_w, new_h = int(self.shortest_edge * width / height), self.shortest_edge
            left, top = (new_w - self.input_size) // 2, (new_h - self.input_size) // 2
            x_edges = [Fraction((left + u) * width, new_w) for u in patch_edges[0]]
            y_edges = [Fraction((top + v) * height, new_h) for v in patch_edges[1]]
        elif geometry == "pad":
            # expand2square pastes the image at ((side - width) // 2, (side - height) // 2) of a
            # side x side square, which is then resized to input_size.
            side = max(width, height)
            pad_x, pad_y = (side - width) // 2, (side - height) // 2
            x_edges = [min(max(Fraction(u * side, self.input_size) - pad_x, 0), width) for u in patch_edges[0]]
            y_edges = [min(max(Fraction(v * side, self.input_size) - pad_y, 0), height) for v in patch_edges[1]]
        else:
            raise ValueError(f"unknown geometry {geometry!r}; a PatchGrid supports {PATCH_GRID_GEOMETRIES}")
        return PixelBoxes.grid(x_edges, y_edges)

    def cell_boxes(self, original_size: tuple[int, int], geometry: ImageGeometry = "crop") -> np.ndarray:
        """`pixel_boxes` as (num_cells, 4) floats, a row of NaN for a cell wholly in padding."""
        return self.pixel_boxes(original_size, geometry).as_float()


@dataclass(frozen=True, eq=False)
class ImageCells(TokenLayoutSizes):
    """Where each image token of ONE image comes from, in image-token (sequence) order.

    A tile is one square crop the vision tower saw: the single grid of LLaVA (tile 0), one of
    InternVL's high-resolution tiles or its global thumbnail, the one dynamic grid of Qwen2-VL.
    Token k lies in tile `tile[k]` at (`row[k]`, `col[k]`) of that tile's token grid and covers
    the box `pixel_boxes[k]` of the ORIGINAL image, exact (`data.cells.PixelBoxes`; no box: wholly
    in padding); `boxes[k]` = [x0, y0, x1, y1) as floats (a row of NaN: no box), for display.
    Several tokens may cover the same pixels (thumbnail vs tiles).
    """

    tile: np.ndarray  # (N,) int
    row: np.ndarray  # (N,) int
    col: np.ndarray  # (N,) int
    pixel_boxes: PixelBoxes  # N exact boxes
    tile_shapes: tuple[tuple[int, int], ...]  # (rows, cols) of each tile's token grid
    tile_kinds: tuple[str, ...]  # per tile: "grid" (single-grid family), "tile" or "thumbnail"
    tile_boxes: np.ndarray  # (num_tiles, 4) region of the original image each tile shows
    original_size: tuple[int, int]  # (width, height)

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float64 boxes in original-image pixels (NaN rows: no box)."""
        return self.pixel_boxes.as_float()

    def cells(self) -> np.ndarray:
        """(N, 3) int array of (tile, row, col), in image-token order."""
        return np.stack([self.tile, self.row, self.col], axis=1)

    def tokens_of_tile(self, tile: int) -> np.ndarray:
        """Image-token indices (within the image) of one tile, row-major."""
        return np.flatnonzero(self.tile == tile)

    def token_index(self, tile: int, row: int, col: int) -> int:
        """The image-token index of cell (tile, row, col)."""
        if not 0 <= tile < self.num_tiles:
            raise IndexError(f"tile {tile} outside the image's {self.num_tiles} tiles")
        rows, cols = self.tile_shapes[tile]
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"cell ({row}, {col}) outside tile {tile}'s {rows}x{cols} grid")
        return int(self.tokens_of_tile(tile)[row * cols + col])

    def grid_boxes(self, tile: int = 0) -> np.ndarray:
        """(rows, cols, 4) boxes of one tile, the layout `data.cells.cell_overlap` takes."""
        rows, cols = self.tile_shapes[tile]
        return self.boxes[self.tokens_of_tile(tile)].reshape(rows, cols, 4)

    @classmethod
    def from_tiles(cls, tiles: list[tuple[str, int, int, Sequence[int | Fraction]]],
                   original_size: tuple[int, int]) -> "ImageCells":
        """Build from (kind, rows, cols, region) per tile, in token order; each tile's region
        [x0, y0, x1, y1) of the original image (ints or Fractions: exact) is split evenly into its
        rows x cols cells (row-major)."""
        tile_ids, rows_out, cols_out, boxes = [], [], [], []
        for index, (_, rows, cols, region) in enumerate(tiles):
            x0, y0, x1, y1 = region
            r, c = np.divmod(np.arange(rows * cols), cols)
            tile_ids.append(np.full(rows * cols, index))
            rows_out.append(r)
            cols_out.append(c)
            boxes.append(PixelBoxes.grid(even_edges(x0, x1, cols), even_edges(y0, y1, rows)))
        return cls(
            tile=np.concatenate(tile_ids),
            row=np.concatenate(rows_out),
            col=np.concatenate(cols_out),
            pixel_boxes=PixelBoxes.concatenate(boxes),
            tile_shapes=tuple((rows, cols) for _, rows, cols, _ in tiles),
            tile_kinds=tuple(kind for kind, *_ in tiles),
            tile_boxes=np.array([[float(v) for v in region] for *_, region in tiles], dtype=np.float64).reshape(-1, 4),
            original_size=tuple(original_size),
        )


@dataclass(frozen=True, eq=False)
class RopePositions:
    """RoPE position ids of one input (batch 1), and how they continue after it.

    `ids` is (1, T) for 1-D RoPE or (3, 1, T) for M-RoPE (Qwen2-VL: temporal, height, width). A
    text token at sequence index s >= T (generated, or appended after a cache) gets position
    s + `delta` in every component; delta = 0 for 1-D RoPE, and for M-RoPE it is (largest prompt
    position + 1) - T, which is what transformers' `get_rope_index` returns as `rope_deltas`.
    """

    ids: torch.Tensor
    delta: int = 0

    @classmethod
    def arange(cls, length: int, device=None) -> "RopePositions":
        return cls(torch.arange(length, device=device)[None], 0)

    @property
    def length(self) -> int:
        return self.ids.shape[-1]

    @property
    def is_multimodal(self) -> bool:
        return self.ids.ndim == 3

    def span(self, start: int, stop: int, batch: int = 1) -> torch.Tensor:
        """Position ids of sequence indices [start, stop) for `batch` rows: (batch, n) or (3, batch, n)."""
        if not 0 <= start <= stop:
            raise ValueError(f"bad span [{start}, {stop})")
        parts = []
        if start < self.length:
            parts.append(self.ids[..., start : min(stop, self.length)])
        if stop > self.length:
            extra = torch.arange(max(start, self.length), stop, device=self.ids.device) + self.delta
            extra = extra.to(self.ids.dtype)[None]
            parts.append(extra.expand(3, 1, -1) if self.is_multimodal else extra)
        ids = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        return ids.expand(3, batch, -1) if self.is_multimodal else ids.expand(batch, -1)

    def to(self, device) -> "RopePositions":
        return RopePositions(self.ids.to(device), self.delta)


TOKEN_GROUPS: tuple[str, ...] = ("system", "image", "query", "generated")


@dataclass(frozen=True)
class TokenGroups:
    """The token groups of one single-image prompt (Kaduri et al.), as sequence positions.

    system: BOS and everything before the image (the system prompt and the user-role tag, e.g.
        "USER:"); `bos` is its first position when the prompt starts with BOS (the attention
        sink, reportable on its own).
    image: the image tokens.
    query: everything after the image up to the end of the prompt (the user's text and the
        assistant tag, e.g. "\\nDescribe this image. ASSISTANT:").
    generated: positions prompt_length, prompt_length + 1, ... (`generated(n)`).
    The four groups partition the sequence.
    """

    prompt_length: int
    bos: tuple[int, ...]
    system: tuple[int, ...]
    image: tuple[int, ...]
    query: tuple[int, ...]

    def generated(self, n: int) -> tuple[int, ...]:
        """Positions of the first `n` generated tokens."""
        return tuple(range(self.prompt_length, self.prompt_length + n))

    def positions(self, group: str, n_generated: int = 0) -> tuple[int, ...]:
        """Positions of one group by name ("bos", "system", "image", "query", "generated")."""
        if group == "generated":
            return self.generated(n_generated)
        if group in ("bos", "system", "image", "query"):
            return getattr(self, group)
        raise ValueError(f"unknown token group {group!r}; expected bos or one of {TOKEN_GROUPS}")

    def labels(self, length: int) -> np.ndarray:
        """Group name of every position < `length` (BOS labelled "bos", the rest of system "system")."""
        out = np.full(length, "generated", dtype=object)
        for name in ("system", "image", "query"):
            index = [p for p in getattr(self, name) if p < length]
            out[index] = name
        out[[p for p in self.bos if p < length]] = "bos"
        return out


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
    # Image geometries this family supports (see the module docstring); the first is the default.
    geometries: ClassVar[tuple[str, ...]] = ("crop", "pad")
    # Processor outputs (besides input_ids) that the vision tower / positions need.
    image_input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)

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
        geometry = self._geometry(geometry)
        grid = self.grid
        pixel_boxes = grid.pixel_boxes(original_size, geometry)
        width, height = original_size
        cells = grid.cells()
        return ImageCells(
            tile=np.zeros(grid.num_cells, dtype=np.int64),
            row=cells[:, 0],
            col=cells[:, 1],
            pixel_boxes=pixel_boxes,
            tile_shapes=((grid.rows, grid.cols),),
            tile_kinds=("grid",),
            tile_boxes=_grid_region(pixel_boxes.as_float(), width, height),
            original_size=tuple(original_size),
        )

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
        )
        return out.last_hidden_state, out.past_key_values

    def unembed(self, normed_hidden: torch.Tensor) -> torch.Tensor:
        """Logits from final-normed hidden states (apply `final_norm` first for the residual stream)."""
        return self.lm_head(normed_hidden)


class ConditionalGenerationAdapter(VLMAdapter):
    """The module layout transformers 5 gives LLaVA, InternVL and Qwen2-VL (`*ForConditionalGeneration`):
    model.model.language_model (embed_tokens, layers, norm), model.lm_head, the projector at
    model.model.multi_modal_projector, the image token id in the top-level config, and image
    features scattered into the token embeddings at the image tokens. A family overrides only
    what differs (Qwen2-VL: the projector is the vision tower's merger).

    A family names itself by `family` (its config's `model_type`) and `model_class_name` (the
    transformers class to instantiate); `matches` and `model_class` follow from those."""

    model_class_name: ClassVar[str]

    @classmethod
    def matches(cls, config) -> bool:
        return getattr(config, "model_type", None) == cls.family

    @classmethod
    def model_class(cls) -> type[nn.Module]:
        import transformers

        return getattr(transformers, cls.model_class_name)

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.language_model.norm

    @property
    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    @property
    def projector(self) -> nn.Module:
        return self.model.model.multi_modal_projector

    @property
    def text_config(self):
        return self.language_model.config

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **image_inputs) -> torch.Tensor:
        return self._scatter_image_features(input_ids, pixel_values, image_inputs)


def _grid_region(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(1, 4) outer box of a grid's cells (NaN cells ignored)."""
    finite = boxes[~np.isnan(boxes).any(axis=1)]
    if len(finite) == 0:
        return np.full((1, 4), np.nan)
    return np.array([[finite[:, 0].min(), finite[:, 1].min(), finite[:, 2].max(), finite[:, 3].max()]])


class ImageOnlyProcessorMixin:
    """Lets a multimodal processor be built with video_processor=None: transformers' video processors
    need torchvision, which this project does not install (images only, exactly as with video)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def load_image_only_processor(processor_class, id_or_path: str, **kwargs):
    """`AutoProcessor.from_pretrained`, or, when that fails for want of torchvision (the video
    processor), `processor_class` (an `ImageOnlyProcessorMixin` subclass) from the checkpoint's
    tokenizer, image processor (PIL backend) and processor settings."""
    import inspect

    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(id_or_path, **kwargs)
    except (ImportError, ValueError) as error:
        if "torchvision" not in str(error).lower():
            raise
    tokenizer = AutoTokenizer.from_pretrained(id_or_path, **kwargs)
    image_processor = AutoImageProcessor.from_pretrained(id_or_path, **kwargs)
    try:
        settings, _ = processor_class.get_processor_dict(id_or_path, **kwargs)
    except OSError:
        settings = {}
    accepted = set(inspect.signature(processor_class.__init__).parameters) - {
        "self", "image_processor", "tokenizer", "video_processor", "kwargs"
    }
    extra = {key: value for key, value in settings.items() if key in accepted}
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **extra)


def token_ids(*values) -> tuple[int, ...]:
    """The ids in `values` (each None, an int or a list of ints), in order, without repeats."""
    out: list[int] = []
    for value in values:
        for token in [] if value is None else [value] if isinstance(value, int) else value:
            if int(token) not in out:
                out.append(int(token))
    return tuple(out)


def setting(mapping, key: str, default):
    """`mapping[key]` (a dict) or `mapping.key` (a config object), `default` when absent or None."""
    value = mapping.get(key) if isinstance(mapping, dict) else getattr(mapping, key, None)
    return value if value is not None else default
