"""A table as a self-contained HTML page, for the Snakemake report (which shows an HTML file in
place; a CSV is only a download link there)."""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from vlminterp.io import atomic_path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; }
h1 { font-size: 1.2em; margin: 0 0 .3em; }
p.note { color: #555; max-width: 70em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; text-align: left; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
"""


def _cell(value) -> tuple[str, bool]:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "", False
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}", True
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value), True
    return str(value), False


def table_html(table: pd.DataFrame, title: str, note: str = "") -> str:
    """The table as one HTML page (escaped text, numbers to 3 significant digits, empty for NaN)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for record in table.itertuples(index=False):
        cells = []
        for value in record:
            text, number = _cell(value)
            attribute = ' class="number"' if number else ""
            cells.append(f"<td{attribute}>{html.escape(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{note_html}"
            f'<table id="table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            "</body></html>\n")


def write_table_html(table: pd.DataFrame, path: str | Path, title: str, note: str = "") -> None:
    """Write `table_html` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(table_html(table, title, note), encoding="utf-8")
