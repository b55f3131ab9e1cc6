"""Online side: a Flask app that loads one checkpoint and answers recommendations and predictions.

``service`` reads only what the checkpoint gives it; it never imports the training code.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    """``create_app`` on first use: importing the package alone (``python -m service.prestart``, which uWSGI runs
    before every start) then costs milliseconds, not the seconds torch takes to import."""
    if name == "create_app":
        from service.app import create_app

        return create_app
    raise AttributeError(f"module 'service' has no attribute {name!r}")
