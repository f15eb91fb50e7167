"""Interventions on the language model of a VLM, and the engine that runs many of them fast.

    from vlminterp.interventions import (Ablation, Knockout, From, Condition, InterventionEngine,
        replace_embeddings, knockout, Capture, StreamingMean, reference_logits, reference_generate)
    from vlminterp.interventions import Steer, Patch, patch_from, ComponentAblation, HeadScale, Edit, SiteEdit

A condition is a list of edits (`edit.Edit`) on named sites (`sites`, mapped by the adapter); one
kind per module: ablation (input embeddings), knockout (attention edges), steering, patching,
component (attn_out / mlp_out / one head), head_scale, reading (Capture: a record keyed by site
name). A new kind is one module (docs/INTERVENTIONS.md).

Module map: positions (explicit and open-ended position sets), ablation (embedding replacement),
knockout (attention-edge blocking), attention (the registry patch both knockout and attention
reading use), reading (Capture, the one way to read any site), cache (KV-cache surgery), decoding (greedy continuation, EOS cut; shared by
engine, cache and reference), engine (batched + prefix-shared; it halves its
batch on CUDA out-of-memory with `vlminterp.batching`), reference (naive oracle), stats
(streaming mean), conditions.
"""
from .ablation import Ablation, apply_ablations, replace_embeddings
from .component import ComponentAblation
from .edit import Edit, SiteEdit
from .head_scale import HeadScale
from .reading import Capture, SiteRecord
from .patching import Patch, aligned_image_positions, patch_from, record_site
from .sites import edit_site
from .steering import Steer
from .conditions import Condition, as_condition
from .engine import GenerationOutput, InterventionEngine, PreparedInput
from .knockout import Knockout, knockout
from .positions import From
from .reference import reference_generate, reference_logits
from .stats import StreamingMean

__all__ = [
    "Ablation",
    "Capture",
    "ComponentAblation",
    "Condition",
    "Edit",
    "HeadScale",
    "Patch",
    "SiteEdit",
    "SiteRecord",
    "Steer",
    "aligned_image_positions",
    "edit_site",
    "patch_from",
    "record_site",
    "From",
    "GenerationOutput",
    "InterventionEngine",
    "Knockout",
    "PreparedInput",
    "StreamingMean",
    "apply_ablations",
    "as_condition",
    "knockout",
    "reference_generate",
    "reference_logits",
    "replace_embeddings",
]
