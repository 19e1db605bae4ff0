"""Where a command may write: into an existing folder, never over one of its inputs, and
over another existing file only when the user asked for it (``--force``).

A typo in ``-o`` must not cost a DICOM file or an earlier result; these checks run before
any work, so a refused command has read and written nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from medseg.errors import OutputError


def check_output_folder(path: Path) -> None:
    """``OutputError`` when the folder of ``path`` is missing or unwritable, or ``path`` is
    a folder: the same rule (and words) as ``medseg segment``'s SEG writer."""
    from medseg.seg import check_output_path

    check_output_path(Path(path))


def is_input(path: Path, inputs: Sequence[Path]) -> bool:
    """Whether ``path`` is one of ``inputs`` or lies inside an input folder (so it was read)."""
    target = Path(path).resolve()
    for item in inputs:
        item = Path(item)
        if item.is_dir() and target.is_relative_to(item.resolve()):
            return True
        if item.exists() and os.path.samefile(item, path):
            return True
    return False


def check_overwrite(path: Path, inputs: Sequence[Path], *, force: bool) -> None:
    """Refuse to write over an input file (even with ``force``), or over any other existing
    file unless ``force``; ``OutputError`` in one line naming the way out."""
    path = Path(path)
    if not path.is_file():
        return  # nothing to lose; a folder or a missing folder is the writer's error
    if is_input(path, inputs):
        raise OutputError(f"will not write over the input file {path}: choose another output")
    if not force:
        raise OutputError(f"{path} exists: pass --force to overwrite it")
