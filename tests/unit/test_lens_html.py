"""Pure-Python checks of the logit-lens HTML pages: escaping, self-containment, data, index."""
from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lensfixtures import NASTY_TOKENS, synthetic_lens
from vlminterp.plots.lens_html import embed_json, write_lens_index, write_lens_page


class _Collector(HTMLParser):
    """Collects tags, URL-bearing attributes and the text of <script> blocks."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.urls, self.scripts, self.links = [], [], [], []
        self._in_script = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            if name in attrs:
                self.urls.append((tag, name, attrs[name]))
        if tag == "a":
            self.links.append(attrs.get("href"))
        if tag == "script":
            self._in_script = [attrs, ""]

    def handle_data(self, data):
        if self._in_script is not None:
            self._in_script[1] += data

    def handle_endtag(self, tag):
        if tag == "script" and self._in_script is not None:
            self.scripts.append(tuple(self._in_script))
            self._in_script = None


def _parse(path: Path) -> _Collector:
    c = _Collector()
    c.feed(path.read_text(encoding="utf-8"))
    c.close()
    return c


def _lens_data(path: Path) -> dict:
    blocks = [text for attrs, text in _parse(path).scripts if attrs.get("id") == "lens-data"]
    assert len(blocks) == 1
    return json.loads(blocks[0])


def _decode(data: dict) -> list[list[list[tuple[str, float]]]]:
    """[row][layer][rank] -> (token, prob) from the compact arrays."""
    L, K = len(data["layers"]), data["k"]
    out = []
    for i in range(len(data["rows"])):
        out.append([[(data["vocab"][data["tok"][(i * L + j) * K + q]], data["prob"][(i * L + j) * K + q])
                     for q in range(K)] for j in range(L)])
    return out


@pytest.fixture
def page(tmp_path):
    table, image, boxes, obj = synthetic_lens(rows=4, cols=4, layers=5, k=5)
    path = write_lens_page(table, image, boxes, tmp_path / "p.html", object_cells=obj,
                           object_name="dog", title='Img </title><script>alert(1)</script> & "x"')
    return path, table, image, boxes, obj


def test_embed_json_escapes_breakout_sequences():
    nasty = ["</script>", "<!--", "-->", "&amp;", "\u2028", "\u2029", "a\ud800b"]
    text = embed_json({"t": nasty})
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text
    assert json.loads(text) == {"t": nasty}
    text.encode("utf-8")   # lone surrogates were escaped, so the page can be written as UTF-8
    with pytest.raises(ValueError):
        embed_json({"p": float("nan")})


def test_page_round_trips_every_token_and_probability(page):
    path, table, *_ = page
    data = _lens_data(path)
    decoded = _decode(data)
    t = table.sort_values(["position", "layer", "rank"])
    flat = [tp for row in decoded for layer in row for tp in layer]
    assert [tok for tok, _ in flat] == t["token"].tolist()
    np.testing.assert_allclose([p for _, p in flat], t["prob"].to_numpy(), rtol=6e-3)
    assert data["layers"] == [0, 1, 2, 3, 4] and data["k"] == 5
    assert [r[0] for r in data["rows"]] == sorted(table["position"].unique().tolist())
    assert set(NASTY_TOKENS) <= set(data["vocab"])


def test_page_escapes_markup_and_has_one_script_of_code(page):
    path, *_ = page
    text = path.read_text(encoding="utf-8")
    c = _parse(path)
    # the title came through as text, not markup; only our two script blocks exist
    assert c.tags.count("script") == 2
    assert c.tags.count("img") == 1
    assert "alert(1)</script>" not in text.split('id="lens-data">', 1)[1].split("</script>", 1)[0]
    assert "&lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;" in text
    # nothing in the data block can end it early
    data_block = re.search(r'<script type="application/json" id="lens-data">(.*?)</script>',
                           text, re.S).group(1)
    assert "<" not in data_block and ">" not in data_block and "&" not in data_block
    # tokens are put on screen with textContent only
    js = [t for attrs, t in c.scripts if "type" not in attrs][0]
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js


def test_page_is_self_contained(page):
    path, *_ = page
    text = path.read_text(encoding="utf-8")
    c = _parse(path)
    assert c.urls, "the image must be referenced"
    for tag, attr, url in c.urls:
        assert url.startswith("data:image/png;base64,"), (tag, attr, url[:60])
    assert "http://" not in text and "https://" not in text
    assert "@import" not in text and not re.search(r"url\(\s*['\"]?(?!data:)", text)
    assert 'http-equiv="Content-Security-Policy"' in text and "default-src &#x27;none&#x27;" in text


def test_embedded_image_is_the_image(page, tmp_path):
    path, _, image, *_ = page
    src = _parse(path).urls[0][2]
    png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert png.format == "PNG" and png.size == image.size
    assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(image))
    data = _lens_data(path)
    assert data["image"] == {"w": image.size[0], "h": image.size[1]}


def test_large_image_is_downscaled_but_keeps_original_geometry(tmp_path):
    table, _, boxes, _ = synthetic_lens(rows=2, cols=2, layers=2, k=2, size=(2000, 1000))
    img = Image.new("RGB", (2000, 1000), (10, 20, 30))
    img.save(tmp_path / "big.jpg")
    path = write_lens_page(table, tmp_path / "big.jpg", boxes, tmp_path / "p.html")
    png = Image.open(io.BytesIO(base64.b64decode(_parse(path).urls[0][2].split(",", 1)[1])))
    assert max(png.size) == 768 and png.size[0] == 2 * png.size[1]
    data = _lens_data(path)
    assert data["image"] == {"w": 2000, "h": 1000}
    assert data["boxes"][0] == [round(float(v), 2) for v in boxes[0, 0]]


def test_rows_boxes_and_object_flags(page):
    path, table, _, boxes, obj = page
    data = _lens_data(path)
    for (pos, r, c, is_obj), box in zip(data["rows"], data["boxes"]):
        assert box == pytest.approx(boxes[r, c].tolist(), abs=0.01)
        assert bool(is_obj) == bool(obj[r, c])
        assert table.loc[table.position == pos, ["cell_row", "cell_col"]].drop_duplicates().values.tolist() == [[r, c]]
    assert len(data["objBoxes"]) == int(obj.sum())
    assert data["object"] == "dog"


def test_validation_errors(tmp_path):
    table, image, boxes, obj = synthetic_lens(rows=2, cols=2, layers=3, k=2)
    out = tmp_path / "x.html"
    with pytest.raises(ValueError, match="not complete"):
        write_lens_page(table.iloc[1:], image, boxes, out)
    with pytest.raises(ValueError, match="not complete"):
        write_lens_page(table.assign(rank=table["rank"].where(table.index != 3, 1)), image, boxes, out)
    with pytest.raises(ValueError, match="ONE image"):
        write_lens_page(table.assign(image_id=table.index % 2), image, boxes, out)
    with pytest.raises(ValueError, match="lacks columns"):
        write_lens_page(table.drop(columns="prob"), image, boxes, out)
    with pytest.raises(ValueError, match="grid"):
        write_lens_page(table, image, boxes[:1], out)
    with pytest.raises(ValueError, match="grid shape"):
        write_lens_page(table, image, boxes, out, object_cells=obj[:1])
    with pytest.raises(ValueError, match="within"):
        write_lens_page(table.assign(prob=np.nan), image, boxes, out)
    with pytest.raises(ValueError, match="one \\(cell_row"):
        write_lens_page(table.assign(cell_row=np.where(table.index == 0, 1, table.cell_row)),
                        image, boxes, out)
    assert not out.exists()


def test_full_size_page_stays_small_and_fast(tmp_path):
    """576 positions x 33 layers x top-5 with a realistic vocabulary: a few MB at most."""
    import time

    table, image, boxes, obj = synthetic_lens(rows=24, cols=24, layers=33, k=5, size=(336, 336),
                                              geometry="pad", nasty=False)
    rng = np.random.default_rng(1)
    words = np.array([f"tok{i}" for i in range(20000)])     # many distinct tokens, as in real runs
    table["token"] = words[rng.integers(0, len(words), size=len(table))]
    table["prob"] = table["prob"] * rng.uniform(1e-4, 1, size=len(table))   # small probabilities
    start = time.perf_counter()
    path = write_lens_page(table, image, boxes, tmp_path / "big.html", object_cells=obj)
    elapsed = time.perf_counter() - start
    size = path.stat().st_size
    assert size < 3_000_000, size
    assert elapsed < 5, elapsed


def test_index_links_and_escaping(tmp_path):
    table, image, boxes, obj = synthetic_lens(rows=2, cols=2, layers=2, k=2)
    (tmp_path / "pages").mkdir()
    p1 = write_lens_page(table, image, boxes, tmp_path / "pages" / "img 1 & #a.html")
    p2 = write_lens_page(table, image, boxes, tmp_path / "pages" / "2.html")
    idx = write_lens_index([(p1, "<b>one</b>", {"object": "<dog>", "best layer": 18}),
                            (p2, "two", {"share": 0.123456, "note": None, "ok": True})],
                           tmp_path / "index.html")
    c = _parse(idx)
    assert c.links == ["pages/img%201%20%26%20%23a.html", "pages/2.html"]
    text = idx.read_text(encoding="utf-8")
    assert "&lt;b&gt;one&lt;/b&gt;" in text and "&lt;dog&gt;" in text and "<dog>" not in text
    assert "0.123" in text and "0.123456" not in text
    for header in ("object", "best layer", "share", "note", "ok"):
        assert f"<th>{header}</th>" in text
    assert "http://" not in text and "https://" not in text


def test_tiled_page_labels_tiles_and_padding_cells_have_no_box(tmp_path):
    """Two tiles (a 2x2 grid and a 1x2 grid): rows carry their tile, boxes come from their own
    tile's grid; an all-NaN box (a cell wholly in padding) is written as null, never drawn."""
    table, image, boxes, obj = synthetic_lens(rows=2, cols=2, layers=2, k=2, size=(40, 20))
    second = table[table.position < table.position.min() + 2].assign(position=lambda t: t.position + 100,
                                                                     cell_row=0, tile=1)
    table = pd.concat([table.assign(tile=0), second], ignore_index=True)
    thumb = np.array([[[0, 0, 20, 20], [np.nan] * 4]], dtype=float)
    path = write_lens_page(table, image, [boxes, thumb], tmp_path / "t.html",
                           object_cells=[obj, np.array([[True, True]])])
    data = _lens_data(path)
    assert data["grid"] == [[2, 2], [1, 2]] and data["tiles"] == [0, 0, 0, 0, 1, 1]
    assert data["boxes"][4] == [0, 0, 20, 20] and data["boxes"][5] is None
    assert data["boxes"][1] == [round(float(v), 2) for v in boxes[0, 1]]
    assert [r[3] for r in data["rows"]] == [int(v) for v in obj.reshape(-1)] + [1, 1]
    assert len(data["objBoxes"]) == int(obj.sum()) + 1  # the padding cell has no box to draw
    assert "2 tiles (2×2, 1×2)" in path.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="one grid per tile"):
        write_lens_page(table, image, [boxes, thumb], tmp_path / "t.html", object_cells=obj)
    with pytest.raises(ValueError, match="tile outside"):
        write_lens_page(table, image, boxes, tmp_path / "t.html")
