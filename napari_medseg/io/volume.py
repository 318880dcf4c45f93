"""The ``Volume`` type every reader returns and every writer takes.

Conventions (the NIfTI ones, used everywhere below the GUI layer):

* ``data`` is indexed in file order: ``data[i, j, k(, t)]`` for volumes, ``data[row, col(, rgb)]`` for
  2D images.
* ``affine`` maps voxel indices ``(i, j, k, 1)`` to RAS+ world coordinates in millimetres, exactly as
  nibabel's ``img.affine``. 2D images carry a 4x4 affine too (identity unless DICOM gave one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from .errors import InvalidInput

KINDS = ("image", "labels")


@dataclass
class Volume:
    data: np.ndarray
    affine: np.ndarray
    name: str = "volume"
    kind: str = "image"
    rgb: bool = False
    path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise InvalidInput(f"affine must be 4x4, got {self.affine.shape}")
        if self.kind not in KINDS:
            raise InvalidInput(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def spatial_ndim(self) -> int:
        """Number of spatial axes (2 or 3); RGB and time axes are not spatial."""
        nd = self.data.ndim - (1 if self.rgb else 0)
        return min(nd, 3)

    @property
    def is_2d(self) -> bool:
        """A 2-D image: two spatial axes, or a volume marked ``layout="2d"`` (a napari layer of one slice)."""
        return self.spatial_ndim == 2 or self.metadata.get("layout") == "2d"

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial array axis (column norms of the affine)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(v) for v in norms[: self.spatial_ndim])

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"`` or ``"PSR"`` (nibabel's ``aff2axcodes``)."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    def summary(self) -> dict[str, Any]:
        """A small JSON-friendly description (used by the demo and the docs)."""
        finite = self.data[np.isfinite(self.data)] if self.data.dtype.kind == "f" else self.data
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.data.shape),
            "dtype": str(self.data.dtype),
            "rgb": self.rgb,
            "spacing_mm": [round(s, 6) for s in self.spacing],
            "orientation": self.orientation,
            "affine": np.round(self.affine, 6).tolist(),
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "path": self.path,
            **{k: v for k, v in self.metadata.items() if isinstance(v, (str, int, float))},
        }


def class_names(known, n: int) -> list[str]:
    """``n`` class names: the ``known`` ones, then ``class <i>`` for each class without one (the one
    spelling used everywhere a label has no name: layers, checkpoints, DICOM SEG, dataset folders)."""
    names = [str(v) for v in (known or [])]
    return names[: max(n, 0)] + [f"class {i}" for i in range(len(names), n)]


# Two placements (voxel -> world matrices, mm and direction cosines) are the same when they agree within
# this: float32 round trips through napari layers and DICOM decimal strings stay far below it, a real
# shift or rotation (a tenth of a voxel of 0.5 mm, a 0.01 degree tilt) far above.
PLACEMENT_ATOL = 1e-4


def same_placement(a, b) -> bool:
    """Whether two affines / world matrices place voxels at the same world positions (``PLACEMENT_ATOL``)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, atol=PLACEMENT_ATOL))
