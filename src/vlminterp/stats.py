"""Summary statistics with uncertainty, shared by every figure and summary table.

    low, high = bootstrap_ci(flips, seed=0)             # 95% percentile bootstrap of the mean
    low, high = cluster_bootstrap_ci(hits, image_ids)   # ... resampling images, not mentions
    summary = grouped_mean_ci(df, by=["condition"], value="flipped", seed=0)
    low, high = wilson_interval(81, 263)                # 95% Wilson score interval of a proportion
    counts = excluded_counts(table)                     # {"object outside the crop": 2}: excluded units
    note = excluded_note(counts)                        # "2 excluded: object outside the crop (2)"
    axis.bar(x, mean, yerr=error_bars(mean, low, high))   # non-negative error bars for matplotlib

Every interval contains its estimate, also at 0% and 100% (where floating point would otherwise
leave the bound 1e-16 on the wrong side and matplotlib refuses a negative error bar).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, level: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (NaNs dropped; empty -> NaN, NaN)."""
    data = np.asarray(values, dtype=np.float64)
    data = data[~np.isnan(data)]
    if data.size == 0:
        return float("nan"), float("nan")
    if data.size == 1 or np.all(data == data[0]):
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    estimate = float(data.mean())
    return min(float(low), estimate), max(float(high), estimate)


def cluster_bootstrap_ci(values: Sequence[float] | np.ndarray, clusters: Sequence, *, level: float = 0.95,
                         n_resamples: int = 2000, seed: int = 0,
                         weights: Sequence[float] | np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` resampling whole clusters (e.g. the
    images a K3 mention belongs to) with replacement: each resample's statistic is the pooled mean
    over the units of its clusters. Units of one image are not independent; resampling units
    would make the interval too narrow. `weights` (optional, one per unit) make every statistic a
    weighted mean (e.g. K4's mean over POPE strategies, whose positives are shared by the three)."""
    data = np.asarray(values, dtype=np.float64)
    weight = np.ones_like(data) if weights is None else np.asarray(weights, dtype=np.float64)
    labels = pd.Series(list(clusters))
    keep = ~np.isnan(data)
    data, weight, labels = data[keep], weight[keep], labels[keep].to_numpy()
    if data.size == 0:
        return float("nan"), float("nan")
    estimate = float(np.sum(weight * data) / np.sum(weight))
    codes, _ = pd.factorize(labels)
    sums, counts = np.bincount(codes, weights=weight * data), np.bincount(codes, weights=weight)
    if sums.size == 1 or np.all(data == data[0]):
        return estimate, estimate
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, sums.size, size=(n_resamples, sums.size))
    means = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return min(float(low), estimate), max(float(high), estimate)


def grouped_mean_ci(df: pd.DataFrame, *, by: Sequence[str], value: str, level: float = 0.95,
                    n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean, bootstrap interval and count of `value` per group: columns by + mean, low, high, n."""
    rows = []
    for key, group in df.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        values = group[value].astype(float).to_numpy()
        low, high = bootstrap_ci(values, level=level, n_resamples=n_resamples, seed=seed)
        rows.append({**dict(zip(by, key)), "mean": float(np.nanmean(values)) if len(values) else np.nan,
                     "low": low, "high": high, "n": int(np.sum(~np.isnan(values)))})
    return pd.DataFrame(rows, columns=[*by, "mean", "low", "high", "n"])


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (z = 1.96: 95%); NaN, NaN when n is 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else min(p, max(0.0, centre - half))
    high = 1.0 if successes == n else max(p, min(1.0, centre + half))
    return low, high


def error_bars(estimate, low, high) -> np.ndarray:
    """matplotlib's `yerr` (2 x n: below, above) for estimates with interval [low, high]: never
    negative, 0 where the interval is unknown (NaN)."""
    estimate, low, high = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (estimate, low, high))
    return np.clip(np.nan_to_num(np.vstack([estimate - low, high - estimate])), 0.0, None)


def excluded_counts(table: pd.DataFrame, unit: Sequence[str] = ("image_id",)) -> dict[str, int]:
    """Reason -> number of distinct `unit`s (a target: image_id; a K3 mention: image_id, mention)
    whose rows carry a non-empty `excluded` reason (N1, N3, K3 tables); {} when none."""
    if "excluded" not in table or table.empty:
        return {}
    reasons = table.assign(excluded=table["excluded"].fillna("").astype(str))
    reasons = reasons.loc[reasons["excluded"] != "", [*unit, "excluded"]].drop_duplicates()
    return {str(k): int(v) for k, v in reasons["excluded"].value_counts().sort_index().items()}


def excluded_note(counts: dict[str, int]) -> str:
    """"3 excluded: object outside the crop (2), empty mask (1)" ("" when nothing was excluded)."""
    if not counts:
        return ""
    return f"{sum(counts.values())} excluded: " + ", ".join(f"{reason} ({n})" for reason, n in counts.items())
