"""Every edit kind x every family adapter: the engine (batched, prefix-shared) equals the naive
reference (one plain forward / generate per condition) in logits and greedy generation; a
late-starting edit shares the prefix; named sites and their errors. A new edit kind adds one
entry to KINDS."""
from __future__ import annotations

import pytest
import torch
from helpers import split_inputs
from transformers import DynamicCache

from vlminterp.interventions import (
    Ablation,
    Capture,
    ComponentAblation,
    Condition,
    From,
    HeadScale,
    InterventionEngine,
    Knockout,
    Patch,
    Steer,
    aligned_image_positions,
    patch_from,
    reference_generate,
    reference_logits,
)
from vlminterp.interventions.attention import AttentionPatchError, edit_attention
from vlminterp.interventions.cache import continue_generation, select_cache
from vlminterp.interventions.engine import FAST, ONE_PREFIX, Batching
from vlminterp.interventions.reference import reference_interventions
from vlminterp.models.adapters import SiteError

FAMILIES = ["tiny-llama", "tiny-gqa", "tiny-phi3", "tiny-mistral-window", "tiny-internvl", "tiny-qwen2-vl"]


def _vector(size: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(seed)) * scale


def _ablations(adapter, length, image):
    return [Ablation(image[2:6], _vector(adapter.hidden_size, 1)), Ablation(image[-3:])]


def _knockouts(adapter, length, image):
    return [Knockout([length - 1], image, layers=[0, 1]), Knockout(From(length), image, heads=[1]),
            Knockout([length - 1], range(length - 4, length - 1), layers=[2])]  # inside any sliding window


def _steering(adapter, length, image):
    d = adapter.hidden_size
    return [Steer(_vector(d, 2, 2.0), [length - 1], layers=[1]),
            Steer(_vector(d, 3), From(length - 2), layers=[0, 2], scale=3.0),
            Steer(_vector(d, 4), image[:4], layers=[0], site="resid_pre")]


def _patches(adapter, length, image):
    d = adapter.hidden_size
    return [Patch("resid_post.1", image[:3], _vector(3 * d, 5, 2.0).reshape(3, d)),
            Patch("attn_out.2", [length - 2, length - 1], _vector(2 * d, 6, 2.0).reshape(2, d))]


def _components(adapter, length, image):
    return [ComponentAblation("attn_out.1"),
            ComponentAblation("mlp_out.2", positions=[length - 1], value=_vector(adapter.hidden_size, 7)),
            ComponentAblation("head_out.0", head=1),
            ComponentAblation("head_out.2", head=0, positions=From(length), value=_vector(adapter.head_dim, 8))]


def _head_scales(adapter, length, image):
    return [HeadScale(layer=2, head=0, factor=0.0), HeadScale(layer=1, head=1, factor=4.0, positions=From(length - 2)),
            HeadScale(layer=0, head=2, factor=3.0, positions=range(length))]


def _mixed(adapter, length, image):
    return [Condition([Steer(_vector(adapter.hidden_size, 9), [length - 1], layers=[2]),
                       Knockout([length - 1], image, layers=[1]), ComponentAblation("head_out.3", head=2),
                       Ablation(image[:2])], label="all kinds")]


KINDS = {
    "ablation": _ablations,
    "knockout": _knockouts,
    "steering": _steering,
    "patching": _patches,
    "component": _components,
    "head_scale": _head_scales,
    "mixed": _mixed,
}


# The engine's layouts of conditions in calls: its default, the experiments' pinned one, and one
# that splits these short inputs too (a group per start, one row per call).
LAYOUTS = {"fast": FAST, "one_prefix": ONE_PREFIX,
           "split": Batching(group_prefixes=True, row_positions=1, group_overhead=0)}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_engine_equals_the_reference_for_every_kind_and_family(kind, family, synthetic, make_inputs):
    model, processor, adapter = synthetic(family)
    inputs = make_inputs(processor, adapter)
    ids, pixels, extra = split_inputs(adapter, inputs)
    length = ids.shape[1]
    (image,) = adapter.image_positions(ids)
    conditions = [None, *KINDS[kind](adapter, length, image)]
    expected = torch.stack([reference_logits(model, adapter, ids, pixels, c, **extra) for c in conditions])
    changed = [(expected[i] - expected[0]).abs().max() > 1e-3 for i in range(1, len(conditions))]
    # every prompt-touching edit changes the reference (so the comparison can fail); From(T) ones act later
    assert any(changed)
    want = [reference_generate(model, adapter, ids, pixels, c, max_new_tokens=6, **extra) for c in conditions]
    for layout, batching in LAYOUTS.items():
        engine = InterventionEngine(model, adapter, batching=batching)
        prepared = engine.prepare(ids, pixels, **extra)
        fast = engine.logits(prepared, conditions, positions=None)
        assert (fast - expected).abs().max() < 1e-4, layout
        assert engine.generate(prepared, conditions, max_new_tokens=6).tokens == want, layout


def _prompt_only(edit, length: int) -> bool:
    """Whether an edit acts on prompt positions only (a kept cache's continuation runs unedited)."""
    positions = edit.query_positions if isinstance(edit, Knockout) else getattr(edit, "positions", None)
    return not isinstance(positions, From)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_kept_caches_under_edits_equal_the_reference(kind, family, synthetic, make_inputs):
    model, processor, adapter = synthetic(family)
    inputs = make_inputs(processor, adapter)
    ids, pixels, extra = split_inputs(adapter, inputs)
    length = ids.shape[1]
    (image,) = adapter.image_positions(ids)
    conditions = [Condition([e for e in (c.edits if isinstance(c, Condition) else [c]) if _prompt_only(e, length)])
                  for c in KINDS[kind](adapter, length, image)]
    conditions = [c for c in conditions if c.edits]
    assert conditions
    question = processor.tokenizer(" what is it?", add_special_tokens=False, return_tensors="pt")["input_ids"]
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels, **extra)
    rope = adapter.rope_positions(ids, **{k: v for k, v in extra.items()})
    for condition in conditions:
        kept = engine.kept_caches(prepared, {"all": range(length)}, condition=condition)["all"]
        fast = engine.continue_cache(kept, [question], max_new_tokens=4)[0]
        with torch.no_grad(), reference_interventions(adapter, condition):
            cache = model(**inputs, past_key_values=DynamicCache(), use_cache=True).past_key_values
        slow = continue_generation(adapter, select_cache(cache, range(length), positions=rope), question, 4)
        assert fast == slow
        torch.testing.assert_close(kept.cache.layers[-1].keys, select_cache(cache, range(length)).cache.layers[-1].keys,
                                   atol=1e-4, rtol=0)


def _positions_run(adapter):
    """A hook on decoder layer 0 recording the (batch, positions) of every call."""
    calls = []
    handle = adapter.decoder_layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(tuple((args[0] if args else kwargs["hidden_states"]).shape[:2])),
        with_kwargs=True)
    return calls, handle


@pytest.mark.parametrize("make", [
    lambda a, T: Steer(_vector(a.hidden_size, 1), [T - 1], layers=[2]),
    lambda a, T: Patch("resid_post.1", [T - 1], _vector(a.hidden_size, 2)[None]),
    lambda a, T: HeadScale(layer=1, head=0, factor=0.0, positions=[T - 1]),
], ids=["steer", "patch", "head_scale"])
def test_an_edit_of_the_last_position_shares_the_rest(make, synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-llama")
    ids, pixels, _ = split_inputs(adapter, make_inputs(processor, adapter))
    length = ids.shape[1]
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels)
    conditions = [make(adapter, length) for _ in range(3)]
    calls, handle = _positions_run(adapter)
    try:
        out = engine.generate(prepared, conditions, max_new_tokens=2)
    finally:
        handle.remove()
    assert out.prefix_length == length - 1
    assert calls[:2] == [(1, length - 1), (3, 1)]  # the prefix once, then one position per condition


def test_patching_object_tokens_from_another_image(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-llama")
    a_ids, a_pixels, _ = split_inputs(adapter, make_inputs(processor, adapter, seed=1))
    b_ids, b_pixels, _ = split_inputs(adapter, make_inputs(processor, adapter, seed=2))
    engine = InterventionEngine(model, adapter)
    a, b = engine.prepare(a_ids, a_pixels), engine.prepare(b_ids, b_pixels)
    every = aligned_image_positions(adapter, a_ids, b_ids)
    # patching every image token's embedding from A makes B's run A's run
    whole = patch_from(engine, a, b, "embed", every)
    torch.testing.assert_close(engine.logits(b, [whole]), engine.logits(a, [None]), atol=1e-5, rtol=0)
    some = patch_from(engine, a, b, "resid_post.0", aligned_image_positions(adapter, a_ids, b_ids, tokens=[0, 5]))
    expected = reference_logits(model, adapter, b_ids, b_pixels, some)
    assert (engine.logits(b, [some], positions=None)[0] - expected).abs().max() < 1e-4


def test_patching_refuses_images_with_other_token_counts(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-qwen2-vl")
    small = make_inputs(processor, adapter, size=(64, 48))["input_ids"]
    large = make_inputs(processor, adapter, size=(64, 64))["input_ids"]
    with pytest.raises(ValueError, match="qwen2_vl: the source image has .* image tokens and the target"):
        aligned_image_positions(adapter, small, large)


def test_sites_are_named_by_the_adapter_and_errors_name_the_family(synthetic):
    _, _, adapter = synthetic("tiny-phi3")
    assert adapter.site("resid_post.3").module is adapter.decoder_layers[3]
    assert adapter.site("resid_post.-1").name == f"resid_post.{adapter.n_layers - 1}"
    assert adapter.site("head_out.1").module is adapter.decoder_layers[1].self_attn.o_proj
    assert adapter.site("embed").module is adapter.language_model
    assert adapter.site("image_features").module is adapter.projector
    with pytest.raises(SiteError, match="llava: site 'resid_post.9' out of range"):
        adapter.site("resid_post.9")
    with pytest.raises(SiteError, match="unknown site 'resid'"):
        adapter.site("resid")
    with pytest.raises(SiteError, match="needs a layer"):
        adapter.site("mlp_out")

    class Injected(type(adapter)):
        absent_sites = {"image_features": "image features are injected between decoder layers"}

    with pytest.raises(SiteError, match="llava: no site 'image_features': image features are injected"):
        Injected(adapter.model, adapter.processor).site("image_features")


def test_bad_edits_fail_before_any_work(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-llama")
    ids, pixels, _ = split_inputs(adapter, make_inputs(processor, adapter))
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels)
    with pytest.raises(ValueError, match="steering vector has shape"):
        engine.logits(prepared, [Steer(torch.zeros(3), [1], layers=[0])])
    with pytest.raises(SiteError, match="out of range"):
        engine.logits(prepared, [Steer(torch.zeros(adapter.hidden_size), [1], layers=[7])])
    with pytest.raises(ValueError, match="give head= exactly"):
        engine.logits(prepared, [ComponentAblation("head_out.1")])


@pytest.mark.parametrize("argument", [{"softcap": 30.0}, {"s_aux": torch.zeros(4)}])
def test_attention_refuses_arguments_it_would_drop(argument, synthetic):
    _, _, adapter = synthetic("tiny-llama")
    with edit_attention(adapter, Knockout([0], [0])):
        from vlminterp.interventions.attention import _active_editor

        with _active_editor(adapter) as editor:
            query = torch.zeros(1, adapter.n_heads, 2, adapter.head_dim)
            key = torch.zeros(1, adapter.n_kv_heads, 2, adapter.head_dim)
            with pytest.raises(AttentionPatchError, match="llava: the attention function was given"):
                editor(adapter.decoder_layers[0].self_attn, query, key, key, None, **argument)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2-vl"])
def test_capture_reads_sites_by_name_in_prefill_and_generation(family, synthetic, make_inputs):
    model, processor, adapter = synthetic(family)
    ids, pixels, extra = split_inputs(adapter, make_inputs(processor, adapter))
    length = ids.shape[1]
    (image,) = adapter.image_positions(ids)
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels, **extra)
    sites = ["embed", "resid_post.1", "attn_out.2", "head_out.3"]
    steer = Steer(_vector(adapter.hidden_size, 3), [length - 1], layers=[0])
    in_engine = [Capture(sites, image[:3]), Capture(sites, [length - 1]), Capture(["resid_post.1"], From(length))]
    plain = [Capture(sites, image[:3]), Capture(sites, [length - 1]), Capture(["resid_post.1"], From(length))]
    conditions = [in_engine[0], Condition([steer, in_engine[1]]), Condition([steer, in_engine[2]])]
    references = [plain[0], Condition([steer, plain[1]]), Condition([steer, plain[2]])]
    output = engine.generate(prepared, conditions, max_new_tokens=4)
    assert output.prefix_length == length - 1  # reading never shortens the shared prefix
    tokens = output.tokens
    assert tokens == [reference_generate(model, adapter, ids, pixels, c, max_new_tokens=4, **extra) for c in references]
    for fast, slow in zip(in_engine, plain):
        assert fast.record.keys() == slow.record.keys()
        for site in fast.record.keys():
            assert torch.equal(fast.record.positions(site), slow.record.positions(site))
            assert (fast.record[site] - slow.record[site]).abs().max() < 1e-4
    assert in_engine[0].record["head_out.3"].shape == (3, adapter.n_heads, adapter.head_dim)
    assert in_engine[2].record.positions("resid_post.1").tolist() == list(range(length, length + 3))
    kept = {}  # hooks written by hand agree

    def post(module, args, output):
        kept["post"] = (output[0] if isinstance(output, tuple) else output)[0, image[:3]]

    def pre(module, args, kwargs):
        kept["pre"] = (args[0] if args else kwargs["hidden_states"])[0, image[:3]]

    handles = [adapter.decoder_layers[1].register_forward_hook(post),
               adapter.decoder_layers[0].register_forward_pre_hook(pre, with_kwargs=True)]
    try:
        adapter.language_model_forward(prepared.inputs_embeds, position_ids=prepared.rope.span(0, length))
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(in_engine[0].record["resid_post.1"], kept["post"], atol=1e-5, rtol=0)
    torch.testing.assert_close(in_engine[0].record["embed"], kept["pre"])


def test_capture_reads_attention_after_its_own_rows_knockout_only(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-gqa")
    ids, pixels, _ = split_inputs(adapter, make_inputs(processor, adapter))
    length = ids.shape[1]
    (image,) = adapter.image_positions(ids)
    engine = InterventionEngine(model, adapter)
    knocked, plain = Capture(["attn.1"], [length - 1]), Capture(["attn.1"], [length - 1])
    engine.logits(engine.prepare(ids, pixels), [Condition([Knockout([length - 1], image, layers=[1]), knocked]), plain])
    assert knocked.record["attn.1"].shape == (1, adapter.n_heads, length)
    assert (knocked.record["attn.1"][..., image] == 0).all() and (plain.record["attn.1"][..., image] > 0).all()
    last = Capture([f"attn.{adapter.n_layers - 1}", "attn.-1"], [length - 1])  # a layer by either name
    engine.logits(engine.prepare(ids, pixels), [last])
    assert torch.equal(last.record["attn.-1"], last.record[f"attn.{adapter.n_layers - 1}"])
    with pytest.raises(ValueError, match="one sequence"), plain.reading(adapter):
        model(input_ids=ids.expand(2, -1), pixel_values=pixels.expand(2, *pixels.shape[1:]))


def test_grouped_prefixes_give_the_same_results_with_less_work(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-gqa")
    ids, pixels, _ = split_inputs(adapter, make_inputs(processor, adapter))
    length = ids.shape[1]
    (image,) = adapter.image_positions(ids)
    conditions = [Steer(_vector(adapter.hidden_size, k), [int(image[k])], layers=[k % adapter.n_layers])
                  for k in range(len(image))] + [None, Knockout([length - 1], image, layers=[1])]
    from vlminterp.interventions.engine import prefix_groups
    from vlminterp.interventions import as_condition

    groups = prefix_groups([as_condition(c) for c in conditions], length)
    assert len(groups) > 1 and sorted(i for g in groups for i in g) == list(range(len(conditions)))
    plain = InterventionEngine(model, adapter, batching=ONE_PREFIX)
    grouped = InterventionEngine(model, adapter, batching=FAST)
    prepared = plain.prepare(ids, pixels)
    calls, handle = _positions_run(adapter)
    try:
        fast = grouped.logits(prepared, conditions, positions=None)
    finally:
        handle.remove()
    torch.testing.assert_close(fast, plain.logits(prepared, conditions, positions=None), atol=1e-5, rtol=0)
    one_group = int(image[0]) + len(conditions) * (length - int(image[0]))
    assert sum(b * n for b, n in calls) < one_group  # positions computed
    assert grouped.generate(prepared, conditions, 5).tokens == plain.generate(prepared, conditions, 5).tokens


def test_calls_of_rows_hold_at_most_row_positions(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-llama")
    ids, pixels, _ = split_inputs(adapter, make_inputs(processor, adapter))
    length = ids.shape[1]
    (image,) = adapter.image_positions(ids)
    own = length - int(image[0])  # every condition below starts at the first image token
    conditions = [Steer(_vector(adapter.hidden_size, k), [int(image[0]), int(image[k])], layers=[k % adapter.n_layers])
                  for k in range(5)]
    budget = Batching(group_prefixes=True, row_positions=2 * own + 1)
    engine = InterventionEngine(model, adapter, batching=budget)
    prepared = engine.prepare(ids, pixels)
    calls, handle = _positions_run(adapter)
    try:
        got = engine.logits(prepared, conditions, positions=None)
    finally:
        handle.remove()
    assert calls == [(1, int(image[0])), (2, own), (2, own), (1, own)]  # the prefix, then 2 + 2 + 1 rows
    expected = torch.stack([reference_logits(model, adapter, ids, pixels, c) for c in conditions])
    assert (got - expected).abs().max() < 1e-4


def test_experiment_stages_pin_the_batching_their_tables_were_recorded_with(synthetic):
    from vlminterp.experiments.shared import session

    model, processor, _ = synthetic("tiny-llama")
    stage = session.Session.from_model(model, processor, dataset=None)
    assert session.EXPERIMENT_BATCHING == Batching(group_prefixes=False, row_positions=None)
    assert stage.engine.batching == session.EXPERIMENT_BATCHING
    assert InterventionEngine(model).batching == FAST  # API users get the default
