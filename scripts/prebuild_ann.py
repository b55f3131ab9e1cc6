"""Build (or verify) the cached ANN index and top-N lists of a checkpoint before the service starts.

    python scripts/prebuild_ann.py artifacts/model.ckpt
    python scripts/prebuild_ann.py STORE                  # a model store: its current version

Workers then only read the files (``service.ann_cache``), instead of the first one to need them building
them with ``RECSYS_ANN_BUILD_THREADS`` threads. Reads the same ``RECSYS_ANN_*`` and ``RECSYS_TOPN_*``
settings as the service, so the files it writes are the ones the workers look for: beside the file a
worker loads, which for a model store (``model.store``) is its current version, ``versions/<v>.ckpt``, and
for a symlink its target (``service.state`` resolves both). Prints the path of each file; exit 2 when faiss
is not installed or the checkpoint cannot be loaded. A model the service would not search by ANN (fewer items
than ``RECSYS_ANN_MIN_ITEMS``, that setting 0, or a NeuMF, which does not rank by inner product) gets nothing:
exit 0 with the reason.
"""

from __future__ import annotations

import argparse
import logging
import sys

from model import checkpoint as ckpt_io
from model.checkpoint import CheckpointError
from model.serving_arrays import ranks_by_dot_product, serving_arrays
from model.store import served_file
from service.ann import AnnConfig, import_faiss
from service.ann_cache import cache_path, lists_path, load_or_build
from service.config import ConfigError, load_settings
from service.topn import TopNConfig, load_or_build_lists


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file or model store directory the service will serve")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # ten lines on which CPU features it loads
    if import_faiss() is None:
        print("error: faiss is not installed (pip install -e '.[ann]')", file=sys.stderr)
        return 2
    try:  # the settings first: a bad RECSYS_ANN_* is found before a large checkpoint loads
        settings = load_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        path = served_file(args.checkpoint)
        ckpt = ckpt_io.load(path)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serving = ckpt.serving or serving_arrays(ckpt.state_dict, ckpt.kind, ckpt.config, ckpt.recent_items)
    config, topn = AnnConfig.from_settings(settings), TopNConfig.from_settings(settings)
    dot = ranks_by_dot_product(ckpt.kind, ckpt.config)
    if not (dot and config.applies(ckpt.num_items)):  # what service.state decides: the workers would not read it
        why = (
            f"{ckpt.kind} does not rank by inner product"
            if not dot
            else f"{ckpt.num_items:,} items, under RECSYS_ANN_MIN_ITEMS={config.min_items:,}"
            if config.min_items > 0
            else "RECSYS_ANN_MIN_ITEMS=0"
        )
        print(f"nothing to build: the service ranks {path.name} exactly ({why})", file=sys.stderr)
        return 0
    ann = load_or_build(path, ckpt.model_version, serving["item_vectors"], config)
    print(cache_path(path, ckpt.model_version, config))
    if topn.wants_from_ann():
        n = topn.length(ckpt.num_users, scanned=False)  # what a worker asks for (service.state)
        load_or_build_lists(
            path, ckpt.model_version, ann, serving["user_vectors"], ckpt.seen_indptr, ckpt.seen_indices, n, config
        )
        print(lists_path(cache_path(path, ckpt.model_version, config), n, config.ef_search))
    return 0


if __name__ == "__main__":
    sys.exit(main())
