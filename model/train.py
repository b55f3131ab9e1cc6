"""``fit``: what a run trains (kind, loss, heads) and the defaults that win (``TrainConfig``: :mod:`model.config`).

The epochs themselves run in :mod:`model.loop`; the per-epoch steps for ratings and for ranking live
in :mod:`model.objectives`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from model import als, autoencoder, autoencoder_fit, objectives
from model.config import (  # noqa: F401 - TrainConfig re-exported
    ALS_MIN_ROWS,
    ALS_RATING_DEFAULTS,
    DEFAULT_PATIENCE,
    RANK_HEAD_DEFAULTS,
    RANKING_DEFAULTS,
    RATING_DEFAULTS,
    VAL_FRACTION,
    TrainConfig,
)
from model.distributed import SINGLE, Cluster, threads_per_process
from model.interactions import Interactions
from model.loop import TrainingDiverged  # noqa: F401 - re-exported: callers catch it from here
from model.losses import LOSSES, RANKING_LOSSES
from model.networks import MODEL_KINDS, MFWithRanking, build_network, parse_layers
from model.sequence import SEQUENCE_KINDS
from model.splits import random_split

FULL_SOFTMAX_USERS = 256  # users per step when the softmax runs over the whole catalogue
FULL_SOFTMAX_MAX_ITEMS = 20_000  # above this, --loss softmax samples negatives instead of the whole catalogue
SAMPLED_SOFTMAX_NEGATIVES = 200


@dataclass
class TrainResult:
    """A fitted network and what happened while fitting it."""

    network: torch.nn.Module
    config: TrainConfig
    global_mean: float
    rating_scale: tuple[float, float]
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def resolve(config: TrainConfig, implicit: bool, num_rows: int = 0, distributed: bool = False) -> TrainConfig:
    """``config`` with ``auto`` and ``None`` fields replaced by this kind's defaults for data of ``num_rows`` rows.

    The engine (mse training) is ALS from ``ALS_MIN_ROWS`` rows up when ``auto``; the ranking head and an
    mf on implicit data default to implicit ALS (``ials``) at any size.
    ``distributed`` (under torchrun): gradient descent throughout, the engine that runs data-parallel.

    Raises:
        ValueError: a combination that makes no sense (the CLI turns it into exit code 2).
    """
    if config.model not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {config.model!r}; choose one of {', '.join(MODEL_KINDS)}")
    engine = config.engine
    if engine == "auto":
        engine = "als" if config.model == "mf" and num_rows >= ALS_MIN_ROWS and not distributed else "gd"
    if distributed and (engine == "als" or "ials" in (config.loss, config.rank_loss)):
        raise ValueError("the ALS engine (--engine als, ials) runs in one process: use --engine gd under torchrun")
    if engine == "als" and config.model != "mf":
        raise ValueError(f"--engine als trains mf only; {config.model} trains by gradient descent")
    # Implicit ALS ranks best on a validation split of MovieLens 100k training data (scripts/tune_ranking.py) at
    # a fraction of the softmax's cost; under torchrun the ranker must be one that trains data-parallel.
    ranker = "softmax" if distributed else "ials"
    loss = config.loss
    if loss == "auto":
        loss = (ranker if implicit else "mse") if config.model == "mf" else _kind_loss(config.model)
    if config.model in SEQUENCE_KINDS and (loss != "softmax" or distributed):
        raise ValueError(f"{config.model} trains on --loss softmax (next-item cross entropy) in one process")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of auto, {', '.join(LOSSES)}")
    if loss in ("mse", "ials") and config.model != "mf":
        raise ValueError(f"--loss {loss} needs --model mf: {config.model} ends in a sigmoid, use bce, bpr or softmax")
    if config.model in autoencoder.AUTOENCODERS and loss != "softmax":
        raise ValueError(f"--model {config.model} trains on the multinomial likelihood (--loss softmax), not {loss}")
    if loss == "mse" and implicit:
        raise ValueError("--loss mse needs ratings; this data has none (implicit), use bce, bpr, softmax or ials")
    rank_loss = ranker if config.rank_loss == "auto" else config.rank_loss
    if rank_loss not in ("none", *RANKING_LOSSES):
        raise ValueError(f"unknown rank loss {rank_loss!r}; choose auto, none, {', '.join(RANKING_LOSSES)}")
    parse_layers(config.layers)
    if loss == "mse":
        defaults = ALS_RATING_DEFAULTS if engine == "als" else RATING_DEFAULTS
    else:
        defaults = RANKING_DEFAULTS["ials" if loss == "ials" else config.model]
    head = RANK_HEAD_DEFAULTS.get(rank_loss, RANK_HEAD_DEFAULTS["softmax"])
    kind_defaults = {"patience": DEFAULT_PATIENCE, **defaults, **head}
    filled = {k: (getattr(config, k) if getattr(config, k) is not None else v) for k, v in kind_defaults.items()}
    out = replace(config, loss=loss, engine=engine, rank_loss=rank_loss, **filled)
    if out.val_fraction is None:
        out = replace(out, val_fraction=VAL_FRACTION)
    if loss != "mse":
        out = replace(out, rank_loss="none")  # the model itself is the ranker
    if config.negatives == 0 and loss in ("bce", "bpr"):
        raise ValueError(f"--loss {loss} needs sampled negatives: --negatives >= 1")
    return out


def _kind_loss(kind: str) -> str:
    """The loss ``auto`` means for a kind other than mf: softmax for sequence models (next item) and autoencoders
    (the multinomial likelihood), else bce."""
    return "softmax" if kind in SEQUENCE_KINDS or kind in autoencoder.AUTOENCODERS else "bce"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. Nothing requires a GPU; asking for a missing one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose cpu, cuda or auto")
    return torch.device(name)


def warm_start_error(config: TrainConfig) -> str | None:
    """Why a warm start (``fit``'s ``init``) cannot train ``config`` (resolved), or None: only a rating model
    trained by gradient descent starts from another model's rows. retrain.py asks before it trains."""
    if config.model in SEQUENCE_KINDS or config.loss != "mse":
        on = "" if config.model in SEQUENCE_KINDS else f" on {config.loss}"
        return f"warm start supports mf on mse only, not {config.model}{on}"
    if config.engine == "als":
        return "warm start needs --engine gd (the ALS engine starts from its own closed form)"
    return None


def fit(
    train: Interactions,
    config: TrainConfig,
    progress: bool = True,
    implicit: bool = False,
    init=None,
    cluster: Cluster = SINGLE,
) -> TrainResult:
    """Train ``config.model`` on ``train`` (``implicit``: the data has no ratings, every row is a positive).

    ``init``, if given, is called with each freshly built rating network (the :class:`MFEnsemble` of an
    mse model) before training: a warm start (:mod:`model.warmstart`). A ranking head starts cold.

    A ``val_fraction`` of the rows is held out for early stopping (validation RMSE for ratings, nDCG@10
    for ranking); with ``refit`` the model is then retrained on every row for the best number of epochs.
    A rating (mse) model also trains a ranking head (``rank_loss``) on the same rows, saved beside it.

    ``cluster`` (:mod:`model.distributed`): under torchrun every rank calls this on the same rows and
    trains on its slice of every batch; the gradient-descent engine is then used throughout.
    """
    started = time.perf_counter()
    config = resolve(config, implicit, len(train), distributed=cluster.distributed)
    device = resolve_device(config.device)
    if init is not None and (problem := warm_start_error(config)):
        raise ValueError(problem)
    if config.model in SEQUENCE_KINDS:
        from model.sequence_train import fit_sequence

        _use_threads(config, cluster, closed_form=False)
        config = replace(config, negatives=_negatives("softmax", train.num_items, "mf", config.negatives))
        network, history, metrics = fit_sequence(train, config, device, progress)
        metrics.update({"fit_seconds": time.perf_counter() - started, "num_train": float(len(train))})
        return TrainResult(network.cpu().eval(), config, float(train.ratings.mean()),
                           (float(train.ratings.min()), float(train.ratings.max())), metrics, history)  # fmt: skip
    if config.val_fraction > 0:
        fit_part, val_part = random_split(train, config.val_fraction, seed=config.seed)
    else:
        fit_part, val_part = train, None
    scale = (float(train.ratings.min()), float(train.ratings.max()))
    metrics: dict[str, float] = {}
    if config.loss == "mse":
        rating_started = time.perf_counter()
        _use_threads(config, cluster, closed_form=config.engine == "als")
        if config.engine == "als":
            network, history, rating_metrics = als.fit_rating(train, fit_part, val_part, config, scale, progress)
        else:
            network, history, rating_metrics = objectives.fit_rating(
                train, fit_part, val_part, config, scale, device, progress, init, cluster
            )
        metrics.update(rating_metrics)
        metrics["rating_seconds"] = time.perf_counter() - rating_started
        if config.rank_loss != "none":
            rank_started = time.perf_counter()
            negatives = _negatives(config.rank_loss, train.num_items, "mf", None)
            head_config = replace(
                config,
                loss=config.rank_loss,
                rank_loss="none",
                dim=config.rank_dim,
                reg=config.rank_reg,
                lr=config.rank_lr,
                epochs=config.rank_epochs,
                batch_size=FULL_SOFTMAX_USERS if negatives == 0 else 256,
                negatives=negatives,
                optimizer="adam",
                momentum=0.0,
                weight_decay=0.0,
                lr_schedule="none",
            )
            head, head_history, head_metrics = _fit_ranker(
                train, fit_part, val_part, head_config, device, progress, "rank head", cluster
            )
            combined = MFWithRanking(train.num_users, train.num_items, config.dim, config.rank_dim)
            head_state = {f"ranking.{k}": v for k, v in head.state_dict().items()}
            combined.load_state_dict({**network.state_dict(), **head_state})
            network = combined.eval()
            history = history + [{f"rank_{k}": v for k, v in row.items()} for row in head_history]
            metrics.update({f"rank_{k}": v for k, v in head_metrics.items()})
            metrics["rank_seconds"] = time.perf_counter() - rank_started
    else:
        config = replace(config, negatives=_negatives(config.loss, train.num_items, config.model, config.negatives))
        network, history, rank_metrics = _fit_ranker(
            train, fit_part, val_part, config, device, progress, f"train {config.model}", cluster
        )
        metrics.update(rank_metrics)
    metrics.update({"fit_seconds": time.perf_counter() - started, "num_train": float(len(train))})
    global_mean = float(train.ratings.mean())
    return TrainResult(network.cpu().eval(), config, global_mean, scale, metrics, history)


def _use_threads(config: TrainConfig, cluster: Cluster, closed_form: bool) -> None:
    """Torch threads for the next stage: ``--threads`` when given; else every core this process may use for the
    closed-form engine (large batched products), and one for gradient descent, whose steps are small: with
    passive OpenMP waiting (model/__init__.py) waking a second thread for each small op costs more than the op
    (the MovieLens 100k rating model: 8.3-8.7 s on one thread, 12.5 s on two, on this 2-core machine)."""
    torch.set_num_threads(config.threads or (threads_per_process(cluster) if closed_form else 1))


def _fit_ranker(train, fit_part, val_part, config: TrainConfig, device, progress: bool, desc: str, cluster=SINGLE):
    """A ranking model (or head) on ``config.loss``: implicit ALS in closed form, else gradient descent."""
    _use_threads(config, cluster, closed_form=config.loss == "ials")
    if config.loss == "ials":
        return als.fit_ranking(train, fit_part, val_part, config, progress, desc)
    if config.model in autoencoder.AUTOENCODERS:
        return autoencoder_fit.fit(train, fit_part, val_part, config, progress, desc)
    torch.manual_seed(config.seed)
    network = build_network(config.model, train.num_users, train.num_items, config)
    return objectives.fit_ranking(network, train, fit_part, val_part, config, device, progress, desc, cluster)


def _negatives(loss: str, num_items: int, kind: str, given: int | None) -> int:
    """Negatives per positive: as given, else 4 for bce/bpr; softmax: the whole catalogue (0) when it is small
    enough (and the network scores it as one product), else ``SAMPLED_SOFTMAX_NEGATIVES``."""
    if loss == "ials" or kind in autoencoder.AUTOENCODERS:
        return 0  # closed form over every cell, or the autoencoders' full softmax: nothing is sampled
    if given is not None and given > 0:
        return given
    if loss != "softmax":
        return 4
    if num_items <= FULL_SOFTMAX_MAX_ITEMS and (given == 0 or kind != "neumf"):
        return 0
    return SAMPLED_SOFTMAX_NEGATIVES
