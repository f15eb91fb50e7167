"""The library without Snakemake: open a model, run conditions of edits, read records.

    from vlminterp.api import open_model
    from vlminterp.interventions import Steer, Capture, ComponentAblation, patch_from
    vlm = open_model("tiny-llama")                          # a tiny random model (any synthetic variant)
    vlm = open_model("results/default/model")               # the trained organism, or any local model dir
    vlm = open_model("llava-hf/llava-1.5-7b-hf", dtype="bf16", device="cuda")   # a hub id
    x = vlm.prepare(image, "What shape is it?")             # one PIL image and one question
    logits = vlm.logits(x, [None, Steer(v, [x.length - 1], layers=[2])])   # (C, 1, V): last position
    answers = vlm.answer(x, [None, ComponentAblation("head_out.3", head=1)], max_new_tokens=8)   # texts
    vlm.sites()                                             # every site name of this model

`vlm.adapter` and `vlm.engine` are the library's own objects (docs/INTERVENTIONS.md).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .interventions import InterventionEngine, PreparedInput
from .interventions.conditions import ConditionLike
from .models.adapters import SITE_KINDS, VLMAdapter, adapter_for
from .models.adapters.base import LAYER_SITE_KINDS


@dataclass
class VLM:
    """A model behind its adapter and an intervention engine."""

    adapter: VLMAdapter
    engine: InterventionEngine

    @property
    def model(self):
        return self.adapter.model

    @property
    def tokenizer(self):
        return self.adapter.processor.tokenizer

    def prepare(self, image, text: str, *, answer_prefix: str | None = None) -> PreparedInput:
        """One image and one user text in the model's chat format, prepared for the engine (the
        vision tower runs here, once for every condition)."""
        prompt = self.adapter.format_prompt(text)
        if answer_prefix:
            prompt = f"{prompt} {answer_prefix}"
        shown = self.adapter.prepare_image(image)
        encoding = self.adapter.processor(images=shown, text=prompt, return_tensors="pt")
        return self.engine.prepare(encoding["input_ids"], **self.adapter.image_inputs(encoding))

    def image_positions(self, prepared: PreparedInput) -> torch.Tensor:
        """Sequence positions of the image tokens of a prepared input."""
        return self.adapter.image_positions(prepared.input_ids)[0].cpu()

    def logits(self, prepared: PreparedInput, conditions: Sequence[ConditionLike],
               positions: Sequence[int] | None = (-1,)) -> torch.Tensor:
        """(C, P, V) logits at `positions` (default: the last) under each condition."""
        return self.engine.logits(prepared, conditions, positions)

    def generate(self, prepared: PreparedInput, conditions: Sequence[ConditionLike],
                 max_new_tokens: int = 16) -> list[list[int]]:
        """Greedy token ids per condition (up to the first EOS)."""
        return self.engine.generate(prepared, conditions, max_new_tokens).tokens

    def answer(self, prepared: PreparedInput, conditions: Sequence[ConditionLike],
               max_new_tokens: int = 16) -> list[str]:
        """Greedy answers per condition, decoded."""
        return [self.tokenizer.decode(t, skip_special_tokens=True)
                for t in self.generate(prepared, conditions, max_new_tokens)]

    def sites(self) -> list[str]:
        """Every site name of this model."""
        return [f"{kind}.{layer}" if kind in LAYER_SITE_KINDS else kind
                for kind in SITE_KINDS if kind not in self.adapter.absent_sites
                for layer in (range(self.adapter.n_layers) if kind in LAYER_SITE_KINDS else [None])]


def open_model(name: str, *, dtype: str = "fp32", device: str = "cpu", attn_implementation: str = "sdpa",
               revision: str | None = None, seed: int = 0, batch_size: int = 64) -> VLM:
    """A synthetic variant name (random weights, `seed`), a local model directory (the organism's
    results/<run>/model, a saved checkpoint) or a hub id (`revision` pins it)."""
    from vlminterp.testing import synthetic

    if name in {**synthetic.SYNTHETIC_VARIANTS, **synthetic.INTERNVL_VARIANTS, **synthetic.QWEN2_VL_VARIANTS}:
        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        model, processor = synthetic.build_synthetic(name, seed=seed, attn_implementation=attn_implementation,
                                                     dtype=dtypes[dtype], device=device)
        adapter = adapter_for(model, processor)
    else:
        from .models.loading import ModelSpec, load_adapter

        adapter = load_adapter(ModelSpec(name, revision=revision, dtype=dtype, device=device,
                                         attn_implementation=attn_implementation))
    return VLM(adapter, InterventionEngine(adapter.model, adapter, max_batch_size=batch_size))
