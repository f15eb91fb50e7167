"""Adapter for `Gemma3ForConditionalGeneration` (google/gemma-3-4b-it and larger; a tiny random-weight
model built from the real config in the tests).

    adapter = Gemma3Adapter(model, processor)
    adapter.model_inputs(input_ids, pixel_values=...)   # always with token_type_ids (see below)
    adapter.grid                                        # 16 x 16 tokens per image, "resize" geometry

Module paths: model.model.vision_tower (SigLIP, no head) -> model.model.multi_modal_projector (4 x 4
average pooling of the 64 x 64 patches, RMSNorm, a matrix) -> model.model.language_model
(Gemma3TextModel: scaled embed_tokens, layers, norm) -> model.lm_head.

Geometry ("resize"): the processor resizes the whole image to 896 x 896 (no crop, no padding;
pan-and-scan crops are refused), so image token k is cell (k // 16, k % 16) of one grid whose cells
cover 56 x 56 input pixels. The prompt holds `<start_of_image>` + 256 `<image_soft_token>`
(`config.image_token_index`; the processor's `image_token_id` names `<start_of_image>` in the pinned
transformers) + `<end_of_image>`.

Attention departs from LLaVA's in two ways the engine must honour:
- image tokens attend to each other BIDIRECTIONALLY (the whole block of one image, also in sliding
  layers within the window). transformers builds that block from `token_type_ids` only, and a
  forward without them silently falls back to causal: `model_inputs` always passes them, and
  `language_model_forward` (the engine's path, which runs the text model on embeddings) builds the
  same masks itself from the image-token layout of the input it runs (`observe`).
- local (sliding-window) and global layers alternate (`text_config.layer_types`).
A forward call whose queries hold part of an image block but not all of it (a prefix shared up to
the middle of the image) cannot be made exact: `shared_prefix_limit` moves the shared prefix to the
image's start, and `language_model_forward` refuses any such call by name. Queries are located by
their position ids, so text re-prompted after a kept cache (whose slots are not positions) runs
under the text model's own causal / sliding mask, as it would after the full prompt.
"""
from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from vlminterp.geometry import ImageCells, ImageGeometry, PatchGrid

from .conditional_generation import ConditionalGenerationAdapter
from .config_values import setting
from .prompt import PromptTemplate

GEMMA3_TEMPLATE = PromptTemplate(
    user_turn="<start_of_turn>user\n{image}{text}<end_of_turn>\n<start_of_turn>model\n",
    system_turn="<start_of_turn>system\n{system}<end_of_turn>\n",
    image_placeholder="<start_of_image>",
)


class ImageBlockError(RuntimeError):
    """A Gemma 3 forward call that would compute image tokens without their bidirectional block."""


class Gemma3Adapter(ConditionalGenerationAdapter):
    family = "gemma3"
    model_class_name = "Gemma3ForConditionalGeneration"
    geometries = ("resize",)
    image_input_names = ("pixel_values",)
    bidirectional_image_block = True

    def __init__(self, model: nn.Module, processor=None):
        super().__init__(model, processor)
        config = model.config
        vision = config.vision_config
        image_processor = getattr(processor, "image_processor", None)
        if getattr(image_processor, "do_pan_and_scan", None):
            raise NotImplementedError("gemma3: pan-and-scan crops (do_pan_and_scan=True) have no token geometry here")
        size = setting(getattr(image_processor, "size", None) or {}, "height", vision.image_size)
        side = int(round(config.mm_tokens_per_image ** 0.5))
        if side * side != config.mm_tokens_per_image or size % side:
            raise ValueError(f"gemma3: mm_tokens_per_image={config.mm_tokens_per_image} is not a square grid "
                             f"of a {size} px input")
        self._grid = PatchGrid(rows=side, cols=side, patch_size=size // side, input_size=size, shortest_edge=size)
        self._image_mask: torch.Tensor | None = None  # (1, T) of the input being run (`observe`)

    # ---- structure and tokens ----------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_index)

    @property
    def grid(self) -> PatchGrid:
        return self._grid

    def image_cells(self, original_size: tuple[int, int], geometry: ImageGeometry | None = None) -> ImageCells:
        """The one grid over the whole original image (it is squashed to the square input, nothing cut)."""
        self._geometry(geometry)
        width, height = original_size
        return ImageCells.from_tiles([("grid", self.grid.rows, self.grid.cols, (0, 0, width, height))], original_size)

    def prepare_image(self, image: Image.Image, geometry: ImageGeometry | None = None) -> Image.Image:
        self._geometry(geometry)
        return image

    @property
    def prompt_template(self) -> PromptTemplate:
        return GEMMA3_TEMPLATE

    # ---- inputs ------------------------------------------------------------------------------------
    def token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """1 at image tokens, 0 elsewhere (what the processor returns; the bidirectional block's source)."""
        return (input_ids == self.image_token_id).long()

    def model_inputs(self, input_ids: torch.Tensor, **image_inputs) -> dict:
        """Always with `token_type_ids`: without them the pinned transformers drops the image block."""
        image_inputs = {k: v for k, v in image_inputs.items() if k != "token_type_ids"}
        return {"input_ids": input_ids, "token_type_ids": self.token_type_ids(input_ids), **image_inputs}

    def image_features(self, pixel_values: torch.Tensor, **_) -> torch.Tensor:
        vision_dtype = next(self.model.model.vision_tower.parameters()).dtype
        out = self.model.model.get_image_features(pixel_values=pixel_values.to(vision_dtype), return_dict=True)
        return out.pooler_output

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **image_inputs) -> torch.Tensor:
        self.observe(input_ids)
        return self._scatter_image_features(input_ids, pixel_values, image_inputs)

    # ---- the bidirectional image block ------------------------------------------------------------
    def observe(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> None:
        """Remember which slots of the input about to run are image tokens (the engine calls this)."""
        ids = input_ids if input_ids.ndim == 2 else input_ids[None]
        if ids.shape[0] != 1:
            raise ValueError("gemma3: the engine runs one input at a time")
        self._image_mask = ids == self.image_token_id

    def _block_ids(self, num_keys: int) -> torch.Tensor:
        """Per slot of the observed input, at least `num_keys` of them: the index of its image block,
        -1 for text (slots after the observed input are text: generated or appended tokens)."""
        if self._image_mask is None:
            raise ImageBlockError("gemma3: language_model_forward before any input was observed (adapter.observe)")
        image = self._image_mask[0]
        image = torch.cat([image, image.new_zeros(max(0, num_keys - image.shape[0]))])
        starts = image & ~torch.nn.functional.pad(image, (1, 0))[:-1]
        return torch.where(image, torch.cumsum(starts.long(), 0) - 1, -1)

    def shared_prefix_limit(self, input_ids: torch.Tensor, prefix: int) -> int:
        """`prefix` moved back to the image's start when it would end inside an image block."""
        for block in self.image_blocks(input_ids)[0]:
            first, last = int(block[0]), int(block[-1])
            if first < prefix <= last:
                return first
        return prefix

    def _block_masks(self, inputs_embeds: torch.Tensor, past_key_values, position_ids=None) -> dict | None:
        """The text model's masks with the image block, or None where the call's queries hold no image
        token. Queries are located by their positions (`position_ids`; else the cache slots after
        `past`): text re-prompted after a kept cache (slots != positions) is never an image token."""
        past = 0 if past_key_values is None else int(past_key_values.get_seq_length())
        queries = inputs_embeds.shape[1]
        num_keys = past + queries
        slots = torch.arange(past, num_keys, device=inputs_embeds.device)
        located = slots if position_ids is None else position_ids.reshape(-1, queries)[0].to(slots.device)
        observed = self._block_ids(max(num_keys, int(located.max()) + 1)).to(inputs_embeds.device)
        if not bool((observed[located] >= 0).any()):
            return None
        if not torch.equal(located, slots):
            raise ImageBlockError("gemma3: image-token queries in a cache whose slots are not their positions")
        in_call = observed[past:num_keys]
        outside = torch.cat([observed[:past], observed[num_keys:]])
        if bool(torch.isin(in_call[in_call >= 0], outside[outside >= 0]).any()):
            raise ImageBlockError(
                "gemma3: a forward call holds part of an image block (bidirectional attention): its image "
                "tokens need keys outside the call, so a prefix cut inside the image cannot be reused")
        blocks = observed[:num_keys]
        q = torch.arange(past, num_keys, device=blocks.device)[:, None]
        k = torch.arange(num_keys, device=blocks.device)[None, :]
        full = (k <= q) | ((blocks[past:, None] >= 0) & (blocks[past:, None] == blocks[None, :]))
        masks = {"full_attention": full}
        window = getattr(self.text_config, "sliding_window", None)
        if window is not None:  # transformers: AND(window, OR(causal, block)); the window only limits the past
            masks["sliding_attention"] = full & (q - k < window)
        eager = self.text_config._attn_implementation == "eager"
        out = {}
        for name, allowed in masks.items():
            allowed = allowed[None, None].expand(inputs_embeds.shape[0], 1, -1, -1)
            if eager:
                allowed = torch.zeros(allowed.shape, dtype=inputs_embeds.dtype, device=blocks.device).masked_fill(
                    ~allowed, torch.finfo(inputs_embeds.dtype).min)
            out[name] = allowed
        return out

    def language_model_forward(self, inputs_embeds, *, past_key_values=None, position_ids=None,
                               attention_mask=None, use_cache=True):
        """The text model with Gemma 3's own masks: causal (sliding in local layers) OR the image block."""
        if attention_mask is None:
            attention_mask = self._block_masks(inputs_embeds, past_key_values, position_ids)
        return super().language_model_forward(inputs_embeds, past_key_values=past_key_values,
                                              position_ids=position_ids, attention_mask=attention_mask,
                                              use_cache=use_cache)
