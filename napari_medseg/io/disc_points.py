"""Disc points in memory: SCT disc numbers and names, :class:`Disc` and :class:`DiscPoints` (the files they are
read from and written to: ``io/points.py``, ``io/dicom_sr.py``, which both import this module and not each
other in a circle).

Disc numbers follow SCT: disc ``n`` lies between vertebrae ``n-1`` and ``n`` with C1=1 ... C7=7,
T1=8 ... T12=19, L1=20 ... L5=24, S1=25. So 3 = C2/C3, 19 = T11/T12, 21 = L1/L2, 25 = L5/S1;
1 is the top of C1 (SCT's first label). World coordinates are RAS+ millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidInput

VERTEBRAE = (
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    + [f"S{i}" for i in range(1, 6)] + ["Co1"]
)


def disc_name(number: int) -> str:
    """SCT disc number -> anatomical name (``3 -> "C2/C3"``, ``25 -> "L5/S1"``)."""
    number = int(number)
    if number == 1:
        return "top-C1"
    if 2 <= number <= len(VERTEBRAE):
        return f"{VERTEBRAE[number - 2]}/{VERTEBRAE[number - 1]}"
    raise InvalidInput(f"no disc has SCT number {number} (valid: 1..{len(VERTEBRAE)})")


def disc_number(name: str) -> int:
    """Anatomical name -> SCT disc number (``"L5/S1" -> 25``); accepts ``L5-S1`` and any case."""
    key = name.strip().replace("-", "/").replace("_", "/").upper()
    if key in ("TOP/C1", "C1"):
        return 1
    upper = [v.upper() for v in VERTEBRAE]
    parts = key.split("/")
    if len(parts) == 2 and parts[0] in upper and parts[1] in upper:
        a, b = upper.index(parts[0]), upper.index(parts[1])
        if b == a + 1:
            return b + 1
    raise InvalidInput(f"unknown disc name {name!r} (expected e.g. 'C2/C3', 'L5/S1')")


@dataclass
class Disc:
    number: int
    world: tuple[float, float, float]
    confidence: float = 1.0
    voxel: tuple[float, float, float] | None = None
    flag: str = ""  # why this disc should be checked by a person ("" = nothing found against it)

    @property
    def name(self) -> str:
        return disc_name(self.number)


@dataclass
class DiscPoints:
    """A set of discs, ordered head to feet, with the geometry of the volume they belong to."""

    discs: list[Disc] = field(default_factory=list)
    affine: np.ndarray | None = None  # voxel -> RAS mm of the source volume
    shape: tuple[int, ...] | None = None  # spatial shape of the source volume
    source: str | None = None
    levels: str = ""  # why the levels themselves need a check ("" = nothing against the count; engine.discs)
    count: str = ""  # how the levels were counted ("counted from L5/S1; ..."): said, not a flag

    def __len__(self):
        return len(self.discs)

    def sorted(self) -> "DiscPoints":
        return DiscPoints(sorted(self.discs, key=lambda d: d.number), self.affine, self.shape, self.source)

    @property
    def world(self) -> np.ndarray:
        return np.array([d.world for d in self.discs], dtype=np.float64).reshape(-1, 3)

    @property
    def numbers(self) -> list[int]:
        return [d.number for d in self.discs]

    @property
    def names(self) -> list[str]:
        """Disc names (``C2/C3`` ...), in the order of :attr:`discs`."""
        return [d.name for d in self.discs]

    @property
    def confidences(self) -> list[float]:
        return [float(d.confidence) for d in self.discs]

    @property
    def flags(self) -> list[str]:
        return [d.flag for d in self.discs]

    @property
    def verdict(self) -> str:
        """``ok`` or ``check: ...`` naming the flagged discs (engine.discs.flag_discs sets the flags)."""
        if not self.discs:
            return "check: no disc found"
        groups: dict[str, list[str]] = {}  # one line per reason, naming the discs it applies to
        for d in self.discs:
            for reason in filter(None, (r.strip() for r in d.flag.split("; "))):
                groups.setdefault(reason, []).append(d.name)
        if not groups:
            return "ok"
        every = len(self.discs) > 1
        return "check: " + "; ".join(
            f"{'all discs' if every and len(names) == len(self.discs) else ', '.join(names)} ({reason})"
            for reason, names in groups.items())

    def voxels(self) -> np.ndarray:
        """Voxel coordinates (float) in the source volume; needs ``affine``."""
        if self.affine is None:
            raise InvalidInput("these disc points carry no source geometry (affine)")
        world = np.c_[self.world, np.ones(len(self.discs))]
        return (np.linalg.inv(self.affine) @ world.T).T[:, :3]

    @classmethod
    def from_voxels(cls, voxels, numbers, affine, shape=None, confidences=None, source=None) -> "DiscPoints":
        voxels = np.asarray(voxels, dtype=np.float64).reshape(-1, 3)
        affine = np.asarray(affine, dtype=np.float64)
        world = (affine @ np.c_[voxels, np.ones(len(voxels))].T).T[:, :3]
        conf = [1.0] * len(voxels) if confidences is None else list(confidences)
        discs = [
            Disc(int(n), tuple(map(float, w)), float(c), tuple(map(float, v)))
            for n, w, c, v in zip(numbers, world, conf, voxels)
        ]
        return cls(discs, affine, None if shape is None else tuple(int(s) for s in shape[:3]), source)
