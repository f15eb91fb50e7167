"""Null controls and per-category breakdowns beside the headline numbers (issue 22, point 10).

    best = blind_answerers(questions, seed=0)          # always-yes / always-no / answer prior
    f1 = category_blind_f1(knockout, "image->generated", seed=0)   # K2 vs other images' references

Each control is computed from the run's own tables: blind answerers (K4, N1 polling), the
category-blind F1 (K2), permuted mention flips (N1 generative), the image-blind VQA answerer (N1
VQA), permuted labels (K3); `flag` turns one into the comparison table's flag column. The summary
rules write each experiment's controls as a table (`ablation_controls`, `knockout_controls`,
`localization_controls`, `reprompt_controls`: CONTROL_COLUMNS, one control per setting and
condition), which the paper comparison reads back with `control_of`. What each measures and why:
docs/PROTOCOLS.md, the null controls of the paper comparison.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from vlminterp.experiments.kaduri.localization import DEPTH_GROUPING, depth_band, scored_rows
from vlminterp.experiments.kaduri.reprompt import MEAN_SETTING, SUMMARY_SETTINGS, setting_weights
from vlminterp.stats import cluster_bootstrap_ci
from vlminterp.summaries import headline_buffer, random_control

BLIND_ANSWERERS = ("always_yes", "always_no", "answer_prior")
CONTROL_OFF_CHANCE, AT_CONTROL = "control_off_chance", "at_control"
CONTROL_FIELDS = ("control", "control_value", "control_low", "control_high", "chance")
#: A controls table: the control of each setting and condition ("" where it holds for all of them).
CONTROL_COLUMNS = ("setting", "condition", *CONTROL_FIELDS)
NO_CONTROL = {"control": "", "control_value": np.nan, "control_low": np.nan, "control_high": np.nan,
              "chance": np.nan}


def answer_prior(questions: pd.DataFrame) -> pd.Series:
    """Leave-one-image-out majority answer per category ("yes" / "no"; ties and unseen -> "no").

    `questions` needs image_id, category and answer ("yes" / "no")."""
    yes = questions["answer"].eq("yes").astype(int)
    keys = [questions["category"], questions["image_id"]]
    per_image = pd.DataFrame({"yes": yes, "n": 1}).groupby(keys).sum()
    per_category = per_image.groupby(level=0).sum()
    own = per_image.reindex(pd.MultiIndex.from_arrays(keys)).to_numpy()
    total = per_category.reindex(questions["category"]).to_numpy()
    other_yes, other_n = total[:, 0] - own[:, 0], total[:, 1] - own[:, 1]
    return pd.Series(np.where(2 * other_yes > other_n, "yes", "no"), index=questions.index)


def blind_answerers(questions: pd.DataFrame, weights: pd.Series | None = None, seed: int = 0,
                    sets: pd.Series | None = None) -> pd.DataFrame:
    """Accuracy of each of BLIND_ANSWERERS on `questions` (image_id, category, answer), with a 95%
    interval resampling images: columns answerer, accuracy, low, high, n_questions, n_images.
    `sets` (one label per row): the answer prior is fitted within each set (e.g. each POPE strategy
    of a mean over strategies, whose rows repeat the positives once per strategy)."""
    w = np.ones(len(questions)) if weights is None else np.asarray(weights, dtype=float)
    truth = questions["answer"].to_numpy()
    if sets is None:
        prior = answer_prior(questions)
    else:
        labels = pd.Series(np.asarray(sets), index=questions.index)
        prior = pd.concat([answer_prior(part) for _, part in questions.groupby(labels, sort=False)])
        prior = prior.loc[questions.index] if questions.index.is_unique else prior
    predictions = {"always_yes": np.full(len(truth), "yes"), "always_no": np.full(len(truth), "no"),
                   "answer_prior": prior.to_numpy()}
    rows = []
    for name in BLIND_ANSWERERS:
        correct = (predictions[name] == truth).astype(float)
        if len(correct) == 0:
            rows.append({"answerer": name, "accuracy": np.nan, "low": np.nan, "high": np.nan, "n_questions": 0,
                         "n_images": 0})
            continue
        low, high = cluster_bootstrap_ci(correct, questions["image_id"].to_numpy(), seed=seed, weights=w)
        rows.append({"answerer": name, "accuracy": float(np.sum(w * correct) / np.sum(w)), "low": low, "high": high,
                     "n_questions": len(correct), "n_images": int(questions["image_id"].nunique())})
    return pd.DataFrame(rows)


def best_blind(questions: pd.DataFrame, weights: pd.Series | None = None, seed: int = 0,
               sets: pd.Series | None = None) -> dict:
    """The blind answerer with the highest accuracy: {control, control_value, control_low,
    control_high, chance} (chance 0.5, the accuracy of a coin)."""
    table = blind_answerers(questions, weights, seed, sets)
    summary = ", ".join(f"{r.answerer} {r.accuracy:.3f}" for r in table.itertuples())
    best = table.loc[table["accuracy"].fillna(-1).idxmax()] if len(table) else None
    if best is None or np.isnan(best["accuracy"]):
        return {"control": "blind answerers: no questions", "control_value": np.nan, "control_low": np.nan,
                "control_high": np.nan, "chance": 0.5}
    return {"control": f"best blind answerer ({summary})", "control_value": float(best["accuracy"]),
            "control_low": float(best["low"]), "control_high": float(best["high"]), "chance": 0.5}


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of range(n) with no fixed point (n >= 2; n < 2 -> identity)."""
    if n < 2:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        if not np.any(order == np.arange(n)):
            return order


def _categories(value) -> set[str]:
    if not isinstance(value, str):
        return set()
    return {c for c in value.split(";") if c}


def _f1(candidate: set[str], reference: set[str]) -> float:
    matched = len(candidate & reference)
    if not candidate and not reference:
        return 1.0
    precision = matched / len(candidate) if candidate else 0.0
    recall = matched / len(reference) if reference else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def category_blind_f1(knockout: pd.DataFrame, condition: str, seed: int = 0) -> dict:
    """K2's null control (module docstring) for `condition` of the judged K2 table (one row per
    image x condition with the judge's matched / hallucinated / missed lists): each image's
    candidate categories (matched + hallucinated) against the reference categories (matched +
    missed) of the image a seeded derangement assigns it, over images whose reference (and whose
    assigned reference) names a category, as the headline's mean. Returns {control, control_value,
    control_low, control_high, chance}: chance is the control value itself."""
    part = knockout[knockout["condition"] == condition].drop_duplicates("image_id")
    part = part[part["n_reference"] > 0].reset_index(drop=True)
    label = f"category-blind F1: {condition} scored against another image's unablated description"
    if len(part) < 2:
        return {"control": f"{label}: fewer than 2 images", "control_value": np.nan, "control_low": np.nan,
                "control_high": np.nan, "chance": np.nan}
    candidates = [_categories(m) | _categories(h) for m, h in zip(part["matched"], part["hallucinated"])]
    references = [_categories(m) | _categories(x) for m, x in zip(part["matched"], part["missed"])]
    order = derangement(len(part), seed)
    scores = np.array([_f1(candidates[i], references[j]) for i, j in enumerate(order)])
    low, high = cluster_bootstrap_ci(scores, part["image_id"].to_numpy(), seed=seed)
    value = float(scores.mean())
    return {"control": label, "control_value": value, "control_low": low, "control_high": high, "chance": value}


# ---- N1 generative and VQA ------------------------------------------------------------------------
def _included_targets(ablation: pd.DataFrame, setting: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the setting's target rows that are not excluded, its included unablated rows: one per
    image, in image id order)."""
    rows = ablation[ablation["setting"] == setting]
    if "question_kind" in rows:
        rows = rows[rows["question_kind"] == "target"]
    if "excluded" in rows:
        rows = rows[rows["excluded"].fillna("") == ""]
    base = rows[(rows["condition"] == "none") & rows["included"].astype(bool)]
    return rows, base.drop_duplicates("image_id").sort_values("image_id").reset_index(drop=True)


def permuted_mention_flips(ablation: pd.DataFrame, mentions: Callable[[str], set[str]], seed: int = 0,
                           setting: str = "generative") -> pd.DataFrame:
    """N1 generative's permuted-label flips (module docstring) from the N1 table (`answer` holds the
    descriptions; `mentions(text)` the categories a text names, the stage's vocabulary): one row per
    ablated condition with flip_rate, low, high (95%, resampling images), n_pairs (images whose
    unablated description names their assigned category) and n_images (included images permuted)."""
    columns = ["condition", "flip_rate", "low", "high", "n_pairs", "n_images"]
    if "answer" not in ablation:
        return pd.DataFrame(columns=columns)
    rows, base = _included_targets(ablation, setting)
    assigned = base["category"].to_numpy()[derangement(len(base), seed)]  # one image: its own, dropped below

    def texts(answers) -> list[set[str]]:
        return [mentions(a) if isinstance(a, str) else set() for a in answers]

    named = [a != own and a in said for a, own, said in zip(assigned, base["category"], texts(base["answer"]))]
    pairs = pd.Series(assigned, index=base["image_id"])[np.asarray(named, dtype=bool)]
    out = []
    for condition, part in rows[rows["condition"] != "none"].groupby("condition", sort=False):
        part = part.drop_duplicates("image_id").set_index("image_id").reindex(pairs.index).dropna(subset=["condition"])
        flipped = np.array([c not in said for c, said in zip(pairs.loc[part.index], texts(part["answer"]))],
                           dtype=float)
        low, high = cluster_bootstrap_ci(flipped, part.index.to_numpy(), seed=seed)
        out.append({"condition": condition, "flip_rate": float(flipped.mean()) if len(flipped) else np.nan,
                    "low": low, "high": high, "n_pairs": len(flipped), "n_images": len(base)})
    return pd.DataFrame(out, columns=columns)


def mention_control(flips: pd.DataFrame, condition: str, base_condition: str) -> dict:
    """The control dict of an N1 generative row: `condition`'s permuted-label flips, against the
    base rate of `base_condition` (the count-matched random tokens) on the same pairs."""
    by = flips.set_index("condition")
    label = (f"permuted labels: {condition} scored against another image's target, over descriptions naming it "
             f"(chance: {base_condition}'s rate on the same pairs)")
    if condition not in by.index or by.loc[condition, "n_pairs"] == 0:
        return {"control": f"{label}: no such pair", "control_value": np.nan, "control_low": np.nan,
                "control_high": np.nan, "chance": np.nan}
    got = by.loc[condition]
    chance = float(by.loc[base_condition, "flip_rate"]) if base_condition in by.index else np.nan
    return {"control": f"{label}; {int(got['n_pairs'])} pairs", "control_value": float(got["flip_rate"]),
            "control_low": float(got["low"]), "control_high": float(got["high"]), "chance": chance}


def category_prior(categories) -> np.ndarray:
    """Leave-one-out answer prior: for each unit, the commonest category among the OTHER units
    (ties: the first by name)."""
    values = np.asarray(categories, dtype=object)
    names, codes = np.unique(values.astype(str), return_inverse=True)
    counts = np.bincount(codes, minlength=len(names))
    others = np.tile(counts, (len(values), 1))
    others[np.arange(len(values)), codes] -= 1
    return names[others.argmax(axis=1)]


def image_blind_vqa(ablation: pd.DataFrame, seed: int = 0, blind: str = "all_image") -> dict:
    """N1 VQA's null control (module docstring): the share of included targets whose first piece
    the `blind` condition still answers, with a 95% interval resampling images; chance: the answer
    prior's share on the same targets."""
    rows, base = _included_targets(ablation, "vqa")
    answered = rows[rows["condition"] == blind].drop_duplicates("image_id").set_index("image_id")
    answered = answered.reindex(base["image_id"]).dropna(subset=["condition"])
    label = f"image-blind answerer: {blind} (every image token replaced), share of included targets it still names"
    if len(answered) < 2:
        return {"control": f"{label}: fewer than 2 targets", "control_value": np.nan, "control_low": np.nan,
                "control_high": np.nan, "chance": np.nan}
    hits = answered["success"].astype(bool).to_numpy(dtype=float)
    low, high = cluster_bootstrap_ci(hits, answered.index.to_numpy(), seed=seed)
    targets = base.set_index("image_id").loc[answered.index, "category"].to_numpy()
    prior = float(np.mean(category_prior(targets) == targets.astype(str)))
    n = len(set(targets))
    return {"control": f"{label} (chance: the answer prior, each target answered with the commonest other target; "
                       f"1/{n} = {1 / n:.3f} for a uniform guess)",
            "control_value": float(hits.mean()), "control_low": low, "control_high": high, "chance": prior}


def flag(control: dict, low: float, high: float, *, control_sets_chance: bool = False) -> str:
    """The comparison table's flag (module docstring). `control_sets_chance`: the control IS chance
    (K2), so the value is flagged when its interval holds the control value."""
    value, c_low, chance = control.get("control_value", np.nan), control.get("control_low", np.nan), \
        control.get("chance", np.nan)
    if control_sets_chance:
        if np.isnan(value) or np.isnan(low) or np.isnan(high):
            return ""
        return AT_CONTROL if low <= value <= high else ""
    if np.isnan(c_low) or np.isnan(chance):
        return ""
    return CONTROL_OFF_CHANCE if c_low > chance + 1e-12 else ""


# ---- the controls tables of the summary rules -----------------------------------------------------
def control_table(rows) -> pd.DataFrame:
    """A controls table (CONTROL_COLUMNS) of (setting, condition, control dict) triples."""
    return pd.DataFrame([{"setting": setting, "condition": condition, **{k: control[k] for k in CONTROL_FIELDS}}
                         for setting, condition, control in rows], columns=list(CONTROL_COLUMNS))


def control_of(table: pd.DataFrame, setting: str = "", condition: str = "") -> dict | None:
    """The control dict of `setting` and `condition` in a controls table, None when it has none."""
    keys = table[["setting", "condition"]].astype(object).fillna("")   # "" reads back from CSV as NaN
    found = table[(keys["setting"] == setting) & (keys["condition"] == condition)]
    if found.empty:
        return None
    row = found.iloc[0]
    return {"control": "" if pd.isna(row["control"]) else str(row["control"]),
            **{k: float(row[k]) for k in CONTROL_FIELDS[1:]}}


def polling_control(ablation: pd.DataFrame, seed: int = 0) -> dict:
    """N1 polling: always-yes / always-no on the unablated polling questions (target: "yes",
    absent: "no"). The answer prior needs the absent category's name, which the N1 table does not keep."""
    rows = ablation[(ablation["setting"] == "polling") & (ablation["condition"] == "none")]
    if "excluded" in rows:
        rows = rows[rows["excluded"].fillna("") == ""]
    questions = pd.DataFrame({"image_id": rows["image_id"].to_numpy(),
                              "category": rows["question_kind"].to_numpy(),  # no category: the prior is off
                              "answer": np.where(rows["question_kind"].eq("target"), "yes", "no")})
    table = blind_answerers(questions, seed=seed)
    table = table[table["answerer"] != "answer_prior"]
    if table.empty or table["accuracy"].isna().all():
        return {**NO_CONTROL, "control": "always-yes / always-no: no polling questions"}
    best = table.loc[table["accuracy"].idxmax()]
    summary = ", ".join(f"{r.answerer} {r.accuracy:.3f}" for r in table.itertuples())
    return {"control": f"best blind answerer on the unablated polling questions ({summary})",
            "control_value": float(best["accuracy"]), "control_low": float(best["low"]),
            "control_high": float(best["high"]), "chance": 0.5}


def ablation_controls(ablation: pd.DataFrame, summary: pd.DataFrame, mentions: Callable[[str], set[str]] | None,
                      seed: int = 0) -> pd.DataFrame:
    """N1's controls table: polling's blind answerers and VQA's image-blind answerer (condition
    ""), generative's permuted-label flips of each ablated condition against the rate of the
    count-matched random tokens of the headline buffer (`summary`: N1's flip summary) on the same
    pairs. `mentions`: the stage's vocabulary (None: no generative rows)."""
    rows = [("polling", "", polling_control(ablation, seed)), ("vqa", "", image_blind_vqa(ablation, seed=seed))]
    if mentions is not None:
        flips = permuted_mention_flips(ablation, mentions, seed=seed)
        part = summary[summary["setting"] == "generative"].set_index("condition")
        base = random_control(part, headline_buffer(part.index))
        rows += [("generative", condition, mention_control(flips, condition, base))
                 for condition in flips["condition"]]
    return control_table(rows)


def knockout_controls(judged: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """K2's controls table: the category-blind F1 of each condition of a judged K2 table."""
    return control_table(("", condition, category_blind_f1(judged, condition, seed=seed))
                         for condition in pd.unique(judged["condition"]))


def depth_setting(band: int) -> str:
    """The controls table's setting of K3's eighth `band` of the depth."""
    return f"{DEPTH_GROUPING} {band}"


def localization_controls(peaks: pd.DataFrame, eighths: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """K3's controls table, one row per eighth of the depth (`eighths`: its accuracy rows, band and
    chance): the permuted-label control (each peak scored against another image's object,
    `kaduri.localization.permuted_label`) against that object's uniform-peak chance; the
    uniform-peak chance alone when the table has no permuted columns."""
    data = scored_rows(peaks[peaks["layer"] >= 0])
    data = data.assign(band=depth_band(data["layer"]))
    rows = []
    for band, chance in zip(eighths["band"], eighths["chance"]):
        part = data[data["band"] == band]
        if "hit_permuted" in part and part["hit_permuted"].notna().any():
            per_mention = part.dropna(subset=["hit_permuted"]).groupby(["image_id", "mention"])[
                ["hit_permuted", "chance_permuted"]].mean()
            low, high = cluster_bootstrap_ci(per_mention["hit_permuted"].to_numpy(dtype=float),
                                             per_mention.index.get_level_values("image_id"), seed=seed)
            control = {"control": "permuted labels: each peak scored against another image's object (its chance "
                                  "beside)", "control_value": float(per_mention["hit_permuted"].mean()),
                       "control_low": low, "control_high": high, "chance": float(per_mention["chance_permuted"].mean())}
        else:
            control = {"control": "uniform-peak chance (share of the image's tokens that count as hits); no "
                                  "permuted labels in this table", "control_value": float(chance),
                       "control_low": np.nan, "control_high": np.nan, "chance": float(chance)}
        rows.append((depth_setting(int(band)), "", control))
    return control_table(rows)


def reprompt_controls(answers: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """K4's controls table, one row per setting (`kaduri.reprompt.SUMMARY_SETTINGS`): blind
    answerers on the setting's questions; for the mean, on each strategy's own set (the prior
    fitted within it) with weight 1/3 per row, so that it is the mean of the strategies' controls."""
    questions = answers.drop_duplicates("question_id")
    if questions.empty:
        return control_table([])
    rows = []
    for setting in SUMMARY_SETTINGS:
        if setting != MEAN_SETTING:
            weights = setting_weights(questions, setting)
            control = best_blind(questions[weights > 0], weights[weights > 0], seed=seed)
        else:
            parts = [questions[setting_weights(questions, s) > 0].assign(strategy=s) for s in SUMMARY_SETTINGS[:-1]]
            stacked = pd.concat(parts, ignore_index=True)
            control = best_blind(stacked, pd.Series(1.0, index=stacked.index), seed=seed, sets=stacked["strategy"])
        rows.append((setting, "", control))
    return control_table(rows)
