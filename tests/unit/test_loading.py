"""load_model: local directories round-trip; missing weights give a short, actionable error."""
from __future__ import annotations

import pytest
import torch

from vlminterp.models.loading import ModelSpec, WeightsNotAvailableError, load_model
from vlminterp.models.synthetic import (
    SYNTHETIC_VARIANTS,
    build_synthetic,
    llava_1_5_7b_config,
    synthetic_config,
)


def test_local_directory_round_trip(tmp_path, make_inputs):
    model, processor = build_synthetic("tiny-gqa")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_model(ModelSpec(str(tmp_path), attn_implementation="eager"))
    assert loaded.config.text_config._attn_implementation == "eager"
    assert not loaded.training
    from vlminterp.models.adapters import adapter_for

    inputs = make_inputs(loaded_processor, adapter_for(loaded, loaded_processor))
    with torch.no_grad():
        expected = model(**inputs).logits
        got = loaded(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_dtype_is_applied(tmp_path):
    model, processor = build_synthetic("tiny-llama")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, _ = load_model(ModelSpec(str(tmp_path), dtype="bf16"))
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_missing_hub_weights_raise_a_plain_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = ModelSpec("llava-hf/llava-1.5-7b-hf", revision="0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(WeightsNotAvailableError) as info:
        load_model(spec)
    message = str(info.value)
    assert "llava-hf/llava-1.5-7b-hf" in message
    assert "huggingface-cli download llava-hf/llava-1.5-7b-hf --revision 0123456789abcdef" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback wall


def test_bad_spec_values_are_rejected():
    with pytest.raises(ValueError, match="dtype"):
        ModelSpec("x", dtype="fp8")
    with pytest.raises(ValueError, match="device"):
        ModelSpec("x", device="tpu")


@pytest.mark.parametrize("variant", sorted(SYNTHETIC_VARIANTS))
def test_synthetic_variants_have_the_requested_geometry(variant):
    config = synthetic_config(variant)
    spec = SYNTHETIC_VARIANTS[variant]
    assert config.image_seq_length == spec.grid_side**2
    assert config.text_config.num_key_value_heads == spec.num_kv_heads


def test_llava_1_5_7b_sizes_on_meta_device():
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_1_5_7b_config())
    n_params = sum(p.numel() for p in model.parameters())
    assert 7.0e9 < n_params < 7.1e9  # LLaVA-1.5-7B: 7.06 B parameters
    assert model.config.image_seq_length == 576


@pytest.mark.parametrize("variant", ["tiny-internvl", "tiny-qwen2-vl"])
def test_family_round_trip_without_torchvision(variant, tmp_path, make_inputs):
    """load_model picks the family's class and processor; where transformers' video processors need
    torchvision (not installed here), an image-only processor is built from the checkpoint's parts."""
    from vlminterp.models.adapters import adapter_for
    from vlminterp.models.synthetic import save_synthetic

    model, processor = build_synthetic(variant)
    save_synthetic(model, processor, tmp_path)
    loaded, loaded_processor = load_model(ModelSpec(str(tmp_path)))
    assert type(loaded) is type(model)
    adapter = adapter_for(loaded, loaded_processor)
    inputs = make_inputs(loaded_processor, adapter)
    assert torch.equal(inputs["input_ids"], make_inputs(processor, adapter_for(model, processor))["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)
