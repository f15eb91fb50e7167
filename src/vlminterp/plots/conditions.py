"""Conditions that measure the same thing, drawn once (#27).

    merged = identical_conditions(table, ranking=lambda c: "ig" if c.startswith("high_gradient") else None,
                                  full="all_image", keys=("image_id", "setting"))  # {dropped: kept}
    label = merged_label("all_image", merged)          # "all_image = random_n36, high_gradient_n36"

Two conditions are identical on an image when they touch the same token set. Tables record each
condition's token count per image, not the set; equal counts give equal sets when both conditions
take the top of one ranking (`ranking` names it: N1's high_gradient_*, K4's image_topk at two
fractions) or when one of them is the `full` condition (every image token: a condition with as
many tokens is the whole image, e.g. random_n36 on a 36-token image). A pair is merged only when
this holds on every key (image, setting) of the table, so a merged condition never hides a
different measurement.
"""
from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd


def identical_conditions(table: pd.DataFrame, *, ranking: Callable[[str], str | None], full: str | None = None,
                         condition: str = "condition", tokens: str = "n_tokens",
                         keys: Sequence[str] = ("image_id",), order: Sequence[str] | None = None) -> dict[str, str]:
    """{dropped: kept} over the table's conditions (module doc). The kept condition is `full` when
    it is in the group, else the group's first in `order` (default: sorted names)."""
    counts = table.groupby([*keys, condition])[tokens].first().unstack(condition)
    names = list(order) if order is not None else sorted(counts.columns)
    names = [n for n in names if n in counts.columns]
    if full in names:
        names.remove(full)
        names.insert(0, full)

    def same(a: str, b: str) -> bool:
        if full not in (a, b) and (ranking(a) is None or ranking(a) != ranking(b)):
            return False
        left, right = counts[a], counts[b]
        return bool(left.notna().equals(right.notna()) and left.notna().any()
                    and (left[left.notna()] == right[right.notna()]).all())

    kept, dropped = [], {}
    for name in names:
        match = next((k for k in kept if same(k, name)), None)
        if match is None:
            kept.append(name)
        else:
            dropped[name] = match
    return dropped


def merged_label(kept: str, dropped: dict[str, str]) -> str:
    """`kept`, followed by " = " and the conditions merged into it (if any), each without the words
    it shares with `kept` ("image_topk 2% = 5%")."""
    stem = kept.rsplit(" ", 1)[0] + " " if " " in kept else None
    others = [d[len(stem):] if stem and d.startswith(stem) else d for d, k in dropped.items() if k == kept]
    return f"{kept} = {', '.join(others)}" if others else kept
