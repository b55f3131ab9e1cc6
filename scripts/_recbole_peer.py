"""One RecBole 1.2.1 sequential model on a timeline file, run by ``scripts/benchmark_sequence.py`` inside the
RecBole virtual environment it makes (numpy<2, pandas<3). Not part of the product; the compatibility shims
for current torch live here and nowhere else.

    python scripts/_recbole_peer.py --inter DIR/seqbench.inter --model SASRec --seed 0 --epochs 50 --out OUT

The ``.inter`` file holds every row (``user_id``, ``item_id`` as our indices, ``timestamp`` = the row's
position in its user's timeline), so RecBole's leave-one-out split by time (``LS: valid_and_test``) is
exactly ours: last item test, the one before validation. RecBole trains with early stopping on validation
NDCG@10; then each user's items before the test item (the last ``MAX_ITEM_LIST_LENGTH``) go through
``full_sort_predict``, and the scores of every item, in our item order, are written to ``OUT.npy`` for the
benchmark to score with our own code. ``OUT.json`` holds the validation score, epochs and seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

_load = torch.load


def _load_full(*args, **kwargs):  # RecBole's own checkpoints hold its config object: trusted, our own file
    kwargs.setdefault("weights_only", False)
    return _load(*args, **kwargs)


torch.load = _load_full

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.data.interaction import Interaction  # noqa: E402
from recbole.utils import get_model, get_trainer, init_seed  # noqa: E402

torch.autograd.set_detect_anomaly(False)  # recbole/model/.../sine.py turns it on at import: 1.5-2x slower


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--inter", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--params", default="{}", help="JSON: model hyperparameters (the benchmark's tuning grid)")
    p.add_argument("--out", required=True)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # as our gradient-descent training
    inter = Path(args.inter)
    out = Path(args.out)
    config = Config(
        model=args.model,
        dataset=inter.stem,
        config_dict={
            "data_path": str(inter.parent.parent),
            "checkpoint_dir": str(out.parent / f"{out.name}-saved"),
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "TIME_FIELD": "timestamp",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "MAX_ITEM_LIST_LENGTH": args.max_len,
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
            "metrics": ["Hit", "NDCG"],
            "topk": [10],
            "valid_metric": "NDCG@10",
            "epochs": args.epochs,
            "stopping_step": args.patience,
            "loss_type": "CE",
            "train_neg_sample_args": None,
            "seed": args.seed,
            "reproducibility": True,
            "device": "cpu",
            "use_gpu": False,
            "show_progress": False,
            "log_wandb": False,
            "eval_batch_size": 4096,
            **json.loads(args.params),
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data.dataset).to("cpu")
    torch.autograd.set_detect_anomaly(False)  # again: get_model imports the model package (and sine.py) only now
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    started = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    fit_s = time.perf_counter() - started
    trainer.resumed_config = config
    state = torch.load(trainer.saved_model_file, map_location="cpu")
    model.load_state_dict(state["state_dict"])
    model.eval()
    np.save(out.with_suffix(".npy"), score_everyone(model, dataset, inter, config))
    epochs = len(getattr(trainer, "train_loss_dict", {}))
    summary = {"valid_ndcg10": float(best_valid), "fit_s": fit_s, "epochs": epochs}
    out.with_suffix(".json").write_text(json.dumps(summary))


def score_everyone(model, dataset, inter: Path, config) -> np.ndarray:
    """(users, items) scores in our index order: each user's items before their last (test) one as input."""
    rows = np.loadtxt(inter, skiprows=1, dtype=np.int64, ndmin=2)  # user, item, timestamp (= timeline position)
    rows = rows[np.lexsort((rows[:, 2], rows[:, 0]))]
    num_users, num_items = int(rows[:, 0].max()) + 1, int(rows[:, 1].max()) + 1
    uid = dataset.field2token_id["user_id"]
    iid = dataset.field2token_id["item_id"]
    item_rb = np.array([iid[str(i)] for i in range(num_items)])  # our item -> RecBole's id
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    starts = np.searchsorted(rows[:, 0], np.arange(num_users + 1))
    out = np.empty((num_users, num_items), np.float32)
    for block in range(0, num_users, 256):
        users = range(block, min(block + 256, num_users))
        seqs = np.zeros((len(users), max_len), np.int64)
        lengths = np.zeros(len(users), np.int64)
        for r, u in enumerate(users):
            history = rows[starts[u] : starts[u + 1] - 1, 1][-max_len:]  # all but the test item
            seqs[r, : len(history)] = item_rb[history]  # RecBole pads on the right
            lengths[r] = len(history)
        batch = Interaction({
            "user_id": torch.tensor([uid[str(u)] for u in users]),
            config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]: torch.from_numpy(seqs),
            config["ITEM_LIST_LENGTH_FIELD"]: torch.from_numpy(lengths),
        })  # fmt: skip
        with torch.no_grad():
            scores = model.full_sort_predict(batch).view(len(users), -1).numpy()
        out[block : block + len(users)] = scores[:, item_rb]
    return out


if __name__ == "__main__":
    main()
