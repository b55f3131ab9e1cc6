"""SIGTERM as an exception in the command-line tools that write (``scripts/train.py``, ``scripts/retrain.py``).

A stopped run (a cron ``timeout``, ``docker stop``, a Kubernetes deadline, ``kill``) then unwinds like any failure
instead of vanishing mid-step: a checkpoint half written is removed (:func:`model.files.atomic_write`), a version
added but never made current is taken back out of the store, and retrain writes its report. SIGKILL cannot be
caught: the temporary files it leaves in a store the next run removes (:meth:`model.store.ModelStore.clean_temporary`).
"""

from __future__ import annotations

import signal


class Terminated(BaseException):
    """The process got SIGTERM (after :func:`raise_on_sigterm`). A ``BaseException``, as ``KeyboardInterrupt`` is,
    so that no ``except Exception`` on the way (a checkpoint load reads any failure as "refuse this file") takes it
    for an ordinary error and carries on."""


EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process SIGTERM ended


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises :class:`Terminated` in the main thread (at its next Python instruction); a second
    SIGTERM while that unwinds ends the process at once, as SIGTERM would have."""

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated("terminated by SIGTERM")

    signal.signal(signal.SIGTERM, handler)
