"""Adapter for `Idefics3ForConditionalGeneration` (HuggingFaceTB/SmolVLM-256M/500M/2B-Instruct,
HuggingFaceM4/Idefics3-8B-Llama3; a tiny random-weight model from SmolVLM's real config in the tests).

    adapter = Idefics3Adapter(model, processor)
    cells = adapter.image_cells((640, 480))   # 4 x 3 tiles row-major, then the global image
    cells.tile_kinds                          # ('tile', ..., 'thumbnail')
    adapter.image_markers(input_ids)          # <fake_token_around_image>, <row_r_col_c>, <global-img>, "\\n"

Module paths: model.model.vision_model (SigLIP-like, patch 16, no CLS) -> model.model.connector (pixel
shuffle, then `modality_projection`) -> model.model.text_model (Llama: embed_tokens, layers, norm) ->
model.lm_head.

Geometry ("resize" only: nothing is cut or padded). The processor resizes the image so its longest
edge is `size["longest_edge"]` (2048 for SmolVLM), stretches it onto a canvas of whole tiles
(`max_image_size["longest_edge"]`, 512 px) and cuts that row-major into rows x cols tiles; when there
is more than one tile the whole image squashed to one tile (the global image) follows. A tile is
(512 / 16)^2 = 1024 patches; the connector's pixel shuffle (scale_factor 4) folds each 4 x 4 block of
patches into one token, row-major, so a tile is an 8 x 8 token grid (64 tokens, each 64 x 64 px).

The prompt spells the layout with tokens of their own kind, never image tokens (no cell): per tile
`<fake_token_around_image><row_r_col_c>` + 64 `<image>`, "\\n" after each row of tiles, then
"\\n<fake_token_around_image><global-img>" + 64 `<image>` + `<fake_token_around_image>`. The image
tokens of one image are therefore several runs: `image_blocks` splits images at their global tile.

transformers' `get_image_features` drops every all-zero tile of `pixel_values` as batch padding, which
silently shortens the image features (a tile ablated to 0 in normalized pixels, mid-grey, vanishes).
This adapter tells padding by the processor's `pixel_attention_mask` instead (a padding tile's mask
is all zero, a real tile's is not), so token counts and positions never depend on pixel values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from vlminterp.geometry import ImageCells, ImageGeometry

from .conditional_generation import ConditionalGenerationAdapter
from .config_values import setting
from .prompt import PromptTemplate
from .token_groups import TokenGroups


@dataclass(frozen=True)
class ConversationTemplate(PromptTemplate):
    """A template whose conversation opens once with `start`, before the system turn if any."""

    start: str = ""

    def format_with(self, image: str, text: str, system_prompt: str | None = None) -> str:
        return self.start + super().format_with(image, text, system_prompt)


# SmolVLM's chat template (chat_template.json) for one user turn with the image first.
SMOLVLM_TEMPLATE = ConversationTemplate(
    user_turn="User:{image}{text}<end_of_utterance>\nAssistant:",
    system_turn="System: {system}<end_of_utterance>\n",
    image_placeholder="<image>",
    start="<|im_start|>",
)
MAX_IMAGE_SIZE = 4096  # the processor's absolute cap on the resized image (image_processing_*_idefics3)


class Idefics3Adapter(ConditionalGenerationAdapter):
    family = "idefics3"
    model_class_name = "Idefics3ForConditionalGeneration"
    geometries = ("resize",)
    image_input_names = ("pixel_values", "pixel_attention_mask")

    def __init__(self, model: nn.Module, processor=None):
        super().__init__(model, processor)
        config = model.config
        vision = config.vision_config
        image_processor = getattr(processor, "image_processor", None)
        self.tile_size = int(setting(getattr(image_processor, "max_image_size", None) or {}, "longest_edge",
                                     vision.image_size))
        self.longest_edge = int(setting(getattr(image_processor, "size", None) or {}, "longest_edge",
                                        4 * self.tile_size))
        self.splits_images = bool(getattr(image_processor, "do_image_splitting", True))
        if self.tile_size != vision.image_size or vision.image_size % (vision.patch_size * config.scale_factor):
            raise ValueError(f"idefics3: tiles of {self.tile_size} px do not match the vision tower's "
                             f"{vision.image_size} px / patch {vision.patch_size} x scale {config.scale_factor}")
        side = vision.image_size // vision.patch_size // config.scale_factor
        self.tile_grid = (side, side)  # token rows, cols of every tile

    # ---- structure: Idefics3's own module names ---------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        return self.model.model.text_model

    @property
    def projector(self) -> nn.Module:
        return self.model.model.connector

    # ---- marker tokens --------------------------------------------------------------------------
    def _token_id(self, token: str) -> int:
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"idefics3: the marker token {token} needs the processor's tokenizer")
        return int(tokenizer.convert_tokens_to_ids(token))

    @property
    def global_image_token_id(self) -> int:
        return self._token_id("<global-img>")

    def image_markers(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Per batch row, the positions inside each image's span (from its first
        `<fake_token_around_image>` to its last) that are not image tokens: tile markers, the global
        tag, newlines. They are no cell of the image."""
        ids = input_ids if input_ids.ndim == 2 else input_ids[None]
        fake = self._token_id("<fake_token_around_image>")
        out = []
        for row, blocks in zip(ids, self.image_blocks(ids)):
            markers = []
            for block in blocks:
                start = int(block[0]) - 2  # <fake_token_around_image><row_1_col_1> or <global-img>
                stop = int(block[-1]) + 1  # the closing <fake_token_around_image>
                if start < 0 or int(row[start]) != fake or stop >= len(row) or int(row[stop]) != fake:
                    raise ValueError("idefics3: an image's tokens are not wrapped in <fake_token_around_image>")
                span = torch.arange(start, stop + 1)
                markers.append(span[row[start: stop + 1] != self.image_token_id])
            out.append(torch.cat(markers) if markers else torch.zeros(0, dtype=torch.long))
        return out

    # ---- image geometry ---------------------------------------------------------------------------
    @property
    def has_single_grid(self) -> bool:
        return False

    @property
    def tokens_per_tile(self) -> int:
        return self.tile_grid[0] * self.tile_grid[1]

    def tile_layout(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(cols, rows) of tiles the processor cuts an image of this size into; (0, 0) when it is
        only the global image (the processor's `rows` / `cols`)."""
        if not self.splits_images:
            return 0, 0
        width, height = original_size
        edge, tile = self.longest_edge, self.tile_size
        aspect = width / height
        if width >= height:  # the longest edge to `edge`, the other by the aspect ratio, rounded up to even
            width, height = edge, int(edge / aspect)
            height += height % 2
        else:
            width, height = int(edge * aspect), edge
            width += width % 2
        if max(width, height) > MAX_IMAGE_SIZE:
            aspect = width / height
            width, height = (MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)) if width >= height else \
                (int(MAX_IMAGE_SIZE * aspect), MAX_IMAGE_SIZE)
        width, height = max(width, 1), max(height, 1)
        aspect = width / height  # the canvas: whole tiles, the short side from the long one's new size
        if width >= height:
            width = math.ceil(width / tile) * tile
            height = math.ceil(int(width / aspect) / tile) * tile
        else:
            height = math.ceil(height / tile) * tile
            width = math.ceil(int(height * aspect) / tile) * tile
        if width <= tile and height <= tile:
            return 0, 0
        return width // tile, height // tile

    def image_cells(self, original_size: tuple[int, int], geometry: ImageGeometry | None = None) -> ImageCells:
        """Tiles row-major (each shows its rows x cols share of the whole image, stretched), then the
        global image; within a tile, token (i, j) is the 4 x 4-patch block i, j (row-major)."""
        self._geometry(geometry)
        cols, rows = self.tile_layout(original_size)
        return ImageCells.from_tile_split(original_size, cols, rows, self.tile_grid, thumbnail=True)

    def image_blocks(self, input_ids: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per batch row, the image-token positions of each image: every tile up to and including the
        global image's 64 tokens (after `<global-img>`)."""
        ids = input_ids if input_ids.ndim == 2 else input_ids[None]
        out = []
        for row, positions in zip(ids, self.image_positions(ids)):
            ends = torch.nonzero(row == self.global_image_token_id).flatten() + self.tokens_per_tile
            blocks, start = [], 0
            for end in ends.tolist():
                stop = int(torch.searchsorted(positions, torch.tensor(end), right=True))
                block = positions[start:stop]
                if len(block) == 0 or len(block) % self.tokens_per_tile or int(positions[stop - 1]) != end:
                    raise ValueError(f"idefics3: the image ending at position {end} is not whole tiles of "
                                     f"{self.tokens_per_tile} image tokens")
                blocks.append(block)
                start = stop
            if start != len(positions):
                raise ValueError("idefics3: image tokens after the last <global-img> tile")
            out.append(blocks)
        return out

    def prepare_image(self, image: Image.Image, geometry: ImageGeometry | None = None) -> Image.Image:
        self._geometry(geometry)
        return image

    # ---- prompts -----------------------------------------------------------------------------------
    @property
    def prompt_template(self) -> PromptTemplate:
        return SMOLVLM_TEMPLATE

    def token_groups(self, input_ids: torch.Tensor) -> TokenGroups:
        """Kaduri's groups around the image's span: system before its first marker, image = the image
        tokens, `image_markers` = the span's other positions, query after its closing marker."""
        ids = input_ids[0] if input_ids.ndim == 2 else input_ids
        (blocks,) = self.image_blocks(ids)
        if len(blocks) != 1:
            raise ValueError(f"idefics3: token_groups takes a single-image prompt, got {len(blocks)} images")
        (markers,) = self.image_markers(ids)
        image = [int(p) for p in blocks[0]]
        first, last, length = int(markers[0]), int(markers[-1]), int(ids.shape[0])
        bos = (0,) if self.bos_token_id is not None and length and int(ids[0]) == self.bos_token_id else ()
        return TokenGroups(prompt_length=length, bos=bos, system=tuple(range(first)), image=tuple(image),
                           query=tuple(range(last + 1, length)), image_markers=tuple(int(p) for p in markers))

    # ---- computation -------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None,
                       **_) -> torch.Tensor:
        """(tiles, 64, hidden): every real tile of every row in order; a batch's padding tiles (all-zero
        `pixel_attention_mask`) left out, all-zero pixel values kept (module docstring)."""
        if pixel_values.ndim != 5:
            raise ValueError(f"idefics3: pixel_values must be (rows, tiles, 3, H, W), got {tuple(pixel_values.shape)}")
        inner = self.model.model
        tiles = pixel_values.flatten(0, 1).to(next(inner.vision_model.parameters()).dtype)
        patch = inner.config.vision_config.patch_size
        if pixel_attention_mask is None:
            if pixel_values.shape[0] > 1:
                raise ValueError("idefics3: a batch of several rows needs its pixel_attention_mask to tell padding tiles")
            mask = torch.ones(tiles.shape[0], tiles.shape[2], tiles.shape[3], dtype=torch.bool, device=tiles.device)
        else:
            mask = pixel_attention_mask.flatten(0, 1).to(tiles.device).bool()
        real = mask.flatten(1).any(1)
        tiles, mask = tiles[real], mask[real]
        patches = mask.unfold(1, patch, patch).unfold(2, patch, patch).sum(dim=(-1, -2)) > 0
        hidden = inner.vision_model(pixel_values=tiles, patch_attention_mask=patches, return_dict=True).last_hidden_state
        return inner.connector(hidden)
