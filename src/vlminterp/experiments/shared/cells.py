"""The Neo cell table: which image tokens hold each target, per image (config section neo.cells).

    table = map_object_cells(dataset, selection, adapter, CellSpec(buffers=(0, 1, 2)))  # one row per token
    target = cells_by_image(table)[7]          # TargetCells: tile, row, col, box, overlap, object_b[b]
    target.positions(target.object_b[1], adapter.image_positions(input_ids)[0])   # sequence positions

The geometry (exact boxes, masks to tokens, exclusion reasons) is `vlminterp.geometry`'s; this
module turns it into the table N1-N3 read.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vlminterp.geometry.grid import cells_to_positions
from vlminterp.geometry.objects import object_overlap
from vlminterp.geometry.patch_grid import GEOMETRIES
from vlminterp.geometry.tokens import ImageCells, TokenLayout
from vlminterp.specs import configured

log = logging.getLogger(__name__)


@dataclass(frozen=True)
@configured("neo.cells")
class CellSpec:
    """How a target's mask becomes image-token cells, config section neo.cells (types, defaults,
    meanings: workflow/schemas/config.schema.yaml)."""

    geometry: str
    min_overlap: float
    buffers: tuple[int, ...]

    def __post_init__(self):
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {list(GEOMETRIES)}, got {self.geometry!r}")
        if not 0.0 <= self.min_overlap < 1.0:
            raise ValueError(f"min_overlap must be in [0, 1), got {self.min_overlap}")
        if not self.buffers or min(self.buffers) < 0 or len(set(self.buffers)) != len(self.buffers):
            raise ValueError(f"buffers must be distinct non-negative integers, got {self.buffers}")


CELL_COLUMNS = ["image_id", "annotation_id", "cell_index", "tile", "cell_row", "cell_col", "x0", "y0", "x1", "y1",
                "overlap"]


def image_object_tokens(mask: np.ndarray, cells: ImageCells,
                        spec: CellSpec) -> tuple[np.ndarray, dict[int, np.ndarray], str]:
    """(overlap (N,), {b: object tokens dilated b times (N,) bool}, exclusion reason) of one mask
    over the image's tokens (`object_overlap`; dilation within each tile)."""
    overlap, base, reason = object_overlap(mask, cells, spec.min_overlap)
    return overlap, {b: cells.dilate(base, b) for b in spec.buffers}, reason


def check_geometry(adapter, geometry: str, stage: str) -> None:
    """Fail early, naming the family and the stage, when the family cannot show images this way."""
    if geometry not in adapter.geometries:
        raise ValueError(f"{stage}: the {adapter.family} family has no {geometry!r} image geometry (it supports "
                         f"{list(adapter.geometries)}); set neo.cells.geometry accordingly")


def map_object_cells(dataset, selection: pd.DataFrame, adapter, spec: CellSpec) -> pd.DataFrame:
    """One row per selected image x image token: its tile, cell, box, the target's overlap, object flags.

    Columns: image_id, annotation_id, cell_index (image-token order), tile, cell_row, cell_col (in
    the tile's token grid), x0, y0, x1, y1 (the token's box in original-image pixels, floats of
    the exact boxes; NaN for a cell wholly in padding), overlap (exact fraction, rounded once),
    one bool column object_b{b} per buffer, and excluded: why the target is excluded from N1-N3
    ("" when it has object tokens; `image_object_tokens`), the same on every row of the image.
    Single-grid families (LLaVA) have tile 0 everywhere. An excluded target keeps its rows; the
    experiments skip it and count it (`excluded` in their tables).

    Tiled families (InternVL): every tile is its own grid, the global thumbnail included, and the
    object tokens are all tokens whose box the mask overlaps, in whichever tile: the
    high-resolution tiles' tokens AND the thumbnail's (a paper-faithful reading of "the tokens
    that carry the object"; ablating only one view would leave the object in the other). Buffer b
    dilates within each tile and never crosses into another tile. Qwen2-VL: one grid per image,
    whose shape depends on the image size.
    """
    check_geometry(adapter, spec.geometry, "map_object_cells")
    frames = []
    for row in selection.itertuples(index=False):
        info = dataset.image_info(int(row.image_id))
        cells = adapter.image_cells((info["width"], info["height"]), spec.geometry)
        overlap, tokens, reason = image_object_tokens(dataset.annotation_mask(int(row.annotation_id)), cells, spec)
        frame = pd.DataFrame({
            "image_id": int(row.image_id), "annotation_id": int(row.annotation_id),
            "cell_index": np.arange(cells.num_tokens), "tile": cells.tile.astype(np.int64),
            "cell_row": cells.row.astype(np.int64), "cell_col": cells.col.astype(np.int64),
            **dict(zip(("x0", "y0", "x1", "y1"), cells.boxes.T)),
            "overlap": overlap,
        })
        for b, selected in tokens.items():
            frame[f"object_b{b}"] = selected
        frame["excluded"] = reason
        if reason:
            log.info("image %s: target %s excluded: %s", row.image_id, row.annotation_id, reason)
        frames.append(frame)
    columns = [*CELL_COLUMNS, *[f"object_b{b}" for b in spec.buffers], "excluded"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


@dataclass(frozen=True, eq=False)
class TargetCells(TokenLayout):
    """The object-flag table of one image's target, per image token (image-token order): a token
    layout (`geometry.tokens.TokenLayout`) read back from `map_object_cells`'s table.

    tile, row, col (N,) int; tile_shapes: (rows, cols) of each tile; boxes (N, 4); overlap (N,);
    object_b[b]: (N,) bool object tokens dilated b times; excluded: why the target has no object
    token ("" when it has some; the experiments skip and count an excluded target). Token sets of
    the experiments are (N,) bool arrays over these tokens; `dilate`, `distance` and `last_row`
    act within tiles.
    """

    image_id: int
    boxes: np.ndarray
    overlap: np.ndarray
    object_b: dict[int, np.ndarray] = field(default_factory=dict)
    excluded: str = ""

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> "TargetCells":
        if table["image_id"].nunique() != 1:
            raise ValueError("TargetCells.from_table takes the rows of exactly one image")
        table = table.sort_values("cell_index")
        image_id = int(table["image_id"].iloc[0])
        if not np.array_equal(table["cell_index"].to_numpy(), np.arange(len(table))):
            raise ValueError(f"image {image_id}: cell_index is not 0..{len(table) - 1}")
        tile = table["tile"].to_numpy(dtype=np.int64) if "tile" in table else np.zeros(len(table), np.int64)
        row, col = table["cell_row"].to_numpy(dtype=np.int64), table["cell_col"].to_numpy(dtype=np.int64)
        shapes = tuple((int(row[tile == t].max()) + 1, int(col[tile == t].max()) + 1)
                       for t in range(int(tile.max()) + 1))
        buffers = sorted(int(c[len("object_b"):]) for c in table.columns if c.startswith("object_b"))
        cells = cls(
            image_id=image_id, tile=tile, row=row, col=col, tile_shapes=shapes,
            boxes=table[["x0", "y0", "x1", "y1"]].to_numpy(dtype=np.float64),
            overlap=table["overlap"].to_numpy(dtype=np.float64),
            object_b={b: table[f"object_b{b}"].astype(bool).to_numpy() for b in buffers},
            excluded=str(table["excluded"].fillna("").iloc[0]) if "excluded" in table else "",
        )
        try:
            cells.check()
        except ValueError as error:
            raise ValueError(f"image {image_id}: {error}") from None
        return cells

    def object_base(self) -> np.ndarray:
        """The object's own tokens: the smallest buffer's set (b = 0 unless not studied)."""
        return self.object_b[min(self.object_b)]

    def grid_boxes(self, tile: int = 0) -> np.ndarray:
        """(rows, cols, 4) boxes of one tile."""
        return self.grid_of(self.boxes, tile)

    def check_prompt(self, image_positions) -> np.ndarray:
        """The prompt's image-token positions (`adapter.image_positions`, one image) as int64,
        after checking that the prompt shows exactly this table's tokens."""
        torch = sys.modules.get("torch")  # a tensor only where torch is loaded: never imported here
        is_tensor = torch is not None and isinstance(image_positions, torch.Tensor)
        image_positions = np.asarray(image_positions.cpu() if is_tensor else image_positions, dtype=np.int64).reshape(-1)
        if len(image_positions) != self.num_tokens:
            raise ValueError(f"image {self.image_id}: the prompt holds {len(image_positions)} image tokens but the "
                             f"cell table has {self.num_tokens}: cells mapped with another geometry or processor")
        return image_positions

    def positions(self, selected: np.ndarray, image_positions) -> np.ndarray:
        """Sequence positions of a token set (sorted), given the prompt's image-token positions."""
        return cells_to_positions(np.asarray(selected, dtype=bool), self.check_prompt(image_positions))


def cells_by_image(cells: pd.DataFrame) -> dict[int, TargetCells]:
    """The cell table split into `TargetCells` per image id."""
    return {int(image_id): TargetCells.from_table(part) for image_id, part in cells.groupby("image_id", sort=True)}
