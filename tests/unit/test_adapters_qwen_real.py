"""Qwen2.5-VL and Qwen3-VL (tiny random weights from the real configs, the real processors, real COCO
images): image tokens, M-RoPE positions and cells against the processor's own outputs; the vision
tower's windows; the silent 1-D-position trap; Qwen3-VL's DeepStack (an ablation must remove it too).
Every engine operation against the naive reference is docs/COMPATIBILITY.md's rows
(tests/unit/test_compatibility.py)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from shared_fixtures import COCO_MINI, QWEN2_5_VL_PROCESSOR, QWEN3_VL_PROCESSOR, require

from vlminterp.interventions import Ablation, InterventionEngine, reference_generate, reference_logits
from vlminterp.interventions.ablation import apply_ablations
from vlminterp.models.adapters import Qwen2_5_VLAdapter, Qwen3VLAdapter, adapter_for
from vlminterp.models.adapters.qwen3_vl import DeepStackError
from vlminterp.testing.compatibility import SHRUNK_IMAGE_SIDE
from vlminterp.testing.tiny_qwen import build_tiny_qwen

FOLDERS = {"qwen2_5_vl": QWEN2_5_VL_PROCESSOR, "qwen3_vl": QWEN3_VL_PROCESSOR}
ADAPTERS = {"qwen2_5_vl": Qwen2_5_VLAdapter, "qwen3_vl": Qwen3VLAdapter}
IMAGES = ["val2017/000000000139.jpg", "val2017/000000000802.jpg"]  # 640 x 426 and 424 x 640
FAMILIES = list(FOLDERS)


@lru_cache(maxsize=None)
def _processor(family: str):
    return ADAPTERS[family].load_processor(str(FOLDERS[family]))


@lru_cache(maxsize=None)
def _model(family: str, **vision_sizes):
    model, processor = build_tiny_qwen(FOLDERS[family], processor=_processor(family), **vision_sizes)
    return model, adapter_for(model, processor)


def _image(name: str = IMAGES[0], side: int | None = None) -> Image.Image:
    image = Image.open(require(COCO_MINI / name)).convert("RGB")
    if side is not None:
        image.thumbnail((side, side))
    return image


def _encode(family: str, image: Image.Image, text: str = "What is in this image?"):
    _, adapter = _model(family)
    return _processor(family)(text=adapter.format_prompt(text), images=image, return_tensors="pt")


@pytest.fixture(params=FAMILIES)
def family(request):
    require(FOLDERS[request.param])
    return request.param


@pytest.mark.parametrize("name", IMAGES)
def test_image_tokens_positions_and_cells_match_the_processor(family, name):
    """Counts, positions, M-RoPE ids and cells from the processor's own image_grid_thw, merge size and
    token-type mask; object cells of a real COCO mask (pycocotools) bounded by its pixels."""
    from pycocotools.coco import COCO

    from vlminterp.geometry.objects import object_tokens

    model, adapter = _model(family)
    image = _image(name)
    encoding = _encode(family, image)
    ids, tokenizer = encoding["input_ids"], _processor(family).tokenizer
    t, h, w = encoding["image_grid_thw"][0].tolist()
    merge = _processor(family).image_processor.merge_size
    rows, cols = h // merge, w // merge
    from_types = torch.nonzero(encoding["mm_token_type_ids"][0] == 1).flatten()
    (positions,) = adapter.image_positions(ids)
    assert positions.tolist() == from_types.tolist() and len(positions) == t * rows * cols
    assert encoding["pixel_values"].shape[0] == t * h * w  # one row per patch
    start, end = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    first = int(positions[0])
    assert int(ids[0, first - 1]) == start and int(ids[0, positions[-1] + 1]) == end
    assert positions.tolist() == list(range(first, first + len(positions)))
    patch = _processor(family).image_processor.patch_size
    assert adapter.resized_size(image.size) == (w * patch, h * patch)
    # M-RoPE: text 0..s-1, token k = (s, s + k // cols, s + k % cols), text after from s + max(rows, cols)
    rope = adapter.rope_positions(ids, image_grid_thw=encoding["image_grid_thw"])
    k = torch.arange(rows * cols)
    after = torch.arange(ids.shape[1] - first - len(k)) + first + max(rows, cols)
    expected = torch.cat([torch.arange(first).expand(3, -1),
                          torch.stack([torch.full_like(k, first), first + k // cols, first + k % cols]),
                          after.expand(3, -1)], 1)
    assert torch.equal(rope.ids[:, 0], expected) and rope.delta == int(expected.max()) + 1 - ids.shape[1]
    width, height = image.size
    r, c = (k // cols).numpy(), (k % cols).numpy()
    boxes = np.stack([c * width / cols, r * height / rows, (c + 1) * width / cols, (r + 1) * height / rows], 1)
    np.testing.assert_allclose(adapter.cell_boxes(image.size).astype(float), boxes, atol=1e-9)
    coco = COCO(str(COCO_MINI / "annotations" / "instances_val2017.json"))
    image_id = int(name.split("/")[-1].split(".")[0])
    annotation = max(coco.imgToAnns[image_id], key=lambda a: a["area"])
    mask = coco.annToMask(annotation).astype(bool)
    selected, _ = object_tokens(adapter, mask)
    ys, xs = np.nonzero(mask)
    centres = np.zeros((rows, cols), bool)  # the token holding each mask pixel's centre holds the object
    centres[((ys + 0.5) * rows / height).astype(int), ((xs + 0.5) * cols / width).astype(int)] = True
    touched = np.zeros((rows, cols), bool)  # and only tokens touching some mask pixel do
    for y, x in zip(ys, xs):
        touched[int(y * rows / height): int(np.ceil((y + 1) * rows / height)),
                int(x * cols / width): int(np.ceil((x + 1) * cols / width))] = True
    grid = selected.reshape(rows, cols)
    assert (grid >= centres).all() and (grid <= touched).all() and centres.sum() > 0


def test_the_prompt_is_the_real_chat_template(family):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    _, adapter = _model(family)
    assert adapter.format_prompt("Describe it.") == _processor(family).apply_chat_template(
        messages, add_generation_prompt=True)


def test_qwen2_5_vision_windows_keep_the_token_order():
    """Every vision layer windowed (112 px = 4 x 4 tokens, from the top-left): changing one token's
    patches changes exactly the tokens of its window, in the processor's order, edge windows included."""
    require(QWEN2_5_VL_PROCESSOR)
    model, adapter = _model("qwen2_5_vl", fullatt_block_indexes=())
    assert adapter.family == "qwen2_5_vl"
    encoding = _encode("qwen2_5_vl", _image(side=400))  # 392 x 280 px: 14 x 10 tokens
    _, h, w = encoding["image_grid_thw"][0].tolist()
    rows, cols = h // 2, w // 2
    window = model.config.vision_config.window_size // model.config.vision_config.patch_size // 2
    assert window == 4 and rows % window and cols % window  # partial windows at the right and bottom

    def features(pixels):
        with torch.no_grad():
            return adapter.image_features(pixels, encoding["image_grid_thw"])[0]

    clean = features(encoding["pixel_values"])
    for token in (0, rows * cols - 1, (rows // 2) * cols + cols // 2):
        pixels = encoding["pixel_values"].clone()
        pixels[4 * token: 4 * token + 4] += 1.0  # the token's 2 x 2 patches (processor order)
        changed = ((features(pixels) - clean).abs().amax(1) > 1e-6).reshape(rows, cols)
        r, c = divmod(token, cols)
        expected = torch.zeros(rows, cols, dtype=torch.bool)
        expected[r // window * window: (r // window + 1) * window, c // window * window: (c // window + 1) * window] = True
        assert torch.equal(changed, expected), token


def test_positions_trap_inputs_embeds_or_no_token_types_fall_back_to_1d(family):
    """The model's own forward (the processor's outputs) = adapter.model_inputs = the engine; without
    mm_token_type_ids (Qwen2.5-VL; Qwen3-VL raises, but token types of zeros pass), or on inputs_embeds
    without position ids, transformers silently runs 1-D positions (and Qwen3-VL drops DeepStack on
    inputs_embeds even with the right positions)."""
    model, adapter = _model(family)
    encoding = _encode(family, _image(side=SHRUNK_IMAGE_SIDE))
    ids, image_inputs = encoding["input_ids"], adapter.image_inputs(encoding)
    with torch.no_grad():
        own = model(**encoding).logits[0]
        assert torch.equal(model(**adapter.model_inputs(ids, **image_inputs)).logits[0], own)
        if family == "qwen3_vl":  # Qwen3-VL refuses this one loudly
            with pytest.raises(ValueError, match="mm_token_type_ids"):
                model(input_ids=ids, **image_inputs)
            untyped = model(input_ids=ids, **image_inputs, mm_token_type_ids=torch.zeros_like(ids)).logits[0]
        else:
            untyped = model(input_ids=ids, **image_inputs).logits[0]
        embeds = adapter.embed(ids, **image_inputs)
        model.model.rope_deltas = None
        unplaced = model(inputs_embeds=embeds).logits[0]
        rope = adapter.rope_positions(ids, **image_inputs)
        placed = model(inputs_embeds=embeds, position_ids=rope.ids).logits[0]
    assert (untyped - own).abs().max() > 1e-3 and (unplaced - own).abs().max() > 1e-3
    if family == "qwen3_vl":
        assert (placed - own).abs().max() > 1e-3, "DeepStack is only added on pixel_values"
    else:
        assert (placed - own).abs().max() < 1e-4
    engine = InterventionEngine(model, adapter)
    got = engine.logits(engine.prepare(ids, **image_inputs), [None], positions=None)[0]
    assert (got - own).abs().max() < 1e-4


def _embedding_only(adapter, rows):
    """A token ablation that replaces the input embeddings and nothing else (what a LLaVA-style
    toolkit does): a pre-hook on the text model, DeepStack arguments left as they are."""
    def pre_hook(module, args, kwargs):
        cache = kwargs.get("past_key_values")
        if kwargs.get("inputs_embeds") is None or (cache is not None and cache.get_seq_length()):
            return None
        return args, {**kwargs, "inputs_embeds": apply_ablations(kwargs["inputs_embeds"], rows)}

    return adapter.language_model.register_forward_pre_hook(pre_hook, with_kwargs=True)


def test_qwen3_deepstack_ablation_removes_the_image():
    """Ablating every image token (zeros) leaves logits that no longer depend on the image (two images
    of one size), in the engine and the reference; an ablation of the input embedding alone does not
    (DeepStack re-adds the image after the first layers). A partial ablation: engine = reference."""
    require(QWEN3_VL_PROCESSOR)
    model, adapter = _model("qwen3_vl")
    image = _image(side=SHRUNK_IMAGE_SIDE)
    encodings = [_encode("qwen3_vl", im) for im in (image, ImageOps.mirror(image))]
    ids = encodings[0]["input_ids"]
    assert torch.equal(ids, encodings[1]["input_ids"])
    (positions,) = adapter.image_positions(ids)
    engine = InterventionEngine(model, adapter)
    full, half = Ablation(positions), Ablation(positions[: len(positions) // 2], torch.randn(adapter.hidden_size))
    last = [ids.shape[1] - 1]
    engine_full, reference_full, embedding_only, engine_half, reference_half = [], [], [], [], []
    for encoding in encodings:
        image_inputs = adapter.image_inputs(encoding)
        pixels, grid = image_inputs["pixel_values"], {"image_grid_thw": image_inputs["image_grid_thw"]}
        prepared = engine.prepare(ids, **image_inputs)
        engine_full.append(engine.logits(prepared, [full], positions=last)[0, 0])
        engine_half.append(engine.logits(prepared, [half], positions=last)[0, 0])
        reference_full.append(reference_logits(model, adapter, ids, pixels, full, **grid)[-1])
        reference_half.append(reference_logits(model, adapter, ids, pixels, half, **grid)[-1])
        handle = _embedding_only(adapter, [[full]])
        try:
            embedding_only.append(reference_logits(model, adapter, ids, pixels, None, **grid)[-1])
        finally:
            handle.remove()
    assert (reference_full[0] - reference_full[1]).abs().max() < 1e-5
    assert (engine_full[0] - engine_full[1]).abs().max() < 1e-5
    assert (engine_full[0] - reference_full[0]).abs().max() < 1e-4
    assert (embedding_only[0] - embedding_only[1]).abs().max() > 1e-3, "the trap: the image stays in"
    for got, want in zip(engine_half, reference_half):
        assert (got - want).abs().max() < 1e-4
    assert (engine_half[0] - engine_half[1]).abs().max() > 1e-3, "half the image still matters"


def test_qwen3_text_after_a_kept_cache_gets_no_deepstack():
    """Keep the positions before the image and continue right after them (Kaduri's top-k-only cache):
    the question's first token sits at the image's first slot and M-RoPE position, yet it is text. The
    answer equals generating after the text-only prefix + question (no image anywhere)."""
    require(QWEN3_VL_PROCESSOR)
    model, adapter = _model("qwen3_vl")
    encoding = _encode("qwen3_vl", _image(side=SHRUNK_IMAGE_SIDE))
    ids = encoding["input_ids"]
    first = int(adapter.image_positions(ids)[0][0])
    question = ids[:, -1:]
    engine = InterventionEngine(model, adapter)
    kept = engine.kept_caches(engine.prepare(ids, **adapter.image_inputs(encoding)),
                              {"before": list(range(first))}, continue_after_kept=["before"])
    got = engine.continue_cache(kept["before"], [question], max_new_tokens=4, eos_token_id=[])
    want = reference_generate(model, adapter, torch.cat([ids[:, :first], question], 1), None, None,
                              max_new_tokens=4, eos_token_id=[])
    assert got == [want]


def test_qwen3_an_input_never_embedded_is_refused():
    """The DeepStack features are found by the input's tokens AND image embeddings: another image of the
    same size (the same tokens) is refused by name, never run with the wrong image's features."""
    require(QWEN3_VL_PROCESSOR)
    _, adapter = _model("qwen3_vl")
    encoding = _encode("qwen3_vl", _image(IMAGES[1], side=SHRUNK_IMAGE_SIDE))
    ids, image_inputs = encoding["input_ids"], adapter.image_inputs(encoding)
    with torch.no_grad():
        embeds = adapter.embed(ids, **image_inputs)
        adapter.observe(ids, embeds)
        other = embeds.clone()
        other[ids == adapter.image_token_id] = 0.5  # another image of this size: same tokens, other features
    with pytest.raises(DeepStackError, match="qwen3_vl: no DeepStack features"):
        adapter.observe(ids, other)
    with pytest.raises(DeepStackError, match="qwen3_vl: observe.*needs its embeddings"):
        adapter.observe(ids)


@pytest.mark.slow
def test_a_saved_random_checkpoint_loads_as_the_pipeline_loads_models(tmp_path):
    """`save_random_checkpoint` (the rehearsal's and the GPU smoke run's checkpoints) writes the
    image-only processor part by part; `load_model` reads back the family and the same processor
    (Qwen2.5-VL; Qwen3-VL's processor is saved by the same code. Slow: the saved 11 MB tokenizer.json
    takes seconds to load)."""
    family = "qwen2_5_vl"
    require(FOLDERS[family])
    from vlminterp.models.loading import ModelSpec, load_model
    from vlminterp.testing.synthetic import save_random_checkpoint
    from vlminterp.testing.tiny_qwen import tiny_qwen_config

    save_random_checkpoint(tiny_qwen_config(FOLDERS[family]), _processor(family), tmp_path, dtype=torch.float32)
    model, processor = load_model(ModelSpec(str(tmp_path)))
    adapter = adapter_for(model, processor)
    assert adapter.family == family and adapter.factor == _model(family)[1].factor
    image = _image(IMAGES[1], side=SHRUNK_IMAGE_SIDE)
    got = processor(text=adapter.format_prompt("Hi."), images=image, return_tensors="pt")
    want = _encode(family, image, "Hi.")
    for key in ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(got[key], want[key]), key
