"""Results out: per-lesion measurements and the TID 1500 Measurement Report SR.

``measure_segments(masks, volume)`` computes each lesion's numbers; ``build_report`` /
``write_report`` state them in a DICOM SR that references the SEG they were measured on
(docs/report.md).
"""
