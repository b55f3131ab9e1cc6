"""WSGI entry point for uWSGI (``module = service.wsgi:application``)."""

import atexit
import os

from service import create_app, metrics

application = create_app()
atexit.register(metrics.mark_worker_dead, os.getpid())
