"""Retrain on fresh data and promote the result into a model store only if it is not worse.

    python scripts/retrain.py --data ratings.csv --store /srv/recsys/store [--warm-start] [--report run.json]

``--data`` is the whole current data set (a snapshot, not an increment). The run trains with the
current model's configuration (any ``TrainConfig`` field can be overridden: ``--dim 64``, ``--epochs
20``...), holds out a seeded ``--holdout`` fraction of the new data, scores the candidate and the
current model on it the way the service answers ``/predict``, and promotes the candidate (moves the
store's ``current``) when its RMSE is at most the current one's plus ``--tolerance``; the service
follows ``current`` by itself. See ``model/retrain.py`` for the rule and ``model/store.py`` for the
store. Every run that gets the lock writes a JSON report to ``STORE/reports/`` (and to ``--report``).

Exit codes (``model.retrain.ExitCode``): 0 promoted, 10 rejected (not better), 11 refused (another
run holds the lock), 2 bad input (nothing written to the store), 1 failed (nothing promoted).
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

from model import checkpoint
from model.config import TrainConfig, config_flags, overrides, validate
from model.data import FORMAT_CHOICES, DataFormatError, load_ratings
from model.interactions import build_dataset
from model.retrain import ExitCode, decide, file_fingerprint, rmse_figures, split_holdout, write_report
from model.store import DEFAULT_KEEP, ModelStore, StoreLocked
from model.train import TrainingDiverged, fit, resolve
from model.warmstart import WarmStartError, warm_start
from service.index import ServingIndex


class BadInput(ValueError):
    """Bad flags or data for this store: exit 2, nothing written."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the full current rating file (MovieLens or CSV/TSV)")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="file format (default: detect)")
    p.add_argument("--store", required=True, help="model store directory (created on the first run)")
    p.add_argument("--force", action="store_true", help="promote even if the candidate is worse")
    p.add_argument("--tolerance", type=float, default=0.005, help="promote if RMSE <= current + this (default 0.005)")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of the new data held out (default 0.1)")
    p.add_argument("--holdout-seed", type=int, default=0, help="seed of the holdout split (default 0)")
    p.add_argument("--warm-start", action="store_true", help="start from the current model's rows (mf only)")
    p.add_argument("--keep", type=int, default=DEFAULT_KEEP, help=f"versions to keep (default {DEFAULT_KEEP})")
    p.add_argument("--report", help="also write the JSON run report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    group = p.add_argument_group("training overrides (default: the current model's TrainConfig; as scripts/train.py)")
    for names, kwargs in config_flags():  # one flag per field, so new TrainConfig fields are overridable too
        group.add_argument(*names, **kwargs)
    args = p.parse_args(argv)
    if args.tolerance < 0 or not 0 < args.holdout < 1 or args.keep < 2:
        p.error("--tolerance must be >= 0, --holdout in (0, 1), --keep >= 2")
    return args


def train_config(args: argparse.Namespace, base: TrainConfig, implicit: bool = False) -> TrainConfig:
    """The base config with the flags given applied, checked as scripts/train.py checks it, then resolved."""
    given = overrides(args)
    try:
        return resolve(validate(replace(base, **given), given), implicit)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def score(ckpt: checkpoint.Checkpoint, holdout, implicit: bool) -> dict:
    """The model's figures on the holdout, through the serving index (what /predict would answer)."""
    if implicit:
        return {"skipped": "implicit data: no ratings to predict (ranking metrics not wired yet)"}
    if ckpt.kind != "mf":
        return {"skipped": f"{ckpt.kind} is ranking-only here (ranking metrics not wired yet)"}
    out = ServingIndex(ckpt).predict(holdout.user_ids.tolist(), holdout.item_ids.tolist())
    return rmse_figures(out.ratings, holdout.ratings, out.fallbacks)


def retrain(args: argparse.Namespace, store: ModelStore, raw, report: dict) -> ExitCode:
    """Everything after the lock is taken. Fills ``report``; returns the exit code."""
    timings = report["timings"]
    store.init()
    store.clean_temporary()  # left by a run that was killed while saving; we hold the lock
    current_version = report["versions"]["before"] = store.current()
    current = None
    if current_version is not None:
        try:
            current = checkpoint.load(store.path_of(current_version))
        except checkpoint.CheckpointError as exc:  # the service cannot serve it either
            report["current"] = {"version": current_version, "error": str(exc)}
            print(f"warning: current model unreadable, treating the store as empty: {exc}", file=sys.stderr)
    config = train_config(args, current.config if current else TrainConfig(), raw.implicit)
    report["config"] = asdict(config)
    try:
        train_raw, hold_raw = split_holdout(raw, args.holdout, args.holdout_seed)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    dataset = build_dataset(train_raw)
    report["data"].update(train_rows=len(train_raw), holdout_rows=len(hold_raw))
    report["data"].update(users=dataset.interactions.num_users, items=dataset.interactions.num_items)

    init = None
    if args.warm_start:
        if current is None:
            report["warm_start"] = {"used": False, "reason": "no current model"}
        else:
            if (config.model, config.dim, config.member_dim) != (current.kind, current.config.dim,
                                                                 current.config.member_dim):  # fmt: skip
                raise BadInput("--warm-start needs the current model's --model, --dim and --member-dim")
            init = warm_start(current, dataset.user_map.ids, dataset.item_map.ids)
            report["warm_start"] = {"used": True, "from": current_version, "matched": init.matched}

    print(f"training candidate on {len(train_raw)} rows (holding out {len(hold_raw)})", flush=True)
    started = time.perf_counter()
    result = fit(dataset.interactions, config, progress=not args.quiet, implicit=raw.implicit, init=init)
    timings["train_s"] = round(time.perf_counter() - started, 3)
    candidate = checkpoint.from_training(result, dataset)
    candidate.data.update(holdout_fraction=args.holdout, holdout_seed=args.holdout_seed, holdout_rows=len(hold_raw))

    started = time.perf_counter()
    cand_fig = score(candidate, hold_raw, raw.implicit)
    cur_fig = score(current, hold_raw, raw.implicit) if current is not None else None
    timings["evaluate_s"] = round(time.perf_counter() - started, 3)
    report["candidate"] = {"version": candidate.model_version, "holdout": cand_fig, "training": result.metrics}
    if current is not None:
        report["current"] = {"version": current_version, "holdout": cur_fig}
        split = (current.data.get("holdout_fraction"), current.data.get("holdout_seed"))
        if split != (args.holdout, args.holdout_seed):
            report["current"]["note"] = (
                f"the current model was not trained with this holdout (its split: {split}); it may have seen "
                "held-out rows, which favours it"
            )
    decision = decide(cur_fig, cand_fig, args.tolerance, args.force)
    report["decision"] = {"promoted": decision.promote, "reason": decision.reason, "tolerance": args.tolerance,
                          "forced": args.force}  # fmt: skip
    if not decision.promote:
        print(f"rejected {candidate.model_version}: {decision.reason}; still serving {current_version}")
        report["versions"]["after"] = current_version
        return ExitCode.REJECTED

    started = time.perf_counter()
    store.add(candidate)
    store.set_current(candidate.model_version)
    report["versions"].update(after=candidate.model_version, pruned=store.prune(args.keep))
    timings["promote_s"] = round(time.perf_counter() - started, 3)
    print(f"promoted {candidate.model_version} (was {current_version}): {decision.reason}")
    return ExitCode.PROMOTED


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
        except OSError as exc:
            print(f"warning: could not write the report {target}: {exc}", file=sys.stderr)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
