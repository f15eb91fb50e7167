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


def flip_summary(table: pd.DataFrame, *, seed: int = 0, n_resamples: int = 2000) -> pd.DataFrame:
    """N1: flip rate per setting x condition over included images, with bootstrap 95% intervals."""
    included = table[table["included"].astype(bool) & (table["condition"] != "none")]
    summary = grouped_mean_ci(included, by=["setting", "condition"], value="flipped", seed=seed,
                              n_resamples=n_resamples)
    tokens = included.groupby(["setting", "condition"])["n_tokens"].mean().rename("mean_tokens").reset_index()
    return summary.merge(tokens, on=["setting", "condition"], how="left")


def method_label(method: str, k_fraction: float) -> str:
    """"image_topk 5%" style label of a method (k as a percentage of the image tokens)."""
    return method if pd.isna(k_fraction) else f"{method} {100 * k_fraction:g}%"
