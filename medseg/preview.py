"""A PNG montage of the segmented slices: people would rather look than read.

Each panel is one slice that contains the mask, windowed as the model saw it, with the
mask outline drawn over it. No patient identifiers are drawn, only slice numbers.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from medseg.dicom.volume import Volume
from medseg.durable import write_with
from medseg.errors import OutputError
from medseg.preprocess import IntensityWindow

log = logging.getLogger(__name__)


def preview_slices(mask: np.ndarray, max_panels: int) -> list[int]:
    """Slice indices to show: those with mask voxels, evenly thinned to ``max_panels``.

    With an empty mask, the middle slice (so the picture still shows what was looked at).
    """
    counts = np.asarray(mask).reshape(mask.shape[0], -1).sum(axis=1)
    found = np.flatnonzero(counts)
    if found.size == 0:
        return [mask.shape[0] // 2]
    if found.size <= max_panels:
        return [int(k) for k in found]
    picks = np.linspace(0, found.size - 1, max_panels).round().astype(int)
    return [int(found[i]) for i in np.unique(picks)]


def write_preview(
    volume: Volume,
    mask: np.ndarray,
    window: IntensityWindow,
    path: Path | str,
    *,
    max_panels: int = 16,
    panel_inches: float = 3.0,
) -> Path:
    """Write the montage PNG at ``path`` atomically (temporary file, fsync, then rename)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    mask = np.asarray(mask, dtype=bool)
    picks = preview_slices(mask, max_panels)
    columns = min(4, len(picks))
    rows = math.ceil(len(picks) / columns)
    figure = Figure(figsize=(panel_inches * columns, panel_inches * rows), dpi=100)
    FigureCanvasAgg(figure)
    aspect = volume.spacing[1] / volume.spacing[2]  # row spacing / column spacing
    for panel, k in enumerate(picks):
        axes = figure.add_subplot(rows, columns, panel + 1)
        axes.imshow(window.apply(volume.voxels[k]), cmap="gray", vmin=0, vmax=1, aspect=aspect)
        if mask[k].any():
            axes.contour(mask[k].astype(np.float32), levels=[0.5], colors="red", linewidths=1.0)
            voxels = int(mask[k].sum())
            axes.set_title(f"slice {k}: {voxels} voxels", fontsize=9)
        else:
            axes.set_title(f"slice {k}: empty mask", fontsize=9)
        axes.set_axis_off()
    figure.tight_layout()
    try:
        write_with(path, lambda handle: figure.savefig(handle, format="png"))
    except OSError as exc:
        raise OutputError(f"cannot write preview {path}: {exc.strerror or exc}") from exc
    log.info("preview of %d slice(s) written to %s", len(picks), path)
    return path
