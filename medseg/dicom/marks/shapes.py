"""What shape a DICOM graphic type and its points describe (GSPS and SR share the names).

The rules, also in docs/marks.md:

- POINT -> point; MULTIPOINT -> one point each.
- POLYLINE / INTERPOLATED / POLYGON whose first point equals its last -> outline, or box when
  it is an axis-aligned rectangle (how rectangle tools save). Open with 2 points -> line
  (a diameter); open with more -> outline (a freehand contour, kept by its extent).
  An arrow (the caller says so) -> point at the first point, the arrow's tip.
- CIRCLE (centre, a point on the edge) -> ellipse with two equal axes along the image axes.
- ELLIPSE (the ends of the major axis, then of the minor axis) -> ellipse.
"""

from __future__ import annotations

import numpy as np

from medseg.dicom.marks.mark import MarkKind
from medseg.errors import DicomInputError

Points = tuple[tuple[float, ...], ...]

SUPPORTED = ("POINT", "MULTIPOINT", "POLYLINE", "INTERPOLATED", "POLYGON", "CIRCLE", "ELLIPSE")


def _as_points(array: np.ndarray) -> Points:
    return tuple(tuple(float(v) for v in row) for row in array)


def _is_rectangle(corners: np.ndarray) -> bool:
    """Four corners of a closed 2-D contour that span an axis-aligned rectangle."""
    if corners.shape != (4, 2):
        return False
    xs, ys = np.unique(corners[:, 0]), np.unique(corners[:, 1])
    if len(xs) != 2 or len(ys) != 2:
        return False
    # consecutive corners share exactly one coordinate (no crossing "bow tie")
    following = np.roll(corners, -1, axis=0)
    return bool(np.all((corners == following).sum(axis=1) == 1))


def shapes(
    graphic_type: str, points: np.ndarray, source: str, *, arrow: bool = False
) -> list[tuple[MarkKind, Points]]:
    """(kind, points) of each mark a graphic describes; ``points`` is (n, 2) or (n, 3)."""
    graphic_type = graphic_type.strip().upper()
    points = np.asarray(points, dtype=np.float64)
    count = len(points)
    if graphic_type not in SUPPORTED:
        raise DicomInputError(
            f"{source}: graphic type {graphic_type or '(none)'} is not supported "
            f"(supported: {', '.join(SUPPORTED)})"
        )
    if count == 0:
        raise DicomInputError(f"{source}: the graphic has no points")
    if graphic_type in ("POINT", "MULTIPOINT"):
        if graphic_type == "POINT" and count != 1:
            raise DicomInputError(f"{source}: a POINT needs 1 point, got {count}")
        return [("point", _as_points(p[None])) for p in points]
    if graphic_type == "CIRCLE":
        if count != 2 or points.shape[1] != 2:
            raise DicomInputError(f"{source}: a CIRCLE needs its centre and an edge point")
        centre = points[0]
        radius = float(np.linalg.norm(points[1] - centre))
        dx, dy = np.array([radius, 0.0]), np.array([0.0, radius])
        axes = np.stack([centre - dx, centre + dx, centre - dy, centre + dy])
        return [("ellipse", _as_points(axes))]
    if graphic_type == "ELLIPSE":
        if count != 4:
            raise DicomInputError(f"{source}: an ELLIPSE needs 4 points, got {count}")
        return [("ellipse", _as_points(points))]
    # POLYLINE, INTERPOLATED, POLYGON
    if count < 2:
        raise DicomInputError(f"{source}: a {graphic_type} needs at least 2 points, got {count}")
    if arrow:
        return [("point", _as_points(points[:1]))]
    closed = count > 3 and np.array_equal(points[0], points[-1])
    if closed or graphic_type == "POLYGON":
        corners = points[:-1] if closed else points
        if points.shape[1] == 2 and _is_rectangle(corners):
            return [("box", _as_points(corners))]
        if len(corners) < 3:
            raise DicomInputError(f"{source}: a closed contour needs at least 3 corners")
        return [("outline", _as_points(corners))]
    if count == 2:
        return [("line", _as_points(points))]
    return [("outline", _as_points(points))]
