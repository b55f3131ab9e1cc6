"""Point a model store's ``current`` back at an earlier version (the service follows by itself).

    python scripts/rollback.py --store /srv/recsys/store            # to the version served before current
    python scripts/rollback.py --store /srv/recsys/store --to mf-20260101T000000Z-1a2b3c4d
    python scripts/rollback.py --store /srv/recsys/store --list     # versions, oldest first; * = current

Takes the store's lock, so it never races a retrain. Exit codes (``model.retrain.ExitCode``):
0 current moved (or listed; a warning on stderr when the list of served versions could not be written after the
move), 2 no such store or version / nothing older to go back to, 11 locked, 1 failed (e.g. the target version does
not load): current is left as it was.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from model.checkpoint import CheckpointError
from model.retrain import ExitCode
from model.store import ModelStore, ServedListNotWritten, StoreError, StoreLocked, is_store


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="model store directory")
    p.add_argument("--to", help="version to serve (default: the one served before the current one)")
    p.add_argument("--list", action="store_true", help="list the versions and exit")
    args = p.parse_args(argv)
    if not is_store(args.store):
        print(f"error: {args.store} is not a model store (no versions/ directory)", file=sys.stderr)
        return ExitCode.BAD_INPUT
    store = ModelStore(args.store)
    if args.list:
        try:
            current, broken = store.current(), None
            if current is not None and not store.path_of(current).is_file():
                broken = f"current points at {current}, which the store no longer holds"
        except StoreError as exc:
            current, broken = None, exc
        for v in store.versions():
            added = datetime.fromtimestamp(v.added_ns / 1e9, timezone.utc).isoformat(timespec="seconds")
            print(f"{'*' if v.name == current else ' '} {v.name}  added {added}")
        try:
            store.check_replaceable()
        except StoreError as exc:  # a directory where the link belongs: --to would not help
            print(f"error: {exc}", file=sys.stderr)
            return ExitCode.BAD_INPUT
        if broken is not None:
            print(f"error: {broken}; serve a version with --to VERSION", file=sys.stderr)
            return ExitCode.BAD_INPUT
        return ExitCode.PROMOTED
    try:
        with store.lock():
            before, after = store.rollback(args.to)
    except ServedListNotWritten as exc:  # current moved: rolled back all the same (saying otherwise, a retry went on)
        print(f"warning: {exc}", file=sys.stderr)
        before, after = exc.before, exc.version
    except StoreLocked as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return ExitCode.LOCKED
    except CheckpointError as exc:
        print(f"error: not rolled back, {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except OSError as exc:  # a read-only store, a lock file that is a planted link: a refusal, not a traceback
        print(f"error: not rolled back, {exc}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"current: {before} -> {after}")
    return ExitCode.PROMOTED


if __name__ == "__main__":
    sys.exit(main())
