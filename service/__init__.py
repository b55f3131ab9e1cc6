"""Online side: a Flask app that loads one checkpoint and answers recommendations and predictions.

``service`` reads only what the checkpoint gives it; it never imports the training code.
"""

from service.app import create_app

__all__ = ["create_app"]
