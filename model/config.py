"""``TrainConfig``: everything that decides a training run, its per-kind defaults, and its command-line flags.

A module of its own, free of the training stack (no optimisers, no progress bar), so that a checkpoint
can be read (``model.checkpoint``, and through it the service) without importing :mod:`model.train`.

The flags of ``scripts/train.py`` and ``scripts/retrain.py`` are derived from the dataclass here, one
flag per field (:func:`config_flags`), and checked by one function (:func:`validate`), so both scripts
accept and refuse the same things. This module describes flags as plain data; the scripts own argparse.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

# Per-objective defaults for fields left as None. Ratings: an 8 x 16 MF ensemble (MovieLens u1..u5 test RMSE
# 0.9028, each fold's fit 2.7-4.1 s on 2 cores with the ranking head; 16 x 16 gave 0.9010 in 3.7-5.8 s, 12 x 16
# 0.9015 in 3.3-5.4 s: the issue's 5 s per fold decides it). Ranking: chosen by nDCG@10 on MovieLens 100k
# with the training part of a per-user 75/25 split split 75/25 again per user (the test part never used).
_AUTOENCODER_DEFAULTS = {"dim": 200, "epochs": 60, "lr": 0.001, "reg": 0.0, "batch_size": 128, "hidden": 600,
                         "val_fraction": 0.0, "dropout": 0.5}  # fmt: skip
# Patience 3 for the rating ensemble: on MovieLens 100k its validation RMSE never improved again after 3 stale
# epochs (the same models as with 5, two epochs sooner); every other kind waits DEFAULT_PATIENCE epochs.
RATING_DEFAULTS = {"dim": 128, "epochs": 60, "lr": 0.01, "reg": 5.0, "batch_size": 1024, "patience": 3}
DEFAULT_PATIENCE = 5
RANKING_DEFAULTS = {
    "mf": {"dim": 64, "epochs": 100, "lr": 0.003, "reg": 5.0, "batch_size": 64},
    "gmf": {"dim": 64, "epochs": 60, "lr": 0.001, "reg": 5.0, "batch_size": 256},
    "neumf": {"dim": 32, "epochs": 60, "lr": 0.001, "reg": 5.0, "batch_size": 256},
    "ials": {"dim": 64, "epochs": 12, "reg": 50.0, "batch_size": 0},  # mf on implicit data, by ALS (no --lr)
    # Autoencoders (model.autoencoder): dim is the latent size, batch_size users per step, reg unused.
    # No early stopping by default: on 5% of MovieLens 100k rows it stopped them too early (validation nDCG@10
    # 0.2493-0.2635 against 0.2673-0.2698 for the fixed 60 epochs, scripts/tune_ranking.py --losses vae).
    "vae": _AUTOENCODER_DEFAULTS,
    "dae": _AUTOENCODER_DEFAULTS,
    # Sequence models (model.sequence): full softmax over the catalogue, Adam; batch_size counts windows.
    "gru4rec": {"dim": 64, "epochs": 100, "lr": 0.003, "reg": 0.0, "batch_size": 128, "max_len": 50, "dropout": 0.2},
    "caser": {"dim": 64, "epochs": 100, "lr": 0.003, "reg": 0.0, "batch_size": 512, "max_len": 5, "dropout": 0.2},
    "sasrec": {"dim": 64, "epochs": 200, "lr": 0.003, "reg": 0.0, "batch_size": 128, "max_len": 50, "dropout": 0.2},
}
# The closed-form engine (model.als), used from ALS_MIN_ROWS rows up when --engine is auto: the GD ensemble
# is the better rating model on MovieLens 100k (5-fold RMSE 0.903 against about 0.92 for ALS) but costs
# minutes per million rows, ALS seconds (docs/benchmarks.md "Scale").
ALS_MIN_ROWS = 500_000
ALS_RATING_DEFAULTS = {"dim": 32, "epochs": 12, "reg": 10.0, "batch_size": 0}  # no --lr: closed form
# The ranking head per rank loss: full softmax by gradient descent, or implicit ALS (closed form). Implicit
# ALS (the head and --loss ials) folds a new user in with its own L2, chosen for new users apart from training's:
# on validation users of MovieLens 100k training data (scripts/tune_ranking.py --protocol strong --losses
# fold_in, seeds 0-2) NDCG@100 rose from 0.5231 (fold-in L2 = training's 50) to 0.5412 at 5.
RANK_HEAD_DEFAULTS = {
    "softmax": {"rank_reg": 5.0, "rank_epochs": 100},
    "ials": {"rank_reg": 50.0, "rank_epochs": 12, "fold_in_reg": 5.0},
}
# Network sizes: far above any useful setting here, and low enough that checking a checkpoint's weights against
# its config (a network built at these sizes, model.checkpoint_checks) stays within a few hundred MB.
MAX_WIDTH = 4096  # dim, member_dim, rank_dim, hidden, each neumf layer
MAX_LEN = 1000  # a sequence model's window
MAX_BLOCKS = 16  # sasrec's blocks and heads
MAX_BLOCK_CELLS = 16 * 512 * 512  # sasrec's blocks x dim^2: 16 blocks of 512, 4 of 1024
VAL_FRACTION = 0.05  # rows held out for early stopping, where the kind's defaults do not say otherwise
ENGINES = ("auto", "gd", "als")
DEVICES = ("cpu", "cuda", "auto")


def _opt(
    default: Any,
    help: str,
    *,
    choices: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field with what its flag needs: help, the name of its choices (see :func:`choices`) and bounds
    (``minimum``/``maximum`` inclusive, ``above``/``below`` exclusive), checked by :func:`validate` (and the sizes'
    maximum by a checkpoint's load, ``model.checkpoint_checks``)."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "above": above, "below": below,
            "parse": parse}  # fmt: skip
    return field(default=default, metadata=meta)


def parse_batch_size(text: str) -> int:
    """``full`` (or 0) = every row in one step: plain gradient descent."""
    return 0 if text == "full" else int(text)


@dataclass
class TrainConfig:
    """Everything that decides a training run. ``scripts/train.py`` flags map one to one onto fields.

    ``None`` means "the default for this kind and loss" (``RATING_DEFAULTS``, ``RANKING_DEFAULTS``);
    ``model.train.resolve`` fills them in and the checkpoint stores the resolved values.
    """

    model: str = _opt("mf", "model kind", choices="model")
    loss: str = _opt("auto", "auto: mf -> mse on ratings, ials on implicit data (softmax under torchrun); gmf, "
                     "neumf -> bce; vae, dae and the sequence kinds -> softmax", choices="loss")  # fmt: skip
    rank_loss: str = _opt("auto", "ranking head of an mse model, used by /recommend (auto: ials; softmax under "
                          "torchrun); none: rank by predicted rating", choices="rank_loss")  # fmt: skip
    engine: str = _opt(
        "auto",
        "how mf trains on ratings: gd (the MF ensemble by gradient descent), als (closed-form "
        f"alternating least squares), auto: als from {ALS_MIN_ROWS:,} rows",
        choices="engine",
    )
    dim: int | None = _opt(None, "embedding size (mf+mse: members * member_dim)", minimum=1, maximum=MAX_WIDTH)
    member_dim: int = _opt(16, "mf+mse: factors per ensemble member; dim a multiple of it, else one", minimum=1,
                           maximum=MAX_WIDTH)  # fmt: skip
    layers: str = _opt("64,32,16", "neumf: MLP tower widths; the first is the concatenated user+item embedding")
    activation: str = _opt("relu", "neumf: tower activation", choices="activation")
    epochs: int | None = _opt(None, "maximum epochs", minimum=1)
    lr: float | None = _opt(None, "learning rate", above=0)
    reg: float | None = _opt(None, "L2 on every embedding row, once per epoch, relative to the summed loss", minimum=0)
    reg_bias: float = _opt(1.0, "mf+mse: L2 on every bias", minimum=0)
    negatives: int | None = _opt(None, "sampled negatives per positive (bce, bpr, softmax); 0: the whole catalogue",
                                 minimum=0)  # fmt: skip
    optimizer: str = _opt("adam", "optimiser", choices="optimizer")
    momentum: float = _opt(0.0, "sgd momentum; for adam, beta1 (0 = the usual 0.9)", minimum=0)
    weight_decay: float = _opt(0.0, "the optimiser's own L2 on every parameter (dense layers included)", minimum=0)
    lr_schedule: str = _opt("none", "learning-rate schedule (per epoch)", choices="lr_schedule")
    batch_size: int | None = _opt(None, "rows per step, 1 (SGD) .. full (0: gradient descent); softmax over the "
                                  "catalogue: users per step", minimum=0, parse=parse_batch_size)  # fmt: skip
    seed: int = _opt(0, "random seed (same seed, same weights)")
    val_fraction: float | None = _opt(None, "rows held out for early stopping",
                                      minimum=0, below=1)  # fmt: skip
    patience: int | None = _opt(None, "epochs without validation improvement before stopping", minimum=1)
    refit: bool = _opt(True, "after early stopping, retrain on every row for the best number of epochs")
    device: str = _opt("cpu", "cpu, cuda or auto (cuda when available)", choices="device")
    rank_dim: int = _opt(64, "ranking head of an mf+mse model: embedding size", minimum=1, maximum=MAX_WIDTH)
    rank_reg: float | None = _opt(None, "ranking head: L2", minimum=0)
    rank_lr: float = _opt(0.006, "ranking head: Adam learning rate", above=0)
    rank_epochs: int | None = _opt(None, "ranking head: maximum epochs (ials: sweeps)", minimum=1)
    fold_in_reg: float | None = _opt(None, "ials (--loss ials, the ials head): L2 of a new user's solve when POST "
                                     "/recommend folds a history in", minimum=0)  # fmt: skip
    alpha: float = _opt(5.0, "ials: weight of an observed cell over an unobserved one, minus 1", above=0)
    cg_steps: int = _opt(0, "ials: conjugate-gradient steps per row and sweep; 0: exact solve (Cholesky)", minimum=0)
    hidden: int | None = _opt(None, "vae, dae: the encoder's hidden width", minimum=1, maximum=MAX_WIDTH)
    anneal_cap: float = _opt(0.2, "vae with --kl-per-item 0 (Mult-VAE): the KL weight's cap, reached linearly over "
                             "the first half of the epochs", minimum=0)  # fmt: skip
    kl_per_item: float = _opt(0.005, "vae: each user's KL weight per item of their history (RecVAE's beta(x) = "
                              "gamma |x|); 0: Mult-VAE's annealed weight (--anneal-cap)", minimum=0)  # fmt: skip
    max_len: int | None = _opt(None, "sequence models: L, the items of a user's recent past the model reads "
                                "(and the checkpoint keeps per user)", minimum=1, maximum=MAX_LEN)  # fmt: skip
    blocks: int = _opt(2, "sasrec: self-attention blocks", minimum=1, maximum=MAX_BLOCKS)
    heads: int = _opt(1, "sasrec: attention heads (dim a multiple of it)", minimum=1, maximum=MAX_BLOCKS)
    dropout: float | None = _opt(None, "vae, dae: input dropout on the user's item vector; sequence models: "
                                 "dropout", minimum=0, below=1)  # fmt: skip
    threads: int = _opt(0, "torch threads; 0: the cores this process may use for ALS, one for gradient descent",
                        minimum=0)  # fmt: skip
    items: str | None = _opt(None, "item metadata file (CSV/TSV/Parquet with a header, first column the item id; "
                             "MovieLens movies.csv, movies.dat, u.item), stored in the checkpoint; retrain "
                             "keeps the current model's attributes without it ('' drops them)")  # fmt: skip


def choices(name: str | None) -> tuple[str, ...] | None:
    """The accepted values of a field with named choices (imported here, when a flag is built or checked, so
    that reading a checkpoint never imports the training loop)."""
    if name is None:
        return None
    from model.loop import OPTIMIZERS, SCHEDULES
    from model.losses import LOSSES, RANKING_LOSSES
    from model.networks import ACTIVATIONS, MODEL_KINDS

    table = {
        "model": MODEL_KINDS,
        "loss": ("auto", *LOSSES),
        "rank_loss": ("auto", "none", *RANKING_LOSSES),
        "engine": ENGINES,
        "activation": tuple(ACTIVATIONS),
        "optimizer": OPTIMIZERS,
        "lr_schedule": SCHEDULES,
        "device": DEVICES,
    }
    return table[name]


# Where the tables above come in, by what model.train.resolve picks for a run: (who, table).
_DEFAULT_SOURCES = (
    ("mf on ratings", {"patience": DEFAULT_PATIENCE, "val_fraction": VAL_FRACTION, **RATING_DEFAULTS}),
    ("mf on ratings with --engine als", {"patience": DEFAULT_PATIENCE, "val_fraction": VAL_FRACTION,
                                         **ALS_RATING_DEFAULTS}),
    *(({"mf": "mf --loss softmax", "ials": "mf on implicit data (ials)"}.get(kind, kind),
       {"patience": DEFAULT_PATIENCE, "val_fraction": VAL_FRACTION, **table})
      for kind, table in RANKING_DEFAULTS.items()),
    ("the ials ranking head", RANK_HEAD_DEFAULTS["ials"]),
    ("the softmax ranking head", RANK_HEAD_DEFAULTS["softmax"]),
)  # fmt: skip
_OTHER_DEFAULTS = {  # fields whose None is decided elsewhere than the tables
    "negatives": "4 for bce and bpr; softmax: the whole catalogue up to 20,000 items, else sampled",
    "items": "none",
}


def kind_defaults_text(name: str) -> str:
    """What ``None`` means for field ``name``, for ``--help``: its value per kind, from the tables above (the one
    home of those defaults), e.g. ``64 for mf --loss softmax, gmf, ...; 32 for neumf``."""
    by_value: dict[Any, list[str]] = {}
    for who, table in _DEFAULT_SOURCES:
        if name in table:
            by_value.setdefault(table[name], []).append(who)
    if not by_value:
        return _OTHER_DEFAULTS.get(name, "set by the kind")
    shown = lambda value: f"{value:g}" if isinstance(value, float) else str(value)  # noqa: E731 - 5.0 as 5
    return "; ".join(f"{shown(value)} for {', '.join(who)}" for value, who in by_value.items())


def flag_name(name: str) -> str:
    """The command-line flag of a field: ``rank_loss`` -> ``--rank-loss``."""
    return "--" + name.replace("_", "-")


def field_type(name: str) -> type:
    """A field's type; for ``X | None`` fields (``None`` = the kind's default), ``X``."""
    hint = typing.get_type_hints(TrainConfig)[name]
    return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def config_flags(over_current: bool = False) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """``(option strings, add_argument keyword arguments)`` for every field, one flag per field.

    Every flag defaults to ``None`` (not given), so a script knows which fields were asked for and layers
    them over its base config (:func:`overrides`): train.py over ``TrainConfig()``, retrain.py over the
    current model's. A boolean field gets ``--name`` and ``--no-name``. Each help ends with the default, or with
    ``over_current`` (retrain.py) "default: the current model's".
    """
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        meta = f.metadata
        default = getattr(defaults, f.name)
        shown = "the current model's" if over_current else kind_defaults_text(f.name) if default is None else default
        help_text = f"{meta.get('help', f.name)} (default: {shown})"
        kind = field_type(f.name)
        if kind is bool:
            yield (flag_name(f.name),), {"dest": f.name, "action": "store_const", "const": True, "help": help_text}
            yield (f"--no-{flag_name(f.name)[2:]}",), {"dest": f.name, "action": "store_const", "const": False}
            continue
        parse = meta.get("parse") or kind
        yield (flag_name(f.name),), {"dest": f.name, "type": parse, "choices": choices(meta.get("choices")),
                                     "help": help_text, "metavar": None if meta.get("choices") else "X"}  # fmt: skip


def overrides(namespace: Any) -> dict[str, Any]:
    """The fields given on the command line (those not None) of a parsed namespace."""
    given = {f.name: getattr(namespace, f.name, None) for f in fields(TrainConfig)}
    return {name: value for name, value in given.items() if value is not None}


def size_error(values: Mapping[str, Any]) -> str | None:
    """What exceeds the network sizes' bounds in ``values`` (a TrainConfig's fields by name, as the flags give
    them or a checkpoint stores them), or None. The one home of those bounds: train.py and retrain.py refuse such
    a run, and a checkpoint's load refuses such a file before building anything of that size."""
    for f in fields(TrainConfig):
        value, top = values.get(f.name), f.metadata.get("maximum")
        if top is not None and isinstance(value, (int, float)) and value > top:
            return f"{flag_name(f.name)} must be <= {top:g}, got {value}"
    dim, blocks = values.get("dim"), values.get("blocks")
    if values.get("model") == "sasrec" and isinstance(dim, int) and isinstance(blocks, int):
        if blocks * dim * dim > MAX_BLOCK_CELLS:  # each block holds about a dozen dim x dim matrices
            return f"--blocks {blocks} x --dim {dim}: at most {MAX_BLOCK_CELLS:,} blocks x dim^2 for sasrec"
    return None


def reopened(config: TrainConfig) -> TrainConfig:
    """A checkpoint's (resolved) config as a base to train from again (``scripts/retrain.py``): checkpoints trained
    by ALS before 2026-12-03 stored ``lr`` 0.0, a value the ALS engine never reads and :func:`validate` refuses
    (every retrain over such a model stopped with "--lr must be > 0"); it is unset again, as the ALS defaults now
    leave it."""
    return replace(config, lr=None) if config.lr == 0.0 else config


def validate(config: TrainConfig, given: Mapping[str, Any] | None = None) -> TrainConfig:
    """Check every field's value and the combinations that make no sense; return ``config`` unchanged.

    ``given`` holds the fields set explicitly (on the command line): ``--rank-loss`` is refused only
    when asked for alongside a loss that already ranks. Combinations that need the data to judge (mse on
    implicit data) and the kind's defaults are ``model.train.resolve``'s.

    Raises:
        ValueError: naming the flag and what it accepts.
    """
    given = given or {}
    for f in fields(TrainConfig):
        value, meta = getattr(config, f.name), f.metadata
        if value is None:
            continue
        flag, allowed = flag_name(f.name), choices(meta.get("choices"))
        if allowed is not None and value not in allowed:
            raise ValueError(f"{flag} {value!r}: choose one of {', '.join(allowed)}")
        if meta.get("minimum") is not None and value < meta["minimum"]:
            raise ValueError(f"{flag} must be >= {meta['minimum']:g}, got {value}")
        if meta.get("above") is not None and value <= meta["above"]:
            raise ValueError(f"{flag} must be > {meta['above']:g}, got {value}")
        if meta.get("below") is not None and value >= meta["below"]:
            raise ValueError(f"{flag} must be < {meta['below']:g}, got {value}")
    if config.engine == "als" and config.model != "mf":
        raise ValueError(f"--engine als trains mf only; {config.model} trains by gradient descent")
    if "rank_loss" in given and config.loss not in ("auto", "mse"):
        raise ValueError(f"--rank-loss is the ranking head of an mse model; --loss {config.loss} already ranks")
    if "rank_loss" in given and config.model != "mf":
        raise ValueError(f"--rank-loss needs --model mf (an mse model); {config.model} ranks by itself")
    if config.momentum and config.optimizer == "adagrad":
        raise ValueError("--momentum applies to sgd (and adam's beta1), not adagrad")
    error = size_error(vars(config))
    if error:
        raise ValueError(error)
    return config
