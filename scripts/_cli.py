"""Checks shared by the command-line tools' arguments (``train.py``, ``recommend_batch.py``, ``make_synthetic.py``),
made before any work, so that a run of minutes does not end in a traceback or overwrite its own input.

The scripts directory is ``sys.path[0]`` when a script runs; each script also puts it there for importers such
as the tests.
"""

from __future__ import annotations

import os
from pathlib import Path


def output_problem(out: str, *inputs: str | None) -> str | None:
    """Why the file ``out`` cannot be written, or None: an empty name, a directory, a path under a file, or
    the same file as one of ``inputs`` (which writing would replace: a checkpoint written over its ratings)."""
    if not out:
        return "an empty file name"
    path = Path(out)
    if path.is_dir():
        return f"{out} is a directory"
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is not a directory"
            break
    for source in inputs:
        if source and path.exists() and Path(source).exists() and os.path.samefile(path, source):
            return f"{out} is also an input ({source}): writing it would replace it"
    return None
