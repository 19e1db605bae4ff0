"""The model card: a small JSON file beside a model that states its preprocessing contract.

The runtime never guesses how a model wants its input: size, layout, channel statistics,
threshold and what the output means are read from ``<model>.json`` (the model path with its
last suffix replaced by ``.json``), so a different model can declare a different contract.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from medseg.durable import write_text
from medseg.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FLIP_AXES = ("horizontal", "vertical")


@dataclass(frozen=True)
class Code:
    """A coded concept (e.g. SNOMED CT) as DICOM-SEG category/type codes need it."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SegmentSpec:
    """One output channel of the model as a DICOM-SEG segment."""

    label: str = "Lesion"
    category: Code = Code("49755003", "SCT", "Morphologically Altered Structure")
    type: Code = Code("52988006", "SCT", "Lesion")


@dataclass(frozen=True)
class ModelCard:
    """What a model expects and what it produces.

    ``input_size`` is (height, width). ``layout`` is the tensor layout the model file
    takes: engines always receive NCHW and transpose for NHWC models (e.g. QNN context
    binaries from a model zoo). ``batch`` is None for a dynamic batch axis, else the fixed
    batch size the file was compiled for. ``slice_context_mm`` 0 replicates one slice into
    every channel; d > 0 gives the channels the series at -d, 0, +d mm (2.5-D input).
    ``pixel_spacing_mm`` 0 resizes every whole slice to ``input_size``; s > 0 says the
    network was trained on windows of ``input_size`` pixels at s mm, so slices are covered
    by overlapping windows resampled to that spacing (``medseg.tiling``).
    ``prompt_input`` names the model's second input, (N, 2, H, W) prompt maps
    (``medseg.prompt_maps``), for a promptable model; empty: the model takes no prompt and
    medseg refuses prompts for it.
    ``refine_radius_mm`` > 0 redraws mask borders along the image's edges with a guided
    filter of that box radius and regularisation ``refine_eps`` (``medseg.refine``);
    ``refine_across_slices`` also continues findings onto neighbouring slices where the
    image continues them; ``refine_rim_level`` > 0 widens findings by the bordering pixels
    that look like their inside, and ``refine_rim_trim`` > 0 (below the rim level) drops
    their edge pixels that look like their surroundings.
    """

    name: str
    version: str = "0.0.0"
    architecture: str = "SAM2-UNet"
    input_name: str = "image"
    prompt_input: str = ""
    output_name: str = "logits"
    input_size: tuple[int, int] = (352, 352)
    channels: int = 3
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    batch: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    output: Literal["logits", "probabilities"] = "logits"
    threshold: float = 0.5
    segments: tuple[SegmentSpec, ...] = (SegmentSpec(),)
    default_ct_window: str = "abdomen"
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    quantized: bool = False
    test_time_flips: tuple[str, ...] = ()
    slice_context_mm: float = 0.0
    pixel_spacing_mm: float = 0.0
    refine_radius_mm: float = 0.0
    refine_eps: float = 1e-4
    refine_across_slices: bool = False
    refine_rim_level: float = 0.0
    refine_rim_trim: float = 0.0
    intended_use: str = "research only, not for clinical use"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or min(self.input_size) < 8:
            raise ConfigError(f"model card {self.name}: input_size must be (height, width)")
        if self.layout not in ("NCHW", "NHWC"):
            raise ConfigError(f"model card {self.name}: layout must be NCHW or NHWC")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"model card {self.name}: mean/std need {self.channels} values")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"model card {self.name}: std must be positive")
        if self.output not in ("logits", "probabilities"):
            raise ConfigError(f"model card {self.name}: output must be logits or probabilities")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"model card {self.name}: threshold must lie in (0, 1)")
        if not self.segments:
            raise ConfigError(f"model card {self.name}: at least one segment is required")
        check_flips(self.test_time_flips, f"model card {self.name}: test_time_flips")
        check_slice_context(self.slice_context_mm, self.channels, f"model card {self.name}")
        check_pixel_spacing(self.pixel_spacing_mm, f"model card {self.name}")
        check_refinement(
            self.refine_radius_mm,
            self.refine_eps,
            f"model card {self.name}",
            self.refine_rim_level,
            self.refine_rim_trim,
        )
        if not isinstance(self.refine_across_slices, bool):
            raise ConfigError(f"model card {self.name}: refine_across_slices must be true or false")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"model card: unknown key(s) {sorted(unknown)}")
        if "name" not in data:
            raise ConfigError("model card: 'name' is required")
        values = dict(data)
        for key in ("input_size", "mean", "std", "mr_percentiles", "test_time_flips"):
            if key in values:
                values[key] = tuple(values[key])
        if "segments" in values:
            values["segments"] = tuple(_segment_from_dict(s) for s in values["segments"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"model card: {exc}") from exc

    @property
    def promptable(self) -> bool:
        return bool(self.prompt_input)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"model card not found: {path}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model card {path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: Path) -> None:
        write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


def check_slice_context(context_mm: float, channels: int, what: str) -> None:
    """Slice context is a finite distance >= 0 mm; > 0 fills exactly three channels."""
    if not math.isfinite(context_mm) or context_mm < 0:
        raise ConfigError(f"{what}: slice_context_mm must be a finite value >= 0, got {context_mm}")
    if context_mm > 0 and channels != 3:
        raise ConfigError(
            f"{what}: slice_context_mm needs 3 input channels (-d, 0, +d mm), the model has "
            f"{channels}"
        )


def check_pixel_spacing(spacing_mm: float, what: str) -> None:
    """A model's working pixel spacing is a finite value >= 0 mm (0: whole slices)."""
    if not math.isfinite(spacing_mm) or spacing_mm < 0:
        raise ConfigError(f"{what}: pixel_spacing_mm must be a finite value >= 0, got {spacing_mm}")


def check_refinement(
    radius_mm: float, eps: float, what: str, rim_level: float = 0.0, rim_trim: float = 0.0
) -> None:
    """Edge refinement: box radius finite >= 0 mm (0: off), eps finite >= 1e-6, rim level
    in [0, 1) (0: off), rim trim 0 (off) or in (0, rim level).

    Below 1e-6 (a thousandth of a window) the filter follows float32 round-off. A trim at or
    above the rim level would let one pixel be both taken and dropped."""
    if not math.isfinite(radius_mm) or radius_mm < 0:
        raise ConfigError(
            f"{what}: refinement radius must be a finite value >= 0 mm, got {radius_mm}"
        )
    if not math.isfinite(eps) or eps < 1e-6:
        raise ConfigError(f"{what}: refinement eps must be a finite value >= 1e-6, got {eps}")
    _check_number(rim_level, f"{what}: refinement rim level")
    if not 0.0 <= rim_level < 1.0:
        raise ConfigError(f"{what}: refinement rim level must lie in [0, 1), got {rim_level}")
    _check_number(rim_trim, f"{what}: refinement rim trim")
    if rim_trim != 0.0 and not 0.0 < rim_trim < rim_level:
        raise ConfigError(
            f"{what}: refinement rim trim must be 0 (off) or lie in (0, rim level "
            f"{rim_level:g}), got {rim_trim}"
        )


def _check_number(value: object, what: str) -> None:
    """A real number, not a bool or a string (JSON cards can hold either)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what} must be a number, got {value!r}")


def parse_flips(text: str) -> tuple[str, ...]:
    """'horizontal,vertical' -> ('horizontal', 'vertical'); 'none' or '' -> (); checked later."""
    return tuple(f.strip() for f in text.split(",") if f.strip() and f.strip() != "none")


def check_flips(flips: tuple[str, ...], what: str) -> None:
    """Test-time flips name distinct axes from ``FLIP_AXES``."""
    if any(f not in FLIP_AXES for f in flips) or len(set(flips)) != len(flips):
        raise ConfigError(f"{what} must be distinct values of {', '.join(FLIP_AXES)}, got {flips}")


def _segment_from_dict(data: dict[str, Any]) -> SegmentSpec:
    try:
        return SegmentSpec(
            label=data.get("label", "Lesion"),
            category=Code(**data["category"]) if "category" in data else SegmentSpec().category,
            type=Code(**data["type"]) if "type" in data else SegmentSpec().type,
        )
    except TypeError as exc:
        raise ConfigError(f"model card segment: {exc}") from exc


def card_path_for(model_path: Path) -> Path:
    """``models/x.onnx`` -> ``models/x.json``; ``x.qnn236.ctx.bin`` -> ``x.qnn236.ctx.json``."""
    return Path(model_path).with_suffix(".json")


def load_card_for(model_path: Path) -> ModelCard:
    """The card beside ``model_path``; a clear error when it is missing."""
    card = card_path_for(model_path)
    if not card.is_file():
        raise ConfigError(
            f"no model card beside {model_path}: expected {card} (see docs/model-card.md)"
        )
    return ModelCard.load(card)


def bundled_models_dir() -> Path:
    """Where the bundled default model lives: the wheel's copy, else the checkout's."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "bundled_models", package_dir.parent / "models"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("the bundled models folder is missing from this installation")


DEFAULT_MODEL_NAME = "sam2unet_phantom.onnx"
# The bundled model for prompts (a click, a box, a reader's marks): promptable, and chosen
# for prompted jobs by default because each bundled model is the better one, measured on
# held-out data, at its own use (models/README.md).
DEFAULT_PROMPT_MODEL_NAME = "sam2unet_prompt.onnx"


def default_model_path(prompted: bool = False) -> Path:
    """The bundled default model file (``prompted``: the one for prompted jobs), with a
    clear error if it is absent."""
    name = DEFAULT_PROMPT_MODEL_NAME if prompted else DEFAULT_MODEL_NAME
    path = bundled_models_dir() / name
    if not path.is_file():
        raise ConfigError(f"bundled model {path} is missing; pass --model or see models/README.md")
    return path
