"""medseg: an AI segmentation node for a hospital PACS (SAM2-UNet, DICOM-SEG out)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medseg")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
