"""Random-weight LLaVA models built from configs, for tests and CPU benchmarks (no downloads).

    from vlminterp.models.synthetic import build_synthetic, SYNTHETIC_VARIANTS
    model, processor = build_synthetic("tiny-llama")        # 4x4 grid, Llama MHA text model
    model, processor = build_synthetic("tiny-gqa", attn_implementation="eager")
    model, processor = build_synthetic("real-geometry")     # 336px / patch 14 = 576 tokens, small width
    config = llava_1_5_7b_config()                          # published LLaVA-1.5-7B sizes (GPU benchmark)

Every variant comes with a real `LlavaProcessor` (CLIP PIL image processor + a small byte-level
BPE tokenizer trained on a fixed corpus), so the whole text/image pipeline is exercised exactly as
with a hub checkpoint. Weights are seeded: the same variant and seed give the same model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Phi3Config,
    PreTrainedConfig,
)
from transformers.tokenization_utils_tokenizers import TokenizersBackend

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)

LLAVA_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)

# A fixed corpus so the tokenizer (and hence every synthetic model) is deterministic. It covers the
# papers' prompts, so the real-geometry variant tokenizes them into a realistic number of tokens.
_CORPUS = [
    LLAVA_SYSTEM_PROMPT,
    "USER: ASSISTANT: describe the image. Describe this image.",
    "Is there a cat in this image? Yes. No. It is a dog. What is in the image?",
    "The image shows a person riding a bicycle on a street next to a car, a bus and a traffic light.",
    "A red apple, a yellow banana and an orange on a wooden table in the kitchen.",
    "person bicycle car motorcycle airplane bus train truck boat bird cat dog horse sheep cow elephant "
    "bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard ball kite bat "
    "glove skateboard surfboard racket bottle glass cup fork knife spoon bowl banana apple sandwich "
    "orange broccoli carrot pizza donut cake chair couch plant bed table toilet tv laptop mouse "
    "remote keyboard phone microwave oven toaster sink refrigerator book clock vase scissors teddy "
    "hair drier toothbrush circle square triangle red green blue yellow left right top bottom",
    "<|user|> <|end|> <|assistant|> <|system|>",
]


@dataclass(frozen=True)
class SyntheticVariant:
    """Sizes of one random-weight LLaVA variant (text model + CLIP vision tower + projector)."""

    text_model: str = "llama"  # "llama" or "phi3"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    image_size: int = 24
    patch_size: int = 6
    initializer_range: float = 0.1  # larger than HF's 0.02 so greedy argmax is never a near-tie
    max_position_embeddings: int = 4096

    @property
    def grid_side(self) -> int:
        return self.image_size // self.patch_size


SYNTHETIC_VARIANTS: dict[str, SyntheticVariant] = {
    # Llama text model, multi-head attention, 4x4 grid.
    "tiny-llama": SyntheticVariant(),
    # Grouped-query attention: 4 query heads share 2 key/value heads.
    "tiny-gqa": SyntheticVariant(num_heads=4, num_kv_heads=2),
    # Odd grid: 35px / patch 7 = 5x5 image tokens.
    "tiny-odd-grid": SyntheticVariant(image_size=35, patch_size=7),
    # Phi-3 text model as in xtuner/llava-phi-3-mini-hf (fused qkv, Phi-3 chat template).
    "tiny-phi3": SyntheticVariant(text_model="phi3", num_heads=4, num_kv_heads=4),
    # LLaVA-1.5 sequence geometry (CLIP 336px / patch 14 = 24x24 = 576 image tokens) at CPU width.
    "real-geometry": SyntheticVariant(
        hidden_size=256,
        intermediate_size=688,
        num_layers=8,
        num_heads=8,
        num_kv_heads=8,
        vision_hidden_size=64,
        vision_intermediate_size=128,
        vision_layers=2,
        vision_heads=2,
        image_size=336,
        patch_size=14,
    ),
}


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return tok.to_str()


def build_tokenizer() -> TokenizersBackend:
    """A small deterministic byte-level BPE tokenizer with `<s>`, `</s>`, `<pad>` and `<image>`."""
    tokenizer = TokenizersBackend(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.add_bos_token = True
    return tokenizer


def build_processor(variant: SyntheticVariant) -> LlavaProcessor:
    """The HF LLaVA-1.5 processing pipeline at the variant's image size: resize short side, centre crop."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": variant.image_size},
        crop_size={"height": variant.image_size, "width": variant.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=variant.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def _text_config(variant: SyntheticVariant, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=variant.hidden_size,
        intermediate_size=variant.intermediate_size,
        num_hidden_layers=variant.num_layers,
        num_attention_heads=variant.num_heads,
        num_key_value_heads=variant.num_kv_heads,
        max_position_embeddings=variant.max_position_embeddings,
        initializer_range=variant.initializer_range,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    if variant.text_model == "llama":
        return LlamaConfig(**common, rms_norm_eps=1e-5)
    if variant.text_model == "phi3":
        # xtuner/llava-phi-3-mini-hf uses a 2047-token sliding window, longer than any prompt here.
        return Phi3Config(**common, rms_norm_eps=1e-5, sliding_window=2047, original_max_position_embeddings=4096)
    raise ValueError(f"unknown text_model {variant.text_model!r}; expected 'llama' or 'phi3'")


def synthetic_config(variant: SyntheticVariant | str) -> LlavaConfig:
    """The `LlavaConfig` of a synthetic variant (vocabulary = the synthetic tokenizer's)."""
    if isinstance(variant, str):
        variant = SYNTHETIC_VARIANTS[variant]
    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    text_config = _text_config(
        variant,
        vocab_size=len(vocab),
        pad_id=vocab["<pad>"],
        bos_id=vocab["<s>"],
        eos_id=vocab["</s>"],
    )
    vision_config = CLIPVisionConfig(
        hidden_size=variant.vision_hidden_size,
        intermediate_size=variant.vision_intermediate_size,
        num_hidden_layers=variant.vision_layers,
        num_attention_heads=variant.vision_heads,
        image_size=variant.image_size,
        patch_size=variant.patch_size,
        projection_dim=variant.vision_hidden_size,
        initializer_range=variant.initializer_range,
    )
    return LlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=vocab[IMAGE_TOKEN],
        image_seq_length=variant.grid_side**2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=vocab["<pad>"],
    )


def build_model_from_config(
    config: PreTrainedConfig,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> LlavaForConditionalGeneration:
    """Instantiate a LLaVA model with seeded random weights directly on `device` in `dtype`."""
    torch.manual_seed(seed)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration._from_config(config, attn_implementation=attn_implementation)
    finally:
        torch.set_default_dtype(previous_dtype)
    return model.eval()


def build_synthetic(
    variant: SyntheticVariant | str = "tiny-llama",
    *,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random-weight LLaVA model and its processor for a named (or explicit) variant."""
    if isinstance(variant, str):
        if variant not in SYNTHETIC_VARIANTS:
            raise KeyError(f"unknown synthetic variant {variant!r}; known: {sorted(SYNTHETIC_VARIANTS)}")
        variant = SYNTHETIC_VARIANTS[variant]
    model = build_model_from_config(
        synthetic_config(variant), seed=seed, dtype=dtype, device=device, attn_implementation=attn_implementation
    )
    return model, build_processor(variant)


def with_sizes(variant: str, **sizes) -> SyntheticVariant:
    """A named variant with some sizes changed, e.g. `with_sizes("real-geometry", num_layers=2)`."""
    return replace(SYNTHETIC_VARIANTS[variant], **sizes)


def llava_1_5_7b_config() -> LlavaConfig:
    """LLaVA-1.5-7B's published sizes (llava-hf/llava-1.5-7b-hf config.json), for random-weight GPU runs."""
    text_config = LlamaConfig(
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=32001,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    return LlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=32000,
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=32001,
    )
