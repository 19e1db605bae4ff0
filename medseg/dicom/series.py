"""Group DICOM headers into series and decide which series are loadable images.

Only CT and MR image series are candidates: SEG, SR, PR, RT objects and the like share a
study with the images but are not something to segment.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from medseg.dicom.files import Header, InputPaths, SkippedFile, read_headers
from medseg.errors import DicomInputError

IMAGE_MODALITIES = frozenset({"CT", "MR"})


@dataclass(frozen=True)
class SeriesSummary:
    """What a user needs to pick a series: its UID, what it is and where it starts."""

    uid: str
    modality: str
    description: str
    instances: int
    first_path: Path
    is_image: bool

    def describe(self) -> str:
        """One line such as ``1.2.3 (CT, "Abdomen", 120 instances)``."""
        return (
            f'{self.uid} ({self.modality or "no modality"}, "{self.description}", '
            f"{self.instances} instance{'s' if self.instances != 1 else ''})"
        )


def is_image_header(header: Header) -> bool:
    """A CT/MR instance with an image pixel module (Rows/Columns present)."""
    ds = header.dataset
    return (
        str(ds.get("Modality", "")).upper() in IMAGE_MODALITIES and "Rows" in ds and "Columns" in ds
    )


def why_not_image(header: Header) -> str:
    """Why an instance of an image series cannot be one of its slices (one line)."""
    ds = header.dataset
    modality = str(ds.get("Modality", "")).upper()
    if modality not in IMAGE_MODALITIES:
        return f"not a CT or MR image: modality {modality or 'missing'}"
    return "incomplete DICOM header: no Rows/Columns (not an image, or file truncated?)"


def left_out(headers: list[Header], uid: str, images: list[Header]) -> list[SkippedFile]:
    """The files of series ``uid`` that are not among its ``images``, with the reason."""
    used = {id(h) for h in images}
    members = group_by_series(headers).get(uid, [])
    return [SkippedFile(h.path, why_not_image(h)) for h in members if id(h) not in used]


def group_by_series(headers: list[Header]) -> OrderedDict[str, list[Header]]:
    """SeriesInstanceUID -> headers, in the order series were first met."""
    groups: OrderedDict[str, list[Header]] = OrderedDict()
    for header in headers:
        uid = str(header.dataset.get("SeriesInstanceUID", "")).strip()
        groups.setdefault(uid, []).append(header)
    return groups


def summarise(uid: str, headers: list[Header]) -> SeriesSummary:
    first = headers[0].dataset
    return SeriesSummary(
        uid=uid,
        modality=str(first.get("Modality", "")),
        description=str(first.get("SeriesDescription", "")),
        instances=len(headers),
        first_path=headers[0].path,
        is_image=any(is_image_header(h) for h in headers),
    )


def scan_series(inputs: InputPaths) -> list[SeriesSummary]:
    """Every series below ``inputs`` (headers only, no pixel data read), images first."""
    headers, _ = read_headers(inputs)
    summaries = [summarise(uid, group) for uid, group in group_by_series(headers).items()]
    return sorted(summaries, key=lambda s: not s.is_image)


def _what(summary: SeriesSummary) -> str:
    """A series' modality, saying why a CT/MR one is not an image series."""
    if summary.modality.upper() in IMAGE_MODALITIES:
        return f"{summary.modality} without image pixel data: no Rows/Columns"
    return summary.modality or "no modality"


def choose_series(headers: list[Header], series_uid: str | None) -> tuple[str, list[Header]]:
    """The one CT/MR series to load, or a ``DicomInputError`` that lists the choices."""
    groups = group_by_series(headers)
    if series_uid is not None:
        wanted = series_uid.strip()
        if wanted not in groups:
            listing = "; ".join(summarise(u, g).describe() for u, g in groups.items())
            raise DicomInputError(f"series {wanted} not found; available: {listing}")
        images = [h for h in groups[wanted] if is_image_header(h)]
        if not images:
            summary = summarise(wanted, groups[wanted])
            raise DicomInputError(
                f"series {wanted} is not a CT or MR image series (modality: {_what(summary)})"
            )
        return wanted, images
    candidates = OrderedDict(
        (uid, [h for h in group if is_image_header(h)]) for uid, group in groups.items()
    )
    candidates = OrderedDict((uid, group) for uid, group in candidates.items() if group)
    if not candidates:
        found = ", ".join(sorted({_what(summarise(u, g)) for u, g in groups.items()}))
        raise DicomInputError(f"no CT or MR image series found (found only: {found})")
    if len(candidates) > 1:
        listing = "; ".join(summarise(u, g).describe() for u, g in candidates.items())
        raise DicomInputError(
            f"{len(candidates)} candidate image series found, choose one with --series UID: "
            f"{listing}"
        )
    uid, group = next(iter(candidates.items()))
    return uid, group
