"""Random-weight VLMs (LLaVA, InternVL, Qwen2-VL) built from configs, for tests and CPU benchmarks
(no downloads).

    from vlminterp.testing.synthetic import build_synthetic, SYNTHETIC_VARIANTS
    model, processor = build_synthetic("tiny-llama")        # 4x4 grid, Llama MHA text model
    model, processor = build_synthetic("tiny-gqa", attn_implementation="eager")
    model, processor = build_synthetic("real-geometry")     # 336px / patch 14 = 576 tokens, small width
    config = llava_1_5_7b_config()                          # published LLaVA-1.5-7B sizes (GPU benchmark)
    config = llava_1_5_config(text_layers=4, text_hidden=64, ...)  # LLaVA-1.5's layout, any size
    processor = llava_1_5_processor("tokenizer.model")      # LLaVA-1.5's tokenizer from Llama 2's SentencePiece model
    save_random_checkpoint(config, processor, "ckpt", dtype=torch.bfloat16, device="cuda")   # fast, any size
    model, processor = build_synthetic("tiny-internvl")     # InternVL: 32 px tiles (<= 4 + thumbnail), 4x4 tokens each
    model, processor = build_synthetic("tiny-qwen2-vl")     # Qwen2-VL: dynamic grid, 8 px per token, M-RoPE

Every variant comes with its family's real processor (LLaVA: CLIP PIL image processor; InternVL:
GOT-OCR2 PIL tiling processor; Qwen2-VL: its PIL smart-resize processor) and a small byte-level BPE
tokenizer trained on a fixed corpus, so the whole text/image pipeline is exercised exactly as with
a hub checkpoint. InternVL and Qwen2-VL get a ChatML tokenizer with their special tokens; their
processors are built without a video processor (those need torchvision). Weights are seeded: the
same variant and seed give the same model. `SYNTHETIC_VARIANTS` holds the LLaVA variants;
`INTERNVL_VARIANTS` and `QWEN2_VL_VARIANTS` the others; `build_synthetic` takes any of their names.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    MistralConfig,
    Phi3Config,
    PreTrainedConfig,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
)
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from vlminterp.models.adapters.internvl import ImageOnlyInternVLProcessor
from vlminterp.models.adapters.prompt import LLAVA_SYSTEM_PROMPT
from vlminterp.models.llava_config import llava_config
from vlminterp.models.adapters.qwen2_vl import ImageOnlyQwen2VLProcessor

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)
# ChatML-family special tokens (InternVL3 / Qwen2-VL spellings), one tokenizer for both families.
INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
QWEN2_VL_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
CHATML_SPECIAL_TOKENS = (
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    *INTERNVL_TOKENS.values(),
    "<|vision_start|>",
    "<|vision_end|>",
    *QWEN2_VL_TOKENS.values(),
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
_CHATML_CORPUS = ["system\nuser\nassistant\n You are a helpful assistant."]


@dataclass(frozen=True)
class SyntheticVariant:
    """Sizes of one random-weight LLaVA variant (text model + CLIP vision tower + projector)."""

    text_model: str = "llama"  # "llama", "phi3" or "mistral"
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
    sliding_window: int | None = None  # Mistral only: keys a query sees (itself included); None = all

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
    # Mistral text model whose 8-token sliding window is far shorter than any prompt (~30 tokens).
    "tiny-mistral-window": SyntheticVariant(text_model="mistral", sliding_window=8),
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


@lru_cache(maxsize=4)
def _tokenizer_json(special_tokens: tuple[str, ...] = SPECIAL_TOKENS, extra_corpus: tuple[str, ...] = ()) -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS + list(extra_corpus), trainer=trainer)
    return tok.to_str()


def _tokenizer(tokenizer_json: str, *, add_bos: bool, **tokens) -> TokenizersBackend:
    tokenizer = TokenizersBackend(tokenizer_object=Tokenizer.from_str(tokenizer_json), unk_token="<unk>", **tokens)
    tokenizer.add_bos_token = add_bos
    return tokenizer


def build_tokenizer() -> TokenizersBackend:
    """A small deterministic byte-level BPE tokenizer with `<s>`, `</s>`, `<pad>` and `<image>`."""
    return _tokenizer(_tokenizer_json(), add_bos=True, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                      extra_special_tokens={"image_token": IMAGE_TOKEN})


def build_chatml_tokenizer() -> TokenizersBackend:
    """A small deterministic ChatML tokenizer (`<|im_start|>`, `<|im_end|>` = EOS, `<|endoftext|>` = pad)
    with InternVL's (`<img>`, `</img>`, `<IMG_CONTEXT>`) and Qwen2-VL's (`<|vision_start|>`,
    `<|image_pad|>`, ...) special tokens; no BOS, as in Qwen tokenizers."""
    return _tokenizer(_tokenizer_json(CHATML_SPECIAL_TOKENS, tuple(_CHATML_CORPUS)), add_bos=False,
                      eos_token="<|im_end|>", pad_token="<|endoftext|>",
                      extra_special_tokens={**INTERNVL_TOKENS, **QWEN2_VL_TOKENS})


def build_processor(variant) -> LlavaProcessor:
    """The variant's processing pipeline. LLaVA: resize short side, centre crop (HF LLaVA-1.5)."""
    if isinstance(variant, str):
        variant = _variant(variant)
    if isinstance(variant, InternVLVariant):
        return build_internvl_processor(variant)
    if isinstance(variant, Qwen2VLVariant):
        return build_qwen2_vl_processor(variant)
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


def text_model_config(config_class: type[PreTrainedConfig], variant, vocab: dict[str, int], *, pad: str, bos: str,
                      eos: str, **extra) -> PreTrainedConfig:
    """The text model's config of any family's variant: its sizes (hidden, intermediate, layers, heads,
    key/value heads, positions, initializer range), the vocabulary's size and the ids of the `pad`,
    `bos` and `eos` tokens; `extra`: the family's own settings (norm epsilon, RoPE, ...)."""
    return config_class(
        vocab_size=len(vocab),
        hidden_size=variant.hidden_size,
        intermediate_size=variant.intermediate_size,
        num_hidden_layers=variant.num_layers,
        num_attention_heads=variant.num_heads,
        num_key_value_heads=variant.num_kv_heads,
        max_position_embeddings=variant.max_position_embeddings,
        initializer_range=variant.initializer_range,
        pad_token_id=vocab[pad],
        bos_token_id=vocab[bos],
        eos_token_id=vocab[eos],
        **extra,
    )


def _llava_text_config(variant: SyntheticVariant, vocab: dict[str, int]) -> PreTrainedConfig:
    tokens = dict(pad="<pad>", bos="<s>", eos="</s>", tie_word_embeddings=False, rms_norm_eps=1e-5)
    if variant.text_model == "llama":
        return text_model_config(LlamaConfig, variant, vocab, **tokens)
    if variant.text_model == "phi3":
        # xtuner/llava-phi-3-mini-hf uses a 2047-token sliding window, longer than any prompt here.
        return text_model_config(Phi3Config, variant, vocab, **tokens, sliding_window=2047,
                                 original_max_position_embeddings=4096)
    if variant.text_model == "mistral":
        return text_model_config(MistralConfig, variant, vocab, **tokens, sliding_window=variant.sliding_window)
    raise ValueError(f"unknown text_model {variant.text_model!r}; expected 'llama', 'phi3' or 'mistral'")


def synthetic_config(variant, tokenizer=None) -> PreTrainedConfig:
    """The config of a synthetic variant: LlavaConfig, InternVLConfig or Qwen2VLConfig according to
    the variant's family. Its vocabulary is the synthetic tokenizer's, or for a LLaVA variant that of
    `tokenizer` (any tokenizer with `<s>`, `</s>`, `<pad>` and `<image>`, e.g. the organism's)."""
    if isinstance(variant, str):
        variant = _variant(variant)
    if isinstance(variant, InternVLVariant):
        return internvl_config(variant)
    if isinstance(variant, Qwen2VLVariant):
        return qwen2_vl_config(variant)
    vocab = (tokenizer or build_tokenizer()).get_vocab()
    return llava_config(
        _llava_text_config(variant, vocab),
        image_size=variant.image_size,
        patch_size=variant.patch_size,
        vision_hidden_size=variant.vision_hidden_size,
        vision_intermediate_size=variant.vision_intermediate_size,
        vision_layers=variant.vision_layers,
        vision_heads=variant.vision_heads,
        vision_initializer_range=variant.initializer_range,
        image_token_id=vocab[IMAGE_TOKEN],
        pad_token_id=vocab["<pad>"],
    )


def build_model_from_config(
    config: PreTrainedConfig,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
):
    """Instantiate a model (class from the adapter registry) with seeded random weights on `device` in `dtype`."""
    from vlminterp.models.adapters import adapter_class_for_config

    model_class = adapter_class_for_config(config).model_class()
    torch.manual_seed(seed)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class._from_config(config, attn_implementation=attn_implementation)
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
):
    """A random-weight model and its processor for a named (or explicit) variant of any family."""
    if isinstance(variant, str):
        variant = _variant(variant)
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


def llava_1_5_config(*, text_layers: int = 32, text_hidden: int = 4096, text_intermediate: int = 11008,
                     text_heads: int = 32, vision_layers: int = 24, vision_hidden: int = 1024,
                     vision_intermediate: int = 4096, vision_heads: int = 16) -> LlavaConfig:
    """LLaVA-1.5's layout (32064-token vocabulary, `<image>` = 32000, `<pad>` = 32001, CLIP 336 px
    with 14 px patches = 576 image tokens, penultimate vision layer, GELU projector) at any width
    and depth; the defaults are LLaVA-1.5-7B's sizes (`llava_1_5_7b_config`)."""
    config = llava_1_5_7b_config()
    text, vision = config.text_config, config.vision_config
    text.num_hidden_layers, text.hidden_size, text.intermediate_size = text_layers, text_hidden, text_intermediate
    text.num_attention_heads = text.num_key_value_heads = text_heads
    vision.num_hidden_layers, vision.hidden_size, vision.intermediate_size = vision_layers, vision_hidden, vision_intermediate
    vision.num_attention_heads = vision_heads
    return config


def llava_1_5_processor(sentencepiece_model) -> LlavaProcessor:
    """LLaVA-1.5's processor built from the Llama 2 SentencePiece model its tokenizer extends, as
    `llava-hf/llava-1.5-7b-hf` has it: BOS added, `<image>` = 32000 and `<pad>` = 32001 appended,
    SentencePiece's prefix space on every text segment (legacy), so the text after `<image>` starts
    with a `▁` token as in llava-hf's and the original LLaVA's tokenization; a CLIP image processor that resizes the short side to 336 and
    centre-crops 336 x 336 (CLIP's mean and std), 14 px patches: 576 image tokens. The conversion
    from the SentencePiece model needs the `sentencepiece` and `protobuf` packages."""
    import shutil
    import tempfile
    from pathlib import Path

    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as directory:
        shutil.copy(sentencepiece_model, Path(directory, "tokenizer.model"))
        tokenizer = LlamaTokenizer.from_pretrained(directory, legacy=True, add_bos_token=True,
                                                   add_eos_token=False)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.image_token = IMAGE_TOKEN
    if tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, "<pad>"]) != [32000, 32001]:
        raise ValueError(f"{sentencepiece_model} is not the 32000-piece Llama 2 model LLaVA-1.5 extends")
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def build_on_meta(config: PreTrainedConfig, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """The model of `config` (class from the adapter registry) on the meta device: shapes and
    parameter counts without allocating or initialising any weight (instant, even for 7B)."""
    from vlminterp.models.adapters import adapter_class_for_config

    model_class = adapter_class_for_config(config).model_class()
    with torch.device("meta"):
        return model_class._from_config(config, attn_implementation=attn_implementation)


def save_random_checkpoint(config: PreTrainedConfig, processor, directory, *, dtype: torch.dtype = torch.bfloat16,
                           device: str | torch.device = "cpu", seed: int = 0, std: float | None = None) -> dict:
    """Write a random-weight checkpoint (`save_pretrained` model + processor) that
    `load_model(ModelSpec(directory))` loads, fast at any size; returns {"parameters", "seconds"}.

    The model is built on the meta device (no memory, no initialisation), materialised uninitialised
    with `to_empty` on `device` in `dtype`, and every parameter is filled once from a seeded generator
    on that device: norms 1, biases 0, everything else N(0, std) (std: the text config's
    initializer_range). On a GPU that takes well under a second for LLaVA-1.5-7B, where transformers'
    own per-module initialisation on the CPU takes minutes. Only parameters are saved: the model's
    non-persistent buffers (rotary frequencies, position ids) are recomputed by `from_pretrained`;
    the function checks there is no persistent buffer that would be saved uninitialised."""
    import time
    from pathlib import Path

    started = time.perf_counter()
    model = build_on_meta(config).to(dtype)  # still meta: to_empty then allocates dtype directly
    count = sum(p.numel() for p in model.parameters())
    parameter_names = {name for name, _ in model.named_parameters()}
    unsaved = [name for name in model.state_dict() if name not in parameter_names]
    if unsaved:
        raise ValueError(f"persistent buffers would be saved uninitialised: {unsaved[:5]}")
    model = model.to_empty(device=device)
    std = std if std is not None else getattr(config.get_text_config(), "initializer_range", 0.02)
    generator = torch.Generator(device=device).manual_seed(seed)
    norms = {f"{prefix}.{name}" if prefix else name
             for prefix, module in model.named_modules()
             if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
             for name, _ in module.named_parameters(recurse=False)}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in norms:
                parameter.fill_(0.0 if name.endswith("bias") else 1.0)
            elif name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.normal_(0.0, std, generator=generator)
    model.config.dtype = dtype
    Path(directory).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    save_processor(processor, directory)
    del model
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return {"parameters": count, "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------------
# InternVL and Qwen2-VL
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InternVLVariant:
    """Sizes of a random-weight InternVL (InternViT tiles -> pixel shuffle -> MLP -> Qwen2 LM)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    tile_size: int = 32  # InternVL: 448
    patch_size: int = 4  # InternVL: 14
    downsample_ratio: float = 0.5
    min_tiles: int = 1
    max_tiles: int = 4  # InternVL3 processor: 12
    initializer_range: float = 0.1
    max_position_embeddings: int = 4096
    sliding_window: int | None = None  # Mistral only: keys a query sees (itself included); None = all

    @property
    def tokens_per_tile(self) -> int:
        return int(self.tile_size // self.patch_size * self.downsample_ratio) ** 2


@dataclass(frozen=True)
class Qwen2VLVariant:
    """Sizes of a random-weight Qwen2-VL (ViT with 2x2 merger, M-RoPE Qwen2 LM)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2 (Qwen2-VL-7B: 16, 24, 24)
    rope_theta: float = 10000.0  # small, so that position errors show in the logits
    vision_embed_dim: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    patch_size: int = 4  # Qwen2-VL: 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 8 * 8 * 4  # Qwen2-VL: 56 * 56
    max_pixels: int = 8 * 8 * 64  # Qwen2-VL: 28 * 28 * 1280
    initializer_range: float = 0.1
    max_position_embeddings: int = 4096
    sliding_window: int | None = None  # Mistral only: keys a query sees (itself included); None = all


INTERNVL_VARIANTS: dict[str, InternVLVariant] = {
    # 32 px tiles of 8x8 patches -> 4x4 tokens; up to 4 tiles + a thumbnail (64x48 px -> 2x2 + 1 = 80 tokens).
    "tiny-internvl": InternVLVariant(),
    # InternVL3's geometry (448 px tiles, 14 px patches -> 16x16 = 256 tokens per tile, up to 12 tiles
    # + thumbnail) at CPU width: for geometry checks (the vision tower is slow on CPU at this size).
    "internvl-real-geometry": InternVLVariant(tile_size=448, patch_size=14, max_tiles=12),
}
QWEN2_VL_VARIANTS: dict[str, Qwen2VLVariant] = {
    # 4 px patches, 2x2 merge -> 8 px per token; 64x48 px -> 6x8 = 48 tokens, at most 64.
    "tiny-qwen2-vl": Qwen2VLVariant(),
    # Qwen2-VL's geometry (14 px patches, 28 px per token, 56*56 .. 28*28*1280 pixels) at CPU width.
    "qwen2-vl-real-geometry": Qwen2VLVariant(patch_size=14, min_pixels=56 * 56, max_pixels=28 * 28 * 1280),
}


def _variant(name: str):
    for table in (SYNTHETIC_VARIANTS, INTERNVL_VARIANTS, QWEN2_VL_VARIANTS):
        if name in table:
            return table[name]
    known = sorted([*SYNTHETIC_VARIANTS, *INTERNVL_VARIANTS, *QWEN2_VL_VARIANTS])
    raise KeyError(f"unknown synthetic variant {name!r}; known: {known}")


def build_internvl_processor(variant: InternVLVariant) -> ImageOnlyInternVLProcessor:
    """InternVL's processing at the variant's tile size: dynamic tiles + thumbnail (GOT-OCR2 PIL)."""
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": variant.tile_size, "width": variant.tile_size},
        crop_to_patches=True,
        min_patches=variant.min_tiles,
        max_patches=variant.max_tiles,
    )
    return ImageOnlyInternVLProcessor(
        image_processor=image_processor,
        tokenizer=build_chatml_tokenizer(),
        video_processor=None,
        image_seq_length=variant.tokens_per_tile,
    )


def build_qwen2_vl_processor(variant: Qwen2VLVariant) -> ImageOnlyQwen2VLProcessor:
    """Qwen2-VL's processing at the variant's patch size: smart_resize to multiples of patch * merge."""
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=variant.patch_size,
        merge_size=variant.merge_size,
        temporal_patch_size=variant.temporal_patch_size,
        min_pixels=variant.min_pixels,
        max_pixels=variant.max_pixels,
    )
    return ImageOnlyQwen2VLProcessor(
        image_processor=image_processor, tokenizer=build_chatml_tokenizer(), video_processor=None
    )


def _chatml_ids() -> dict[str, int]:
    return build_chatml_tokenizer().get_vocab()


# Qwen tokenizers: <|endoftext|> is BOS and padding, <|im_end|> ends a turn.
_CHATML_TEXT_TOKENS = dict(pad="<|endoftext|>", bos="<|endoftext|>", eos="<|im_end|>")


def internvl_config(variant: InternVLVariant) -> InternVLConfig:
    vocab = _chatml_ids()
    vision_config = InternVLVisionConfig(
        hidden_size=variant.vision_hidden_size,
        intermediate_size=variant.vision_intermediate_size,
        num_hidden_layers=variant.vision_layers,
        num_attention_heads=variant.vision_heads,
        image_size=variant.tile_size,
        patch_size=variant.patch_size,
        initializer_range=variant.initializer_range,
    )
    return InternVLConfig(
        text_config=text_model_config(Qwen2Config, variant, vocab, **_CHATML_TEXT_TOKENS, rms_norm_eps=1e-6,
                                      tie_word_embeddings=False),
        vision_config=vision_config,
        image_token_id=vocab[INTERNVL_TOKENS["context_image_token"]],
        image_seq_length=variant.tokens_per_tile,
        downsample_ratio=variant.downsample_ratio,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def qwen2_vl_config(variant: Qwen2VLVariant) -> Qwen2VLConfig:
    vocab = _chatml_ids()
    rope = {"rope_type": "default", "rope_theta": variant.rope_theta, "mrope_section": list(variant.mrope_section)}
    vision_config = Qwen2VLVisionConfig(
        depth=variant.vision_layers,
        embed_dim=variant.vision_embed_dim,
        hidden_size=variant.hidden_size,
        num_heads=variant.vision_heads,
        mlp_ratio=2,
        patch_size=variant.patch_size,
        spatial_merge_size=variant.merge_size,
        temporal_patch_size=variant.temporal_patch_size,
        initializer_range=variant.initializer_range,
    )
    return Qwen2VLConfig(
        text_config=text_model_config(Qwen2VLTextConfig, variant, vocab, **_CHATML_TEXT_TOKENS,
                                      rms_norm_eps=1e-6, rope_parameters=rope),
        vision_config=vision_config,
        image_token_id=vocab[QWEN2_VL_TOKENS["image_token"]],
        video_token_id=vocab[QWEN2_VL_TOKENS["video_token"]],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def save_synthetic(model, processor, directory) -> None:
    """Save a synthetic model and its processor so that `load_model(ModelSpec(directory))` loads them.

    Image-only processors (InternVL, Qwen2-VL) cannot `save_pretrained` themselves (no video
    processor); their tokenizer, image processor and processor settings are saved one by one."""
    model.save_pretrained(directory)
    save_processor(processor, directory)


def save_processor(processor, directory) -> None:
    """`processor.save_pretrained`, or, for image-only processors (InternVL, Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL without torchvision: no video processor), its parts one by one."""
    import json
    from pathlib import Path

    if getattr(processor, "video_processor", True) is not None:
        processor.save_pretrained(directory)
        return
    processor.tokenizer.save_pretrained(directory)
    processor.image_processor.save_pretrained(directory)
    transformers_class = next(c for c in type(processor).__mro__ if c.__module__.startswith("transformers."))
    settings = {"processor_class": transformers_class.__name__}
    if hasattr(processor, "image_seq_length"):
        settings["image_seq_length"] = processor.image_seq_length
    Path(directory, "processor_config.json").write_text(json.dumps(settings, indent=2))
