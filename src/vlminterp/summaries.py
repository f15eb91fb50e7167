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
