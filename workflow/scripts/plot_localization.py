"""Rule plot_localization (K3): localization accuracy per layer and per band of layers."""
from pathlib import Path

import pandas as pd

from vlminterp.experiments.kaduri_localization import summarize_localization
from vlminterp.io import read_table, write_table
from vlminterp.plots.kaduri import plot_localization
from vlminterp.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0], seed=params.seed):
    table = read_table(snakemake.input[0])
    per_layer = summarize_localization(table, seed=params.seed)
    per_band = summarize_localization(table, seed=params.seed, band_width=params.band_width)
    summary = pd.concat([per_layer.assign(grouping="layer"), per_band.assign(grouping=f"band of {params.band_width}")],
                        ignore_index=True)
    write_table(summary, snakemake.output.summary)
    plot_localization(per_layer, per_band, Path(snakemake.output.png).with_suffix(""))
