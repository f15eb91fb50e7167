"""Figures a reader can trust at a glance (#27): in N1's flip rates a 0% bar is labelled and a
missing one says n/a, a condition ablating exactly all_image's tokens (random_n36 on a 36-token
image) is drawn once, the VQA panel and K4 carry their chance lines, N1 stays narrow enough to
read in the report, and K4's 2% and 5% are merged when they keep the same tokens."""
from __future__ import annotations

import pandas as pd
import pytest

from vlminterp.summaries import ablation_summary


CATEGORIES = {1: "circle", 2: "circle", 3: "square"}   # a blind answer "circle" is right on 2 of 3


def _ablation_table():
    rows = []
    for image_id, category in CATEGORIES.items():
        for setting in ("polling", "vqa"):
            rows.append(dict(image_id=image_id, category=category, setting=setting, condition="none", included=True,
                             flipped=False, n_tokens=0, excluded=""))
            for condition, n_tokens, flipped in (("object_b1", 4, True), ("random_matched_b1", 4, False),
                                                 ("random_n36", 36, True), ("all_image", 36, True)):
                rows.append(dict(image_id=image_id, category=category, setting=setting, condition=condition,
                                 included=True, flipped=flipped, n_tokens=n_tokens, excluded=""))
    table = pd.DataFrame(rows)
    # register tokens: none found for vqa (no included image there): its bar is missing, not 0
    register = table[(table.condition == "object_b1")].assign(condition="register", n_tokens=2, flipped=False)
    register.loc[register.setting == "vqa", "included"] = False
    return pd.concat([table, register], ignore_index=True)


def _draw_flips(monkeypatch, tmp_path, table):
    import vlminterp.plots.neo as neo

    figures = _capture(monkeypatch, neo)
    neo.plot_flip_rates(ablation_summary(table, n_resamples=50), table, tmp_path / "flips")
    return figures[0]


@pytest.fixture()
def drawn(monkeypatch, tmp_path):
    return _draw_flips(monkeypatch, tmp_path, _ablation_table())


def test_zero_bars_are_labelled_and_missing_ones_say_so(drawn):
    texts = [t.get_text() for axis in drawn.axes for t in axis.texts]
    assert texts.count("0") == 3          # random_matched_b1 (2 settings) and register (polling)
    assert texts.count("n/a") == 1        # register under vqa: no included image


def _ticks(figure):
    return [t.get_text() for t in figure.axes[-1].get_xticklabels()]


def test_a_condition_equal_to_all_image_is_drawn_once(drawn):
    ticks = _ticks(drawn)
    assert not any(t.startswith("random_n36") for t in ticks), ticks
    assert any(t.startswith("all_image = random_n36") for t in ticks), ticks


def _capture(monkeypatch, module):
    """The figures `module`'s plot functions would save, kept open for inspection."""
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


def _horizontal_lines(axis):
    return [line for line in axis.get_lines() if len(set(line.get_ydata())) == 1 and line.get_label() != "_nolegend_"]


def test_vqa_panel_has_the_blind_answerers_chance_line(drawn):
    """VQA: a blind answer ("circle" for every image) is right on 2 of the 3 included images, so
    its flip rate is 1/3; polling's flip rate (target questions only) has no chance line."""
    panels = {axis.get_title(loc="left").split()[0]: axis for axis in drawn.axes}
    assert set(panels) == {"polling", "vqa"}, "one panel per setting"
    (chance,) = [line for line in _horizontal_lines(panels["vqa"]) if "chance" in line.get_label()]
    assert chance.get_ydata()[0] == pytest.approx(1 / 3)
    assert '"circle"' in chance.get_label()
    assert not [line for line in _horizontal_lines(panels["polling"]) if "chance" in line.get_label()]


def test_n1_figure_stays_readable_at_the_reports_width(monkeypatch, tmp_path):
    """The default run's 17 conditions in 3 settings: the saved figure is at most 10 inches wide
    (the report scales an image to its content pane, about 1000 px: 8 pt text stays >= 10 px)."""
    conditions = ([f"object_b{b}" for b in range(3)] + [f"random_matched_b{b}" for b in range(3)]
                  + [f"random_n{n}" for n in (5, 10, 20)] + [f"high_gradient_b{b}" for b in range(3)]
                  + [f"high_gradient_n{n}" for n in (5, 10, 20)] + ["all_image", "register"])
    rows = []
    for image_id, category in CATEGORIES.items():
        for setting in ("generative", "polling", "vqa"):
            rows.append(dict(image_id=image_id, category=category, setting=setting, condition="none",
                             included=True, flipped=False, n_tokens=0, excluded=""))
            rows += [dict(image_id=image_id, category=category, setting=setting, condition=c, included=True,
                          flipped=bool(i % 2), n_tokens=i + 1, excluded="") for i, c in enumerate(conditions)]
    figure = _draw_flips(monkeypatch, tmp_path, pd.DataFrame(rows))
    width = figure.get_tightbbox(figure.canvas.get_renderer()).width
    assert width <= 10, f"{width:.1f} inches"
    assert len(_ticks(figure)) == len(conditions)
    assert min(t.get_fontsize() for t in figure.axes[-1].get_xticklabels()) >= 8


def test_duplicate_conditions_are_judged_per_image():
    """Equal counts merge only within one ranking or with the whole image, and on every image."""
    from vlminterp.plots.neo import duplicate_conditions

    def table(counts):
        return pd.DataFrame([dict(image_id=image_id, setting="vqa", condition=c, n_tokens=n)
                             for image_id, row in enumerate(counts) for c, n in row.items()])

    same = {"all_image": 36, "high_gradient_n36": 36, "high_gradient_n4": 4, "high_gradient_b0": 4,
            "object_b0": 4, "random_n4": 4}
    assert duplicate_conditions(table([same, same])) == {"high_gradient_n36": "all_image",
                                                         "high_gradient_n4": "high_gradient_b0"}
    other = {**same, "high_gradient_b0": 5, "object_b0": 5, "all_image": 40}   # a bigger object and image
    assert duplicate_conditions(table([same, other])) == {}


def _k4_answers(image_tokens):
    """Per-question answers of two image_topk fractions with k = floor(f n) (at least 1)."""
    rows = []
    for image_id, n in enumerate(image_tokens):
        for fraction in (0.02, 0.05):
            k = max(1, int(fraction * n))
            for question, (answer, correct) in enumerate((("yes", True), ("no", image_id % 2 == 0))):
                rows.append(dict(image_id=image_id, question_id=question, answer=answer, negative_type=(
                    "positive" if answer == "yes" else "random"), method="image_topk", k_fraction=fraction,
                    k_tokens=k, context_tokens=k, input_tokens=k + 10,
                    predicted=answer if correct else ("no" if answer == "yes" else "yes"), correct=correct))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("image_tokens, merged", [((36, 36), True), ((36, 100), False)])
def test_k4_fractions_keeping_the_same_tokens_are_drawn_once(monkeypatch, tmp_path, image_tokens, merged):
    """On 36-token images 2% and 5% keep one token each: one point, labelled with both; with a
    100-token image (2 vs 5 tokens there) both are drawn."""
    import vlminterp.plots.kaduri as kaduri
    from vlminterp.experiments.kaduri.reprompt import summarize_reprompting

    figures = _capture(monkeypatch, kaduri)
    answers = _k4_answers(image_tokens)
    kaduri.plot_reprompting(summarize_reprompting(answers, seed=0), tmp_path / "k4", answers=answers)
    labels = [c.get_label() for c in figures[0].axes[0].containers]
    expected = ["image_topk 2% = 5% (1 token)"] if merged else ["image_topk 2%", "image_topk 5%"]
    assert labels == expected


def test_k4_panels_carry_a_labelled_chance_line(monkeypatch, tmp_path):
    """Each POPE setting is balanced: a constant answer scores 50%, drawn and named in the legend."""
    import vlminterp.plots.kaduri as kaduri

    figures = _capture(monkeypatch, kaduri)
    rows = [dict(method="prompt_cache", label="prompt_cache", setting=s, accuracy=0.5, accuracy_low=0.4,
                 accuracy_high=0.6, context_tokens=15, n_questions=100) for s in ("random", "popular")]
    kaduri.plot_reprompting(pd.DataFrame(rows), tmp_path / "k4")
    for axis in figures[0].axes:
        (chance,) = [line for line in _horizontal_lines(axis) if "chance" in line.get_label()]
        assert chance.get_ydata()[0] == 0.5


def test_organism_evaluation_marks_each_tasks_chance(monkeypatch, tmp_path):
    """Chance = the commonest expected answer given to every question: polling 2 yes / 2 no -> 0.5,
    colour 3 of 4 "red" -> 0.75; describe has none. The figure draws exactly these."""
    import vlminterp.plots.organism as organism
    from vlminterp.organism.evaluate import summarize_evaluation

    figures = _capture(monkeypatch, organism)
    table = pd.DataFrame({"task": ["describe"] * 2 + ["polling"] * 4 + ["color"] * 4,
                          "expected": ["There is a red circle."] * 2 + ["Yes", "No", "yes", "no"]
                          + ["red", "Red", "red ", "blue"], "correct": True, "correct_strict": True})
    summary = summarize_evaluation(table)
    organism.plot_evaluation(summary, tmp_path / "evaluation")
    (dashes,) = [c for c in figures[0].axes[0].collections if "chance" in c.get_label()]
    chance = dict(zip(summary["task"], summary["chance"]))
    assert chance["polling"] == 0.5 and chance["color"] == 0.75 and pd.isna(chance["describe"])
    import numpy as np

    heights = np.ma.masked_invalid(np.ma.asarray(dashes.get_offsets())[:, 1])
    assert sorted(np.ma.compressed(heights)) == [0.5, 0.75]


def test_k4_figure_stays_readable_at_the_reports_width(monkeypatch, tmp_path):
    """Three POPE panels and a nine-entry legend fit in 11 inches (the legend goes below)."""
    import vlminterp.plots.kaduri as kaduri

    figures = _capture(monkeypatch, kaduri)
    rows = [dict(method=method, label=method, setting=setting, accuracy=0.7, accuracy_low=0.6, accuracy_high=0.8,
                 context_tokens=1 + i, n_questions=100)
            for setting in ("random", "popular", "adversarial") for i, method in enumerate(kaduri.METHOD_STYLE)]
    kaduri.plot_reprompting(pd.DataFrame(rows), tmp_path / "k4")
    width = figures[0].get_tightbbox(figures[0].canvas.get_renderer()).width
    assert width <= 11, f"{width:.1f} inches"
