"""Find DICOM files under the user's inputs and read their headers.

Files are recognised by content, never by name: any file with a DICOM preamble counts,
wherever it sits below the given folders. DICOMDIR index files are ignored because they
describe files rather than hold images; everything else that cannot be read is reported as
skipped so a user sees which files were left out and why.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError

from medseg.errors import DicomInputError

log = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
NOT_DICOM = "not a DICOM file"
NO_SERIES_UID = "incomplete DICOM header: no SeriesInstanceUID (file truncated?)"

InputPaths = str | os.PathLike | Sequence[str | os.PathLike]

# What pydicom and its pixel decoders raise on a malformed file (found by
# benchmarks/fuzz_dicom.py): bad values and lengths (ValueError, struct.error,
# BytesLengthException, OverflowError), an unknown VR (NotImplementedError), a broken
# deflate stream (zlib.error), every decoder plugin failing (RuntimeError), an element whose
# length claims more than memory holds (MemoryError: the read is allocated before the file
# is found short), and the usual OSError/EOFError/KeyError/TypeError/AttributeError/
# IndexError of a file cut short. Such a file is skipped with the reason, never a traceback.
UNREADABLE = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    NotImplementedError,
    OverflowError,
    RuntimeError,
    MemoryError,
    struct.error,
    zlib.error,
    BytesLengthException,
)


def is_decoder_panic(exc: BaseException) -> bool:
    """A Rust decoder extension (pyo3, e.g. pylibjpeg-rle) panicking on bad data raises
    ``PanicException``, a ``BaseException``: a property of the file, not of medseg."""
    return type(exc).__name__ == "PanicException"


def parse_all(dataset: pydicom.Dataset) -> None:
    """Convert every element now (pydicom converts lazily, on first access), so that a
    malformed value fails here, where the file can be skipped, not later mid-load."""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        meta.walk(lambda ds, elem: None)
    dataset.walk(lambda ds, elem: None)


def reason_of(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).splitlines()[0].strip() if str(exc).strip() else ""
    return text or type(exc).__name__


@dataclass(frozen=True)
class SkippedFile:
    """A file that was left out of the loaded series, with the reason in one line."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Header:
    """One readable DICOM file's header (pixel data not loaded).

    ``forced`` marks a file without the DICOM preamble/file meta (a raw dataset as some
    exporters write it): it was read with ``force=True`` and must be re-read that way.
    """

    path: Path
    dataset: pydicom.Dataset
    forced: bool = False


# A dataset's elements are sorted by tag and SOPClassUID (0008,0016) is mandatory, so a raw
# (preamble-less) dataset starts in group 0x0002 or 0x0008, little or big endian.
_RAW_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def _read_raw_dataset(path: Path) -> pydicom.Dataset | None:
    """A preamble-less file counts as DICOM only if it names its instance and series.

    Files that cannot start a dataset (text, images, archives) are not parsed at all:
    pydicom's forced read of them warns on stderr, which a one-line CLI error must not have.
    """
    try:
        with path.open("rb") as handle:
            if handle.read(2) not in _RAW_STARTS:
                return None
    except OSError:
        return None
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        parse_all(dataset)  # garbage that only looks like elements fails here
        required = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID")
        if all(keyword in dataset and str(dataset.get(keyword, "")) for keyword in required):
            return dataset
    except UNREADABLE:
        return None
    return None


def normalise_inputs(inputs: InputPaths) -> list[Path]:
    """Accept one path or a sequence of paths; a missing path is a user error."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    paths = [Path(p) for p in inputs]
    if not paths:
        raise DicomInputError("no input files or folders given")
    for path in paths:
        if not path.exists():
            raise DicomInputError(f"input not found: {path}")
    return paths


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file named or found below the given paths, in a stable order."""
    seen: set[Path] = set()
    for path in paths:
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    candidate = Path(root) / name
                    if candidate.is_file() and candidate not in seen:
                        seen.add(candidate)
                        yield candidate
        elif path.is_file() and path not in seen:
            seen.add(path)
            yield path


def is_dicomdir(path: Path, dataset: pydicom.Dataset | None = None) -> bool:
    """A DICOMDIR index: by its reserved file name or its media storage SOP class."""
    if path.name.upper() == "DICOMDIR":
        return True
    if dataset is None:
        return False
    meta = getattr(dataset, "file_meta", None)
    return meta is not None and meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY


def read_headers(inputs: InputPaths) -> tuple[list[Header], list[SkippedFile]]:
    """Headers of every DICOM file below ``inputs`` plus the files that cannot be used.

    Skipped (with the reason): files that are not DICOM, unreadable headers, and headers
    without a SeriesInstanceUID (a truncated file often reads "successfully" up to where it
    stops). Raises ``DicomInputError`` when no file at all could be read as DICOM.
    """
    paths = normalise_inputs(inputs)
    headers: list[Header] = []
    skipped: list[SkippedFile] = []
    total = 0
    for path in iter_files(paths):
        total += 1
        if is_dicomdir(path):
            log.debug("ignoring DICOMDIR %s", path)
            continue
        forced = False
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            parse_all(dataset)
        except InvalidDicomError:
            raw = _read_raw_dataset(path)
            if raw is None:
                skipped.append(SkippedFile(path, NOT_DICOM))
                continue
            dataset, forced = raw, True
        except UNREADABLE as exc:
            skipped.append(SkippedFile(path, f"unreadable DICOM header: {reason_of(exc)}"))
            continue
        if is_dicomdir(path, dataset):
            log.debug("ignoring DICOMDIR %s", path)
            continue
        if not str(dataset.get("SeriesInstanceUID", "") or "").strip():
            # pydicom reads a file cut short without complaint: what is left has no series
            log.debug("skipping %s: %s", path, NO_SERIES_UID)
            skipped.append(SkippedFile(path, NO_SERIES_UID))
            continue
        headers.append(Header(path, dataset, forced))
    if not headers:
        where = ", ".join(str(p) for p in paths)
        dicom = [s for s in skipped if s.reason != NOT_DICOM]
        if dicom:
            raise DicomInputError(
                f"no usable DICOM files in {where} ({total} file(s) looked at; "
                f"{dicom[0].path.name}: {dicom[0].reason})"
            )
        raise DicomInputError(f"no DICOM files found in {where} ({total} file(s) looked at)")
    log.debug("read %s DICOM header(s), skipped %s file(s)", len(headers), len(skipped))
    return headers, skipped
