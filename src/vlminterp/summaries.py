"""Summary tables of the experiments' tables, read by both the experiments (paper comparison, method
validation) and the figures (`plots/`), which import nothing from `experiments/`."""
from __future__ import annotations

import pandas as pd

from vlminterp.stats import grouped_mean_ci


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
