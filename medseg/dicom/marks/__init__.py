"""A reader's marks (GSPS graphics, SR image regions) in, medseg prompts out (docs/marks.md).

``read_marks(path) -> list[Mark]`` reads a file a viewer saved; ``marks_to_prompts(marks,
volume) -> list[Prompt]`` places the marks on a loaded series as box and point prompts.
"""

from medseg.dicom.marks.mark import Mark, MarkKind, MarkSpace
from medseg.dicom.marks.place import mark_to_prompt, marks_to_prompts
from medseg.dicom.marks.read import read_marks

__all__ = ["Mark", "MarkKind", "MarkSpace", "mark_to_prompt", "marks_to_prompts", "read_marks"]
