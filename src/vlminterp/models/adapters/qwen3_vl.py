"""Adapter for `Qwen3VLForConditionalGeneration` (Qwen/Qwen3-VL-*-Instruct; a tiny random-weight model
built from the real config in the tests, `testing.tiny_qwen`).

    adapter = Qwen3VLAdapter(model, processor)
    embeds = adapter.embed(input_ids, pixel_values, image_grid_thw=...)   # also keeps the DeepStack features
    with adapter.ablating([positions]):          # the engine's token ablation: no DeepStack there either
        hidden, cache = adapter.language_model_forward(embeds, position_ids=...)

Geometry and positions are Qwen2-VL's (qwen2_vl.py) with 16 px patches: one `smart_resize` grid of
32 x 32 px tokens, M-RoPE ids from the model's own `get_rope_index` (text continues at index + delta).
No default system turn in the chat template.

DeepStack. The vision tower also returns features of some of its intermediate layers
(`deepstack_visual_indexes`, 3 in the 8B model), each merged to one vector per image token; during
the prefill the text model ADDS the i-th of them to the hidden state at the image tokens after
decoder layer i (i < 3). So the image enters the text model four times, and replacing the image
tokens' input embeddings alone leaves it in. Here:
- `embed` keeps the DeepStack features of the input it embeds (a few inputs, keyed by their tokens
  up to the last image token and a digest of their image embeddings), and `observe` (the engine,
  before every run, with the prepared input's embeddings) picks the input's;
- `language_model_forward`, through its hook `language_model_extras`, locates the call's tokens by
  cache slot (slot = sequence index in every engine call on a prompt) and passes the text model the
  features of the image tokens among them, per batch row, leaving out each row's ablated positions
  (`ablating`, entered by the engine's `Ablation` edits): a token ablation removes the image from the
  input embedding AND the injections.
  The naive reference (`interventions.ablation.replace_embeddings`) removes the same injections from
  the model's own call independently;
- text appended after a kept cache is observed as text (cache.continue_batch), never as image.
`resid_post.{l}` is the decoder layer's output before the injection (transformers' hidden_states[l+1]);
`resid_pre.{l+1}` at an image token of an early layer is that plus the DeepStack feature. So an
activation patch or steer (`Patch`, `Steer`; not in docs/COMPATIBILITY.md) at an image token of a site
before the last DeepStack layer still gets this input's own features added after it: only patches
from `resid_pre.{deepstack_layers}` on replace the image there completely.

Trap (tested): a forward on `inputs_embeds` (no pixel_values) drops DeepStack, and without
`position_ids` also falls back to 1-D positions.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from transformers import Qwen3VLProcessor

from .processor import ImageOnlyProcessorMixin, load_image_only_processor
from .prompt import PromptTemplate
from .qwen2_vl import QWEN2_VL_TEMPLATE, Qwen2VLAdapter

QWEN3_VL_TEMPLATE = PromptTemplate(
    user_turn=QWEN2_VL_TEMPLATE.user_turn,
    system_turn=QWEN2_VL_TEMPLATE.system_turn,
    image_placeholder=QWEN2_VL_TEMPLATE.image_placeholder,
)
KEPT_INPUTS = 8  # inputs whose DeepStack features `embed` keeps (the engine prepares one, then runs it)


class DeepStackError(RuntimeError):
    """A Qwen3-VL text-model call whose image tokens' DeepStack features are not known."""


class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3_vl"
    model_class_name = "Qwen3VLForConditionalGeneration"

    def __init__(self, model: nn.Module, processor=None):
        super().__init__(model, processor)
        self._features: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()  # key -> per layer (N, d)
        self._last_deepstack: list[torch.Tensor] | None = None
        self._observed: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # (T,) image mask, features
        self._ablated: list[torch.Tensor] | None = None  # per row (or one for all): ablated positions

    @classmethod
    def load_processor(cls, id_or_path: str, **kwargs):
        """AutoProcessor, or an image-only `ImageOnlyQwen3VLProcessor` where the video processor needs torchvision."""
        return load_image_only_processor(ImageOnlyQwen3VLProcessor, id_or_path, **kwargs)

    @property
    def prompt_template(self) -> PromptTemplate:
        return QWEN3_VL_TEMPLATE

    @property
    def deepstack_layers(self) -> int:
        """Decoder layers after which DeepStack features are added (the first n)."""
        return len(self.model.config.vision_config.deepstack_visual_indexes)

    # ---- features ----------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **_):
        """(1, N, hidden) of the last vision layer; the DeepStack features of the same call are kept
        for `embed` (`deepstack_features`)."""
        if image_grid_thw is None:
            raise ValueError("Qwen3-VL image features need image_grid_thw (from the processor)")
        out = self.model.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        self._last_deepstack = [torch.cat(list(layer), dim=0) for layer in out.deepstack_features]
        return torch.cat(list(out.pooler_output), dim=0)[None]

    def deepstack_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Per DeepStack layer, (N, hidden): the features added after decoder layer i at the N image tokens."""
        self.image_features(pixel_values, image_grid_thw)
        return self._last_deepstack

    def _key(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor) -> tuple | None:
        """What the features belong to (None without an image token): the tokens up to the last image
        token and a digest of the image tokens' embeddings (two images of one size share the tokens)."""
        ids = input_ids.reshape(-1)
        image = ids == self.image_token_id
        if not bool(image.any()):
            return None
        last = int(torch.nonzero(image).flatten()[-1])
        pixels = inputs_embeds.reshape(-1, inputs_embeds.shape[-1])[: len(ids)][image.to(inputs_embeds.device)]
        digest = hashlib.sha1(pixels.detach().float().cpu().numpy().tobytes()).hexdigest()
        return tuple(ids[: last + 1].tolist()), digest

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **image_inputs) -> torch.Tensor:
        if input_ids.ndim == 2 and input_ids.shape[0] != 1:
            raise ValueError("qwen3_vl: embed one input at a time (its DeepStack features are kept per input)")
        self._last_deepstack = None
        embeds = self._scatter_image_features(input_ids, pixel_values, image_inputs)
        key = self._key(input_ids, embeds)
        if key is not None:
            self._features[key] = [f.to(embeds.dtype) for f in self._last_deepstack]
            self._features.move_to_end(key)
            while len(self._features) > KEPT_INPUTS:
                self._features.popitem(last=False)
        self.observe(input_ids, embeds)
        return embeds

    # ---- which tokens of a call get DeepStack features ---------------------------------------------
    def observe(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> None:
        """Remember the image tokens of the input about to run, and pick its DeepStack features (by its
        tokens and image embeddings: `inputs_embeds` is required when it holds an image token)."""
        ids = input_ids if input_ids.ndim == 2 else input_ids[None]
        if ids.shape[0] != 1:
            raise ValueError("qwen3_vl: the engine runs one input at a time")
        image = ids[0] == self.image_token_id
        if not bool(image.any()):
            self._observed = (image, [])
            return
        if inputs_embeds is None:
            raise DeepStackError("qwen3_vl: observe(input_ids, inputs_embeds): an input with an image needs its "
                                 "embeddings to find its DeepStack features")
        key = self._key(ids, inputs_embeds)
        if key not in self._features:
            raise DeepStackError("qwen3_vl: no DeepStack features for this input's image: embed it first "
                                 "(engine.prepare / adapter.embed); without them the image would enter once, not four times")
        self._observed = (image, self._features[key])

    @contextlib.contextmanager
    def ablating(self, rows: Sequence[torch.Tensor]) -> Iterator[None]:
        """Inside the block, each row's positions (`rows`: one tensor per batch row, or one for all) get
        no DeepStack feature: a token ablation removes the image from every place it enters."""
        previous, self._ablated = self._ablated, [torch.as_tensor(r, dtype=torch.long).reshape(-1) for r in rows]
        try:
            yield
        finally:
            self._ablated = previous

    def language_model_extras(self, inputs_embeds: torch.Tensor, past_key_values) -> dict:
        """DeepStack: each image token of the call (not ablated) gets its features. `visual_pos_masks`
        (B, Q) and per layer the features of those tokens, or {} when none."""
        if self._observed is None:
            raise DeepStackError("qwen3_vl: language_model_forward before any input was observed (adapter.observe)")
        image, features = self._observed
        batch, queries = inputs_embeds.shape[:2]
        past = 0 if past_key_values is None else int(past_key_values.get_seq_length())
        in_call = torch.zeros(queries, dtype=torch.bool)
        inside = image[past: past + queries].cpu()
        in_call[: len(inside)] = inside
        if not bool(in_call.any()):
            return {}
        feature_of_slot = (torch.cumsum(image.cpu().long(), 0) - 1)[past: past + queries]
        masks = in_call.expand(batch, -1).clone()
        if self._ablated is not None:
            if len(self._ablated) not in (1, batch):
                raise ValueError(f"ablations given for {len(self._ablated)} rows but the batch has {batch}")
            for row in range(batch):
                ablated = self._ablated[row if len(self._ablated) > 1 else 0] - past
                masks[row, ablated[(ablated >= 0) & (ablated < queries)]] = False
        index = torch.cat([feature_of_slot[: len(inside)][masks[row, : len(inside)]] for row in range(batch)])
        device = inputs_embeds.device
        return {"visual_pos_masks": masks.to(device),
                "deepstack_visual_embeds": [f[index.to(f.device)].to(device) for f in features]}


class ImageOnlyQwen3VLProcessor(ImageOnlyProcessorMixin, Qwen3VLProcessor):
    """`Qwen3VLProcessor` that may be built without a video processor (images only)."""
