"""Mask-to-cell geometry against a supersampled brute force; dilation, positions, random cells."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from cocofixtures import CocoBuilder

from vlminterp.data.coco import CocoDataset
from vlminterp.geometry import (PixelBoxes, TokenLayout, background_cells, cell_overlap, cells_to_positions,
                                chebyshev_distance, dilate_cells, dilate_tokens, even_edges, last_row_cells,
                                last_row_tokens, mask_tokens, matched_random_cells, object_cells, random_cells,
                                token_distance, uniform_cell_boxes)

SUPERSAMPLE = 8


def brute_force_overlap(mask: np.ndarray, boxes: np.ndarray, factor: int = SUPERSAMPLE) -> np.ndarray:
    """Covered fraction by counting sub-pixel centres inside each box (nearest upsampling).

    Exact when every box edge is a multiple of 1 / factor; sub-pixels outside the image are
    background because the denominator is the full box area.
    """
    assert np.allclose(boxes * factor, np.round(boxes * factor)), "edges must be multiples of 1/factor"
    fine = np.repeat(np.repeat(mask.astype(bool), factor, axis=0), factor, axis=1)
    centres_x = (np.arange(fine.shape[1]) + 0.5) / factor
    centres_y = (np.arange(fine.shape[0]) + 0.5) / factor
    out = np.zeros(boxes.shape[:2])
    for r in range(boxes.shape[0]):
        for c in range(boxes.shape[1]):
            x0, y0, x1, y1 = boxes[r, c]
            inside_x = (centres_x >= x0) & (centres_x < x1)
            inside_y = (centres_y >= y0) & (centres_y < y1)
            out[r, c] = fine[np.ix_(inside_y, inside_x)].sum() / ((x1 - x0) * (y1 - y0) * factor**2)
    return out


def test_uniform_cell_boxes_tile_the_region():
    boxes = uniform_cell_boxes((10, 0, 34, 12), rows=3, cols=4)
    assert boxes.shape == (3, 4, 4)
    assert np.allclose(boxes[0, 0], [10, 0, 16, 4]) and np.allclose(boxes[2, 3], [28, 8, 34, 12])
    with pytest.raises(ValueError):
        uniform_cell_boxes((0, 0, 0, 5), 2, 2)


def test_cell_aligned_mask_gives_ones_and_zeros():
    boxes = uniform_cell_boxes((0, 0, 12, 8), rows=4, cols=6)  # 2 x 2 pixel cells
    mask = np.zeros((8, 12), dtype=bool)
    mask[2:4, 4:6] = True  # cell (1, 2)
    mask[4:6, 6:8] = True  # cell (2, 3)
    expected = np.zeros((4, 6))
    expected[1, 2] = expected[2, 3] = 1.0
    assert np.allclose(cell_overlap(mask, boxes), expected, atol=1e-12)


def test_half_covered_cell_gives_one_half():
    boxes = uniform_cell_boxes((0, 0, 12, 8), rows=4, cols=6)
    mask = np.zeros((8, 12), dtype=bool)
    mask[2:4, 2] = True  # left column of cell (1, 1)
    overlap = cell_overlap(mask, boxes)
    assert overlap[1, 1] == pytest.approx(0.5)
    assert overlap.sum() == pytest.approx(0.5)


def test_fractional_edges_single_pixel():
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 0] = True
    boxes = np.array([[[0.25, 0.25, 1.25, 1.25]]])
    assert cell_overlap(mask, boxes)[0, 0] == pytest.approx(0.75 * 0.75)


def test_boxes_outside_the_image_count_as_background():
    mask = np.ones((4, 4), dtype=bool)
    boxes = np.array([[[-2.0, -2.0, 2.0, 2.0], [10.0, 10.0, 12.0, 12.0], [0.0, 0.0, 4.0, 4.0]]])
    assert np.allclose(cell_overlap(mask, boxes), [[0.25, 0.0, 1.0]])


@pytest.mark.parametrize("region, rows, cols", [
    ((0.5, 0.5, 20.5, 15.5), 4, 5),          # shifted by half a pixel
    ((-2.5, -4.5, 21.5, 19.5), 4, 6),        # padded to a square, partly outside the image
    ((2.5, 0.0, 17.5, 15.0), 4, 6),          # centre crop of the 20 x 15 image
    ((3.125, 1.75, 13.625, 11.75), 4, 6),    # arbitrary eighth-pixel edges
])
def test_matches_supersampled_brute_force(region, rows, cols):
    mask = np.random.default_rng(1).random((15, 20)) < 0.4
    boxes = uniform_cell_boxes(region, rows=rows, cols=cols)
    assert np.allclose(cell_overlap(mask, boxes), brute_force_overlap(mask, boxes), atol=1e-9)


def test_arbitrary_non_grid_boxes_match_brute_force():
    rng = np.random.default_rng(2)
    mask = rng.random((13, 17)) < 0.5
    corners = rng.integers(-16, 19 * SUPERSAMPLE, size=(5, 7, 2, 2)) / SUPERSAMPLE
    low, high = corners.min(axis=2), corners.max(axis=2) + 1 / SUPERSAMPLE
    boxes = np.concatenate([low, high], axis=-1)  # (x0, y0, x1, y1)
    assert np.allclose(cell_overlap(mask, boxes), brute_force_overlap(mask, boxes), atol=1e-9)


def test_crowd_rle_mask_through_cells(tmp_path):
    painted = np.zeros((30, 40), dtype=bool)
    painted[5:17, 9:30] = True
    painted[20:, :3] = True
    builder = CocoBuilder()
    cat = builder.category("crowd")
    img = builder.image(40, 30)
    crowd = builder.rle(img, cat, painted, compressed=False, iscrowd=1)
    ds = CocoDataset.load(builder.write(tmp_path), split="train")
    boxes = uniform_cell_boxes((0, -5, 40, 35), rows=5, cols=5)  # pad to square
    overlap = cell_overlap(ds.annotation_mask(crowd), boxes)
    assert np.allclose(overlap, brute_force_overlap(painted, boxes), atol=1e-9)
    assert object_cells(overlap).sum() > 0


def test_input_validation():
    with pytest.raises(ValueError, match="cell_boxes"):
        cell_overlap(np.ones((4, 4), bool), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="x1 > x0"):
        cell_overlap(np.ones((4, 4), bool), np.zeros((1, 1, 4)))
    with pytest.raises(ValueError, match="mask"):
        cell_overlap(np.ones(4, bool), np.ones((1, 1, 4)))


def test_object_cells_threshold():
    overlap = np.array([[0.0, 0.01, 0.5], [0.49, 1.0, 0.0]])
    assert object_cells(overlap).tolist() == [[False, True, True], [True, True, False]]
    assert object_cells(overlap, min_overlap=0.49).tolist() == [[False, False, True], [False, True, False]]
    with pytest.raises(ValueError, match="min_overlap"):
        object_cells(overlap, min_overlap=1.0)


@pytest.mark.parametrize("where, counts", [((3, 3), (1, 9, 25)), ((0, 0), (1, 4, 9)), ((6, 3), (1, 6, 15))])
def test_dilation_counts(where, counts):
    cells = np.zeros((7, 7), dtype=bool)
    cells[where] = True
    assert tuple(int(dilate_cells(cells, b).sum()) for b in range(3)) == counts


def test_dilation_equals_chebyshev_distance():
    cells = np.random.default_rng(4).random((9, 11)) < 0.08
    rows, cols = np.indices(cells.shape)
    seeds = np.argwhere(cells)
    for buffer in (1, 2, 3):
        distance = np.full(cells.shape, np.inf)
        for r, c in seeds:
            distance = np.minimum(distance, np.maximum(abs(rows - r), abs(cols - c)))
        assert np.array_equal(dilate_cells(cells, buffer), distance <= buffer)
    with pytest.raises(ValueError):
        dilate_cells(cells, -1)


def test_cells_to_positions_row_major():
    cells = np.zeros((3, 4), dtype=bool)
    cells[2, 3] = cells[0, 1] = cells[1, 0] = True
    positions = 5 + np.arange(12)  # image tokens at sequence positions 5..16
    assert cells_to_positions(cells, positions).tolist() == [6, 9, 16]
    assert cells_to_positions(cells, positions.reshape(3, 4)).tolist() == [6, 9, 16]
    with pytest.raises(ValueError, match="11 image token positions"):
        cells_to_positions(cells, positions[:11])


def test_last_row_and_background():
    assert last_row_cells((3, 4)).tolist() == [[False] * 4, [False] * 4, [True] * 4]
    obj = np.zeros((5, 5), dtype=bool)
    obj[2, 2] = True
    assert background_cells(obj).sum() == 24
    assert background_cells(obj, buffer=1).sum() == 16


def test_random_cells_seeded_and_disjoint():
    obj = np.zeros((24, 24), dtype=bool)
    obj[5:9, 10:13] = True
    first = matched_random_cells(obj, rng=np.random.default_rng(7))
    again = matched_random_cells(obj, rng=7)
    other = matched_random_cells(obj, rng=8)
    assert first.sum() == obj.sum() == 12
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert not (first & obj).any()
    buffered = matched_random_cells(obj, rng=7, buffer=2)
    assert not (buffered & dilate_cells(obj, 2)).any()
    hits = sum((matched_random_cells(obj, rng=s, among="all") & obj).any() for s in range(50))
    assert hits > 0  # "all" may land on the object


def test_random_cells_counts_and_errors():
    exclude = np.zeros((4, 4), dtype=bool)
    exclude[:3] = True
    grid = random_cells((4, 4), 4, rng=0, exclude=exclude)
    assert grid[3].all() and grid.sum() == 4
    with pytest.raises(ValueError, match="cannot draw 5"):
        random_cells((4, 4), 5, rng=0, exclude=exclude)
    with pytest.raises(ValueError, match="exclude has shape"):
        random_cells((4, 5), 1, rng=0, exclude=exclude)


def _layout() -> TokenLayout:
    """Two tiles: a 3x4 grid then a 2x2 grid (a thumbnail, say), row-major within each."""
    return TokenLayout(tile=np.array([0] * 12 + [1] * 4),
                       row=np.concatenate([np.arange(12) // 4, np.arange(4) // 2]),
                       col=np.concatenate([np.arange(12) % 4, np.arange(4) % 2]),
                       tile_shapes=((3, 4), (2, 2)))


def test_token_layout_indexes_tiles_in_any_token_order():
    layout = _layout()
    assert (layout.num_tokens, layout.num_tiles) == (16, 2)
    assert layout.token_index(1, 1, 0) == 14 and layout.token_index(0, 2, 3) == 11
    assert layout.grid_of(np.arange(16), 1).tolist() == [[12, 13], [14, 15]]
    order = np.random.default_rng(0).permutation(16)  # the same cells, tokens in another order
    shuffled = TokenLayout(layout.tile[order], layout.row[order], layout.col[order], layout.tile_shapes)
    shuffled.check()
    assert shuffled.grid_of(order, 0).tolist() == np.arange(12).reshape(3, 4).tolist()
    assert all(order[shuffled.token_index(t, r, c)] == layout.token_index(t, r, c)
               for t, r, c in layout.cells())
    with pytest.raises(IndexError, match="outside tile 1's 2x2 grid"):
        layout.token_index(1, 2, 0)
    with pytest.raises(ValueError, match="do not cover its 2x2 grid"):
        TokenLayout(layout.tile[:15], layout.row[:15], layout.col[:15], layout.tile_shapes).check()


def test_token_functions_act_within_each_tile():
    layout = _layout()
    selected = np.zeros(16, dtype=bool)
    selected[3] = True  # tile 0, (0, 3): the tile's right edge
    dilated = dilate_tokens(layout, selected, 1)
    assert np.flatnonzero(dilated).tolist() == [2, 3, 6, 7]  # nothing spills into tile 1
    distance = token_distance(layout, selected)
    assert np.isinf(distance[12:]).all() and distance[:12].reshape(3, 4)[2, 0] == 3
    selected[15] = True  # tile 1, (1, 1)
    assert np.flatnonzero(dilate_tokens(layout, selected, 1)).tolist() == [2, 3, 6, 7, 12, 13, 14, 15]
    assert token_distance(layout, selected)[12:].tolist() == [1, 1, 1, 0]
    assert np.flatnonzero(last_row_tokens(layout)).tolist() == [14, 15]  # the last tile's last row
    grid = np.random.default_rng(1).random((3, 4)) < 0.3  # one tile: the grid functions exactly
    single = type("One", (), {"tile_shapes": ((3, 4),), "tile": np.zeros(12, int),
                              "row": np.arange(12) // 4, "col": np.arange(12) % 4})()
    for b in (0, 1, 2):
        assert np.array_equal(dilate_tokens(single, grid.reshape(-1), b), dilate_cells(grid, b).reshape(-1))
    assert np.array_equal(token_distance(single, grid.reshape(-1)), chebyshev_distance(grid).reshape(-1))
    with pytest.raises(ValueError, match="token set"):
        dilate_tokens(layout, grid, 1)


def test_mask_tokens_and_flat_positions_and_draws():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 2:5] = True
    boxes = np.array([[0, 0, 5, 5], [5, 5, 10, 10], [np.nan] * 4, [4, 4, 6, 6]], dtype=float)
    overlap, selected = mask_tokens(mask, boxes)
    np.testing.assert_allclose(overlap, [9 / 25, 0, 0, 1 / 4])
    assert selected.tolist() == [True, False, False, True]
    assert cells_to_positions(selected, [7, 8, 9, 10]).tolist() == [7, 10]
    grid = np.zeros((4, 4), dtype=bool)
    grid[1, 2] = True
    assert np.array_equal(random_cells((16,), 5, rng=3, exclude=grid.reshape(-1)),
                          random_cells((4, 4), 5, rng=3, exclude=grid).reshape(-1))


def test_exact_boxes_threshold_at_the_decimal_and_no_residue():
    """min_overlap is read as the decimal it prints as (a cell covered exactly 3/10 is not above
    0.3), and a cell whose rational box holds no mask pixel has overlap exactly 0."""
    mask = np.zeros((1, 10), dtype=bool)
    mask[0, :3] = True
    row = PixelBoxes.grid(even_edges(0, 10, 1), even_edges(0, 1, 1))
    assert mask_tokens(mask, row, 0.3)[1].tolist() == [False]
    assert mask_tokens(mask, row, 0.29)[1].tolist() == [True]
    # thirds of a 7-pixel row: 7/3 is no float, the box edges stay exact
    mask = np.zeros((3, 7), dtype=bool)
    mask[:, 4:] = True  # pixels [4, 7): in the last third [14/3, 7) and 2/3 px of the middle one
    boxes = PixelBoxes.grid(even_edges(0, 7, 3), even_edges(0, 3, 1))
    assert boxes.scale == (3, 1) and boxes.edges(1) == (Fraction(7, 3), 0, Fraction(14, 3), 3)
    overlap, selected = mask_tokens(mask, boxes)
    assert overlap.tolist() == [0.0, 2 / 7, 1.0] and selected.tolist() == [False, True, True]
    assert np.array_equal(PixelBoxes.from_float(boxes.as_float()).shown, boxes.shown)
    padded = PixelBoxes.grid([0, 0, 5], [0, 3])  # the first cell has no area: no box
    assert padded.shown.tolist() == [False, True] and np.isnan(padded.as_float()[0]).all()
    assert mask_tokens(mask, padded)[0].tolist() == [0.0, 3 / 15]  # column 4 of [0, 5) x [0, 3)
