"""The logit-lens pages in a real headless Chromium: escaping, tooltip, outline geometry, lock.

Pages are built from synthetic tables (tests/lensfixtures.py) with hostile tokens and
non-square images in centre-crop and padding geometry, and opened over file://.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from lensfixtures import NASTY_TOKENS, synthetic_lens
from vlminterp.plots.lens_html import write_lens_index, write_lens_page

pytestmark = pytest.mark.browser

LAYERS, K = 5, 5
CTRL_TOKEN = "a\nb\tc\x00\x7f"
CTRL_SHOWN = "a\\nb\\tc\\x00\\x7f"     # control characters as escapes (styled .ctl spans)
CROP_TITLE = 'Crop </title><script>alert("t")</script> & co'


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("lens")
    # landscape image, centre crop: the left and right borders are not covered by any cell
    crop_t, crop_img, crop_boxes, crop_obj = synthetic_lens(rows=6, cols=6, layers=LAYERS, k=K,
                                                            size=(300, 200), geometry="crop")
    idx = crop_t.index[(crop_t.position == crop_t.position.min() + 12) & (crop_t.layer == 1)
                       & (crop_t["rank"] == 1)]
    crop_t.loc[idx, "token"] = CTRL_TOKEN
    # wide image padded to a square: rows 0-1 and 4-5 cover only padding
    pad_t, pad_img, pad_boxes, pad_obj = synthetic_lens(rows=6, cols=6, layers=LAYERS, k=K,
                                                        size=(300, 100), geometry="pad",
                                                        image_id=2, nasty=False, seed=1)
    (root / "pages").mkdir()
    crop = write_lens_page(crop_t, crop_img, crop_boxes, root / "pages" / "crop page #1.html",
                           object_cells=crop_obj, object_name="dog", title=CROP_TITLE)
    pad = write_lens_page(pad_t, pad_img, pad_boxes, root / "pages" / "pad.html",
                          object_cells=pad_obj, object_name="cat")
    index = write_lens_index([(crop, CROP_TITLE, {"object": "dog", "best layer": 3}),
                              (pad, "Pad <2>", {"object": "cat", "best layer": None})],
                             root / "index.html")
    return {"crop": (crop, crop_t, crop_boxes, crop_img.size),
            "pad": (pad, pad_t, pad_boxes, pad_img.size), "index": index}


# ------------------------------------------------------------------------------------------------
def _severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _open(driver, path, *, lens: bool = True):
    from selenium.webdriver.common.action_chains import ActionChains

    driver.get_log("browser")                      # drain logs of earlier pages
    driver.get(path.resolve().as_uri())
    if not lens:                                   # the index page has no script
        return
    deadline = time.monotonic() + 10
    while driver.execute_script("return document.body && document.body.dataset.ready") != "1":
        assert time.monotonic() < deadline, "page script never finished"
        time.sleep(0.02)
    # park the mouse on the header, away from the table
    ActionChains(driver).move_to_element(driver.find_element("css selector", "header h1")).perform()


def _cell(driver, i: int, j: int):
    """The <td> of table row i (0-based), layer column j, scrolled into view."""
    td = driver.find_element("css selector", f"#lens tbody tr:nth-child({i + 1}) td:nth-of-type({j + 1})")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})", td)
    return td


def _hover(driver, el):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(el).perform()


def _rect(driver, css: str) -> dict:
    return driver.execute_script(
        "var e = document.querySelector(arguments[0]); var r = e.getBoundingClientRect();"
        "return {x: r.left, y: r.top, w: r.width, h: r.height,"
        "        visible: getComputedStyle(e).display !== 'none' && r.width > 0};", css)


def _expected_outline(driver, box, size) -> dict:
    img = _rect(driver, "#img")
    width, height = size
    x0, y0 = max(0.0, box[0]), max(0.0, box[1])
    x1, y1 = min(float(width), box[2]), min(float(height), box[3])
    sx, sy = img["w"] / width, img["h"] / height
    return {"x": img["x"] + x0 * sx, "y": img["y"] + y0 * sy, "w": (x1 - x0) * sx, "h": (y1 - y0) * sy}


def _assert_outline(driver, box, size):
    got, want = _rect(driver, "#outline"), _expected_outline(driver, box, size)
    assert got["visible"]
    for key in "xywh":
        assert abs(got[key] - want[key]) <= 2, (key, got, want)


def _topk(table, position, layer):
    sel = table[(table.position == position) & (table.layer == layer)].sort_values("rank")
    return sel["token"].tolist(), sel["prob"].tolist()


def _escape_controls(token: str) -> str:
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return "".join(named.get(ch, f"\\x{ord(ch):02x}") if ord(ch) < 32 or ord(ch) == 127 else ch
                   for ch in token)


def _tip_tokens(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#tip .tok')).map(e => e.textContent);")


def _tip_visible(driver) -> bool:
    return _rect(driver, "#tip")["visible"]


# ------------------------------------------------------------------------------------------------
def test_page_loads_clean_and_shows_hostile_tokens_literally(browser, site):
    from selenium.common.exceptions import NoAlertPresentException

    path, table, _, _ = site["crop"]
    _open(browser, path)
    assert _severe(browser) == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    assert browser.title == CROP_TITLE
    assert browser.execute_script("return document.images.length") == 1
    assert browser.execute_script("return document.scripts.length") == 2
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#lens tbody tr')).map(tr =>"
        "  Array.from(tr.querySelectorAll('td .tok')).map(s => s.textContent));")
    for i, tok in enumerate(NASTY_TOKENS):           # top-1 of row i at layer 1
        assert rows[i][1] == tok
    assert rows[12][1] == CTRL_SHOWN                 # control characters as visible escapes
    ctl = browser.execute_script("return Array.from(document.querySelectorAll("
                                 "'#lens tbody tr:nth-child(13) td:nth-of-type(2) .ctl'))"
                                 ".map(e => e.textContent);")
    assert ctl == ["\\n", "\\t", "\\x00", "\\x7f"]
    labels = browser.execute_script(
        "return Array.from(document.querySelectorAll('#lens tbody th')).map(th => th.textContent);")
    first = int(table.position.min())
    assert labels[:2] == [f"r0,c0p{first}", f"r0,c1p{first + 1}"]
    header = browser.execute_script(
        "return Array.from(document.querySelectorAll('#lens thead th')).map(th => th.textContent);")
    assert header[1:] == ["emb"] + [f"L{l}" for l in range(1, LAYERS)]
    # object rows are styled
    obj_rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#lens tbody tr')).map(tr => tr.classList.contains('obj'));")
    cells = table.drop_duplicates("position").sort_values("position")
    assert obj_rows == [bool(r in (2, 3) and c in (2, 3)) for r, c in zip(cells.cell_row, cells.cell_col)]
    assert _severe(browser) == []


@pytest.mark.parametrize("i,j", [(0, 1), (14, 3), (35, 4), (7, 0)])
def test_hover_shows_topk_and_outlines_the_cell(browser, site, i, j):
    path, table, boxes, size = site["crop"]
    _open(browser, path)
    assert not _tip_visible(browser) and not _rect(browser, "#outline")["visible"]
    _hover(browser, _cell(browser, i, j))
    assert _tip_visible(browser)
    position = int(sorted(table.position.unique())[i])
    tokens, probs = _topk(table, position, j)
    shown = [_escape_controls(t) for t in tokens]
    assert _tip_tokens(browser) == shown
    text = browser.find_element("id", "tip").text
    assert f"position {position}" in text and f"{100 * probs[0]:.1f}%" in text
    r, c = divmod(i, 6)
    _assert_outline(browser, boxes[r, c], size)
    assert _severe(browser) == []


def test_outline_is_clipped_to_the_image_and_hidden_for_padding(browser, site):
    path, table, boxes, size = site["pad"]
    _open(browser, path)
    # row 2 (cells r2,*) lies inside; r2,c0 box starts at x=0 exactly; check an edge cell
    _hover(browser, _cell(browser, 2 * 6 + 5, 2))
    _assert_outline(browser, boxes[2, 5], size)
    # a padding-only cell: tooltip still shows, outline hidden, the note says why
    _hover(browser, _cell(browser, 0, 2))
    assert _tip_visible(browser)
    assert not _rect(browser, "#outline")["visible"]
    assert "padding" in browser.find_element("id", "tip").text
    assert "pad" in browser.find_element("css selector", "#lens tbody tr").get_attribute("class")
    assert _severe(browser) == []


def test_partly_outside_box_is_clipped(browser, tmp_path):
    """Portrait image padded to a square: the boxes of the first and last columns stick out."""
    table, img, boxes, obj = synthetic_lens(rows=4, cols=4, layers=2, k=3, size=(200, 300),
                                            geometry="pad", nasty=False)
    path = write_lens_page(table, img, boxes, tmp_path / "portrait.html", object_cells=obj)
    _open(browser, path)
    assert boxes[0, 0, 0] < 0 and boxes[0, 3, 2] > 200
    for i, (r, c) in enumerate([(0, 0), (3, 3)]):
        _hover(browser, _cell(browser, r * 4 + c, 1))
        _assert_outline(browser, boxes[r, c], img.size)
        assert "clipped" in browser.find_element("id", "tip").text
    assert _severe(browser) == []


def test_click_locks_and_unlocks(browser, site):
    path, table, boxes, size = site["crop"]
    _open(browser, path)
    a, b = _cell(browser, 14, 2), _cell(browser, 20, 4)
    _hover(browser, a)
    a.click()
    assert "locked" in a.get_attribute("class")
    tip_a, outline_a = _tip_tokens(browser), _rect(browser, "#outline")
    _hover(browser, b)                                     # moving away keeps the selection
    assert _tip_tokens(browser) == tip_a
    assert _rect(browser, "#outline") == outline_a
    _hover(browser, browser.find_element("css selector", "header h1"))
    assert _tip_visible(browser) and _rect(browser, "#outline") == outline_a
    _hover(browser, a)
    a.click()                                              # clicking the locked cell unlocks
    assert "locked" not in a.get_attribute("class")
    _hover(browser, b)
    position_b = int(sorted(table.position.unique())[20])
    assert _tip_tokens(browser)[0] == _topk(table, position_b, 4)[0][0]
    _assert_outline(browser, boxes[3, 2], size)
    _hover(browser, browser.find_element("css selector", "header h1"))
    assert not _tip_visible(browser)                       # unlocked: leaving hides it
    assert _severe(browser) == []


def test_sticky_header_and_first_column(browser, tmp_path):
    table, img, boxes, obj = synthetic_lens(rows=24, cols=24, layers=33, k=5, size=(336, 336),
                                            geometry="pad", nasty=False)
    path = write_lens_page(table, img, boxes, tmp_path / "full.html", object_cells=obj,
                           object_name="dog")
    _open(browser, path)
    assert browser.execute_script("return document.querySelectorAll('#lens tbody td').length") == 576 * 33
    browser.execute_script("var w = document.getElementById('tablewrap');"
                           "w.scrollTop = w.scrollHeight; w.scrollLeft = w.scrollWidth;")
    wrap, head = _rect(browser, "#tablewrap"), _rect(browser, "#lens thead th:nth-child(5)")
    first = _rect(browser, "#lens tbody tr:last-child th")
    assert abs(head["y"] - wrap["y"]) <= 2 and abs(first["x"] - wrap["x"]) <= 2
    assert browser.execute_script("return document.getElementById('tablewrap').scrollTop") > 1000
    # the object-rows filter hides the rest
    browser.find_element("id", "only-obj").click()
    shown = browser.execute_script("return Array.from(document.querySelectorAll('#lens tbody tr'))"
                                   ".filter(tr => tr.offsetParent !== null).length")
    assert shown == int(obj.sum())
    assert _severe(browser) == []


def test_index_links_resolve(browser, site):
    _open(browser, site["index"], lens=False)
    assert _severe(browser) == []
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('a')).map(a => [a.href, a.textContent]);")
    assert [t for _, t in links] == [CROP_TITLE, "Pad <2>"]
    titles = []
    for href, _ in links:
        browser.get(href)
        assert browser.execute_script("return document.body.dataset.ready") == "1"
        titles.append(browser.title)
        assert _severe(browser) == []
    assert titles == [CROP_TITLE, "Logit lens · image 2"]
    expected = [site["crop"][0].resolve().as_uri(), site["pad"][0].resolve().as_uri()]
    assert [h for h, _ in links] == expected


def test_screenshot(browser, site, tmp_path):
    path, *_ = site["crop"]
    _open(browser, path)
    _hover(browser, _cell(browser, 14, 2))
    out = tmp_path / "lens.png"
    assert browser.save_screenshot(str(out))
    from PIL import Image

    with Image.open(out) as shot:
        arr = np.asarray(shot.convert("RGB"))
    assert arr.shape[0] > 400 and arr.shape[1] > 1000
    assert arr.std() > 10                                    # not a blank page


def test_tiled_page_labels_rows_by_tile_and_outlines_each_tiles_own_box(browser, tmp_path):
    """InternVL-style page: a 2x2 high-resolution tile and a 1x2 'thumbnail' tile over the same
    image; hovering a thumbnail row names its tile and outlines the thumbnail cell's own box."""
    table, image, boxes, obj = synthetic_lens(rows=2, cols=2, layers=2, k=2, size=(40, 20), nasty=False)
    second = table[table.position < table.position.min() + 2].assign(position=lambda t: t.position + 100,
                                                                     cell_row=0, tile=1)
    table = pd.concat([table.assign(tile=0), second], ignore_index=True)
    thumb = np.array([[[0, 0, 20, 20], [20, 0, 40, 20]]], dtype=float)
    path = write_lens_page(table, image, [boxes, thumb], tmp_path / "tiled.html",
                           object_cells=[obj, np.array([[True, False]])])
    _open(browser, path)
    labels = [th.text for th in browser.find_elements("css selector", "#lens tbody tr th")]
    assert labels[0].startswith("t0 r0,c0") and labels[4].startswith("t1 r0,c0"), labels
    _hover(browser, _cell(browser, 5, 1))
    assert _tip_visible(browser)
    _assert_outline(browser, thumb[0, 1], image.size)
    _hover(browser, _cell(browser, 1, 1))
    _assert_outline(browser, boxes[0, 1], image.size)
    assert _severe(browser) == []
