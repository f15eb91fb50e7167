"""Figures a reader can trust at a glance (#27): in N1's flip rates a 0% bar is labelled and a
missing one says n/a, and a condition ablating exactly all_image's tokens (random_n36 on a 36-token
image) is drawn once."""
from __future__ import annotations

import pandas as pd
import pytest


def _ablation_table():
    rows = []
    for image_id in (1, 2, 3):
        for setting in ("polling", "vqa"):
            rows.append(dict(image_id=image_id, setting=setting, condition="none", included=True,
                             flipped=False, n_tokens=0, excluded=""))
            for condition, n_tokens, flipped in (("object_b1", 4, True), ("random_matched_b1", 4, False),
                                                 ("random_n36", 36, True), ("all_image", 36, True)):
                rows.append(dict(image_id=image_id, setting=setting, condition=condition, included=True,
                                 flipped=flipped, n_tokens=n_tokens, excluded=""))
    table = pd.DataFrame(rows)
    # register tokens: none found for vqa (no included image there): its bar is missing, not 0
    register = table[(table.condition == "object_b1")].assign(condition="register", n_tokens=2, flipped=False)
    register.loc[register.setting == "vqa", "included"] = False
    return pd.concat([table, register], ignore_index=True)


@pytest.fixture()
def drawn(monkeypatch, tmp_path):
    import vlminterp.plots.neo as neo

    figures = []
    monkeypatch.setattr(neo, "save_figure", lambda figure, stem: figures.append(figure) or [])
    neo.plot_flip_rates(_ablation_table(), tmp_path / "flips", n_resamples=50)
    return figures[0].axes[0]


def test_zero_bars_are_labelled_and_missing_ones_say_so(drawn):
    texts = [t.get_text() for t in drawn.texts]
    assert texts.count("0") == 3          # random_matched_b1 (2 settings) and register (polling)
    assert texts.count("n/a") == 1        # register under vqa: no included image


def test_a_condition_equal_to_all_image_is_drawn_once(drawn):
    ticks = [t.get_text() for t in drawn.get_xticklabels()]
    assert not any(t.startswith("random_n36") for t in ticks), ticks
    assert any(t.startswith("all_image = random_n36") for t in ticks), ticks


def _capture(monkeypatch, module):
    figures = []
    monkeypatch.setattr(module, "save_figure", lambda figure, stem: figures.append(figure) or [])
    return figures


def test_layer_axes_state_one_numbering(monkeypatch, tmp_path):
    """Decoder layers count from 0 = the first block on every Kaduri and N3 axis; N2's hidden
    states say that 0 is the embedding output."""
    import vlminterp.plots.kaduri as kaduri
    from vlminterp.plots.organism import DECODER_LAYER, HIDDEN_STATE

    figures = _capture(monkeypatch, kaduri)
    attention = pd.DataFrame([dict(layer=layer, group=group, mean=0.5, low=0.4, high=0.6, key_share=0.5, n_images=2)
                              for layer in (0, 1) for group in ("image", "query")])
    layers = pd.DataFrame({"band": [0, 1], "layer_start": [0, 1], "layer_end": [0, 1], "accuracy": [0.5, 0.7],
                           "low": [0.3, 0.5], "high": [0.7, 0.9], "chance": [0.2, 0.2], "n_mentions": [10, 10]})
    kaduri.plot_attention_fractions(attention, tmp_path / "k1")
    kaduri.plot_localization(layers, layers, tmp_path / "k3")
    labels = [axis.get_xlabel() for figure in figures for axis in figure.axes if axis.get_xlabel()]
    assert labels and all(DECODER_LAYER in label for label in labels), labels
    assert "embedding output" in HIDDEN_STATE and "0 = first block" in DECODER_LAYER


def test_k4_two_percent_rings_stay_visible_over_five_percent(monkeypatch, tmp_path):
    """On a 36-token image the top 2% and top 5% are one token each: the same point. The 2% marker
    is a larger hollow ring drawn above the filled 5% one."""
    import vlminterp.plots.kaduri as kaduri

    figures = _capture(monkeypatch, kaduri)
    rows = [dict(method="image_topk", label=f"image top {k}", setting="random", accuracy=0.75,
                 accuracy_low=0.7, accuracy_high=0.8, context_tokens=1, n_questions=100) for k in ("2%", "5%")]
    kaduri.plot_reprompting(pd.DataFrame(rows), tmp_path / "k4")
    lines = {container.get_label(): container.lines[0] for container in figures[0].axes[0].containers}
    two, five = lines["image top 2%"], lines["image top 5%"]
    assert two.get_zorder() > five.get_zorder()
    assert two.get_markersize() > five.get_markersize() and two.get_fillstyle() == "none"
