"""The papers' headline quantities of several finished runs side by side (one table, one figure).

    python -m vlminterp.across_runs results/<runA> results/<runB> ... --out results/across_runs/

writes `across_runs.csv` (one row per run x quantity, and per layer for the layer curves) and
`across_runs.png/.pdf` (`vlminterp.plots.across`). Each run is read from the summary tables it
wrote (`TABLES`, the one place that knows their paths and columns); a run without a table gets a
row whose `note` says what is absent, not an error. Quantities:

- N1 object-token flip rate per setting (`object_b1`), its random-token control
  (`summaries.random_control`: `random_matched_b1`, else the random_n* nearest in count) and,
  where the summary has it, its chance;
- K2 conditions (image->query, image->generated, image->query+generated, all layers): F1 vs the
  unablated description, with the table's chance recall;
- the layer band that matters, as a fraction of depth: N3's sliding blocking window with the
  largest drop (and the drop per window start), each with its control, the `non_object` set's drop
  in the same window (no chance: a drop has none), K2's best narrowest window of image visibility and
  its start-layer effect (F1 per first blocked layer), K3's best localization layer (and accuracy
  per layer, with chance).

Depth: decoder layers `a..b` (0-indexed, inclusive) of a model with `n_layers` layers span
`a / n_layers` to `(b + 1) / n_layers` of its depth.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

from vlminterp.io import read_table
from vlminterp.stats import grouped_mean_ci
from vlminterp.summaries import flip_summary, random_control

EFFECTIVE_CONFIG = "config/effective_config.yaml"
# Where each experiment's summary sits in a run, and the raw table it is computed from where a run
# predates the summary (N1, N3); the columns read are those of `_n1`, `_n3`, `_k2`, `_k3`.
TABLES = {
    "N1": ("neo/ablation/summary.csv", "neo/ablation/ablation.csv"),
    "N3": ("neo/blocking/summary.csv", "neo/blocking/blocking.csv"),
    "K1": ("kaduri/attention/summary.csv", None),
    "K2": ("kaduri/knockout/summary.csv", None),
    "K3": ("kaduri/localization/summary.csv", None),
}
K2_CONDITIONS = ("image->query", "image->generated", "image->query+generated")
# N3's control: the last position blocked from the image tokens off the (dilated) object, in the same window.
N3_CONTROL = "non_object"
N3_NO_CHANCE = "chance: none for a drop in probability (no effect is a drop of 0)"
COLUMNS = ["run", "model", "n_layers", "experiment", "quantity", "condition", "layer_start", "layer_end",
           "depth_start", "depth_end", "value", "low", "high", "n", "control", "control_value", "control_low",
           "control_high", "chance", "note"]
# Quantity names (the figure draws each by name).
N1_FLIPS = "N1 object-token flip rate"
K2_F1 = "K2 F1 vs unablated (all layers)"
N3_BEST = "N3 window with the largest drop"
N3_CURVE = "N3 drop per window start"
K2_BEST_WINDOW = "K2 best narrowest window (generated sees the image)"
K2_START = "K2 F1 per first blocked layer"
K3_BEST = "K3 best localization layer"
K3_CURVE = "K3 localization accuracy per layer"


class UnknownRunError(ValueError):
    """A path given as a run that is not a finished run's results folder."""


class Run:
    """One run's results folder: its effective config, depth and summary tables."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        config_path = self.folder / EFFECTIVE_CONFIG
        if not config_path.is_file():
            why = "does not exist" if not self.folder.exists() else f"has no {EFFECTIVE_CONFIG}"
            raise UnknownRunError(f"{self.folder}: not a run's results folder ({why}); give results/<run>")
        self.config = yaml.safe_load(config_path.read_text()) or {}
        self.name = str(self.config.get("run") or self.folder.name)
        model = self.config.get("model", {})
        self.model = "organism" if model.get("kind") == "organism" else str(model.get("pretrained", {}).get("id"))
        self.n_layers = self._n_layers()

    def table(self, experiment: str) -> tuple[pd.DataFrame | None, str, str]:
        """(table, kind "summary" or "raw", note): the experiment's summary, else its raw table, else
        None with a note naming what is absent."""
        summary, raw = TABLES[experiment]
        for path, kind in ((summary, "summary"), (raw, "raw")):
            if path and (self.folder / path).is_file():
                return read_table(self.folder / path), kind, ""
        names = " nor ".join(p for p in (summary, raw) if p)
        return None, "", f"absent: no {names} in {self.folder}"

    def _n_layers(self) -> int | None:
        """Decoder layers: the organism's from the config, else the widest layer range of the K1, K2
        or K3 summary (each covers every layer)."""
        organism = self.config.get("model", {}).get("organism", {})
        if self.config.get("model", {}).get("kind") == "organism" and organism.get("text_layers"):
            return int(organism["text_layers"])
        for experiment, column in (("K1", "layer"), ("K2", "layer_end"), ("K3", "layer_end")):
            table, _, _ = self.table(experiment)
            if table is not None and column in table and table[column].notna().any():
                return int(table[column].max()) + 1
        return None

    def depth(self, start, end) -> tuple[float, float]:
        """Fraction of depth spanned by layers start..end (inclusive); NaN without a depth."""
        if self.n_layers is None or pd.isna(start) or pd.isna(end):
            return math.nan, math.nan
        return int(start) / self.n_layers, (int(end) + 1) / self.n_layers

    def row(self, experiment: str, quantity: str, **values) -> dict:
        """One table row of this run; `layer_start/layer_end` add the depth fractions."""
        start, end = values.get("layer_start", math.nan), values.get("layer_end", math.nan)
        depth_start, depth_end = self.depth(start, end)
        return {**dict.fromkeys(COLUMNS, math.nan), "run": self.name, "model": self.model, "n_layers": self.n_layers,
                "experiment": experiment, "quantity": quantity, "depth_start": depth_start, "depth_end": depth_end,
                "note": "", **values}


def _estimate(row) -> dict:
    return {"value": float(row["mean"]), "low": float(row["low"]), "high": float(row["high"]), "n": int(row["n"])}


def _n1(run: Run) -> list[dict]:
    table, kind, note = run.table("N1")
    if table is None:
        return [run.row("N1", N1_FLIPS, note=note)]
    summary = table if kind == "summary" else flip_summary(table)
    rows = []
    for setting, part in summary.groupby("setting", sort=True):
        part = part.set_index("condition")
        buffers = sorted(int(c.rsplit("_b", 1)[1]) for c in part.index if str(c).startswith("object_b"))
        if not buffers:
            rows.append(run.row("N1", N1_FLIPS, condition=setting, note="absent: no object_b* rows"))
            continue
        buffer = 1 if 1 in buffers else buffers[0]
        got, control = part.loc[f"object_b{buffer}"], random_control(part, buffer)
        extra = {"chance": float(got["chance"])} if "chance" in part and pd.notna(got.get("chance")) else {}
        if control in part.index:
            c = part.loc[control]
            extra.update(control=control, control_value=float(c["mean"]), control_low=float(c["low"]),
                         control_high=float(c["high"]))
        else:
            extra["note"] = f"no {control} rows: no random-token control"
        rows.append(run.row("N1", N1_FLIPS, condition=f"{setting} object_b{buffer}", **_estimate(got), **extra))
    return rows


def _n3_drops(run: Run, table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Sliding-window drops per block set and window start (the summary's rows, or the same
    computed from the raw table for the object_b* sets and the control), with each window's last layer."""
    if kind == "raw":
        sets = table["block_set"].astype(str)
        included = table[table["included"].astype(bool) & (table["window_kind"] == "sliding")
                         & (sets.str.startswith("object_b") | (sets == N3_CONTROL))]
        drops = grouped_mean_ci(included, by=["block_set", "window_start"], value="drop")
    else:
        drops = table[table["window_kind"] == "sliding"]
    width = int(run.config.get("neo", {}).get("blocking", {}).get("window", 1))
    last = (run.n_layers - 1) if run.n_layers else math.inf
    drops = drops.assign(window_start=drops["window_start"].astype(int))
    return drops.assign(window_end=[min(s + width - 1, last) for s in drops["window_start"]])


def _n3(run: Run) -> list[dict]:
    table, kind, note = run.table("N3")
    if table is None:
        return [run.row("N3", N3_BEST, note=note)]
    drops = _n3_drops(run, table, kind)
    sets = sorted(s for s in drops["block_set"].unique() if str(s).startswith("object_b"))
    if not sets:
        return [run.row("N3", N3_BEST, note="absent: no sliding object_b* windows")]
    block_set = "object_b1" if "object_b1" in sets else sets[0]
    part = drops[drops["block_set"] == block_set].sort_values("window_start")
    controls = drops[drops["block_set"] == N3_CONTROL].set_index("window_start")
    best = part.loc[part["mean"].idxmax()]

    def estimate(r) -> dict:
        """The window's drop, the control's drop in the same window, and why N3 has no chance."""
        got = {"layer_start": int(r["window_start"]), "layer_end": int(r["window_end"]), **_estimate(r),
               "note": N3_NO_CHANCE}
        if not len(controls):
            return {**got, "control": f"none: the run blocked no {N3_CONTROL} set (neo.blocking.block_sets)"}
        if r["window_start"] not in controls.index:
            return {**got, "control": f"none: no {N3_CONTROL} row for this window"}
        c = controls.loc[r["window_start"]]
        return {**got, "control": N3_CONTROL, "control_value": float(c["mean"]), "control_low": float(c["low"]),
                "control_high": float(c["high"])}
    rows = [run.row("N3", N3_BEST, condition=block_set, **estimate(best))]
    rows += [run.row("N3", N3_CURVE, condition=block_set, **estimate(r)) for _, r in part.iterrows()]
    return rows


def _k2_estimate(row) -> dict:
    return {**_estimate({**row, "n": row["n_images"]}), "layer_start": int(row["layer_start"]),
            "layer_end": int(row["layer_end"]), "chance": float(row["chance_recall"]),
            "note": "chance: chance_recall, a category-blind guess's recall"}


def _k2(run: Run) -> list[dict]:
    table, _, note = run.table("K2")
    if table is None:
        return [run.row("K2", q, note=note) for q in (K2_F1, K2_BEST_WINDOW)]
    rows = []
    for condition in K2_CONDITIONS:
        got = table[(table["condition"] == condition) & (table["family"] == "all_layers")]
        rows.append(run.row("K2", K2_F1, condition=condition, **_k2_estimate(got.iloc[0])) if len(got)
                    else run.row("K2", K2_F1, condition=condition, note=f"absent: no {condition} row"))
    windows = table[(table["family"] == "window") & (table["target"] == "generated")]
    if len(windows):
        width = windows["layer_end"] - windows["layer_start"]
        narrow = windows[width == width.min()]
        best = narrow.loc[narrow["mean"].idxmax()]
        rows.append(run.row("K2", K2_BEST_WINDOW, condition=best["condition"], **_k2_estimate(best)))
    else:
        rows.append(run.row("K2", K2_BEST_WINDOW, note="absent: no window rows for the generated tokens"))
    for _, got in table[table["family"] == "from_layer"].sort_values("layer_start").iterrows():
        rows.append(run.row("K2", K2_START, condition=got["condition"], **_k2_estimate(got)))
    return rows


def _k3(run: Run) -> list[dict]:
    table, _, note = run.table("K3")
    if table is None:
        return [run.row("K3", K3_BEST, note=note)]
    layers = table[table["grouping"] == "layer"].sort_values("layer_start")
    if not len(layers):
        return [run.row("K3", K3_BEST, note="absent: no per-layer rows")]

    def estimate(r):
        return {"layer_start": int(r["layer_start"]), "layer_end": int(r["layer_end"]), "value": float(r["accuracy"]),
                "low": float(r["low"]), "high": float(r["high"]), "n": int(r["n_mentions"]),
                "chance": float(r["chance"])}
    best = layers.loc[layers["accuracy"].idxmax()]
    return ([run.row("K3", K3_BEST, condition=f"layer {int(best['layer_start'])}", **estimate(best))]
            + [run.row("K3", K3_CURVE, condition=f"layer {int(r['layer_start'])}", **estimate(r))
               for _, r in layers.iterrows()])


def across_runs(folders) -> pd.DataFrame:
    """The table of every run's headline quantities (module docstring); folders: results/<run>."""
    unique = {}
    for folder in folders:   # a folder named twice is read once
        unique.setdefault(Path(folder).resolve(), folder)
    runs = [Run(folder) for folder in unique.values()]
    names = [run.name for run in runs]
    for run in runs:   # two folders of one run name (copies of a run) stay apart
        if names.count(run.name) > 1:
            run.name = f"{run.name} ({run.folder})"
    rows = [row for run in runs for read in (_n1, _k2, _n3, _k3) for row in read(run)]
    for row in rows:
        if row["n_layers"] is None:
            row["note"] = "; ".join(filter(None, [row["note"], "depth unknown: no organism config nor K1-K3 layers"]))
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({c: "Int64" for c in ("n_layers", "layer_start", "layer_end", "n")})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlminterp.across_runs", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="results folders of finished runs (results/<run>)")
    parser.add_argument("--out", default="results/across_runs", help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        table = across_runs(args.runs)
    except UnknownRunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from vlminterp.plots.across import plot_across_runs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "across_runs.csv", index=False)
    written = plot_across_runs(table, out / "across_runs")
    print("\n".join(str(p) for p in [out / "across_runs.csv", *written]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
