"""Checks shared by the command-line tools' arguments (``train.py``, ``recommend_batch.py``, ``make_synthetic.py``),
made before any work, so that a run of minutes does not end in a traceback or overwrite its own input.

The scripts directory is ``sys.path[0]`` when a script runs; each script also puts it there for importers such
as the tests.
"""

from __future__ import annotations

import os
from pathlib import Path


def output_problem(out: str, *inputs: str | None) -> str | None:
    """Why the file ``out`` cannot be written, or None: an empty name, a directory, a path under a file, a
    directory this process cannot write in, a name with no room for the temporary file's (``TEMP_NAME_EXTRA``),
    or the same file as one of ``inputs`` (which writing would replace: a checkpoint written over its ratings)."""
    if not out:
        return "an empty file name"
    path = Path(out)
    try:
        if path.is_dir():
            return f"{out} is a directory"
        for parent in path.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    return f"{parent} is not a directory"
                if not os.access(parent, os.W_OK | os.X_OK):
                    return f"cannot write in {parent}"
                limit = os.pathconf(parent, "PC_NAME_MAX")
                break
        else:
            limit = 255
        if len(os.fsencode(path.name)) + TEMP_NAME_EXTRA > limit:  # the temporary name beside it must fit too
            return f"a file name longer than {limit - TEMP_NAME_EXTRA} bytes"
        for source in inputs:
            if source and path.exists() and Path(source).exists() and os.path.samefile(path, source):
                return f"{out} is also an input ({source}): writing it would replace it"
    except OSError as exc:
        return f"cannot check {out}: {exc.strerror or exc}"
    return None


# What the writers add to a name for their temporary file beside it (".NAME.XXXXXXXX.tmp", ".NAME.tmp-PID").
TEMP_NAME_EXTRA = 24
