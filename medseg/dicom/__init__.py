"""DICOM in: find, group and load image series into a ``Volume``."""

from medseg.dicom.volume import SourceFrame, Volume

__all__ = ["SourceFrame", "Volume"]
