"""The GPU smoke run's pieces without a GPU: the 7B checkpoint's config (on the meta device, no weights),
its tokenizer and run config, the peak-GPU-memory line of rule_context and the log parsing.
(The run at tiny size through Snakemake, on two rules: tests/workflow/test_gpu_smoke_run.py.)"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import gpu_smoke  # noqa: E402
from vlminterp.workflow.runtime import rule_context  # noqa: E402


@pytest.fixture(scope="module")
def config_7b(tmp_path_factory):
    return gpu_smoke.smoke_config("7b", "cuda", tmp_path_factory.mktemp("ckpt"), images=3)


def test_7b_checkpoint_has_llava_1_5_7b_sizes_without_allocating_weights(config_7b):
    from vlminterp.testing.synthetic import build_on_meta

    config, processor = gpu_smoke.checkpoint_model("7b", gpu_smoke.tokenizer_words(config_7b))
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        4096, 32, 32, 32)
    assert (text.intermediate_size, text.vocab_size) == (11008, 32064)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (1024, 24, 336, 14)
    assert config.image_seq_length == 576 and config.image_token_id == 32000
    model = build_on_meta(config)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert 7.0e9 < sum(p.numel() for p in model.parameters()) < 7.1e9  # 7.06 B, as published
    # the processor: 32064-token vocabulary, 336 px CLIP input, 576 image tokens in the prompt
    assert len(processor.tokenizer) == 32064 and processor.tokenizer.model_max_length == 4096
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8))
    encoded = processor(images=image, text="USER: <image>\ndescribe the image ASSISTANT:", return_tensors="pt")
    assert tuple(encoded["pixel_values"].shape) == (1, 3, 336, 336)
    assert int((encoded["input_ids"] == 32000).sum()) == 576


@pytest.mark.parametrize("size", gpu_smoke.SIZES)
def test_every_prompt_of_the_run_is_in_the_vocabulary(tmp_path, size):
    config = gpu_smoke.smoke_config(size, "cpu", tmp_path)
    _, processor = gpu_smoke.checkpoint_model(size, gpu_smoke.tokenizer_words(config))
    tokenizer = processor.tokenizer
    for text in gpu_smoke.prompt_texts(config):
        assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text
    for name in ("circle", "square", "triangle", "red", "blue", "Yes", "No"):
        assert len(tokenizer(name, add_special_tokens=False)["input_ids"]) == 1, name


def test_smoke_config_loads_the_directory_as_the_paper_run_loads_the_hub_id(tmp_path, config_7b):
    import yaml
    from snakemake.utils import validate

    paper = yaml.safe_load(gpu_smoke.PAPER_CONFIG.read_text())
    for device, dtype in (("cuda", "bf16"), ("cpu", "fp32")):
        config = gpu_smoke.smoke_config("7b", device, tmp_path / "model", images=3)
        validate(config, str(gpu_smoke.SCHEMA))
        assert config["device"] == device and config["model"]["dtype"] == dtype
        assert config["model"]["kind"] == paper["model"]["kind"] == "pretrained"
        assert config["model"]["pretrained"] == {"id": str(tmp_path / "model"), "revision": None}
        assert config["dataset"]["kind"] == "shapes"
        assert config["neo"]["selection"]["max_images"] == config["neo"]["mean"]["max_images"] == 3
        assert config["kaduri"]["n_images"] == 3
    # 7b keeps the papers' generation lengths and batch sizes, so the time per image carries over
    assert config_7b["kaduri"]["description_tokens"] == paper["kaduri"]["description_tokens"]
    assert config_7b["kaduri"]["batch_size"] == paper["kaduri"]["batch_size"]
    assert config_7b["neo"]["ablation"]["description_tokens"] == paper["neo"]["ablation"]["description_tokens"]
    assert config_7b["resources"]["model_jobs"]["gpu"] == 1  # with --resources gpu=1: one model job at a time


def _rule_log(tmp_path: Path) -> str:
    log = tmp_path / "rule.log"
    with rule_context(log) as logger:
        logger.info("working")
    return log.read_text()


def test_rule_context_reports_no_gpu_memory_when_cuda_was_not_used(tmp_path):
    was_initialized = torch.cuda.is_initialized()
    text = _rule_log(tmp_path)
    assert "finished in" in text and "peak GPU memory" not in text
    assert torch.cuda.is_initialized() == was_initialized  # reporting never initialises CUDA
    assert gpu_smoke.parse_rule_log(text)["peak_gpu_bytes"] is None


def test_rule_context_reports_peak_gpu_memory_last_when_cuda_was_used(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 3 * 2**30 + 5)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a, **k: 4 * 2**30)
    text = _rule_log(tmp_path)
    last = text.strip().splitlines()[-1]
    assert "peak GPU memory: 3221225477 bytes allocated (3.00 GiB)" in last
    parsed = gpu_smoke.parse_rule_log(text)
    assert parsed["peak_gpu_bytes"] == 3 * 2**30 + 5 and parsed["wall_s"] is not None


def test_rule_context_reports_peak_gpu_memory_when_the_rule_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 123)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a, **k: 456)
    log = tmp_path / "rule.log"
    with pytest.raises(RuntimeError):
        with rule_context(log):
            raise RuntimeError("CUDA out of memory (simulated)")
    assert gpu_smoke.parse_rule_log(log.read_text()) == {"wall_s": None, "load_s": None, "peak_gpu_bytes": 123}


def test_parse_rule_log_sums_model_loads():
    text = ("x INFO vlminterp.models.loading: loaded model /m (bf16, cuda) in 12.5 s\n"
            "x INFO vlminterp.rule: finished in 40.0 s\n")
    assert gpu_smoke.parse_rule_log(text) == {"wall_s": 40.0, "load_s": 12.5, "peak_gpu_bytes": None}
