"""WSGI entry point for uWSGI (``module = service.wsgi:application``)."""

from service import create_app

application = create_app()
