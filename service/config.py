"""Service settings: defaults, then ``RECSYS_*`` environment variables, then a test mapping; read once, checked.

:func:`load_settings` runs once per worker (in ``create_app``) and returns typed values; everything else
reads that dict. A value that does not parse, or is out of range, stops the start-up with a
:class:`ConfigError` naming the variable and what it accepts, instead of a bare ``ValueError`` from
wherever the value was first used.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_CHECKPOINT = "artifacts/model.ckpt"
MIN_RELOAD_INTERVAL = 0.1  # seconds between checkpoint checks, unless 0 (never)
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A ``RECSYS_*`` setting that cannot be used; the message names the variable and the accepted values."""


@dataclass(frozen=True)
class Setting:
    default: Any
    kind: str  # "str", "int", "float" or "bool"
    minimum: float | None = None
    help: str = ""
    maximum: float | None = None  # e.g. what faiss takes (a C int), a day between reload checks


SETTINGS: dict[str, Setting] = {
    "CHECKPOINT": Setting(DEFAULT_CHECKPOINT, "str", help="the checkpoint file (or model store) to serve"),
    "MAX_BODY_BYTES": Setting(
        8 * 1024 * 1024, "int", 1, "larger request bodies get 413; uwsgi.ini's limit-post drops a body past it", 1 << 26
    ),
    "RELOAD_INTERVAL": Setting(1.0, "float", 0, "seconds between checkpoint checks; 0 = never reload", 86_400),
    "ACCESS_LOG": Setting(True, "bool", help="one JSON line per request on stderr"),
    # Precomputed top-N unseen items per known user (service/topn.py), built in each worker at load when
    # users x items is at most this many scores (the build is one users x items matrix product); 0 = no
    # lists at all, the ones searched from an ANN index included (TOPN_WITH_ANN).
    "TOPN_MAX_CELLS": Setting(100_000_000, "int", 0),
    "TOPN_N": Setting(0, "int", 0, "list length per user (a larger k scans); 0 = automatic: 100-1000 within 64 MiB"),
    # With an ANN index (too many cells to build the lists at load): lists searched from the index once per
    # model (all cores) and cached beside it, memory-mapped and shared by the workers (4 bytes x N per user).
    "TOPN_WITH_ANN": Setting(True, "bool", help="with an ANN index, lists searched from it; off: per request"),
    # Approximate top-k (service/ann.py, needs faiss-cpu) for catalogues of at least this many items; 0 = off.
    "ANN_MIN_ITEMS": Setting(100_000, "int", 0),
    "ANN_M": Setting(32, "int", 2, "HNSW graph degree (part of the cache key)", 512),
    "ANN_EF_SEARCH": Setting(128, "int", 1, "HNSW candidates per query; higher = better recall, slower", 100_000),
    "ANN_EF_CONSTRUCTION": Setting(40, "int", 1, "HNSW build effort (part of the cache key)", 100_000),
    "ANN_BUILD_THREADS": Setting(0, "int", 0, "threads while building the index; 0 = all cores", 1024),
    # Exact top-k from a bound on a few leading dimensions (service/pruned.py), kept only when it pays for the
    # model's vectors (measured at load); below the ANN threshold. Below 4096 items the full scan is cheap (a
    # 64-d model's item matrix fits in L2).
    "PRUNE_MIN_ITEMS": Setting(4096, "int", 0, "exact pruned top-k from this many items; 0 = always a full scan"),
}
DEFAULTS: dict[str, Any] = {name: s.default for name, s in SETTINGS.items()}


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE or word in FALSE:
        return word in TRUE
    raise ValueError


PARSERS: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float, "bool": _parse_bool}
ACCEPTED = {
    "str": "a path",
    "int": "an integer",
    "float": "a number",
    "bool": f"a boolean ({', '.join(TRUE)} or {', '.join(FALSE)})",
}


def parse_setting(name: str, value: Any) -> Any:
    """``value`` (text from the environment, or a Python value from a test mapping) as the setting's type.

    Raises:
        ConfigError: naming ``RECSYS_<name>``, the value and what is accepted.
    """
    spec = SETTINGS[name]
    accepted = ACCEPTED[spec.kind] + (f" >= {spec.minimum:g}" if spec.minimum is not None else "")
    accepted += f" and <= {spec.maximum:.15g}" if spec.maximum is not None else ""
    try:
        if isinstance(value, str):
            if spec.kind in ("int", "float") and ("_" in value or not value.isascii()):  # int() takes 1_000, "٣"
                raise ValueError
            parsed = PARSERS[spec.kind](value.strip() if spec.kind != "str" else value)
        elif spec.kind == "bool" and isinstance(value, (bool, int)) and value in (0, 1):
            parsed = bool(value)
        elif spec.kind in ("int", "float") and isinstance(value, (int, float)) and not isinstance(value, bool):
            parsed = PARSERS[spec.kind](value)
            if spec.kind == "int" and parsed != value:
                raise ValueError
        else:
            raise ValueError
        if spec.kind == "float" and not math.isfinite(parsed):
            raise ValueError
    except (ValueError, OverflowError):
        raise ConfigError(f"RECSYS_{name}={value!r}: expected {accepted}") from None
    if spec.minimum is not None and parsed < spec.minimum:
        raise ConfigError(f"RECSYS_{name}={value!r}: expected {accepted}")
    if spec.maximum is not None and parsed > spec.maximum:  # the help says what the bound is for
        raise ConfigError(f"RECSYS_{name}={value!r}: expected {accepted} ({spec.help})")
    if name == "RELOAD_INTERVAL" and 0 < parsed < MIN_RELOAD_INTERVAL:  # a microsecond kept an idle worker at 60% CPU
        raise ConfigError(
            f"RECSYS_{name}={value!r}: expected 0 (off) or {MIN_RELOAD_INTERVAL:g} to {spec.maximum:.15g} seconds"
        )
    return parsed


def load_settings(environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> dict:
    """Defaults, then ``RECSYS_<NAME>`` variables, then ``overrides`` (highest priority), each checked.

    Keys of ``overrides`` that are not settings (Flask's ``TESTING``...) pass through unchanged.
    """
    environ = os.environ if environ is None else environ
    settings = dict(DEFAULTS)
    for name in SETTINGS:
        value = environ.get(f"RECSYS_{name}")
        if name == "CHECKPOINT" and value is not None and not value.strip():  # RECSYS_CHECKPOINT=$UNSET_VAR
            raise ConfigError(f"RECSYS_CHECKPOINT={value!r}: expected a path (unset: {DEFAULT_CHECKPOINT})")
        if value not in (None, ""):
            settings[name] = parse_setting(name, value)
    for name, value in (overrides or {}).items():
        settings[name] = parse_setting(name, value) if name in SETTINGS else value
    return settings
