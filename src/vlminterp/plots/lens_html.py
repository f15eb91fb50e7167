"""Self-contained interactive HTML pages for the logit lens on visual tokens (N2).

    from vlminterp.plots.lens_html import write_lens_page, write_lens_index

    page = write_lens_page(table[table.image_id == 7], "img7.jpg", cell_boxes, "lens/7.html",
                           object_cells=obj, object_name="dog", title="COCO 7: dog")
    write_lens_index([(page, "COCO 7: dog", {"object": "dog", "best layer": 18})],
                     "lens/index.html")

A page is ONE file with no external references: the image is a base64 PNG data URI, CSS and JS
are inline, and a Content-Security-Policy forbids loading anything else. It shows a table, rows =
image positions (label "r{row},c{col}" and the sequence position), columns = layers, each cell the
top-1 token shaded by its probability. Hovering a cell shows the top-k tokens and outlines that
position's cell box on the image; clicking locks the selection, clicking the locked cell (or
Escape) unlocks it. Object cells are marked in the table and, optionally, on the image.

Input table: long format, one row per position x layer x rank, with columns `position`,
`cell_row`, `cell_col`, `layer` (0 = embedding output), `rank` (1..k), `token`, `prob`, and
optionally `tile` (default 0; extra columns such as `image_id` are allowed; at most one image).
It must be complete: every position has every layer with ranks 1..k. `cell_boxes` (rows, cols, 4)
holds each cell's box (x0, y0, x1, y1) in ORIGINAL-image pixels (see `vlminterp.geometry`);
boxes may reach past the border (padding, drawn clipped to the image), be NaN (a cell wholly in
the padding: never drawn) or leave borders uncovered (centre crop). Tiled families (InternVL's
tiles + thumbnail) give one such grid per tile, a list indexed by `tile`, and the object cells
likewise; rows are then labelled "t{tile} r{row},c{col}".

Safety: tokens may hold any characters. The data sits in a `<script type="application/json">`
block with `<`, `>`, `&` (and U+2028/9) written as \\u escapes, so no token can close the block,
and the page puts tokens on screen with `textContent` only. Control characters (newline, tab, ...)
are shown as escapes in a distinct colour (`\\n`, `\\t`, `\\x00`) so that a newline token stays
visible and on one line; every other character is shown as is (spaces kept: `white-space: pre`).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd
from PIL import Image

__all__ = ["write_lens_page", "write_lens_index", "embed_json"]

REQUIRED_COLUMNS = ("position", "cell_row", "cell_col", "layer", "rank", "token", "prob")
MAX_EMBED_SIDE = 768          # the embedded copy of the image is downscaled to this longest side
_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
_JSON_UNSAFE = re.compile("[<>&\u2028\u2029\ud800-\udfff]")


def embed_json(data: Any) -> str:
    """Compact JSON that is safe inside `<script type="application/json">`.

    `<`, `>`, `&`, U+2028, U+2029 and lone surrogates become \\uXXXX escapes, so the text holds no
    `</script`, `<!--` or `-->`; `JSON.parse` gives back exactly the original strings. NaN and
    infinities are refused (JSON has no spelling for them).
    """
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _JSON_UNSAFE.sub(lambda m: "\\u%04x" % ord(m.group()), text)


def _image_data_uri(image: Image.Image | str | os.PathLike | np.ndarray) -> tuple[str, int, int]:
    """(data URI of a PNG copy, original width, original height)."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            im.load()
            img = im.copy()
    elif isinstance(image, np.ndarray):
        img = Image.fromarray(image)
    elif isinstance(image, Image.Image):
        img = image
    else:
        raise TypeError("image must be a PIL image, a path or an array, "
                        f"got {type(image).__name__}")
    width, height = img.size
    mode = "RGBA" if ("A" in img.getbands() or "transparency" in img.info) else "RGB"
    img = img.convert(mode)
    scale = MAX_EMBED_SIDE / max(width, height)
    if scale < 1:
        img = img.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                         Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return uri, width, height


def _round_prob(p: np.ndarray) -> list[float]:
    """Probabilities to 3 significant digits (enough for display, keeps the JSON short)."""
    out = []
    for v in p.tolist():
        out.append(0 if v == 0 else float(f"{v:.3g}"))
    return out


def _tile_grids(cell_boxes, object_cells) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Per-tile (rows, cols, 4) boxes and (rows, cols) object cells, checked."""
    tiled = isinstance(cell_boxes, (list, tuple))
    grids = [np.asarray(b, dtype=np.float64) for b in (cell_boxes if tiled else [cell_boxes])]
    if not grids:
        raise ValueError("cell_boxes must hold at least one tile's grid")
    for boxes in grids:
        if boxes.ndim != 3 or boxes.shape[2] != 4:
            raise ValueError(f"cell_boxes must have shape (rows, cols, 4) per tile, got {boxes.shape}")
        padding = np.isnan(boxes).all(axis=-1)
        real = boxes[~padding]
        if not np.all(np.isfinite(real)) or np.any(real[:, 2] <= real[:, 0]) or np.any(real[:, 3] <= real[:, 1]):
            raise ValueError("cell_boxes must be finite with x1 > x0 and y1 > y0 (or all NaN: padding)")
    if object_cells is None:
        return grids, None
    if tiled != isinstance(object_cells, (list, tuple)):
        raise ValueError("object_cells must be one grid per tile (a list) exactly when cell_boxes is")
    objects = [np.asarray(o) for o in (object_cells if tiled else [object_cells])]
    if len(objects) != len(grids):
        raise ValueError(f"object_cells must have one grid per tile ({len(grids)}), got {len(objects)}")
    for obj, boxes in zip(objects, grids):
        if obj.shape != boxes.shape[:2]:
            raise ValueError(f"object_cells must have the grid shape {boxes.shape[:2]}, got {obj.shape}")
    return grids, [o.astype(bool) for o in objects]


def _box_json(box: np.ndarray) -> list[float] | None:
    return None if np.isnan(box).any() else [round(float(v), 2) for v in box]


def _page_data(table: pd.DataFrame, cell_boxes, object_cells, object_name: str | None, title: str,
               width: int, height: int) -> dict:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"logit-lens table lacks columns {missing}; "
                         f"needs {list(REQUIRED_COLUMNS)}")
    if len(table) == 0:
        raise ValueError("logit-lens table is empty")
    if "image_id" in table.columns and table["image_id"].nunique() > 1:
        raise ValueError("write_lens_page takes the rows of ONE image; got image_id values "
                         f"{sorted(table['image_id'].unique().tolist())[:5]}...")

    grids, objects = _tile_grids(cell_boxes, object_cells)
    if "tile" not in table.columns:
        table = table.assign(tile=0)

    t = table.sort_values(["position", "layer", "rank"], kind="stable")
    positions = np.sort(t["position"].unique())
    layers = np.sort(t["layer"].unique())
    k = int(t["rank"].max())
    n_p, n_l = len(positions), len(layers)
    pos_arr = t["position"].to_numpy()
    lay_arr = t["layer"].to_numpy()
    rank_arr = t["rank"].to_numpy()
    complete = len(t) == n_p * n_l * k and (
        np.array_equal(pos_arr.reshape(n_p, n_l * k), np.repeat(positions[:, None], n_l * k, 1))
        and np.array_equal(lay_arr.reshape(n_p, n_l, k),
                           np.broadcast_to(layers[None, :, None], (n_p, n_l, k)))
        and np.array_equal(rank_arr.reshape(n_p, n_l, k),
                           np.broadcast_to(np.arange(1, k + 1)[None, None, :], (n_p, n_l, k))))
    if not complete:
        raise ValueError(f"logit-lens table is not complete: expected every one of {n_p} positions "
                         f"x {n_l} layers to have ranks 1..{k} exactly once "
                         f"({n_p * n_l * k} rows), "
                         f"got {len(t)} rows")

    cell_t = t["tile"].to_numpy().reshape(n_p, n_l * k)
    cell_r = t["cell_row"].to_numpy().reshape(n_p, n_l * k)
    cell_c = t["cell_col"].to_numpy().reshape(n_p, n_l * k)
    if np.any(cell_r != cell_r[:, :1]) or np.any(cell_c != cell_c[:, :1]) or np.any(cell_t != cell_t[:, :1]):
        raise ValueError("each position must map to one (cell_row, cell_col) (and tile) in every row")
    cell_t, cell_r, cell_c = cell_t[:, 0].astype(int), cell_r[:, 0].astype(int), cell_c[:, 0].astype(int)
    if cell_t.min() < 0 or cell_t.max() >= len(grids):
        raise ValueError(f"tile outside the {len(grids)} tile grid(s) of cell_boxes")
    for tile, boxes in enumerate(grids):
        n_rows, n_cols = boxes.shape[:2]
        r, c = cell_r[cell_t == tile], cell_c[cell_t == tile]
        if len(r) and (r.min() < 0 or r.max() >= n_rows or c.min() < 0 or c.max() >= n_cols):
            raise ValueError(f"cell_row/cell_col outside the {n_rows}x{n_cols} grid of cell_boxes"
                             + (f" of tile {tile}" if len(grids) > 1 else ""))

    probs = t["prob"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1 + 1e-6:
        raise ValueError("prob must be finite and within [0, 1]")

    tokens = t["token"].astype(str).to_numpy()
    vocab, tok_idx = np.unique(tokens, return_inverse=True)

    rows = []
    row_boxes = []
    for p, tile, r, c in zip(positions.tolist(), cell_t.tolist(), cell_r.tolist(), cell_c.tolist()):
        is_obj = int(bool(objects[tile][r, c])) if objects is not None else 0
        rows.append([int(p), r, c, is_obj])
        row_boxes.append(_box_json(grids[tile][r, c]))

    obj_boxes = []
    if objects is not None:
        for obj, boxes in zip(objects, grids):
            for r, c in zip(*np.nonzero(obj)):
                if _box_json(boxes[r, c]) is not None:
                    obj_boxes.append(_box_json(boxes[r, c]))

    shapes = [[int(b.shape[0]), int(b.shape[1])] for b in grids]
    tiles = {"grid": shapes[0]} if len(grids) == 1 else {"grid": shapes, "tiles": cell_t.tolist()}
    return {
        "v": 1,
        "title": title,
        "object": object_name,
        "image": {"w": width, "h": height},
        **tiles,
        "layers": [int(x) for x in layers],
        "k": k,
        "rows": rows,
        "boxes": row_boxes,
        "objBoxes": obj_boxes,
        "vocab": vocab.tolist(),
        "tok": tok_idx.astype(int).tolist(),
        "prob": _round_prob(probs),
    }


# ----------------------------------------------------------------------------------------------
# page
# ----------------------------------------------------------------------------------------------
_CSS = r"""
:root { --bg:#f7f7f5; --panel:#fff; --ink:#1f2328; --muted:#656d76; --line:#d8dee4;
  --accent:#d9480f; --obj:#fff1e0; --objline:#f08c00; --sel:#1c7ed6;
  --mono: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace; }
* { box-sizing: border-box; }
html, body { margin:0; height:100%; }
body { font: 14px/1.4 system-ui, "DejaVu Sans", "Liberation Sans", Arial, sans-serif;
  color:var(--ink); background:var(--bg); display:flex; flex-direction:column; }
header { padding:10px 16px; background:var(--panel); border-bottom:1px solid var(--line); }
header h1 { font-size:17px; margin:0 0 2px; font-weight:600; }
header .meta { color:var(--muted); font-size:13px; }
main { flex:1; display:flex; min-height:0; gap:12px; padding:12px; }
#side { flex:0 0 360px; display:flex; flex-direction:column; gap:10px; overflow:auto; }
.card { background:var(--panel); border:1px solid var(--line); border-radius:6px; padding:10px; }
#imgwrap { position:relative; width:100%; line-height:0; user-select:none; overflow:hidden; }
#img { display:block; width:100%; height:auto; border-radius:2px; }
.box { position:absolute; pointer-events:none; }
.objbox { background:rgba(240,140,0,.28); outline:1px solid rgba(240,140,0,.55); }
.gridbox { outline:1px solid rgba(255,255,255,.55); }
#outline { border:2px solid var(--sel); box-shadow:0 0 0 1px #fff, 0 0 0 100vmax rgba(0,0,0,.18);
  display:none; }
#outline.locked { border-color:var(--accent); }
#imgwrap.hide-obj .objbox, #imgwrap.hide-grid .gridbox { display:none; }
#status { font-size:13px; color:var(--muted); line-height:1.4; min-height:2.8em; }
#status b { color:var(--ink); }
.controls label { display:block; font-size:13px; margin:2px 0; cursor:pointer; }
.legend { font-size:12px; color:var(--muted); }
.legend .bar { height:10px; border-radius:2px; margin:4px 0 2px; border:1px solid var(--line);
  background:linear-gradient(to right, rgba(28,126,214,0), rgba(28,126,214,.75)); }
.legend .ticks { display:flex; justify-content:space-between; }
.swatch { display:inline-block; width:10px; height:10px; vertical-align:-1px; border-radius:2px;
  background:var(--obj); border:1px solid var(--objline); margin-right:4px; }
#tablewrap { flex:1; overflow:auto; background:var(--panel); border:1px solid var(--line);
  border-radius:6px; min-width:0; }
table { border-collapse:separate; border-spacing:0; font-size:12px; }
th, td { border-right:1px solid #eef0f2; border-bottom:1px solid #eef0f2; padding:2px 5px;
  white-space:nowrap; }
thead th { position:sticky; top:0; z-index:2; background:#f0f2f4; font-weight:600;
  color:var(--muted); text-align:center; border-bottom:1px solid var(--line); }
tbody th { position:sticky; left:0; z-index:1; background:#fafbfc; text-align:left;
  font-weight:500; font-family:var(--mono); border-right:1px solid var(--line); }
thead th.corner { left:0; z-index:3; text-align:left; }
tbody th .pos { color:var(--muted); font-size:11px; margin-left:4px; }
tr.obj th { background:var(--obj); box-shadow:inset 3px 0 0 var(--objline); }
tr.obj td { border-bottom-color:#f5d7b0; }
tr.pad th { color:#9aa1a8; font-style:italic; }
td { font-family:var(--mono); cursor:pointer; max-width:11ch; overflow:hidden;
  text-overflow:ellipsis; }
td:hover { outline:2px solid var(--sel); outline-offset:-2px; }
td.locked { outline:2px solid var(--accent); outline-offset:-2px; }
td.hit { font-weight:700; color:var(--accent); }
.tok { white-space:pre; }
.ctl { color:#ae3ec9; background:rgba(174,62,201,.10); border-radius:2px; padding:0 1px; }
#tablewrap.only-obj tbody tr:not(.obj) { display:none; }
#tip { position:fixed; z-index:10; display:none; background:var(--panel); color:var(--ink);
  border:1px solid var(--line); border-radius:6px; padding:8px 10px; min-width:220px;
  max-width:420px; box-shadow:0 6px 24px rgba(0,0,0,.16); pointer-events:none; }
#tip.locked { border-color:var(--accent); }
#tip .head { font-size:12px; color:var(--muted); margin-bottom:4px; }
#tip .head b { color:var(--ink); }
#tip ol { margin:0; padding:0; list-style:none; }
#tip li { display:grid; grid-template-columns:1.4em minmax(0,1fr) 64px 4.6em; gap:6px;
  align-items:center; padding:1px 0; }
#tip .rk { color:var(--muted); font-size:11px; text-align:right; }
#tip .tok { font-family:var(--mono); background:#f1f3f5; border-radius:3px; padding:0 3px;
  overflow:hidden; text-overflow:ellipsis; }
#tip .pb { height:8px; background:#e9ecef; border-radius:2px; overflow:hidden; }
#tip .pb i { display:block; height:100%; background:var(--sel); }
#tip .pv { font-size:11px; text-align:right; font-variant-numeric:tabular-nums; }
#tip .note { font-size:11px; color:var(--muted); margin-top:4px; }
"""

_JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("lens-data").textContent);
  var L = D.layers.length, K = D.k, W = D.image.w, H = D.image.h;
  var CTRL = /[\u0000-\u001f\u007f]/;
  var NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"};
  function esc(c) {            // a control character as an escape, e.g. "\\n", "\\x00"
    if (NAMED[c]) return NAMED[c];
    var h = c.charCodeAt(0).toString(16); return "\\x" + (h.length < 2 ? "0" + h : h);
  }
  function plain(t) {          // one-line text form, for title attributes
    return t.split("").map(function (c) { return CTRL.test(c) ? esc(c) : c; }).join("");
  }
  function putTok(span, t) {   // token into span: text nodes, control characters as styled escapes
    if (!CTRL.test(t)) { span.textContent = t; return span; }
    var buf = "";
    for (var n = 0; n < t.length; n++) {
      var c = t.charAt(n);
      if (!CTRL.test(c)) { buf += c; continue; }
      if (buf) { span.appendChild(document.createTextNode(buf)); buf = ""; }
      span.appendChild(el("span", "ctl", esc(c)));
    }
    if (buf) span.appendChild(document.createTextNode(buf));
    return span;
  }
  function fmt(p) {
    if (p >= 0.1) return (100 * p).toFixed(1) + "%";
    if (p >= 0.001) return (100 * p).toFixed(2) + "%";
    if (p === 0) return "0";
    return p.toExponential(1);
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // box in original pixels -> percentages of the displayed image, clipped; null if outside
  function place(e, b) {
    if (!b) return false;
    var x0 = Math.max(0, b[0]), y0 = Math.max(0, b[1]);
    var x1 = Math.min(W, b[2]), y1 = Math.min(H, b[3]);
    if (x1 <= x0 || y1 <= y0) return false;
    e.style.left = (100 * x0 / W) + "%"; e.style.top = (100 * y0 / H) + "%";
    e.style.width = (100 * (x1 - x0) / W) + "%"; e.style.height = (100 * (y1 - y0) / H) + "%";
    return true;
  }
  function clipped(b) { return !!b && (b[0] < 0 || b[1] < 0 || b[2] > W || b[3] > H); }
  function outside(b) { return !b || Math.min(W, b[2]) <= Math.max(0, b[0]) ||
                               Math.min(H, b[3]) <= Math.max(0, b[1]); }

  var words = [];
  if (D.object) words = D.object.toLowerCase().split(/[\s_-]+/).filter(Boolean);
  function isHit(tok) {
    var t = tok.replace(/^[\s\u2581\u0120]+|[\s.,;:!?]+$/g, "").toLowerCase();
    if (!t) return false;
    if (D.object && t === D.object.toLowerCase()) return true;
    for (var i = 0; i < words.length; i++) {
      if (t === words[i] || t === words[i] + "s" || t + "s" === words[i]) return true;
    }
    return false;
  }

  // row i's cell: "r{row},c{col}", prefixed by "t{tile} " when the image has several tiles
  function cellName(i) {
    var r = D.rows[i];
    return (D.tiles ? "t" + D.tiles[i] + " " : "") + "r" + r[1] + ",c" + r[2];
  }

  // ---- image overlays ----
  var wrap = document.getElementById("imgwrap");
  D.objBoxes.forEach(function (b) {
    var e = el("div", "box objbox"); if (place(e, b)) wrap.appendChild(e);
  });
  var seen = {};
  D.rows.forEach(function (r, i) {
    var key = cellName(i); if (seen[key]) return; seen[key] = 1;
    var e = el("div", "box gridbox"); if (place(e, D.boxes[i])) wrap.appendChild(e);
  });
  var outline = el("div", "box"); outline.id = "outline"; wrap.appendChild(outline);
  function bindToggle(id, cls, target) {
    var cb = document.getElementById(id); if (!cb) return;
    function upd() { target.classList.toggle(cls, !cb.checked); }
    cb.addEventListener("change", upd); upd();
  }
  bindToggle("show-obj", "hide-obj", wrap);
  bindToggle("show-grid", "hide-grid", wrap);

  // ---- table ----
  var table = document.getElementById("lens");
  var thead = table.createTHead(), hr = thead.insertRow();
  var corner = el("th", "corner", "cell · pos"); hr.appendChild(corner);
  D.layers.forEach(function (l) {
    var th = el("th", null, l === 0 ? "emb" : "L" + l);
    th.title = l === 0 ? "layer 0: embedding output" : "output of decoder layer " + l;
    hr.appendChild(th);
  });
  var tbody = table.createTBody();
  var frag = document.createDocumentFragment();
  D.rows.forEach(function (r, i) {
    var tr = document.createElement("tr");
    if (r[3]) tr.className = "obj";
    if (outside(D.boxes[i])) tr.className += " pad";
    tr.dataset.i = i;
    var th = el("th"); th.appendChild(el("span", null, cellName(i)));
    th.appendChild(el("span", "pos", "p" + r[0])); tr.appendChild(th);
    for (var j = 0; j < L; j++) {
      var o = (i * L + j) * K, tok = D.vocab[D.tok[o]], p = D.prob[o];
      var td = el("td"); td.dataset.j = j;
      td.appendChild(putTok(el("span", "tok"), tok));
      td.style.backgroundColor = "rgba(28,126,214," + (0.75 * Math.sqrt(p)).toFixed(3) + ")";
      if (isHit(tok)) td.classList.add("hit");
      tr.appendChild(td);
    }
    frag.appendChild(tr);
  });
  tbody.appendChild(frag);
  var onlyObj = document.getElementById("only-obj"), tw = document.getElementById("tablewrap");
  if (onlyObj) onlyObj.addEventListener("change", function () {
    tw.classList.toggle("only-obj", onlyObj.checked);
  });

  // ---- hover / lock ----
  var tip = document.getElementById("tip"), status = document.getElementById("status");
  var locked = null;   // the locked <td>
  function render(td) {
    var i = +td.parentNode.dataset.i, j = +td.dataset.j, r = D.rows[i], b = D.boxes[i];
    tip.textContent = "";
    var head = el("div", "head");
    head.appendChild(el("b", null, cellName(i)));
    head.appendChild(document.createTextNode(" · position " + r[0] + " · " +
      (D.layers[j] === 0 ? "embedding (layer 0)" : "layer " + D.layers[j]) +
      (r[3] ? " · object cell" : "")));
    tip.appendChild(head);
    var ol = el("ol");
    for (var q = 0; q < K; q++) {
      var o = (i * L + j) * K + q, tok = D.vocab[D.tok[o]], p = D.prob[o];
      var li = el("li"); li.appendChild(el("span", "rk", String(q + 1)));
      var ts = putTok(el("span", "tok"), tok); ts.title = plain(tok); li.appendChild(ts);
      var pb = el("span", "pb"), bar = el("i"); bar.style.width = (100 * p).toFixed(1) + "%";
      pb.appendChild(bar); li.appendChild(pb);
      li.appendChild(el("span", "pv", fmt(p)));
      ol.appendChild(li);
    }
    tip.appendChild(ol);
    var note = "";
    if (outside(b)) note = "This cell covers only padding, outside the image.";
    else if (clipped(b)) note = "The cell's box reaches past the image border (clipped here).";
    if (locked) note += (note ? " " : "") + "Locked: click the cell again or press Esc.";
    if (note) tip.appendChild(el("div", "note", note));
    tip.classList.toggle("locked", !!locked);
    tip.style.display = "block";
    // position next to the cell, inside the viewport
    var cr = td.getBoundingClientRect(), tr = tip.getBoundingClientRect();
    var x = cr.right + 8, y = cr.top;
    if (x + tr.width > window.innerWidth - 4) x = cr.left - tr.width - 8;
    if (x < 4) x = 4;
    if (y + tr.height > window.innerHeight - 4) y = window.innerHeight - tr.height - 4;
    if (y < 4) y = 4;
    tip.style.left = x + "px"; tip.style.top = y + "px";
    outline.classList.toggle("locked", !!locked);
    outline.style.display = place(outline, b) ? "block" : "none";
    status.textContent = "";
    status.appendChild(el("b", null, cellName(i)));
    status.appendChild(document.createTextNode(
      (b ? " · box x " + b[0] + "–" + b[2] + ", y " + b[1] + "–" + b[3] + " px" : " · padding only") +
      (locked ? " · locked" : "")));
  }
  function hide() {
    tip.style.display = "none"; outline.style.display = "none";
    status.textContent = "Hover a cell to see its top-" + K + " tokens; click to lock.";
  }
  function cellOf(e) { var t = e.target.closest ? e.target.closest("td") : null;
                       return t && tbody.contains(t) ? t : null; }
  tbody.addEventListener("mouseover", function (e) {
    if (locked) return; var td = cellOf(e); if (td) render(td);
  });
  tbody.addEventListener("mouseleave", function () { if (!locked) hide(); });
  tbody.addEventListener("click", function (e) {
    var td = cellOf(e); if (!td) return;
    if (locked === td) { locked.classList.remove("locked"); locked = null; render(td); return; }
    if (locked) locked.classList.remove("locked");
    locked = td; td.classList.add("locked"); render(td);
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && locked) { locked.classList.remove("locked"); locked = null; hide(); }
  });
  tw.addEventListener("scroll", function () { if (!locked) hide(); else render(locked); });
  hide();
  document.body.dataset.ready = "1";
})();
"""


def _page_html(data: dict, data_uri: str, has_object: bool) -> str:
    e = html.escape
    title = data["title"]
    if "tiles" in data:
        grid = f"{len(data['grid'])} tiles (" + ", ".join(f"{r}×{c}" for r, c in data["grid"]) + ")"
    else:
        grid = "grid {}×{}".format(*data["grid"])
    meta = [f"{len(data['rows'])} image positions", grid,
            f"{len(data['layers'])} layers", f"top-{data['k']}",
            f"image {data['image']['w']}×{data['image']['h']} px"]
    if data["object"]:
        meta.insert(0, f"object: {data['object']}")
    obj_controls = ""
    obj_legend = ""
    if has_object:
        obj_controls = ('<label><input type="checkbox" id="show-obj" checked> object cells on '
                        'the image</label><label><input type="checkbox" id="only-obj"> object '
                        'rows only</label>')
        obj_legend = ('<div><span class="swatch"></span>object cell; <b style="color:#d9480f">'
                      'bold</b> top-1 = the object name</div>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{e(_CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>{e(title)}</h1><div class="meta">{e(" · ".join(meta))}</div></header>
<main>
<aside id="side">
<div class="card"><div id="imgwrap"><img id="img" alt="input image" src="{data_uri}"></div></div>
<div class="card"><div id="status"></div></div>
<div class="card controls">{obj_controls}<label><input type="checkbox" id="show-grid"> cell grid
on the image</label></div>
<div class="card legend">Cell = top-1 token of the logit lens; shade ∝ √p.
<div class="bar"></div><div class="ticks"><span>0</span><span>6%</span><span>25%</span>
<span>56%</span><span>100%</span></div>{obj_legend}</div>
</aside>
<div id="tablewrap"><table id="lens"></table></div>
</main>
<div id="tip" role="tooltip"></div>
<script type="application/json" id="lens-data">{embed_json(data)}</script>
<script>{_JS}</script>
</body>
</html>
"""


def write_lens_page(table_for_one_image: pd.DataFrame,
                    image: Image.Image | str | os.PathLike | np.ndarray,
                    cell_boxes: np.ndarray | Sequence[np.ndarray],
                    out_path: str | os.PathLike,
                    *,
                    object_cells: np.ndarray | Sequence[np.ndarray] | None = None,
                    object_name: str | None = None,
                    title: str | None = None) -> Path:
    """Write one self-contained interactive logit-lens page for one image; return its path.

    `table_for_one_image`: long table (see the module docstring) for a single image.
    `image`: the ORIGINAL image (PIL image, path or HxW[xC] uint8 array); `cell_boxes`: (rows,
    cols, 4) boxes in its pixel coordinates, or a list of them, one per tile (the table's `tile`
    column indexes it). `object_cells`: optional bool (rows, cols) (or one per tile) marking the
    object's cells; `object_name`: shown in the header and used to embolden matching top-1 tokens.
    """
    data_uri, width, height = _image_data_uri(image)
    if title is None:
        ids = table_for_one_image["image_id"].unique() if "image_id" in table_for_one_image else []
        title = f"Logit lens · image {ids[0]}" if len(ids) == 1 else "Logit lens"
    data = _page_data(table_for_one_image, cell_boxes, object_cells, object_name, str(title),
                      width, height)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = _page_html(data, data_uri, has_object=object_cells is not None)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------------------------
# index
# ----------------------------------------------------------------------------------------------
def _fmt_value(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "–" if not math.isfinite(float(v)) else f"{float(v):.3g}"
    if v is None:
        return "–"
    return str(v)


def _href(target: Path, base_dir: Path) -> str:
    rel = os.path.relpath(Path(target).resolve(), base_dir.resolve())
    return quote(Path(rel).as_posix(), safe="/")


_INDEX_CSS = """
body { font: 14px/1.45 system-ui, "DejaVu Sans", "Liberation Sans", Arial, sans-serif;
  color:#1f2328; background:#f7f7f5; margin:0; padding:20px 28px; }
h1 { font-size:19px; font-weight:600; margin:0 0 4px; }
p.meta { color:#656d76; margin:0 0 14px; }
table { border-collapse:collapse; background:#fff; border:1px solid #d8dee4; }
th, td { padding:5px 12px; border-bottom:1px solid #eef0f2; text-align:left; }
th { background:#f0f2f4; color:#656d76; font-weight:600; position:sticky; top:0; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
a { color:#1c7ed6; text-decoration:none; } a:hover { text-decoration:underline; }
tr:hover td { background:#f5f9ff; }
"""


def write_lens_index(pages: Sequence[tuple[str | os.PathLike, str, Mapping[str, Any]]],
                     out_path: str | os.PathLike,
                     *, title: str = "Logit lens on visual tokens") -> Path:
    """Write an index page linking every per-image page (relative links); return its path.

    `pages`: (page path, title, summary dict) per image; the summary's keys become columns
    (union, in order of first appearance), e.g. {"object": "dog", "best layer": 18}.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for _, _, summary in pages:
        for key in (summary or {}):
            if key not in keys:
                keys.append(key)
    e = html.escape
    head = "".join(f"<th>{e(str(k))}</th>" for k in keys)
    body = []
    for path, page_title, summary in pages:
        summary = summary or {}
        cells = []
        for key in keys:
            v = summary.get(key)
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            cells.append(f'<td{" class=num" if num else ""}>{e(_fmt_value(v))}</td>')
        body.append(f'<tr><td><a href="{e(_href(Path(path), out.parent))}">{e(str(page_title))}'
                    f'</a></td>{"".join(cells)}</tr>')
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{e(_CSP)}">
<title>{e(title)}</title>
<style>{_INDEX_CSS}</style>
</head>
<body>
<h1>{e(title)}</h1>
<p class="meta">{len(pages)} image{"" if len(pages) == 1 else "s"}; each page is self-contained.</p>
<table>
<thead><tr><th>image</th>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
</body>
</html>
"""
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
