"""Voxel-grid geometry of volume nodes: read, compare and describe differences.

Qt-free; works on any ``vtkMRMLVolumeNode`` (real MRML in slicer-core and in Slicer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    dimensions: tuple   # (i, j, k) voxels, VTK order
    spacing: tuple      # mm
    origin: tuple       # RAS mm
    directions: tuple   # 3x3 IJK-to-RAS direction cosines, row-major

    @classmethod
    def fromVolume(cls, volumeNode) -> "Geometry":
        import vtk

        imageData = volumeNode.GetImageData()
        dims = tuple(int(d) for d in imageData.GetDimensions()) if imageData is not None else (0, 0, 0)
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASDirectionMatrix(matrix)
        directions = tuple(tuple(matrix.GetElement(r, c) for c in range(3)) for r in range(3))
        return cls(dims, tuple(volumeNode.GetSpacing()), tuple(volumeNode.GetOrigin()), directions)

    def differences(self, other: "Geometry", tolerance: float = 1e-4) -> list[str]:
        """Human-readable differences (empty when the grids match).

        Origins may differ by ``tolerance`` times the smallest spacing (sub-voxel rounding of
        file formats); spacings and directions by ``tolerance`` relative.
        """
        found = []
        if self.dimensions != other.dimensions:
            found.append(f"size {'x'.join(map(str, self.dimensions))} vs {'x'.join(map(str, other.dimensions))}")
        spacingA, spacingB = np.array(self.spacing), np.array(other.spacing)
        if not np.allclose(spacingA, spacingB, rtol=tolerance, atol=0):
            found.append(f"spacing {_fmt(spacingA)} vs {_fmt(spacingB)} mm")
        step = float(min(min(self.spacing), min(other.spacing)) or 1.0)
        if not np.allclose(self.origin, other.origin, rtol=0, atol=max(tolerance * step, 1e-6)):
            found.append(f"origin {_fmt(self.origin)} vs {_fmt(other.origin)} mm")
        if not np.allclose(self.directions, other.directions, rtol=0, atol=tolerance):
            found.append("axis directions")
        return found

    def describe(self) -> str:
        return (f"{'x'.join(map(str, self.dimensions))} voxels of {_fmt(self.spacing)} mm, "
                f"origin {_fmt(self.origin)}")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def hasParentTransform(node) -> bool:
    getter = getattr(node, "GetParentTransformNode", None)
    return bool(getter and getter() is not None)
