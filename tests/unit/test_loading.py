"""load_model: local directories round-trip; missing weights give a short, actionable error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlminterp.models.loading import ModelSpec, WeightsNotAvailableError, check_model_files, load_model
from vlminterp.testing.synthetic import (
    SYNTHETIC_VARIANTS,
    build_synthetic,
    llava_1_5_7b_config,
    save_synthetic,
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
    assert "`hf download llava-hf/llava-1.5-7b-hf --revision 0123456789abcdef" in message
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)  # no chained traceback wall


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
    from vlminterp.testing.synthetic import save_synthetic

    model, processor = build_synthetic(variant)
    save_synthetic(model, processor, tmp_path)
    loaded, loaded_processor = load_model(ModelSpec(str(tmp_path)))
    assert type(loaded) is type(model)
    adapter = adapter_for(loaded, loaded_processor)
    inputs = make_inputs(loaded_processor, adapter)
    assert torch.equal(inputs["input_ids"], make_inputs(processor, adapter_for(model, processor))["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)


# ---- check_model_files: the workflow's early check (onstart), no model loaded ---------------------
def _hub_snapshot(cache: Path, repo_id: str, revision: str) -> Path:
    """The directory huggingface_hub's cache layout gives one downloaded revision of `repo_id`."""
    return cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision


def test_missing_local_directory_is_named_not_sent_to_the_hub(tmp_path):
    missing = tmp_path / "nonexistent" / "llava"
    for spec in (ModelSpec(str(missing)), ModelSpec(f"./{missing.name}")):
        with pytest.raises(WeightsNotAvailableError, match="does not exist") as info:
            check_model_files(spec, offline=True)
        assert spec.id_or_path in str(info.value)
        assert "hf download" not in str(info.value)
    with pytest.raises(WeightsNotAvailableError, match="does not exist"):
        load_model(ModelSpec(str(missing)))


def test_incomplete_local_directory_names_everything_missing_at_once(tmp_path):
    model, processor = build_synthetic("tiny-llama")
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "model-00001-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(WeightsNotAvailableError) as info:  # no tokenizer, processor, second shard
        check_model_files(ModelSpec(str(tmp_path)))
    message = str(info.value)
    assert str(tmp_path) in message and "the model config" not in message
    assert "the tokenizer (tokenizer.json or tokenizer.model or vocab.json)" in message
    assert "the processor config (processor_config.json or preprocessor_config.json)" in message
    assert "weight shard model-00002-of-00002.safetensors" in message and "00001" not in message
    processor.save_pretrained(tmp_path)
    with pytest.raises(WeightsNotAvailableError, match="weight shard model-00002") as info:
        check_model_files(ModelSpec(str(tmp_path)))
    assert "tokenizer" not in str(info.value)


def test_hub_id_missing_from_the_cache_names_the_download_command(tmp_path):
    spec = ModelSpec("llava-hf/llava-1.5-7b-hf", revision="0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(WeightsNotAvailableError) as info:
        check_model_files(spec, offline=True, cache_dir=tmp_path)
    assert (f"`hf download llava-hf/llava-1.5-7b-hf --revision 0123456789abcdef0123456789abcdef01234567 "
            f"--cache-dir {tmp_path}`" in str(info.value))
    assert str(tmp_path) in str(info.value)
    check_model_files(spec, offline=False, cache_dir=tmp_path)  # online: transformers downloads it


def test_hub_id_in_the_cache_passes_and_a_partial_download_is_named(tmp_path):
    model, processor = build_synthetic("tiny-llama")
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = _hub_snapshot(tmp_path, "org/tiny", revision)
    save_synthetic(model, processor, snapshot)
    check_model_files(ModelSpec("org/tiny", revision=revision), offline=True, cache_dir=tmp_path)
    (snapshot / "tokenizer.json").unlink()
    with pytest.raises(WeightsNotAvailableError, match=r"incomplete download: the tokenizer .*"
                                                         r"`hf download org/tiny --revision 0123"):
        check_model_files(ModelSpec("org/tiny", revision=revision), offline=True, cache_dir=tmp_path)


# ---- model.quantization (Neo et al.'s 4-bit runs) -------------------------------------------------
def test_4bit_spec_builds_the_bitsandbytes_config_transformers_expects():
    """The authors' HookedLVLM(quantize=True, quantize_type="4bit"): 4-bit weights, fp16 compute."""
    from transformers import BitsAndBytesConfig

    assert ModelSpec("m").quantization_config() is None
    got = ModelSpec("m", dtype="fp16", quantization="4bit").quantization_config()
    expected = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16)
    assert isinstance(got, BitsAndBytesConfig) and got.to_dict() == expected.to_dict()
    assert got.load_in_4bit and not got.load_in_8bit and got.bnb_4bit_compute_dtype == torch.float16
    with pytest.raises(ValueError, match="quantization"):
        ModelSpec("m", quantization="8bit")


def test_4bit_on_a_cpu_fails_with_one_clear_message_before_any_job():
    from vlminterp.workflow.config_checks import ConfigError, check_config, stage_precision

    schema = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
    base = {"run": "x", "dataset": {"kind": "shapes"}, "model": {"kind": "organism"}, "device": "cpu"}
    for model, key in (({"quantization": "4bit"}, "model.quantization"),
                       ({"stages": {"ablate_object_tokens": {"quantization": "4bit"}}},
                        "model.stages.ablate_object_tokens.quantization")):
        config = json.loads(json.dumps({**base, "model": {**base["model"], **model}}))
        with pytest.raises(ConfigError, match=rf"{key}: 4bit needs device: cuda") as caught:
            check_config(config, schema, ["test"])
        assert str(caught.value).count("needs device: cuda") == 1
    bad = json.loads(json.dumps({**base, "model": {**base["model"], "stages": {"ablate": {"dtype": "fp16"}}}}))
    with pytest.raises(ConfigError, match="ablate"):
        check_config(bad, schema, ["test"])
    # per-stage precision: a stage's keys over the model's
    config = {"model": {"dtype": "fp16", "quantization": "none",
                        "stages": {"ablate_object_tokens": {"quantization": "4bit", "dtype": None}}}}
    assert stage_precision(config, "ablate_object_tokens") == {"dtype": "fp16", "quantization": "4bit"}
    assert stage_precision(config, "kaduri") == stage_precision(config) == {"dtype": "fp16", "quantization": "none"}


def test_4bit_load_without_cuda_names_what_is_missing(tmp_path):
    model, processor = build_synthetic("tiny-llama")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU|needs bitsandbytes"):
        load_model(ModelSpec(str(tmp_path), dtype="fp16", quantization="4bit", device="cpu"))


@pytest.mark.gpu
def test_a_tiny_model_loads_and_runs_in_4bit_on_cuda(tmp_path, make_inputs):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("bitsandbytes", reason="the optional extra vlminterp[quantization]")
    model, processor = build_synthetic("tiny-llama")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_model(ModelSpec(str(tmp_path), dtype="fp16", quantization="4bit", device="cuda"))
    linear = loaded.get_submodule(next(name for name, m in loaded.named_modules()
                                       if type(m).__name__ == "Linear4bit"))
    assert type(linear).__name__ == "Linear4bit"
    from vlminterp.models.adapters import adapter_for

    inputs = make_inputs(loaded_processor, adapter_for(loaded, loaded_processor))
    with torch.no_grad():
        expected = model.to("cuda", torch.float16)(**{k: v.to("cuda") for k, v in inputs.items()}).logits.float()
        got = loaded(**{k: v.to("cuda") for k, v in inputs.items()}).logits.float()
    assert torch.isfinite(got).all()
    # 4-bit weights change the numbers, not the shape or the gist
    assert got.shape == expected.shape
    assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.9
