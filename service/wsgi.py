"""WSGI entry point for uWSGI (``module = service.wsgi:application``)."""

import atexit
import os
import sys

from service import prestart

# First, before torch's 3 s import: from here on another instance's pre-start check refuses this one's metrics
# directory instead of emptying it.
prestart.hold_metrics_dir(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

import torch  # noqa: E402

from service import create_app, metrics  # noqa: E402

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
        """End the worker once our own exit work is done: uWSGI calls ``uwsgi.atexit`` before it finalizes
        the interpreter, and this never returns, so the worker skips that finalization altogether.

        Finalizing hung in a uWSGI worker, and the master killed the worker after its 5 s mercy: in torch's
        finalizers (``torch.library._del_library``), and in the interpreter's wait for threads
        (``wait_for_thread_shutdown``), which runs before any ``atexit`` hook could skip it. A worker holds
        nothing that needs finalizing: drop its live metrics, flush the logs, and leave. (A worker stopped
        while still loading the app, or mid-request, never gets here: uWSGI skips the hook for a busy worker,
        and the next worker's ``reap_dead_workers`` drops its gauges.)
        """
        metrics.mark_worker_dead(os.getpid())
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    uwsgi.atexit = _exit_now
