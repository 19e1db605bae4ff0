"""A PNG montage of the segmented slices: people would rather look than read.

Each panel is one slice that contains the mask (or a prompt), windowed as the model saw
it, with the mask outline and the prompts drawn over it (boxes in yellow, clicks as green
crosses, negative clicks as magenta crosses), titled with the slice's index, its
InstanceNumber and its position in mm, so a reader can find it in a viewer. The figure's
title states the segmented volume, the window and the model. No patient identifiers are
drawn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medseg.dicom.volume import Volume
from medseg.durable import write_with
from medseg.errors import OutputError
from medseg.preprocess import IntensityWindow
from medseg.prompts import (
    BoxPrompt,
    PointPrompt,
    Prompt,
    box_bounds,
    instance_numbers,
    point_index,
    slice_positions_mm,
)

log = logging.getLogger(__name__)


def preview_slices(
    mask: np.ndarray, max_panels: int, must: tuple[int, ...] | list[int] = ()
) -> list[int]:
    """Slice indices to show: those with mask voxels, evenly thinned to ``max_panels``,
    always with the ``must`` slices (where prompts were placed).

    With an empty mask and no prompts, the middle slice (so the picture still shows what
    was looked at).
    """
    counts = np.asarray(mask).reshape(mask.shape[0], -1).sum(axis=1)
    found = np.flatnonzero(counts)
    if must:
        keep = sorted(set(must))[:max_panels]
        rest = [int(k) for k in found if k not in keep]
        room = max_panels - len(keep)
        if len(rest) > room:
            rest = (
                [
                    rest[i]
                    for i in np.unique(np.linspace(0, len(rest) - 1, room).round().astype(int))
                ]
                if room
                else []
            )
        return sorted(keep + rest)
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
    prompts: tuple[Prompt, ...] = (),
    model: str = "",
    max_panels: int = 16,
    panel_inches: float = 4.0,
) -> Path:
    """Write the montage PNG at ``path`` atomically (temporary file, fsync, then rename)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    mask = np.asarray(mask, dtype=bool)
    marks = _placed(prompts, volume)
    picks = preview_slices(mask, max_panels, sorted({k for k, _ in marks}))
    columns = min(4, len(picks))
    rows = math.ceil(len(picks) / columns)
    width = max(panel_inches * columns, 6.0)  # room for the title line over one panel
    figure = Figure(figsize=(width, panel_inches * rows + 0.6), dpi=100)
    FigureCanvasAgg(figure)
    aspect = volume.spacing[1] / volume.spacing[2]  # row spacing / column spacing
    numbers = instance_numbers(volume)
    positions = slice_positions_mm(volume)
    for panel, k in enumerate(picks):
        axes = figure.add_subplot(rows, columns, panel + 1)
        axes.imshow(window.apply(volume.voxels[k]), cmap="gray", vmin=0, vmax=1, aspect=aspect)
        if mask[k].any():
            axes.contour(mask[k].astype(np.float32), levels=[0.5], colors="red", linewidths=1.2)
        for kk, draw in marks:
            if kk == k:
                draw(axes)
        instance = "" if numbers[k] is None else f"  #{numbers[k]}"
        found = f"{int(mask[k].sum())} voxels" if mask[k].any() else "nothing found"
        axes.set_title(f"slice {k}{instance}  z {positions[k]:.1f} mm\n{found}", fontsize=10)
        axes.set_axis_off()
    ml = float(mask.sum()) * volume.voxel_volume_ml
    about = f"{ml:.2f} ml segmented  |  window {window.source or 'custom'}"
    figure.suptitle(about + (f"  |  model {model}" if model else ""), fontsize=10)
    height = panel_inches * rows + 0.6
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.5 / height))
    try:
        write_with(path, lambda handle: figure.savefig(handle, format="png"))
    except OSError as exc:
        raise OutputError(f"cannot write preview {path}: {exc.strerror or exc}") from exc
    log.info("preview of %d slice(s) written to %s", len(picks), path)
    return path


def _placed(prompts: tuple[Prompt, ...], volume: Volume) -> list[tuple[int, Callable[[Any], None]]]:
    """(slice, draw function) for every prompt, on each slice it was placed on."""
    from matplotlib.patches import Rectangle

    marks: list[tuple[int, Callable[[Any], None]]] = []
    for prompt in prompts:
        if isinstance(prompt, BoxPrompt):
            c0, c1, r0, r1, k0, k1 = box_bounds(prompt, volume)

            def box(axes: Any, c0=c0, c1=c1, r0=r0, r1=r1) -> None:
                corner = (c0 - 0.5, r0 - 0.5)
                axes.add_patch(
                    Rectangle(corner, c1 - c0 + 1, r1 - r0 + 1, fill=False, ec="yellow", lw=1.2)
                )

            marks.extend((k, box) for k in range(k0, k1 + 1))
        elif isinstance(prompt, PointPrompt):
            k, j, i = point_index(prompt, volume)
            colour = "lime" if prompt.positive else "magenta"

            def cross(axes: Any, i=i, j=j, colour=colour) -> None:
                axes.plot([i], [j], marker="+", markersize=14, mew=2, color=colour)

            marks.append((k, cross))
    return marks
