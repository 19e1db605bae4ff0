"""Slices in, the model's input tensor out: intensity window, resize, channel normalisation.

Training and serving both call :func:`preprocess_slices`, so the network sees exactly the
same pixels in both (no train/serve skew). The window is resolved once per *volume*
(:func:`resolve_window`) and then applied to any slice or crop of it, so a zoomed box crop is
windowed like the whole slice. torch-free on purpose: the runtime path never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from medseg.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from medseg.dicom.volume import Volume
    from medseg.modelcard import ModelCard

# (centre, width) in HU. Names are matched case-insensitively with '-' and '_' ignored.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "liver": (80.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
}

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_CENTRE_WIDTH = re.compile(rf"^\s*({_NUMBER})\s*/\s*({_NUMBER})\s*$")
_PERCENTILES = re.compile(rf"^\s*p\s*({_NUMBER})\s*[-:]\s*({_NUMBER})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class IntensityWindow:
    """The raw intensity range mapped linearly onto [0, 1] (values outside are clipped).

    ``source`` says where it came from (``"preset abdomen"``, ``"dicom"``, ``"40/400"``,
    ``"percentiles 0.5-99.5"``) for logs and reports.
    """

    low: float
    high: float
    source: str = ""

    def __post_init__(self) -> None:
        if not np.isfinite(self.low) or not np.isfinite(self.high) or self.high <= self.low:
            raise ConfigError(f"invalid intensity window [{self.low}, {self.high}]")

    @classmethod
    def from_centre_width(cls, centre: float, width: float, source: str = "") -> IntensityWindow:
        if width <= 0:
            raise ConfigError(f"window width must be positive, got {width}")
        return cls(centre - width / 2.0, centre + width / 2.0, source)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Raw intensities -> float32 in [0, 1]."""
        scale = np.float32(1.0 / (self.high - self.low))
        out = (np.asarray(values, dtype=np.float32) - np.float32(self.low)) * scale
        return np.clip(out, 0.0, 1.0, out=out)


def _preset_key(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "").replace(" ", "")


_PRESET_KEYS = {_preset_key(name): name for name in CT_PRESETS}


def is_auto_window(spec: str | None) -> bool:
    """Whether a window spec means the model's own window (``None`` or ``"auto"``)."""
    return spec is None or _preset_key(str(spec)) == "auto"


def window_names() -> tuple[str, ...]:
    """Every accepted window keyword, for help texts."""
    return (*CT_PRESETS, "dicom", "auto", "pLOW-HIGH", "C/W")


def resolve_window(volume: Volume, spec: str | None, card: ModelCard) -> IntensityWindow:
    """Turn a window spec into the intensity range for this volume.

    ``spec`` is a CT preset name, ``"dicom"`` (the file's own WindowCenter/Width),
    ``"C/W"`` such as ``"40/400"`` or ``"-600/1500"``, ``"pLOW-HIGH"`` (volume percentiles,
    e.g. ``"p1-99"``), or ``None``/``"auto"``: CT uses ``card.default_ct_window``, any other
    modality the volume percentiles ``card.mr_percentiles`` (MR has no absolute scale).
    """
    text = "auto" if spec is None else str(spec).strip()
    if not text:
        raise ConfigError("empty window; use a preset name, 'dicom', 'C/W' or 'pLOW-HIGH'")
    key = _preset_key(text)
    if is_auto_window(text):
        if volume.modality.upper() == "CT":
            return parse_fixed_window(card.default_ct_window)
        low, high = card.mr_percentiles
        return percentile_window(volume.voxels, low, high)
    if key == "dicom":
        if volume.window is None:
            raise ConfigError(
                "the series has no WindowCenter/WindowWidth; choose a preset, 'C/W' or 'auto'"
            )
        centre, width = volume.window
        return IntensityWindow.from_centre_width(centre, width, "dicom")
    match = _PERCENTILES.match(text)
    if match:
        return percentile_window(volume.voxels, float(match.group(1)), float(match.group(2)))
    return parse_fixed_window(text)


def check_window_spec(spec: str) -> None:
    """Refuse, without a volume, a window spec ``resolve_window`` would refuse later (a
    configuration is checked at start, not when its first job fails)."""
    text = str(spec).strip()
    if _preset_key(text) in ("auto", "dicom"):
        return
    match = _PERCENTILES.match(text)
    if match:
        low, high = float(match.group(1)), float(match.group(2))
        if not 0.0 <= low < high <= 100.0:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {text!r}")
        return
    parse_fixed_window(text)


def parse_fixed_window(text: str) -> IntensityWindow:
    """A preset name or ``"C/W"`` -> window; anything else is a ConfigError naming the choices."""
    name = _PRESET_KEYS.get(_preset_key(text))
    if name is not None:
        centre, width = CT_PRESETS[name]
        return IntensityWindow.from_centre_width(centre, width, f"preset {name}")
    match = _CENTRE_WIDTH.match(text)
    if match:
        centre, width = float(match.group(1)), float(match.group(2))
        if width <= 0:
            raise ConfigError(f"bad window {text!r}: the width must be positive")
        return IntensityWindow.from_centre_width(centre, width, f"{centre:g}/{width:g}")
    raise ConfigError(
        f"bad window {text!r}: use one of {', '.join(CT_PRESETS)}, 'dicom', 'auto', "
        "'C/W' (e.g. 40/400) or 'pLOW-HIGH' (e.g. p0.5-99.5)"
    )


def percentile_window(voxels: np.ndarray, low: float, high: float) -> IntensityWindow:
    """The [low, high] percentile range of the whole volume (MR: no absolute intensity scale)."""
    if not 0.0 <= low < high <= 100.0:
        raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}-{high}")
    lo, hi = np.percentile(np.asarray(voxels), [low, high])
    if not hi > lo:  # a constant volume: any window maps it to one value, pick a unit range
        hi = lo + 1.0
    return IntensityWindow(float(lo), float(hi), f"percentiles {low:g}-{high:g}")


@lru_cache(maxsize=64)
def _resample_matrix(n_in: int, n_out: int, antialias: bool) -> sparse.csr_matrix:
    """Row-stochastic sparse (n_out, n_in) matrix of a triangle (bilinear) filter.

    Output pixel ``o`` sits at input coordinate ``(o + 0.5) * n_in / n_out`` (pixel
    centres); the triangle is widened by the reduction factor when shrinking with
    ``antialias`` (the definition PIL and torch's ``antialias=True`` use), so upsampling is
    plain half-pixel bilinear with edge clamping. Weights cut off at the border are
    renormalised. Sparse (2-3 taps per row): a dense BLAS product is as fast on an idle
    machine but collapses when BLAS threads compete for busy cores.
    """
    scale = n_in / n_out
    support = max(scale, 1.0) if antialias else 1.0
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    taps = np.arange(n_in, dtype=np.float64) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / support)
    weights /= weights.sum(axis=1, keepdims=True)
    return sparse.csr_matrix(weights.astype(np.float32))


def resize_stack(stack: np.ndarray, size: tuple[int, int], *, antialias: bool = True) -> np.ndarray:
    """Resize (n, h, w) -> (n, H, W) float32 with a separable bilinear filter.

    Two sparse products over the whole stack (vectorised, single-threaded): about 4 ms for
    a 512x512 slice to 352x352 on this project's 2-core CI machine, even under load.
    """
    stack = np.asarray(stack, dtype=np.float32)
    n, h, w = stack.shape
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return stack.copy()
    rows = _resample_matrix(h, out_h, antialias)  # (H, h)
    cols = _resample_matrix(w, out_w, antialias)  # (W, w)
    along_rows = rows @ stack.transpose(1, 0, 2).reshape(h, n * w)  # (H, n*w)
    along_rows = along_rows.reshape(out_h, n, w).transpose(1, 0, 2).reshape(n * out_h, w)
    both = (cols @ along_rows.T).T  # (n*H, W)
    return np.ascontiguousarray(both, dtype=np.float32).reshape(n, out_h, out_w)


def preprocess_slices(slices: np.ndarray, window: IntensityWindow, card: ModelCard) -> np.ndarray:
    """Raw slices (n, rows, cols) -> the model's float32 NCHW batch (n, C, H, W).

    Steps, in the order training must use too: window to [0, 1] (clip), resize to
    ``card.input_size`` (bilinear, antialiased when shrinking), replicate to
    ``card.channels``, normalise each channel with ``card.mean`` / ``card.std``.
    """
    slices = np.asarray(slices)
    if slices.ndim == 2:
        slices = slices[None]
    if slices.ndim != 3 or slices.shape[0] == 0:
        raise ValueError(f"slices must be (n, rows, cols) with n >= 1, got {slices.shape}")
    unit = resize_stack(window.apply(slices), card.input_size)  # (n, H, W) in [0, 1]
    out = np.empty((unit.shape[0], card.channels, *card.input_size), dtype=np.float32)
    for channel, (mean, std) in enumerate(zip(card.mean, card.std, strict=True)):
        np.subtract(unit, np.float32(mean), out=out[:, channel])
        out[:, channel] *= np.float32(1.0 / std)
    return out


def channel0_values(unit: np.ndarray | float, card: ModelCard) -> np.ndarray:
    """Windowed [0, 1] intensities in channel 0's normalisation (what training stores)."""
    shifted = np.asarray(unit, dtype=np.float32) - np.float32(card.mean[0])
    return shifted * np.float32(1.0 / card.std[0])


def context_taps(
    k: int, n_slices: int, slice_spacing: float, card: ModelCard
) -> tuple[tuple[int, int, float], ...]:
    """Per input channel, where its image comes from: (lower slice, upper slice, weight).

    Without slice context every channel is slice ``k`` itself. With ``slice_context_mm``
    = d the channels are the series at -d, 0 and +d mm from slice ``k`` (2.5-D input: a
    lesion persists over neighbouring slices, noise does not), linearly interpolated
    between the two nearest slices and held at the first/last slice beyond the volume.
    """
    context = card.slice_context_mm
    if context <= 0:
        return ((k, k, 0.0),) * card.channels
    if not slice_spacing > 0:
        raise ConfigError(f"slice context needs a positive slice spacing, got {slice_spacing}")
    taps = []
    for offset in (-context, 0.0, context):
        position = min(max(k + offset / slice_spacing, 0.0), n_slices - 1.0)
        lower = int(np.floor(position))
        weight = float(position - lower)
        upper = min(lower + 1, n_slices - 1) if weight > 0 else lower
        taps.append((lower, upper, weight if upper != lower else 0.0))
    return tuple(taps)


def blend_taps(
    taps: tuple[tuple[int, int, float], ...], fetch: Callable[[int], np.ndarray]
) -> np.ndarray:
    """(C, H, W) channel images from ``fetch(slice)`` (channel 0 of preprocessed slices).

    Blending after the window is what training does with its stored channel-0 slices, so
    serving does the same. A whole-slice tap is an exact copy, not a weighted sum.
    """
    planes = []
    for lower, upper, weight in taps:
        if weight == 0.0:
            planes.append(fetch(lower))
        else:
            planes.append(
                np.float32(1.0 - weight) * fetch(lower) + np.float32(weight) * fetch(upper)
            )
    return np.stack(planes)


def context_planes(
    channel0: np.ndarray, ks: Sequence[int], slice_spacing: float, card: ModelCard
) -> np.ndarray:
    """(len(ks), C, H, W) channel images of slices ``ks`` from a whole stack of channel-0
    slices (n, H, W) of one series, by the card's slice context (``context_taps``)."""
    n, fetch = len(channel0), channel0.__getitem__
    return np.stack([blend_taps(context_taps(int(k), n, slice_spacing, card), fetch) for k in ks])


def renormalise_channels(channel0: np.ndarray, card: ModelCard) -> np.ndarray:
    """Images in channel 0's normalisation -> each channel in its own (card mean/std).

    ``channel0`` is (n, H, W), replicated into every channel, or (n, C, H, W) with one
    image per channel (slice context).
    """
    planes = channel0[:, None] if channel0.ndim == 3 else channel0
    unit = planes * np.float32(card.std[0]) + np.float32(card.mean[0])
    out = np.empty((len(planes), card.channels, *planes.shape[2:]), dtype=np.float32)
    for c, (mean, std) in enumerate(zip(card.mean, card.std, strict=True)):
        src = c if planes.shape[1] > 1 else 0  # a single plane serves every channel
        if c == 0:
            out[:, c] = planes[:, src]
        else:
            out[:, c] = (unit[:, src] - np.float32(mean)) / np.float32(std)
    return out
