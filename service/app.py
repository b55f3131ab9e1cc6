"""Application factory (the Flask tutorial's shape): settings, model state, routes, JSON errors."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from service.config import load_settings
from service.errors import register_error_handlers
from service.state import load_state


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``test_config`` overrides settings (keys as in :data:`service.config.DEFAULTS`)."""
    settings = load_settings(overrides=test_config)
    app = Flask(__name__)
    app.config.update(settings)
    # Flask answers 413 itself; uWSGI's limit-post (a larger backstop) would drop the connection instead.
    app.config["MAX_CONTENT_LENGTH"] = int(settings["MAX_BODY_BYTES"])
    app.json.sort_keys = False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app.extensions["recsys"] = load_state(settings["CHECKPOINT"])

    from service.api import bp

    app.register_blueprint(bp)
    register_error_handlers(app)
    return app
