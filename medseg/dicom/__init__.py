"""DICOM in: find, group and load image series into a ``Volume``."""

from medseg.dicom.files import SkippedFile
from medseg.dicom.loader import LoadedSeries, load_series
from medseg.dicom.series import SeriesSummary, scan_series
from medseg.dicom.volume import SourceFrame, Volume

__all__ = [
    "LoadedSeries",
    "SeriesSummary",
    "SkippedFile",
    "SourceFrame",
    "Volume",
    "load_series",
    "scan_series",
]
