"""Retrain on fresh data and promote the result into a model store only if what it serves is not worse.

    python scripts/retrain.py --data ratings.csv --store /srv/recsys/store [--warm-start] [--report run.json]

``--data`` is the whole current data set (a snapshot, not an increment). The run trains with the
current model's configuration (any ``TrainConfig`` field can be overridden, with the flags and checks of
``scripts/train.py``: ``--dim 64``, ``--epochs 20``...), holds out pairs that the recent models never
trained on (for a sequence model, each user's newest such row by time), measures the candidate and those
models on them the way the service answers (``/predict``
RMSE when the model predicts ratings, nDCG@10 of ``/recommend`` always), and promotes when no served
metric is worse than the best recent model's beyond the margin; the promoted model is then refit on
every row. The service follows ``current`` by itself. See ``model/retrain.py`` for the rule and
``model/store.py`` for the store. Every run that gets the lock writes a JSON report to
``STORE/reports/`` (and to ``--report``).

Exit codes (``model.retrain.ExitCode``): 0 promoted, 10 rejected (worse), 11 refused (another run holds
the lock), 2 bad input, an unreadable current model or a store this process cannot write (nothing written),
1 failed (nothing promoted; also a run stopped by SIGTERM, which unwinds and writes its report).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from model import checkpoint
from model.config import ALS_MIN_ROWS, TrainConfig, config_flags, overrides, reopened, validate
from model.data import FORMAT_CHOICES, DataFormatError, load_ratings
from model.files import output_problem
from model.interactions import Dataset, Interactions, build_dataset
from model.item_files import ItemTable, read_items
from model.metrics import hit_matrix, per_user_metrics, top_k_items
from model.raw import plain_warnings
from model.retrain import (
    MIN_JUDGED_USERS,
    ExitCode,
    Margins,
    Measured,
    decide,
    file_fingerprint,
    holdout_mask,
    holdout_seed,
    write_report,
)  # fmt: skip
from model.sequence import SEQUENCE_KINDS
from model.sequence_data import newest_rows
from model.signals import Terminated, raise_on_sigterm
from model.store import DEFAULT_KEEP, ModelStore, ServedListNotWritten, StoreError, StoreLocked
from model.train import TrainingDiverged, fit, resolve, warm_start_error
from model.warmstart import WarmStartError, warm_start
from service.index import ServingIndex


class BadInput(ValueError):
    """Bad flags or data for this store, or a store whose current model cannot be read: exit 2, nothing written."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the full current rating file (MovieLens, CSV/TSV or Parquet)")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="file format (default: detect)")
    p.add_argument("--store", required=True, help="model store directory (created on the first run)")
    p.add_argument("--force", action="store_true", help="promote even if the candidate is worse or current unreadable")
    p.add_argument("--tolerance", type=float, default=0.005, help="RMSE allowed above the best (default 0.005)")
    p.add_argument("--ndcg-tolerance", type=float, default=0.005, help="nDCG@10 allowed below the best (0.005)")
    p.add_argument("--margin-se", type=float, default=2.0, help="standard errors added to each tolerance (2)")
    p.add_argument("--compare-versions", type=int, default=3, help="current + versions before it to beat (3)")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of the rows held out (default 0.1)")
    p.add_argument("--holdout-seed", type=int, help="seed of the holdout draw (default: from the data's sha256)")
    p.add_argument("--max-drop", type=float, default=0.1, help="share of the current's pairs --data may lack (0.1)")
    p.add_argument("--min-judged", type=int, default=MIN_JUDGED_USERS, help="held-out users needed to judge (10)")
    p.add_argument("--warm-start", action="store_true", help="start from the current model's rows (mf only)")
    p.add_argument("--keep", type=int, default=DEFAULT_KEEP, help=f"versions to keep (default {DEFAULT_KEEP})")
    p.add_argument("--report", help="also write the JSON run report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    group = p.add_argument_group("training overrides (as scripts/train.py's; default: the current model's TrainConfig)")
    for names, kwargs in config_flags(over_current=True):  # one flag per field: new TrainConfig fields too
        group.add_argument(*names, **kwargs)
    args = p.parse_args(argv)
    if min(args.tolerance, args.ndcg_tolerance, args.margin_se) < 0 or args.compare_versions < 1:
        p.error("--tolerance, --ndcg-tolerance and --margin-se must be >= 0, --compare-versions >= 1")
    if not 0 < args.holdout < 1 or args.keep < 2:
        p.error("--holdout must be in (0, 1), --keep >= 2")
    if not 0 <= args.max_drop <= 1 or args.min_judged < 1:
        p.error("--max-drop must be in [0, 1], --min-judged >= 1")
    problem = args.report is not None and output_problem(args.report, args.data)
    if problem:  # before the run: the report is written last, over whatever the path names (the data file too)
        p.error(f"--report: {problem}")
    return args


def train_config(args: argparse.Namespace, base: TrainConfig, implicit: bool = False, num_rows: int = 0) -> TrainConfig:
    """The base config with the flags given applied, checked as scripts/train.py checks it, then resolved for
    data of ``num_rows`` rows (which picks the engine when it is ``auto``)."""
    given = overrides(args)
    try:
        return resolve(validate(replace(reopened(base), **given), given), implicit, num_rows)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def recent_models(store: ModelStore, count: int, force: bool, report: dict) -> list[checkpoint.Checkpoint]:
    """The current model and the versions served just before it, ``count`` in all (unreadable older ones skipped).

    Raises:
        BadInput: ``current`` cannot be read or points outside the store (unless ``force``: then none).
    """
    try:
        current_version = report["versions"]["before"] = store.current()
        current = None if current_version is None else checkpoint.load(store.path_of(current_version))
    except (StoreError, checkpoint.CheckpointError) as exc:
        report["current"] = {"error": str(exc)}
        try:
            store.check_replaceable()  # before training, not after it
        except StoreError as again:
            raise BadInput(str(again)) from None
        if not force:
            raise BadInput(f"the store's current model is unreadable ({exc}); roll back to a good version "
                           "(scripts/rollback.py --to VERSION) or pass --force to replace it") from None  # fmt: skip
        print(f"warning: current model unreadable, replacing it (--force): {exc}", file=sys.stderr)
        return []
    if current is None:
        return []
    models = [current]
    for name in store.served_before(current_version)[: count - 1]:
        try:
            models.append(checkpoint.load(store.path_of(name)))
        except checkpoint.CheckpointError as exc:
            report.setdefault("skipped_versions", []).append({"version": name, "error": str(exc)})
    return models


def seen_pairs(ckpt: checkpoint.Checkpoint, full: Dataset) -> np.ndarray:
    """The (user, item) pairs ``ckpt`` trained on, as keys ``user_idx * num_items + item_idx`` of ``full``."""
    users, items = full.user_map.encode(ckpt.user_ids), full.item_map.encode(ckpt.item_ids)
    u = np.repeat(users, np.diff(ckpt.seen_indptr))
    i = items[ckpt.seen_indices]
    known = (u >= 0) & (i >= 0)
    return u[known] * full.interactions.num_items + i[known]


def measure(ckpt: checkpoint.Checkpoint, raw, full: Dataset, held: np.ndarray, k: int = 10) -> Measured:
    """What ``ckpt`` serves on the held-out rows: ``/predict`` for each row, and each held-out user's
    ``/recommend`` list of ``k`` (unknown users: the popular fallback) with every other pair of the data
    file excluded, scored by nDCG against the user's held-out items."""
    index = ServingIndex(ckpt)
    inter = full.interactions
    predicted = None
    if index.has_rating and not full.implicit and held.any():
        predicted = np.asarray(index.predict(raw.user_ids[held].tolist(), raw.item_ids[held].tolist()).ratings)
    judged = np.unique(inter.user_idx[held])  # global user indices, sorted: every model's users in one order
    local = np.full(inter.num_users, -1, dtype=np.int64)
    local[judged] = np.arange(len(judged))
    relevant = Interactions(local[inter.user_idx[held]], inter.item_idx[held], inter.ratings[held],
                            inter.timestamps[held], len(judged), inter.num_items).seen_csr()  # fmt: skip
    model_item = np.fromiter((index.item_index.get(i, -1) for i in full.item_map.ids), np.int64, inter.num_items)
    others = ~held & (local[inter.user_idx] >= 0)
    users, items = local[inter.user_idx[others]], model_item[inter.item_idx[others]]
    keep = items >= 0
    excluded = Interactions(users[keep], items[keep], np.zeros(keep.sum()), np.zeros(keep.sum()), len(judged),
                            index.num_items).seen_csr()  # fmt: skip
    model_user = np.fromiter((index.user_index.get(full.user_map.ids[g], -1) for g in judged), np.int64, len(judged))
    popular = index.popularity.astype(np.float64)

    def score(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), index.num_items))
        mapped = model_user[rows]
        known = mapped >= 0
        if known.any():
            out[known] = index.score_users(mapped[known])
        out[~known] = popular  # what /recommend answers a user the model does not know
        return out

    top = top_k_items(score, np.arange(len(judged)), k, index.num_items, excluded)
    top = np.where(top >= 0, full.item_map.encode(index.item_ids)[top], -1)  # back to the data's item indices
    hits = hit_matrix(top, relevant, np.arange(len(judged)), inter.num_items)
    ndcg = per_user_metrics(hits, np.diff(relevant[0]))["ndcg"] if len(judged) else np.empty(0)
    unknown = {"unknown_users": int((model_user < 0).sum()), "rating_rows": int(held.sum())}
    return Measured(ckpt.model_version, predicted, raw.ratings[held], ndcg, unknown)


def item_table(
    args: argparse.Namespace, config: TrainConfig, current: checkpoint.Checkpoint | None
) -> ItemTable | None:
    """The item metadata for the candidate: the file ``--items`` names (DataFormatError: exit 2, nothing promoted),
    else the current model's own attributes, stored in it. Never a path read out of the current model's file: a
    planted version naming another file would have this job read it and the service publish it (found by a
    security review), and a path from the machine that trained it need not exist on this one."""
    if "items" in overrides(args):  # --items '': no attributes
        return read_items(config.items) if config.items else None
    if current is None or current.item_attributes is None:
        return None
    table = ItemTable.of_model(current.item_attributes, current.item_ids, f"the attributes of {current.model_version}")
    print(f"items: keeping {table.path} ({len(table.rows)} items described); --items FILE reads a file instead")
    return table


def retrain(args: argparse.Namespace, store: ModelStore, raw, report: dict) -> ExitCode:
    """Everything after the lock is taken. Fills ``report``; returns the exit code."""
    timings = report["timings"]
    store.init()
    store.clean_temporary()  # left by a run that was killed while saving; we hold the lock
    recent = recent_models(store, args.compare_versions, args.force, report)
    current = recent[0] if recent else None
    config = train_config(args, current.config if current else TrainConfig(), raw.implicit, len(raw))
    report["config"] = asdict(config)
    items = item_table(args, config, current)
    report["items"] = None if items is None else items.path  # the file read, or the model whose attributes are kept

    def attributes(ds: Dataset):
        return items.align(ds.item_map.ids) if items else None

    shape = (config.model, config.dim, config.member_dim)
    if args.warm_start and current and shape != (current.kind, current.config.dim, current.config.member_dim):
        raise BadInput("--warm-start needs the current model's --model, --dim and --member-dim")
    problem = warm_start_error(config) if args.warm_start and current else None
    if problem:  # refused before training, not by fit() once it has begun
        raise BadInput(f"--warm-start: {problem} (the current model's config for {len(raw):,} rows; auto's engine is "
                       f"ALS from {ALS_MIN_ROWS:,})")  # fmt: skip
    full = build_dataset(raw)
    inter = full.interactions
    keys = inter.pair_keys()
    fresh = ~np.isin(keys, np.concatenate([seen_pairs(m, full) for m in recent] or [np.empty(0, np.int64)]))
    if current is not None:  # --data is the whole data set: a file that lost much of it is a partial export
        kept = int(np.isin(seen_pairs(current, full), keys).sum())
        lost = 1.0 - kept / max(len(current.seen_indices), 1)
        report["data"].update(current_pairs=len(current.seen_indices), current_pairs_in_data=kept)
        if lost > args.max_drop and not args.force:
            raise BadInput(f"{args.data} lacks {lost:.0%} of the (user, item) pairs the current model "
                           f"{current.model_version} trained on (--max-drop {args.max_drop:.0%}): a partial export? "
                           "--data must be the whole data set; --force replaces the model anyway")  # fmt: skip
    seed = holdout_seed(raw.fingerprint) if args.holdout_seed is None else args.holdout_seed
    try:
        # A sequence model is judged on what comes next: each user's newest fresh row, by time (--holdout unused).
        sequence = config.model in SEQUENCE_KINDS
        held = newest_rows(inter, fresh) if sequence else holdout_mask(raw, args.holdout, seed, fresh)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    train_raw = raw.subset(~held)
    dataset = build_dataset(train_raw)
    report["holdout"] = {"fraction": None if sequence else args.holdout, "seed": seed,
                         "by": "each user's newest row" if sequence else "random pairs",
                         "rows_no_recent_model_saw": int(fresh.sum()), "held_rows": int(held.sum()),
                         "compared_with": [m.model_version for m in recent]}  # fmt: skip
    report["data"].update(train_rows=len(train_raw), holdout_rows=int(held.sum()), users=inter.num_users,
                          items=inter.num_items)  # fmt: skip

    judged = len(np.unique(inter.user_idx[held]))
    if recent and judged < args.min_judged and not args.force:  # nothing (or too little) to judge by: do not train
        nobody = Measured("", None, np.empty(0), np.zeros(judged))
        reason = decide(nobody, [None], Margins(), min_judged=args.min_judged).reason
        report["decision"] = {"promoted": False, "reason": reason, "forced": False}
        report["versions"]["after"] = report["versions"]["before"]
        print(f"rejected: {reason}")
        return ExitCode.REJECTED

    def warm(ids_from: Dataset):
        if not args.warm_start or current is None:
            return None
        return warm_start(current, ids_from.user_map.ids, ids_from.item_map.ids)

    init = warm(dataset)
    report["warm_start"] = {"used": init is not None, "from": current.model_version if init else None,
                            "matched": init.matched if init else None}  # fmt: skip
    print(f"training candidate on {len(train_raw)} rows (holding out {int(held.sum())})", flush=True)
    started = time.perf_counter()
    result = fit(dataset.interactions, config, progress=not args.quiet, implicit=raw.implicit, init=init)
    timings["train_s"] = round(time.perf_counter() - started, 3)
    candidate = checkpoint.from_training(result, dataset, attributes(dataset))

    started = time.perf_counter()
    cand = measure(candidate, raw, full, held)
    refs = [measure(m, raw, full, held) for m in recent]
    timings["evaluate_s"] = round(time.perf_counter() - started, 3)
    report["candidate"] = {"version": candidate.model_version, "holdout": cand.figures(), "training": result.metrics}
    if refs:
        report["current"] = {"version": refs[0].version, "holdout": refs[0].figures()}
        report["references"] = [m.figures() for m in refs]
    margins = Margins(args.tolerance, args.ndcg_tolerance, args.margin_se)
    decision = decide(cand, refs, margins, args.force, args.min_judged)
    report["decision"] = {"promoted": decision.promote, "reason": decision.reason, "forced": args.force,
                          "margins": asdict(margins), "comparisons": decision.comparisons}  # fmt: skip
    before = report["versions"]["before"]
    if not decision.promote:
        print(f"rejected {candidate.model_version}: {decision.reason}; still serving {before}")
        report["versions"]["after"] = before
        return ExitCode.REJECTED

    # Refit on every row: the promoted model knows every pair, so nothing the user rated is recommended.
    print(f"refitting the promoted configuration on all {len(raw)} rows", flush=True)
    started = time.perf_counter()
    final = fit(inter, config, progress=not args.quiet, implicit=raw.implicit, init=warm(full))
    promoted = checkpoint.from_training(final, full, attributes(full))
    promoted.data.update(holdout_fraction=args.holdout, holdout_seed=seed, holdout_rows=int(held.sum()),
                         judged_as=candidate.model_version)  # fmt: skip
    timings["refit_s"] = round(time.perf_counter() - started, 3)
    report["refit"] = {"version": promoted.model_version, "rows": len(raw), "training": final.metrics}
    started = time.perf_counter()
    added = not store.path_of(promoted.model_version).exists()
    if not added:  # the same data and weights, to the second: already stored
        print(f"{promoted.model_version} is already in the store (the same data and weights): pointing current at "
              "it; this run's holdout details are in its report, not in that file")  # fmt: skip
    try:
        if added:
            store.add(promoted)
        store.set_current(promoted.model_version)
    except ServedListNotWritten as exc:  # the pointer moved: the promotion stands, say so
        _warn(report, f"promoted, but {exc}")
    except BaseException:  # the pointer did not move (a failure, SIGTERM): a version never served is taken back out
        if added and _current_version(store) != promoted.model_version:
            try:
                store.discard(promoted.model_version)
            except OSError:  # the failure being raised says more; the file stays, listed, until pruned
                pass
        raise
    report["versions"]["after"] = promoted.model_version
    try:
        report["versions"]["pruned"] = store.prune(args.keep)
    except (OSError, StoreError) as exc:  # old versions stay; the next run prunes them
        report["versions"]["pruned"] = []
        _warn(report, f"promoted, but pruning old versions failed: {exc}")
    timings["promote_s"] = round(time.perf_counter() - started, 3)
    was = f"was {before}" if before else "the store's first model"
    print(f"promoted {promoted.model_version} ({was}): {decision.reason}")
    return ExitCode.PROMOTED


def _current_version(store: ModelStore) -> str | None:
    try:
        return store.current()
    except StoreError:
        return None


def _warn(report: dict, message: str) -> None:
    """A problem after the promotion, which stands: on stderr and in the report's ``warnings``."""
    print(f"warning: {message}", file=sys.stderr)
    report.setdefault("warnings", []).append(message)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began, t0 = datetime.now(timezone.utc), time.perf_counter()
    report: dict = {
        "started_at": began.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "pid": os.getpid(),
        "store": str(Path(args.store).resolve()),
        "data": {"path": str(args.data)},
        "versions": {"before": None, "after": None},
        "timings": {},
    }
    store = ModelStore(args.store)
    locked = False
    try:
        if Path(args.store).exists() and not Path(args.store).is_dir():
            raise BadInput(f"--store {args.store} is not a directory")
        problem = store.write_problem()
        if problem:  # a read-only store: refused before minutes of reading and training, not at the first write
            raise BadInput(f"--store: {problem}")
        # Read and validate the data before touching the store: a bad file writes nothing anywhere.
        raw = load_ratings(args.data, args.format)
        report["data"].update(fingerprint=file_fingerprint(args.data), rows=len(raw), implicit=raw.implicit)
        report["timings"]["load_s"] = round(time.perf_counter() - t0, 3)
        with store.lock():
            locked = True
            code = retrain(args, store, raw, report)
    except (DataFormatError, BadInput, WarmStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code, report["error"] = ExitCode.BAD_INPUT, str(exc)
    except StoreLocked as exc:
        print(f"refused: {exc}", file=sys.stderr)
        code, report["error"] = ExitCode.LOCKED, str(exc)
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        code, report["error"] = ExitCode.FAILED, str(exc)
    except Terminated as exc:  # SIGTERM (raise_on_sigterm): once current points at the new model (pruning, or while the
        # list of served versions was written) the promotion stands, as other late failures do: 0 with a warning
        versions, refit = report["versions"], report.get("refit", {}).get("version")
        if refit is not None and refit != versions["before"] and _current_version(store) == refit:
            versions["after"] = refit
            _warn(report, f"{exc} after current moved to {refit}: the promotion stands, old versions not pruned")
            code = ExitCode.PROMOTED
        else:
            print(f"error: {exc}: nothing promoted", file=sys.stderr)
            code, report["error"] = ExitCode.FAILED, str(exc)
    except OSError as exc:  # a full disk (model.checkpoint.save says so), a store that cannot be written: one line
        print(f"error: {exc}", file=sys.stderr)
        code, report["error"] = ExitCode.FAILED, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a scheduled job must end with a report and a code, whatever broke
        traceback.print_exc()
        code, report["error"] = ExitCode.FAILED, f"{type(exc).__name__}: {exc}"
    report["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    report["outcome"], report["exit_code"] = code.name.lower(), int(code)
    targets = [Path(args.report)] if args.report else []
    if locked:  # only a run that held the lock writes into the store
        targets.append(store.reports_dir / f"{began:%Y%m%dT%H%M%S.%fZ}-{os.getpid()}-{code.name.lower()}.json")
    for target in targets:
        try:
            write_report(report, target)
        except (OSError, Terminated) as exc:  # SIGTERM here: the outcome stands, its code is returned
            print(f"warning: could not write the report {target}: {exc}", file=sys.stderr)
    return int(code)


if __name__ == "__main__":
    plain_warnings()  # a DataWarning (columns not read, no timestamps) as one "warning: ..." line
    raise_on_sigterm()  # a stopped run unwinds: no half-written or never-served version left, a report written
    sys.exit(main())
