"""The offline job: DICOM files in -> Volume -> model on slices or prompt crops -> DICOM-SEG.

Used by ``medseg segment`` and by the listener's workers. Everything a job needs is passed
in (options, an optional already-opened model), nothing is kept between calls, so
concurrent jobs do not interfere; an opened ``LoadedModel`` can be shared by jobs to avoid
reloading the network for every series (ONNX Runtime sessions are thread-safe; an NPU
engine should be used by one worker at a time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np

from medseg.body import DEFAULT_BODY, BodyCriteria, body_slices
from medseg.dicom.files import SkippedFile
from medseg.dicom.marks import Mark, marks_to_prompts
from medseg.dicom.volume import Volume
from medseg.engine import open_engine
from medseg.engine.base import Engine
from medseg.errors import ConfigError, ModelError, OutputError, PromptError
from medseg.modelcard import (
    ModelCard,
    check_flips,
    check_refinement,
    default_model_path,
    load_card_for,
)
from medseg.postprocess import CleanupOptions, clean_mask, threshold, to_probabilities
from medseg.preprocess import (
    IntensityWindow,
    channel0_values,
    context_taps,
    is_auto_window,
    preprocess_slices,
    renormalise_channels,
    resize_stack,
    resolve_window,
)
from medseg.prompts import Prompt, Tracking, lesion_prompts
from medseg.propagate import Propagation, SliceRunner, propagate_lesions
from medseg.refine import Refinement, continue_across_slices, redraw_rims, refine_probabilities
from medseg.tiling import Tile, TileBlender, crop_padded, slice_regions, tile_extent

if TYPE_CHECKING:  # pragma: no cover
    import pydicom

log = logging.getLogger(__name__)

T = TypeVar("T")

STAGES = ("load", "preprocess", "infer", "postprocess", "write", "preview")


@dataclass(frozen=True)
class SegmentOptions:
    """Everything one segmentation job can be told; validated on construction.

    ``model`` None means the bundled default model. ``threshold``, ``test_time_flips`` and
    ``refine_radius_mm`` None mean the model card's (a radius of 0 turns the card's edge
    refinement off). ``window`` is a spec for :func:`medseg.preprocess.resolve_window`.
    ``marks`` (a reader's GSPS/SR marks, ``medseg.dicom.marks``) become prompts once the
    series is loaded, beside ``prompts``. ``report`` is where the TID 1500 Measurement
    Report SR of the SEG's lesions goes (``medseg.results.report``), if anywhere.
    ``body`` says which slices hold any of the body (``medseg.body``): in automatic
    segmentation the others are not run through the network (their mask is empty); None
    runs every slice. ``overlap`` keeps the engine busy: the next batch is prepared and
    the previous one's output post-processed beside inference (same result without).
    """

    model: Path | None = None
    backend: str = "auto"
    threads: int | None = None
    providers: tuple[str, ...] = ()
    window: str = "auto"
    threshold: float | None = None
    test_time_flips: tuple[str, ...] | None = None
    refine_radius_mm: float | None = None
    prompts: tuple[Prompt, ...] = ()
    marks: tuple[Mark, ...] = ()
    series_uid: str | None = None
    volume: str | None = None  # of a series with several (magnitude/phase): type or number
    min_component_mm3: float = 0.0
    largest_component: bool = False
    fill_holes: bool = False
    seg_type: Literal["BINARY", "FRACTIONAL"] = "BINARY"
    series_number: int = 9001
    series_description: str = "medseg segmentation"
    batch_size: int = 4
    preview: Path | None = None
    report: Path | None = None
    body: BodyCriteria | None = DEFAULT_BODY
    overlap: bool = True

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.test_time_flips is not None:
            check_flips(self.test_time_flips, "test-time flips")
        if self.refine_radius_mm is not None:
            check_refinement(self.refine_radius_mm, 1.0, "--refine-radius")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.seg_type not in ("BINARY", "FRACTIONAL"):
            raise ConfigError(f"SEG type must be BINARY or FRACTIONAL, got {self.seg_type!r}")
        if not 1 <= self.series_number <= 2**31 - 1:
            raise ConfigError(f"series number must be a positive integer, got {self.series_number}")
        self.cleanup  # noqa: B018 - validates the clean-up values now, not mid-job

    @property
    def cleanup(self) -> CleanupOptions:
        return CleanupOptions(self.min_component_mm3, self.largest_component, self.fill_holes)


@dataclass(frozen=True)
class LoadedModel:
    """An opened engine with its card and file: open once, run many jobs, then close."""

    engine: Engine
    card: ModelCard
    path: Path

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_model(options: SegmentOptions) -> tuple[Path, ModelCard]:
    """The model file and its card, checked without opening the model (cheap, fails early).
    Without ``options.model``: the bundled model for the job's kind (prompted or not)."""
    prompted = bool(options.prompts or options.marks)
    path = Path(options.model) if options.model is not None else default_model_path(prompted)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    card = load_card_for(path)
    if len(card.segments) != 1:
        raise ModelError(
            f"model card {card.name} declares {len(card.segments)} segments: the pipeline "
            "runs one-output models only"
        )
    return path, card


def _open(path: Path, card: ModelCard, options: SegmentOptions) -> LoadedModel:
    engine = open_engine(
        path,
        card,
        backend=options.backend,
        threads=options.threads,
        providers=options.providers or None,
    )
    return LoadedModel(engine, card, path)


def load_model(options: SegmentOptions) -> LoadedModel:
    """Open ``options.model`` (or the bundled default) with its model card."""
    return _open(*resolve_model(options), options)


@dataclass(frozen=True, eq=False)
class VolumeResult:
    """The in-memory answer for one volume: final mask, probabilities, timings, window,
    and how many tiles the network ran (sliding windows, or the prompts' crops)."""

    mask: np.ndarray
    probabilities: np.ndarray
    window: IntensityWindow
    level: float
    timings: dict[str, float] = field(default_factory=dict)
    tiles: int = 0
    lesions: np.ndarray | None = None  # prompted jobs: 1..n per prompted lesion, 0 = none
    prompts: tuple[Prompt, ...] = ()  # every prompt the job ran (command line and marks)
    not_run: tuple[int, ...] = ()  # slices outside the body, never run through the network


@dataclass(frozen=True)
class SegmentResult:
    """What a finished job reports (the CLI prints it, the listener logs it)."""

    output: Path
    slices: int
    volume_ml: float
    seconds: float
    timings: dict[str, float]
    engine: str
    sop_instance_uid: str
    skipped: tuple[SkippedFile, ...]
    preview: Path | None = None
    report: Path | None = None
    slices_not_run: int = 0  # outside the body: no inference spent on them

    def summary(self) -> str:
        """One line: slices (and those outside the body, not run), segmented volume, time,
        output."""
        outside = f" ({self.slices_not_run} outside the body)" if self.slices_not_run else ""
        return (
            f"{self.slices} slices{outside}, {self.volume_ml:.2f} ml segmented in "
            f"{self.seconds:.1f} s ({self.engine}) -> {self.output}"
        )


def _batches(tiles: Sequence[Tile], size: int) -> Iterator[list[Tile]]:
    """Consecutive runs of same-shaped tiles, at most ``size`` long (one stack per batch)."""
    batch: list[Tile] = []
    for tile in tiles:
        if batch and (len(batch) == size or tile.shape != batch[0].shape):
            yield batch
            batch = []
        batch.append(tile)
    if batch:
        yield batch


class Channel0Cache:
    """Windowed, resized channel-0 images of the slice regions already prepared.

    With slice context a tile's channels read its neighbouring slices, so consecutive
    batches share most of their slices; each is windowed and resized once, not once per
    batch that reads it. Used from one thread (the preparing one); regions before the
    current batch's first tap are dropped, so it holds a batch's worth at most.
    """

    def __init__(self) -> None:
        self._planes: dict[Tile, np.ndarray] = {}

    def planes(
        self, voxels: np.ndarray, keys: list[Tile], window: IntensityWindow, card: ModelCard
    ) -> np.ndarray:
        """(len(keys), H, W) channel-0 images of ``keys``, computing only the new ones."""
        first = min(key.k for key in keys)
        self._planes = {key: plane for key, plane in self._planes.items() if key.k >= first}
        missing = [key for key in keys if key not in self._planes]
        if missing:
            for key, plane in zip(missing, _channel0(voxels, missing, window, card), strict=True):
                self._planes[key] = plane
        return np.stack([self._planes[key] for key in keys])


def _channel0(
    voxels: np.ndarray, keys: list[Tile], window: IntensityWindow, card: ModelCard
) -> np.ndarray:
    """(n, H, W) channel 0 of ``keys``' regions: one window, one resize for the stack."""
    if all(key.shape == voxels.shape[1:] for key in keys):  # whole slices: one gather
        crops = voxels[[key.k for key in keys]]
    else:
        crops = np.stack([crop_padded(voxels[key.k], key.region, window.low) for key in keys])
    return channel0_values(resize_stack(window.apply(crops), card.input_size), card)


def _prepare(
    voxels: np.ndarray,
    batch: list[Tile],
    window: IntensityWindow,
    card: ModelCard,
    slice_spacing: float,
    cache: Channel0Cache | None = None,
) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    if card.slice_context_mm > 0:
        tensor = _prepare_with_context(
            voxels, batch, window, card, slice_spacing, cache or Channel0Cache()
        )
        return tensor, time.perf_counter() - start
    if all(t.shape == voxels.shape[1:] for t in batch):  # whole slices: no copy per tile
        crops = voxels[[t.k for t in batch]]
    else:
        crops = np.stack([crop_padded(voxels[t.k], t.region, window.low) for t in batch])
    return preprocess_slices(crops, window, card), time.perf_counter() - start


def _prepare_with_context(
    voxels: np.ndarray,
    batch: list[Tile],
    window: IntensityWindow,
    card: ModelCard,
    slice_spacing: float,
    cache: Channel0Cache,
) -> np.ndarray:
    """2.5-D input: each channel from its own slice(s), the same region as the tile.

    Every slice region is windowed and resized once (``Channel0Cache``), then blended
    exactly as training blends its stored slices (``medseg.preprocess.blend_taps``: a
    whole-slice tap is a copy, others ``(1 - w) * lower + w * upper`` in float32), for the
    whole batch at once.
    """
    taps = [context_taps(t.k, len(voxels), slice_spacing, card) for t in batch]
    keys = list(
        dict.fromkeys(
            Tile(j, t.region)
            for t, tile_taps in zip(batch, taps, strict=True)
            for lower, upper, _ in tile_taps
            for j in (lower, upper)
        )
    )
    row = {key: i for i, key in enumerate(keys)}
    channel0 = cache.planes(voxels, keys, window, card)  # (keys, H, W)
    pairs = list(zip(batch, taps, strict=True))
    lower = np.array([[row[Tile(lo, t.region)] for lo, _, _ in tt] for t, tt in pairs])
    upper = np.array([[row[Tile(up, t.region)] for _, up, _ in tt] for t, tt in pairs])
    weight = np.array([[w for _, _, w in tt] for tt in taps], dtype=np.float64)  # (n, C)
    planes = channel0[lower]  # (n, C, H, W): whole-slice taps are exact copies
    blended = weight > 0
    if blended.any():  # the weights rounded to float32 as blend_taps rounds them
        keep = (1.0 - weight[blended]).astype(np.float32)[:, None, None]
        take = weight[blended].astype(np.float32)[:, None, None]
        planes[blended] = keep * channel0[lower[blended]] + take * channel0[upper[blended]]
    return renormalise_channels(planes, card)


def _prefetched(
    pool: _Helper,
    voxels: np.ndarray,
    batches: list[list[Tile]],
    window: IntensityWindow,
    card: ModelCard,
    slice_spacing: float,
) -> Iterator[tuple[list[Tile], np.ndarray, float]]:
    """Yield (batch, tensor, seconds) while the next batch is already being prepared."""
    pending: Future[tuple[np.ndarray, float]] | None = None
    cache = Channel0Cache()  # used by the pool's one thread only, batch after batch
    prepare = partial(
        _prepare, voxels, window=window, card=card, slice_spacing=slice_spacing, cache=cache
    )
    for index, batch in enumerate(batches):
        current = pending or pool.submit(prepare, batch)
        following = batches[index + 1] if index + 1 < len(batches) else None
        pending = pool.submit(prepare, following) if following else None
        yield (batch, *current.result())


def _infer(
    engine: Engine,
    tensor: np.ndarray,
    flips: tuple[str, ...],
    prompt: np.ndarray | None = None,
) -> np.ndarray:
    """The engine's output, averaged with its output on each flipped view (flipped back).

    Averaging the logits of mirrored views is the cheapest ensemble there is: errors that
    depend on where a structure sits in the image partly cancel, at one more run per flip.
    Prompt maps (a promptable model) are flipped with the image.
    """
    output = engine.run(tensor) if prompt is None else engine.run(tensor, prompt)
    if not flips:
        return output
    total = np.asarray(output, dtype=np.float32).copy()
    for flip in flips:
        axis = -1 if flip == "horizontal" else -2
        view = np.ascontiguousarray(np.flip(tensor, axis=axis))
        if prompt is None:
            mirrored = engine.run(view)
        else:
            mirrored = engine.run(view, np.ascontiguousarray(np.flip(prompt, axis=axis)))
        total += np.flip(np.asarray(mirrored, dtype=np.float32), axis=axis)
    return total / np.float32(len(flips) + 1)


def _sliding_tiles(volume: Volume, card: ModelCard) -> tuple[tuple[Tile, ...], TileBlender]:
    """Every slice's windows at the card's pixel spacing (``medseg.tiling``; the whole
    slice without one) and the blender that merges their answers."""
    shape = volume.shape[1:]
    regions = slice_regions(shape, tile_extent(card, shape, volume.spacing[1:]))
    tiles = tuple(Tile(k, r) for k in range(volume.shape[0]) for r in regions)
    return tiles, TileBlender(shape, regions)


def _run_tiles(
    volume: Volume,
    engine: Engine,
    card: ModelCard,
    window: IntensityWindow,
    tiles: tuple[Tile, ...],
    blender: TileBlender,
    batch_size: int,
    progress: bool,
    flips: tuple[str, ...] = (),
    overlap: bool = True,
    level: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Probabilities (slices, rows, cols) from running every tile, and where they lie
    above ``level`` (bool, same shape); the windows' answers are blended by
    ``TileBlender``. Whole-slice answers are thresholded batch by batch, beside inference.

    With ``overlap`` the engine is kept busy: one helper thread prepares batch k+1 while
    batch k runs, another turns batch k-1's output into probabilities (resize back,
    sigmoid, blend) meanwhile (numpy, scipy and ONNX Runtime release the GIL). Each
    helper handles its batches in order, so the result is the same as without overlap,
    where the three steps take turns on the calling thread.
    """
    from tqdm import tqdm

    timings = {"preprocess": 0.0, "infer": 0.0, "postprocess": 0.0}
    probabilities = np.zeros(volume.shape, dtype=np.float32)
    above = np.zeros(volume.shape, dtype=bool)  # slices never run stay below any level
    batches = list(_batches(tiles, batch_size))
    unit = "slice" if blender.single else "window"
    bar = tqdm(total=len(tiles), unit=unit, desc="segment", disable=not progress, leave=False)

    def finish(batch: list[Tile], output: np.ndarray) -> float:
        start = time.perf_counter()
        probs = to_probabilities(output, batch[0].shape, card)
        for tile, prob in zip(batch, probs, strict=True):
            blender.add(probabilities[tile.k], tile.region, prob)
            if blender.single:  # the slice is final: threshold it now
                above[tile.k] = threshold(probabilities[tile.k], level)
        return time.perf_counter() - start

    workers = 1 if overlap else 0
    with (
        bar,
        _Helper(workers, "medseg-prep") as prep_pool,
        _Helper(workers, "medseg-post") as post_pool,
    ):
        prepared = _prefetched(prep_pool, volume.voxels, batches, window, card, volume.spacing[0])
        finishing: list[Future[float]] = []
        for batch, tensor, prep_seconds in prepared:
            timings["preprocess"] += prep_seconds
            start = time.perf_counter()
            output = _infer(engine, tensor, flips)
            timings["infer"] += time.perf_counter() - start
            if output.shape != (len(batch), 1, *card.input_size):
                raise ModelError(
                    f"engine {engine.name} returned {output.shape}, expected "
                    f"({len(batch)}, 1, {card.input_size[0]}, {card.input_size[1]})"
                )
            finishing.append(post_pool.submit(finish, batch, output))
            while len(finishing) > 1:  # at most one batch behind: memory stays bounded
                timings["postprocess"] += finishing.pop(0).result()
            bar.update(len(batch))
        for future in finishing:
            timings["postprocess"] += future.result()
    blender.finish(probabilities)
    if not blender.single:  # windows overlap: only the blended whole is final
        start = time.perf_counter()
        above = threshold(probabilities, level)
        timings["postprocess"] += time.perf_counter() - start
    return probabilities, above, timings


class _Helper:
    """A one-thread executor, or (``workers`` 0) one that runs each call at once on the
    calling thread: the same steps in the same order, without overlap."""

    def __init__(self, workers: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name) if workers else None

    def submit(self, function: Callable[..., T], *args: object) -> Future[T]:
        if self._pool is not None:
            return self._pool.submit(function, *args)
        future: Future[T] = Future()
        try:
            future.set_result(function(*args))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def __enter__(self) -> _Helper:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _refinement(card: ModelCard, options: SegmentOptions) -> Refinement:
    """The card's edge refinement, unless the job names its own radius."""
    radius = card.refine_radius_mm if options.refine_radius_mm is None else options.refine_radius_mm
    return Refinement(
        radius,
        card.refine_eps,
        card.refine_across_slices,
        card.refine_rim_level,
        card.refine_rim_trim,
    )


def _tile_unit(blender: TileBlender) -> str:
    return "whole slices" if blender.single else "windows"


def _describe(refinement: Refinement) -> str:
    if not refinement.enabled:
        return "off"
    across = ", across slices" if refinement.crosses_slices else ""
    trim = f" (trim {refinement.rim_trim:g})" if refinement.rim_trim else ""
    rims = f", rims at {refinement.rim_level:g}{trim}" if refinement.redraws_rims else ""
    return f"{refinement.radius_mm:g} mm{across}{rims}"


def segment_volume_result(
    volume: Volume,
    engine: Engine,
    card: ModelCard,
    options: SegmentOptions,
    *,
    progress: bool = False,
) -> VolumeResult:
    """Segment an in-memory volume; the full result with timings (see ``segment_volume``)."""
    window = resolve_window(volume, options.window, card)
    _warn_if_not_the_training_window(volume, options.window, window, card)
    flips = card.test_time_flips if options.test_time_flips is None else options.test_time_flips
    level = card.threshold if options.threshold is None else options.threshold
    prompts = (*options.prompts, *marks_to_prompts(options.marks, volume))
    if prompts:
        check_promptable(card)
        return _segment_prompted(volume, engine, card, window, flips, level, prompts, options)
    refinement = _refinement(card, options)
    tiles, blender = _sliding_tiles(volume, card)
    start = time.perf_counter()
    not_run: tuple[int, ...] = ()
    if options.body is not None:
        body = body_slices(volume, options.body)
        not_run = tuple(int(k) for k in np.flatnonzero(~body))
        tiles = tuple(t for t in tiles if body[t.k])
    body_seconds = time.perf_counter() - start
    log.info(
        "segmenting %d slices as %d %s (%d slices outside the body not run), window %s, "
        "engine %s, test-time flips %s, refinement %s",
        volume.shape[0],
        len(tiles),
        _tile_unit(blender),
        len(not_run),
        window.source,
        engine.name,
        ",".join(flips) or "none",
        _describe(refinement),
    )
    probabilities, raw, timings = _run_tiles(
        volume,
        engine,
        card,
        window,
        tiles,
        blender,
        options.batch_size,
        progress,
        flips,
        options.overlap,
        level,
    )
    timings["preprocess"] += body_seconds
    start = time.perf_counter()
    if refinement.enabled:  # refined from what the network saw (``raw`` until now)
        touched = np.flatnonzero(raw.any(axis=(1, 2)))  # the only slices it can change
        probabilities = refine_probabilities(
            probabilities,
            volume.voxels,
            window,
            volume.spacing[1:],
            raw,
            refinement,
            in_place=True,  # the array is this job's own: no copy of the whole volume
        )
        raw[touched] = threshold(probabilities[touched], level)
    if refinement.crosses_slices:  # else no copy of the mask to make
        raw = continue_across_slices(raw, volume.voxels, window, volume.spacing[1:], refinement)
    if refinement.redraws_rims:
        raw = redraw_rims(raw, volume.voxels, window, volume.spacing, refinement)
    mask = clean_mask(raw, volume.spacing, options.cleanup)
    timings["postprocess"] += time.perf_counter() - start
    return VolumeResult(mask, probabilities, window, level, timings, len(tiles), not_run=not_run)


def _warn_if_not_the_training_window(
    volume: Volume, spec: str | None, window: IntensityWindow, card: ModelCard
) -> None:
    """The network saw one window in training; another one changes what it sees. The
    default spec is that window: it is not resolved twice (MR percentiles read the whole
    volume)."""
    if is_auto_window(spec):
        return
    trained = resolve_window(volume, "auto", card)
    if (window.low, window.high) != (trained.low, trained.high):
        log.warning(
            "window %s (%g to %g) is not the window model %s was trained with (%s, %g to %g): "
            "expect different results",
            window.source or "custom",
            window.low,
            window.high,
            card.name,
            trained.source,
            trained.low,
            trained.high,
        )


def check_promptable(card: ModelCard) -> None:
    """Refuse prompts for a model that cannot take them (rather than guess around it)."""
    if not card.promptable:
        raise PromptError(
            f"model {card.name} takes no prompts (its card names no prompt_input): use a "
            "promptable model, or leave out the prompts for automatic segmentation"
        )
    if card.pixel_spacing_mm > 0:
        raise PromptError(
            f"model {card.name} runs in windows (pixel_spacing_mm {card.pixel_spacing_mm:g}): "
            "prompted propagation needs a whole-slice model"
        )


def _slice_runner(
    volume: Volume,
    engine: Engine,
    card: ModelCard,
    window: IntensityWindow,
    flips: tuple[str, ...],
    batch_size: int,
    timings: dict[str, float],
) -> SliceRunner:
    """Crops (one shape per call) with prompt maps -> probabilities on the crops' grid."""

    def run(tiles: list[Tile], maps: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(tiles), batch_size):
            batch = tiles[start : start + batch_size]
            tensor, seconds = _prepare(volume.voxels, batch, window, card, volume.spacing[0])
            timings["preprocess"] += seconds
            tick = time.perf_counter()
            output = _infer(engine, tensor, flips, maps[start : start + batch_size])
            timings["infer"] += time.perf_counter() - tick
            out.append(to_probabilities(output, batch[0].shape, card))
        return np.concatenate(out)

    return run


def _segment_prompted(
    volume: Volume,
    engine: Engine,
    card: ModelCard,
    window: IntensityWindow,
    flips: tuple[str, ...],
    level: float,
    prompts: tuple[Prompt, ...],
    options: SegmentOptions,
) -> VolumeResult:
    """Prompts through a promptable network, each carried from its slice through the
    volume (``medseg.propagate``); one label per prompted lesion."""
    timings = {"preprocess": 0.0, "infer": 0.0, "postprocess": 0.0}
    run = _slice_runner(volume, engine, card, window, flips, options.batch_size, timings)
    log.info(
        "segmenting %d prompt(s) on %d slices by propagation, window %s, engine %s, "
        "test-time flips %s",
        len(prompts),
        volume.shape[0],
        window.source,
        engine.name,
        ",".join(flips) or "none",
    )
    lesions, probabilities, calls = propagate_lesions(
        volume, run, prompts, card.input_size, Propagation(level=level)
    )
    start = time.perf_counter()
    mask = clean_mask(lesions > 0, volume.spacing, options.cleanup)
    lesions = np.where(mask, lesions, 0).astype(lesions.dtype)
    timings["postprocess"] += time.perf_counter() - start
    log.info("propagation ran %d slice(s), %d lesion(s) found", calls, len(np.unique(lesions)) - 1)
    return VolumeResult(mask, probabilities, window, level, timings, calls, lesions, prompts)


def segment_volume(
    volume: Volume, engine: Engine, card: ModelCard, options: SegmentOptions
) -> tuple[np.ndarray, np.ndarray]:
    """(mask bool, probabilities float32), both (slices, rows, cols), for in-memory use."""
    result = segment_volume_result(volume, engine, card, options)
    return result.mask, result.probabilities


def fractional_masks(result: VolumeResult) -> np.ndarray:
    """Probabilities for a FRACTIONAL SEG, consistent with the final mask.

    Voxels removed by prompts, clean-up or a rim's trim are 0, voxels added by hole
    filling, by continuing a finding across slices or by widening its rim are 1, the rest
    keep the (refined) probability.
    """
    frac = result.probabilities.copy()
    above = frac > np.float32(result.level)
    frac[above & ~result.mask] = 0.0
    frac[result.mask & ~above] = 1.0
    return frac


def _seg_segments(
    result: VolumeResult, card: ModelCard, options: SegmentOptions
) -> tuple[ModelCard, np.ndarray, tuple[Tracking | None, ...]]:
    """The SEG's segments: the card's one for automatic segmentation; for prompts, one
    segment per prompted lesion found ("Lesion 1", "Lesion 2", ... in prompt order), each
    with the tracking identifiers of the mark that prompted it, where it had some."""
    frac = options.seg_type == "FRACTIONAL"
    values = fractional_masks(result) if frac else result.mask
    if result.lesions is None or not result.lesions.any():
        return card, values[None], ()
    spec = card.segments[0]
    numbers = [int(n) for n in np.unique(result.lesions) if n]
    segments = tuple(replace(spec, label=f"{spec.label} {n}") for n in numbers)
    masks = np.stack(
        [np.where(result.lesions == n, values, 0).astype(values.dtype) for n in numbers]
    )
    starts = lesion_prompts(result.prompts)
    tracking = tuple(starts[n - 1].tracking if n <= len(starts) else None for n in numbers)
    return replace(card, segments=segments), masks, tracking


def binary_segments(result: VolumeResult) -> np.ndarray:
    """The SEG's segments as bool masks (segments, slices, rows, cols), in the order
    ``_seg_segments`` writes them: what the measurement report measures (a FRACTIONAL
    SEG's lesions are its final mask, not its probabilities)."""
    if result.lesions is None or not result.lesions.any():
        return result.mask[None].astype(bool)
    numbers = [int(n) for n in np.unique(result.lesions) if n]
    return np.stack([result.lesions == n for n in numbers])


def report_series_number(series_number: int) -> int:
    """The report's SeriesNumber: the SEG's + 1, so a worklist shows them side by side."""
    return series_number + 1 if series_number < 2**31 - 1 else series_number


def check_writable(volume: Volume, card: ModelCard, output: Path, options: SegmentOptions) -> None:
    """Refuse now, before any inference, what writing the SEG (or preview, or report) would
    refuse later; and one file named for two outputs.

    Delegates to ``medseg.seg``: ``check_output_path`` for the output (and preview) folder,
    ``check_seg_source`` for the source headers (a dry run of the SEG builder on a one-voxel
    mask: type-1 UIDs such as FrameOfReferenceUID, a SOP class a SEG can reference,
    multi-frame coverage; invalid type-2 values are blanked, not refused).
    """
    from medseg.seg import check_output_path, check_seg_source

    check_output_path(Path(output))
    taken = {Path(output).resolve(): "the SEG's output"}
    for extra, what in ((options.preview, "the preview"), (options.report, "the report")):
        if extra is None:
            continue
        if Path(extra).resolve() in taken:
            raise OutputError(f"{extra} is also {taken[Path(extra).resolve()]}: name another")
        taken[Path(extra).resolve()] = what
        check_output_path(Path(extra))
    start = time.perf_counter()
    check_seg_source(volume, card)
    log.debug("SEG pre-flight check took %.3f s", time.perf_counter() - start)


def segment(
    inputs: Sequence[Path | str] | Path | str,
    output: Path | str,
    options: SegmentOptions,
    *,
    progress: bool = False,
    model: LoadedModel | None = None,
) -> SegmentResult:
    """Segment one DICOM series into a DICOM-SEG file at ``output``.

    Pass ``model`` to reuse an opened model across jobs (it is not closed here); otherwise
    the model in ``options`` is opened and closed for this job. A series the SEG writer
    would refuse is refused right after loading, before the engine is opened and before
    inference (``check_writable``).
    On error nothing is left at ``output`` (the SEG writer is atomic, the preview is
    written after it).
    """
    from medseg.dicom import load_series
    from medseg.seg import write_seg

    started = time.perf_counter()
    timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    output = Path(output)
    owned = model is None
    # model file and card first (cheap), then the series and the SEG pre-flight, and only
    # then the engine: a series that cannot be written costs neither model load nor inference
    model_path, card = resolve_model(options) if model is None else (model.path, model.card)
    if options.prompts or options.marks:
        check_promptable(card)
    start = time.perf_counter()
    loaded = load_series(inputs, series_uid=options.series_uid, volume=options.volume)
    volume = loaded.volume
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    check_writable(volume, card, output, options)  # counted as part of writing the SEG
    timings["write"] = time.perf_counter() - start
    loaded_model = _open(model_path, card, options) if model is None else model
    try:
        result = segment_volume_result(
            volume, loaded_model.engine, card, options, progress=progress
        )
        timings.update(result.timings)
        start = time.perf_counter()
        seg_card, masks, tracking = _seg_segments(result, card, options)
        dataset = write_seg(
            volume,
            masks,
            seg_card,
            output,
            seg_type=options.seg_type,
            series_number=options.series_number,
            series_description=options.series_description,
            semiautomatic=result.lesions is not None,
            tracking=tracking,
        )
        if options.report is not None:
            _write_report(volume, dataset, result, card, output, options)
        timings["write"] += time.perf_counter() - start
        if options.preview is not None:
            from medseg.preview import write_preview

            start = time.perf_counter()
            try:
                write_preview(
                    volume,
                    result.mask,
                    result.window,
                    options.preview,
                    prompts=result.prompts,
                    model=f"{card.name} {card.version}",
                )
            except BaseException:
                _remove_outputs(output, options)  # a failed job leaves no output behind
                raise
            timings["preview"] = time.perf_counter() - start
    finally:
        if owned:
            loaded_model.close()
    volume_ml = float(result.mask.sum()) * volume.voxel_volume_ml
    return SegmentResult(
        output=output,
        slices=volume.shape[0],
        volume_ml=volume_ml,
        seconds=time.perf_counter() - started,
        timings=timings,
        engine=loaded_model.engine.name,
        sop_instance_uid=str(dataset.SOPInstanceUID),
        skipped=tuple(loaded.skipped),
        preview=options.preview,
        report=options.report,
        slices_not_run=len(result.not_run),
    )


def _remove_outputs(output: Path, options: SegmentOptions) -> None:
    output.unlink(missing_ok=True)
    if options.report is not None:
        Path(options.report).unlink(missing_ok=True)


def _write_report(
    volume: Volume,
    seg: pydicom.Dataset,
    result: VolumeResult,
    card: ModelCard,
    output: Path,
    options: SegmentOptions,
) -> None:
    """The measurement report beside the SEG; if it fails, the SEG goes too (one job, one
    outcome)."""
    from medseg.results.report import write_report

    try:
        write_report(
            volume,
            seg,
            binary_segments(result),
            card,
            Path(options.report),  # type: ignore[arg-type]
            series_number=report_series_number(options.series_number),
        )
    except BaseException:
        output.unlink(missing_ok=True)
        raise
