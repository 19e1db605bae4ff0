"""The storage SOP classes the listener accepts, and which of them are images to segment.

Only image series may ever become jobs; the others (SEG, presentation states, SR) are
stored beside them and never processed themselves: a presentation state or SR may hold a
reader's marks, which become prompt jobs on the image series they reference (markjobs.py).
"""

from __future__ import annotations

from pynetdicom.sop_class import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedSRStorage,
    ExtensibleSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
    SegmentationStorage,
)

IMAGE_CLASSES = (
    CTImageStorage,
    MRImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
)
OTHER_CLASSES = (
    SegmentationStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    BasicTextSRStorage,
    EnhancedSRStorage,
    ComprehensiveSRStorage,
    Comprehensive3DSRStorage,
    ExtensibleSRStorage,
)
_IMAGE_UIDS = frozenset(str(uid) for uid in IMAGE_CLASSES)


def is_image_class(sop_class_uid: str) -> bool:
    """Whether instances of ``sop_class_uid`` are images the pipeline can segment."""
    return str(sop_class_uid).strip() in _IMAGE_UIDS
