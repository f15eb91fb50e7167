"""Summary tables of the experiments' tables, read by both the experiments (paper comparison, method
validation) and the figures (`plots/`), which import nothing from `experiments/`."""
from __future__ import annotations

import pandas as pd

from vlminterp.stats import grouped_mean_ci


def random_control(part: pd.DataFrame, buffer: int) -> str:
    """N1's random tokens as many as the object's: the count-matched random_matched_b{buffer}, or
    where the run has none (too few tokens outside the buffered object, as on a 4 x 4 image) the
    random_n{n} whose n is nearest object_b{buffer}'s mean count. `part`: `flip_summary`'s rows of
    one setting, by condition."""
    matched = f"random_matched_b{buffer}"
    sweep = [c for c in part.index if c.startswith("random_n")]
    if matched in part.index or not sweep or f"object_b{buffer}" not in part.index:
        return matched
    count = part.loc[f"object_b{buffer}", "mean_tokens"]
    return min(sweep, key=lambda c: (abs(int(c[len("random_n"):]) - count), int(c[len("random_n"):])))


def headline_buffer(conditions) -> int:
    """N1's headline buffer among `conditions`: 1 where the run has object_b1, else its smallest
    object_b{n} (0 without any)."""
    buffers = sorted(int(c.rsplit("_b", 1)[1]) for c in conditions if c.startswith("object_b"))
    return 1 if 1 in buffers else (buffers[0] if buffers else 0)


def flip_summary(table: pd.DataFrame, *, seed: int = 0, n_resamples: int = 2000) -> pd.DataFrame:
    """N1: flip rate per setting x condition over included images, with bootstrap 95% intervals."""
    included = table[table["included"].astype(bool) & (table["condition"] != "none")]
    summary = grouped_mean_ci(included, by=["setting", "condition"], value="flipped", seed=seed,
                              n_resamples=n_resamples)
    tokens = included.groupby(["setting", "condition"])["n_tokens"].mean().rename("mean_tokens").reset_index()
    return summary.merge(tokens, on=["setting", "condition"], how="left")


def flip_by_category(table: pd.DataFrame) -> pd.DataFrame:
    """N1: flip rate per setting x condition x target category over included images; columns
    setting, condition, category, value, n (rows), n_images."""
    included = table[table["included"].astype(bool) & (table["condition"] != "none")]
    rows = [{"setting": setting, "condition": condition, "category": category,
             "value": float(part["flipped"].astype(float).mean()), "n": len(part),
             "n_images": int(part["image_id"].nunique())}
            for (setting, condition, category), part in included.groupby(["setting", "condition", "category"])]
    return pd.DataFrame(rows, columns=["setting", "condition", "category", "value", "n", "n_images"])


def method_label(method: str, k_fraction: float) -> str:
    """"image_topk 5%" style label of a method (k as a percentage of the image tokens)."""
    return method if pd.isna(k_fraction) else f"{method} {100 * k_fraction:g}%"


def blind_flip_rate(table: pd.DataFrame, setting: str = "vqa") -> tuple[float, str] | None:
    """N1 VQA's chance: the flip rate of a blind answerer, one that gives the same answer whatever
    the image (the commonest target name among the included images, the best such answer): 1 -
    that name's share. None without included images."""
    rows = table[(table["setting"] == setting) & (table["condition"] == "none") & table["included"].astype(bool)]
    shares = rows.drop_duplicates("image_id")["category"].value_counts(normalize=True)
    return (1.0 - float(shares.iloc[0]), str(shares.index[0])) if len(shares) else None


def ablation_summary(table: pd.DataFrame, *, seed: int = 0, n_resamples: int = 2000) -> pd.DataFrame:
    """N1's summary table: `flip_summary`, with VQA's `chance` (`blind_flip_rate`) and the blind
    answer it assumes (`chance_answer`) on the VQA rows (empty on the others: polling and
    generative have no such line)."""
    summary = flip_summary(table, seed=seed, n_resamples=n_resamples)
    blind = blind_flip_rate(table, "vqa")
    vqa = summary["setting"] == "vqa"
    summary["chance"] = float("nan")
    summary["chance_answer"] = ""
    if blind is not None:
        summary.loc[vqa, "chance"], summary.loc[vqa, "chance_answer"] = blind
    return summary


LENS_MEASURES = ("name_in_topk", "name_rank1", "name_top1")


def lens_curves_summary(scores: pd.DataFrame, *, seed: int = 0, n_resamples: int = 2000) -> pd.DataFrame:
    """N2's curves: per measure x region x layer, the mean over cells' images with a 95% bootstrap
    interval (`grouped_mean_ci`); columns measure, region, layer, mean, low, high, n."""
    parts = [grouped_mean_ci(scores, by=["region", "layer"], value=m, seed=seed, n_resamples=n_resamples)
             .assign(measure=m) for m in LENS_MEASURES if m in scores.columns]
    columns = ["measure", "region", "layer", "mean", "low", "high", "n"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def blocking_drops_summary(table: pd.DataFrame, *, seed: int = 0, n_resamples: int = 2000) -> pd.DataFrame:
    """N3's drops over the included images, 95% bootstrap intervals: per block set and sliding
    window's first layer (window_kind "sliding", `window_start`), and per block set and fixed
    window (window_kind "fixed", `window`); columns window_kind, block_set, window_start, window,
    mean, low, high, n."""
    included = table[table["included"].astype(bool) & (table["block_set"] != "none")]
    parts = []
    for kind, key in (("sliding", "window_start"), ("fixed", "window")):
        rows = included[included["window_kind"] == kind]
        if len(rows):
            parts.append(grouped_mean_ci(rows, by=["block_set", key], value="drop", seed=seed,
                                         n_resamples=n_resamples).assign(window_kind=kind))
    columns = ["window_kind", "block_set", "window_start", "window", "mean", "low", "high", "n"]
    return pd.concat(parts, ignore_index=True).reindex(columns=columns) if parts else pd.DataFrame(columns=columns)
