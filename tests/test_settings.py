"""Service settings: read once, typed, and a bad value stops the start with the variable and what it accepts."""

from __future__ import annotations

import re

import pytest

from service.config import ConfigError, load_settings
from tests.conftest import REPO


@pytest.mark.parametrize(("text", "value"), [("1", True), ("false", False), ("Yes", True), ("off", False)])
def test_booleans_accept_the_usual_spellings(text, value):
    assert load_settings({"RECSYS_ACCESS_LOG": text})["ACCESS_LOG"] is value
    assert load_settings({"RECSYS_TOPN_WITH_ANN": text})["TOPN_WITH_ANN"] is value


@pytest.mark.parametrize(
    ("name", "text", "accepted"),
    [
        ("ACCESS_LOG", "maybe", "a boolean (1, true, yes, on or 0, false, no, off)"),
        ("RELOAD_INTERVAL", "soon", "a number >= 0"),
        ("RELOAD_INTERVAL", "-1", "a number >= 0"),
        ("TOPN_N", "1.5", "an integer >= 0"),
        ("ANN_M", "1", "an integer >= 2"),
        ("MAX_BODY_BYTES", "0", "an integer >= 1"),
        ("TOPN_N", "1_000", "an integer >= 0"),  # Python's int() reads these: a typo or a foreign digit passed
        ("TOPN_N", "\u0663", "an integer >= 0"),
        ("RELOAD_INTERVAL", "0.\u0665", "a number >= 0"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_accepts(name, text, accepted):
    with pytest.raises(ConfigError, match=re.escape(f"RECSYS_{name}={text!r}: expected {accepted}")):
        load_settings({f"RECSYS_{name}": text})


def test_settings_are_typed_once_and_test_overrides_are_checked_too():
    settings = load_settings({"RECSYS_TOPN_N": " 50 ", "RECSYS_RELOAD_INTERVAL": "0.5"}, {"TESTING": True})
    assert settings["TOPN_N"] == 50 and settings["RELOAD_INTERVAL"] == 0.5 and settings["TESTING"] is True
    with pytest.raises(ConfigError, match="RECSYS_TOPN_N"):
        load_settings({}, {"TOPN_N": "many"})


def test_uwsgi_starts_with_access_log_false_and_refuses_a_typo(start_uwsgi, small_ckpt_path):
    """Before: RECSYS_ACCESS_LOG=false killed every worker with a bare ValueError naming no variable."""
    import urllib.request

    server = start_uwsgi(small_ckpt_path, RECSYS_ACCESS_LOG="false", RECSYS_PROCESSES="1")
    with urllib.request.urlopen(server.base + "/readyz", timeout=10) as resp:
        assert resp.status == 200
    bad = start_uwsgi(small_ckpt_path, wait=False, RECSYS_ACCESS_LOG="maybe", RECSYS_PROCESSES="1")
    bad.proc.wait(timeout=60)
    assert bad.proc.returncode != 0
    assert "RECSYS_ACCESS_LOG='maybe': expected a boolean" in bad.log()


def test_docker_healthcheck_asks_readiness():
    healthcheck = [
        line for line in (REPO / "Dockerfile").read_text().splitlines() if "CMD" in line and "urlopen" in line
    ]
    assert len(healthcheck) == 1 and "/readyz" in healthcheck[0] and "/healthz" not in healthcheck[0]
