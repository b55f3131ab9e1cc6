"""WSGI entry point for uWSGI (``module = service.wsgi:application``)."""

import atexit
import os
import sys

import torch

from service import create_app, metrics

# One torch thread per worker (NeuMF scores with torch on the request path): N workers use N cores.
torch.set_num_threads(1)

application = create_app()
atexit.register(metrics.mark_worker_dead, os.getpid())
metrics.reap_dead_workers()  # e.g. the SIGKILLed worker this one replaces

try:
    import uwsgi  # noqa: F401 - exists only inside a uWSGI worker
except ImportError:
    uwsgi = None

if uwsgi is not None:

    def _exit_now() -> None:
        """End the worker once our own exit work is done (registered last, so ``atexit`` runs it first).

        torch's finalizers (``torch.library._del_library``) hang at interpreter exit in a uWSGI worker,
        so every stop, reload and recycling waited out the 5 s mercy and ended in SIGKILL. A worker
        holds nothing that needs them: drop its live metrics, flush the logs, and leave. (A worker
        stopped while still loading the app is not helped: it never gets here, and the mercy ends it.)
        """
        metrics.mark_worker_dead(os.getpid())
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    atexit.register(_exit_now)
