"""Geometry of an acquisition lattice: where each (row, col) node of the grid lies in the image.

Shared by the synthetic generator (to place marks) and by registration tests and benchmarks
(to know each mark's true id). Row 0 is the top, col 0 the left of the grid as imaged; the
id of node (row, col) is ``row * cols + col + 1``::

    lat = Lattice.centred(rows=50, cols=50, width=2000, height=2000, pitch_x=35, pitch_y=35,
                          angle_deg=3.0)
    xy = lat.nodes()          # (rows*cols, 2) float64 x, y in id order
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Lattice:
    """A possibly rotated and slightly sheared rectangular lattice; angles in degrees, lengths in px.

    ``row_across`` and ``row_along`` (one value per row, px) move whole rows off the regular
    lattice, across the rows and along them, as on stages whose step between rows is not steady
    (see :meth:`with_uneven_rows`); empty means regular rows.
    """

    rows: int
    cols: int
    pitch_x: float
    pitch_y: float
    angle_deg: float = 0.0
    origin_x: float = 0.0
    origin_y: float = 0.0
    shear: float = 0.0
    row_across: tuple[float, ...] = ()
    row_along: tuple[float, ...] = ()

    def basis(self) -> tuple[np.ndarray, np.ndarray]:
        """Vectors from node (r, c) to (r, c+1) and to (r+1, c)."""
        theta = math.radians(self.angle_deg)
        col_step = self.pitch_x * np.array([math.cos(theta), math.sin(theta)])
        row_dir = np.array([-math.sin(theta), math.cos(theta)])
        row_step = self.pitch_y * row_dir + self.shear * col_step
        return col_step, row_step

    def node(self, row: int, col: int) -> tuple[float, float]:
        col_step, row_step = self.basis()
        x, y = np.array([self.origin_x, self.origin_y]) + col * col_step + row * row_step + self._row_offsets()[row]
        return float(x), float(y)

    def nodes(self) -> np.ndarray:
        """Positions of all nodes, shape (rows*cols, 2), row-major so index = id - 1."""
        col_step, row_step = self.basis()
        rr, cc = np.mgrid[0 : self.rows, 0 : self.cols]
        pts = (
            np.array([self.origin_x, self.origin_y])[None, :]
            + cc.reshape(-1, 1) * col_step[None, :]
            + rr.reshape(-1, 1) * row_step[None, :]
        )
        if self.row_across or self.row_along:
            pts = pts + np.repeat(self._row_offsets(), self.cols, axis=0)
        return pts.astype(np.float64)

    def _row_offsets(self) -> np.ndarray:
        """How far each row sits off the regular lattice, shape (rows, 2): zeros for regular rows."""
        theta = math.radians(self.angle_deg)
        across = np.array([-math.sin(theta), math.cos(theta)])
        along = np.array([math.cos(theta), math.sin(theta)])
        offsets = np.zeros((self.rows, 2))
        if self.row_across:
            offsets += np.asarray(self.row_across, float)[:, None] * across[None, :]
        if self.row_along:
            offsets += np.asarray(self.row_along, float)[:, None] * along[None, :]
        return offsets

    def with_uneven_rows(
        self, rng: np.random.Generator, *, spacing: tuple[float, float] = (0.65, 1.3), slide: float = 0.2
    ) -> Lattice:
        """The same lattice with unevenly spaced rows, as the real ``tile_b`` sample shows.

        The gap before each row is drawn from ``spacing`` (in row pitches) and each row slides
        along itself by up to ``slide`` column pitches; rows stay parallel and in order, and row 0
        keeps its place across the rows.
        """
        gaps = rng.uniform(*spacing, size=self.rows)
        gaps[0] = 0.0
        across = (np.cumsum(gaps) - np.arange(self.rows)) * self.pitch_y
        along = rng.uniform(-slide, slide, size=self.rows) * self.pitch_x
        return replace(self, row_across=tuple(across.tolist()), row_along=tuple(along.tolist()))

    def ids(self) -> np.ndarray:
        """Node ids in the order of :meth:`nodes`."""
        return np.arange(1, self.rows * self.cols + 1, dtype=np.int64)

    @classmethod
    def centred(
        cls,
        *,
        rows: int,
        cols: int,
        width: int,
        height: int,
        pitch_x: float,
        pitch_y: float | None = None,
        angle_deg: float = 0.0,
        shear: float = 0.0,
        offset_x: float = 0.0,
        offset_y: float = 0.0,
    ) -> Lattice:
        """A lattice whose centre is the image centre (plus an offset)."""
        pitch_y = pitch_x if pitch_y is None else pitch_y
        probe = cls(rows, cols, pitch_x, pitch_y, angle_deg, 0.0, 0.0, shear)
        centre = probe.nodes().mean(axis=0)
        return cls(
            rows,
            cols,
            pitch_x,
            pitch_y,
            angle_deg,
            width / 2.0 - centre[0] + offset_x,
            height / 2.0 - centre[1] + offset_y,
            shear,
        )
