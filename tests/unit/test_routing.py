"""Planted routings (issue #24): the constraint is an ordinary mask of the model, kept by the engine and
the reference, saved with the model; a knockout composes with it and never replaces it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from vlminterp.interventions import From, InterventionEngine, Knockout, reference_generate, reference_logits
from vlminterp.models.adapters import adapter_for
from vlminterp.models.loading import ModelSpec, load_model
from vlminterp.organism import OrganismSpec
from vlminterp.models.routing import CONFIG_KEY, constraint_of, install_routing, routing_layout
from vlminterp.testing.synthetic import build_synthetic

VARIANT = "tiny-llama"


def _planted(routing: str, layers=()):
    model, processor = build_synthetic(VARIANT, seed=0)
    setattr(model.config, CONFIG_KEY, {"routing": routing, "layers": list(layers)})
    install_routing(model)
    return model.eval(), adapter_for(model, processor)


def _inputs(synthetic, make_inputs):
    direct, processor, adapter = synthetic(VARIANT)
    inputs = make_inputs(processor, adapter, seed=0)
    return direct, adapter, inputs["input_ids"], inputs["pixel_values"]


def _text_positions(adapter, ids):
    image = set(adapter.image_positions(ids)[0].tolist())
    return [p for p in range(ids.shape[1]) if p not in image]


def test_query_routed_generation_is_the_direct_model_with_image_to_generated_blocked(synthetic, make_inputs):
    direct, adapter, ids, pixels = _inputs(synthetic, make_inputs)
    routed, routed_adapter = _planted("query_routed")
    image = adapter.image_positions(ids)[0]
    length = ids.shape[1]
    blocked = Knockout(From(length), image)  # what the planted constraint blocks
    expected = reference_generate(direct, adapter, ids, pixels, blocked, max_new_tokens=8)
    assert expected != reference_generate(direct, adapter, ids, pixels, None, max_new_tokens=8)  # it matters
    assert reference_generate(routed, routed_adapter, ids, pixels, None, max_new_tokens=8) == expected
    # the engine (prefix shared, batched) keeps the constraint with and without a knockout of its own
    query_to_image = Knockout(list(range(length)), image)
    engine = InterventionEngine(routed, routed_adapter)
    out = engine.generate(engine.prepare(ids, pixels), [None, blocked, query_to_image], max_new_tokens=8)
    assert out.tokens[0] == expected
    assert out.tokens[1] == expected  # contradicting the constraint: a no-op, as it must be
    assert out.tokens[2] == reference_generate(direct, adapter, ids, pixels, [blocked, query_to_image],
                                               max_new_tokens=8)
    assert out.tokens[2] == reference_generate(routed, routed_adapter, ids, pixels, query_to_image, max_new_tokens=8)


@pytest.mark.parametrize("band", [(0,), (1,)])
def test_window_logits_are_the_direct_model_with_text_to_image_blocked_outside_the_band(band, synthetic, make_inputs):
    direct, adapter, ids, pixels = _inputs(synthetic, make_inputs)
    routed, routed_adapter = _planted("window", band)
    image = adapter.image_positions(ids)[0]
    outside = [layer for layer in range(adapter.n_layers) if layer not in band]
    constraint = Knockout(_text_positions(adapter, ids), image, layers=outside)
    with torch.no_grad():
        expected = reference_logits(direct, adapter, ids, pixels, constraint)
        assert (expected - reference_logits(direct, adapter, ids, pixels, None)).abs().max() > 1e-3
        own = reference_logits(routed, routed_adapter, ids, pixels, None)
        assert (own - expected).abs().max() < 1e-5
        last_to_image = Knockout([ids.shape[1] - 1], image)
        knocked = reference_logits(routed, routed_adapter, ids, pixels, last_to_image)
        assert (knocked - reference_logits(direct, adapter, ids, pixels, [constraint, last_to_image])).abs().max() < 1e-5
        last_to_bos = Knockout([ids.shape[1] - 1], [0])  # leaves the image to the last position
        knocked_bos = reference_logits(routed, routed_adapter, ids, pixels, last_to_bos)
        assert (knocked_bos - reference_logits(direct, adapter, ids, pixels, [constraint, last_to_bos])).abs().max() < 1e-5
        engine = InterventionEngine(routed, routed_adapter)
        fast = engine.logits(engine.prepare(ids, pixels), [None, last_to_image, last_to_bos], positions=None)
    # the engine's knockout path composes with the model's mask: a dropped constraint fails here
    assert (fast[0] - own).abs().max() < 1e-4
    assert (fast[1] - knocked).abs().max() < 1e-4
    assert (fast[2] - knocked_bos).abs().max() < 1e-4


def test_dropping_the_constraint_in_the_attention_function_is_detected(synthetic, make_inputs, monkeypatch):
    """Were the engine's attention function to replace the model's mask by its knockout mask, the
    comparison above would fail: checked by switching the composition off."""
    _, adapter, ids, pixels = _inputs(synthetic, make_inputs)
    routed, routed_adapter = _planted("window", (0,))
    last_to_bos = Knockout([ids.shape[1] - 1], [0])  # leaves the image to the last position
    with torch.no_grad():
        knocked = reference_logits(routed, routed_adapter, ids, pixels, last_to_bos)
        from vlminterp.interventions import attention

        # the defect: a knockout mask built from scratch (causal AND NOT knocked out), the model's ignored
        monkeypatch.setattr(attention, "model_constraint_blocked", lambda *args: None)
        call = attention.AttentionEditor.__call__
        monkeypatch.setattr(attention.AttentionEditor, "__call__",
                            lambda self, module, q, k, v, mask, *a, **kw: call(self, module, q, k, v, None, *a, **kw))
        engine = InterventionEngine(routed, routed_adapter)
        fast = engine.logits(engine.prepare(ids, pixels), [last_to_bos], positions=None)
    assert (fast[0] - knocked).abs().max() > 1e-3


def test_the_constraint_is_saved_with_the_model(tmp_path, synthetic, make_inputs):
    _, adapter, ids, pixels = _inputs(synthetic, make_inputs)
    routed, routed_adapter = _planted("window", (1,))
    routed.save_pretrained(tmp_path)
    routed_adapter.processor.save_pretrained(tmp_path)
    loaded, _ = load_model(ModelSpec(id_or_path=str(tmp_path)))
    assert constraint_of(loaded).routing == "window" and constraint_of(loaded).layers == (1,)
    with torch.no_grad():
        assert torch.equal(routed(input_ids=ids, pixel_values=pixels).logits,
                           loaded(input_ids=ids, pixel_values=pixels).logits)


def test_training_layout_starts_the_answer_where_the_loss_starts(synthetic, make_inputs):
    _, adapter, ids, pixels = _inputs(synthetic, make_inputs)
    routed, routed_adapter = _planted("query_routed")
    extra = torch.tensor([[5, 6, 7]])
    full = torch.cat([ids, extra], dim=1)
    image = full == routed.config.image_token_id
    with torch.no_grad():
        as_prompt = routed(input_ids=full, pixel_values=pixels).logits  # every token is the prompt
        with routing_layout(routed, image, torch.tensor([ids.shape[1]])):
            as_answer = routed(input_ids=full, pixel_values=pixels).logits
        assert torch.equal(as_prompt[:, : ids.shape[1]], as_answer[:, : ids.shape[1]])
        assert (as_prompt[:, ids.shape[1]:] - as_answer[:, ids.shape[1]:]).abs().max() > 1e-4
        # the generated tokens of the answer layout do not read the image: the same logits from
        # a direct model under the matching knockout
        direct, _, _ = synthetic(VARIANT)
        expected = reference_logits(direct, adapter, full, pixels, Knockout(From(ids.shape[1]), adapter.image_positions(full)[0]))
    assert (as_answer[0] - expected).abs().max() < 1e-5


@pytest.mark.parametrize("values", [dict(routing="nope"), dict(routing="window"), dict(routing="window", routing_layers=(0, 1)),
                                    dict(routing="window", routing_layers=(2,)), dict(routing="query_routed", routing_layers=(0,))])
def test_routing_spec_is_validated(values):
    with pytest.raises(ValueError, match="routing"):
        OrganismSpec.tiny(**values)


def test_routing_spec_round_trip_and_direct_json_unchanged():
    assert "routing" not in OrganismSpec.tiny().to_json()
    spec = OrganismSpec.tiny(routing="window", routing_layers=(1,))
    assert OrganismSpec.from_json(spec.to_json()) == spec


def test_query_routed_continuations_never_read_the_image_through_a_kept_cache(synthetic, make_inputs):
    """K4 under query_routed: text appended after the prompt is generated text, so the prompt-only
    cache, the full cache and the full image give the same answers (the layout follows the cache)."""
    direct, adapter, ids, pixels = _inputs(synthetic, make_inputs)
    model, processor = build_synthetic(VARIANT, seed=0)
    marker = ids[0, -3:].tolist()  # the prompt's last three ids stand for its " ASSISTANT:"
    setattr(model.config, CONFIG_KEY, {"routing": "query_routed", "layers": [], "answer_marker": marker})
    install_routing(model)
    routed_adapter = adapter_for(model.eval(), processor)
    image = set(adapter.image_positions(ids)[0].tolist())
    prompt_only = [p for p in range(ids.shape[1]) if p not in image]
    question = torch.tensor([[7, 8, 9, 10]])
    answers = {}
    for name, (m, a) in {"direct": (direct, adapter), "routed": (model, routed_adapter)}.items():
        engine = InterventionEngine(m, a)
        prepared = engine.prepare(ids, pixels)
        kept = engine.kept_caches(prepared, {"full": list(range(ids.shape[1])), "prompt": prompt_only})
        answers[name] = [engine.continue_cache(kept[key], [question], 8)[0] for key in ("full", "prompt")]
        answers[name].append(engine.generate(engine.extend(prepared, question), [None], 8).tokens[0])
    assert answers["direct"][0] != answers["direct"][1]  # the image matters to the direct model
    assert answers["routed"][0] == answers["routed"][1] == answers["routed"][2]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs").glob("organism-*.yaml")),
                         ids=lambda p: p.stem)
def test_a_planted_config_is_the_default_run_with_one_constraint(path):
    """A planted variant's config is config.yaml but for its run name and its routing: a setting the
    default run changes (e.g. the noising filter) cannot drift away from the variants."""
    default = yaml.safe_load((path.parents[1] / "config.yaml").read_text())
    planted = yaml.safe_load(path.read_text())
    routing = planted["model"]["organism"]
    assert routing["routing"] in ("query_routed", "window"), path
    for config in (default, planted):
        config.pop("run")
        config["model"].pop("organism", None)
    assert planted == default, path
