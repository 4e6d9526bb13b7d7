"""The eight flips and quarter turns of a 2D image (the dihedral group D4), applied to arrays and (x, y) points.

A cephalogram may reach us facing left (the detector or the export mirrored it) or turned by 90/180 degrees; the
models were trained on one orientation. :class:`Orientation` maps an image into the orientation the model knows
and the points found there back to the image as given. Points are ``(x, y)`` pixel centres (x right, y down), as
everywhere in anatomark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anatomark.data.image_io import XrayImage


@dataclass(frozen=True)
class Orientation:
    """One element of D4, described by what it does to the image as given.

    Attributes:
        name: ``identity``, ``flip_x`` (mirror left-right), ``flip_y``, ``rot180``, ``rot90`` (turn 90 deg
            counter-clockwise on screen, ``np.rot90``), ``rot270`` (90 deg clockwise), ``transpose``,
            ``antitranspose``.
        k: quarter turns counter-clockwise (``np.rot90``), applied after the optional mirror.
        mirror: mirror left-right first.
    """

    name: str
    k: int
    mirror: bool

    @property
    def swaps_axes(self) -> bool:
        return self.k % 2 == 1

    def apply_array(self, array: np.ndarray) -> np.ndarray:
        """``(H, W)`` -> the transformed array (``(W, H)`` when the axes swap), contiguous."""
        a = array[:, ::-1] if self.mirror else array
        return np.ascontiguousarray(np.rot90(a, self.k))

    def matrix(self, size_wh: tuple[int, int]) -> np.ndarray:
        """3x3 matrix taking (x, y, 1) of the image as given (``size_wh`` = its (W, H)) to the transformed image."""
        w, h = size_wh
        m = np.eye(3)
        if self.mirror:
            m = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
        cw, ch = w, h
        for _ in range(self.k % 4):
            # np.rot90 (counter-clockwise): new[i, j] = old[j, cw - 1 - i] -> (x, y) -> (y, cw - 1 - x)
            m = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, cw - 1.0], [0.0, 0.0, 1.0]]) @ m
            cw, ch = ch, cw
        return m

    def apply_image(self, image: XrayImage) -> XrayImage:
        """The transformed image (spacing swapped with the axes); ``meta["orientation"]`` names the transform."""
        sx, sy = image.spacing
        return XrayImage(
            array=self.apply_array(image.array),
            spacing=(sy, sx) if self.swaps_axes else (sx, sy),
            spacing_source=image.spacing_source,
            origin=image.origin,
            path=image.path,
            meta={**image.meta, "orientation": self.name},
        )

    def points_back(self, points: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
        """``(K, 2)`` points found in the transformed image -> the image as given (of ``size_wh``); NaN stays NaN."""
        inv = np.linalg.inv(self.matrix(size_wh))
        p = np.asarray(points, np.float64)
        return p @ inv[:2, :2].T + inv[:2, 2]

    def points_forward(self, points: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
        """``(K, 2)`` points of the image as given (of ``size_wh``) -> the transformed image."""
        m = self.matrix(size_wh)
        return np.asarray(points, np.float64) @ m[:2, :2].T + m[:2, 2]


#: In the order they are tried: the likeliest first (a mirrored export, a film scanned upside down).
ORIENTATIONS: dict[str, Orientation] = {
    o.name: o
    for o in (
        Orientation("identity", 0, False),
        Orientation("flip_x", 0, True),
        Orientation("rot180", 2, False),
        Orientation("flip_y", 2, True),
        Orientation("rot90", 1, False),
        Orientation("rot270", 3, False),
        Orientation("transpose", 1, True),
        Orientation("antitranspose", 3, True),
    )
}
IDENTITY = ORIENTATIONS["identity"]

#: What each transform that *undoes* the image's orientation says about the image as given.
DESCRIPTIONS = {
    "identity": "as the model expects",
    "flip_x": "mirrored left-right (facing the other way)",
    "rot180": "upside down (turned 180 deg)",
    "flip_y": "mirrored top-bottom",
    "rot90": "turned 90 deg clockwise",
    "rot270": "turned 90 deg counter-clockwise",
    "transpose": "transposed (turned 90 deg and mirrored)",
    "antitranspose": "anti-transposed (turned 90 deg and mirrored)",
}
