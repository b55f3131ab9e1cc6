"""TrainConfig's one table of flags (train.py and retrain.py alike), and the service importing no training code."""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from dataclasses import fields

import pytest

from model.config import TrainConfig, config_flags, validate
from model.synthetic import SyntheticConfig, planted_ratings
from tests.conftest import REPO


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_cfg_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


def test_importing_the_service_imports_no_training_code():
    # torch itself loads some of tqdm and torch.optim; the service must add none of the training stack.
    torch_only = _modules_after("import torch")
    added = _modules_after("from service import create_app") - torch_only  # the package defers the app to this
    training = {"model.train", "model.loop", "model.objectives", "model.validation", "model.warmstart"}
    assert not added & training, sorted(added & training)
    assert not {m for m in added if m == "tqdm" or m.startswith(("tqdm.", "torch.optim"))}
    assert "model.config" in added  # what a checkpoint needs of the configuration


def test_every_field_has_a_flag_and_both_scripts_share_them():
    names = {names[0] for names, _ in config_flags()}
    assert names >= {"--" + f.name.replace("_", "-") for f in fields(TrainConfig)}
    train, retrain = _script("train"), _script("retrain")
    args = train.parse_args(["--dim", "7", "--no-refit", "--batch-size", "full"])
    assert (args.config.dim, args.config.refit, args.config.batch_size) == (7, False, 0)
    args = retrain.parse_args(["--data", "x", "--store", "s", "--dim", "7", "--no-refit", "--batch-size", "full"])
    assert retrain.train_config(args, TrainConfig()).dim == 7 and not retrain.train_config(args, TrainConfig()).refit


def test_help_gives_each_kinds_default_from_the_tables():
    """--help said "(default: per kind, see README)", and the README had no such table; retrain.py's flags showed
    train.py's defaults under a heading saying the current model's are the default."""
    from model.config import RANKING_DEFAULTS, RATING_DEFAULTS, kind_defaults_text

    helps = {names[0]: kwargs.get("help", "") for names, kwargs in config_flags()}
    assert not [flag for flag, text in helps.items() if "see README" in text or "set by the kind" in text]
    assert f"{RATING_DEFAULTS['dim']} for mf on ratings" in helps["--dim"]
    assert f"{RANKING_DEFAULTS['neumf']['dim']} for " in helps["--dim"] and "neumf" in kind_defaults_text("dim")
    assert f"{RANKING_DEFAULTS['sasrec']['epochs']} for sasrec" in helps["--epochs"]
    assert "(default: none)" in helps["--items"]
    over = {names[0]: kwargs.get("help", "") for names, kwargs in config_flags(over_current=True)}
    assert over["--dim"].endswith("(default: the current model's)")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dim": 0}, "--dim must be >= 1"),
        ({"lr": 0.0}, "--lr must be > 0"),
        ({"val_fraction": 1.0}, "--val-fraction must be < 1"),
        ({"optimizer": "rmsprop"}, "--optimizer 'rmsprop': choose one of sgd, adam, adagrad"),
        ({"optimizer": "adagrad", "momentum": 0.9}, "--momentum applies to sgd"),
        ({"rank_reg": -1.0}, "--rank-reg must be >= 0"),
    ],
)
def test_validate_names_the_flag(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(TrainConfig(**overrides), overrides)


def test_retrain_applies_train_validation(tmp_path, capsys):
    """Before the shared table, retrain skipped train.py's checks (adagrad with momentum trained anyway)."""
    raw, _ = planted_ratings(SyntheticConfig(40, 20, 2, 8, seed=1))
    data = tmp_path / "r.csv"
    data.write_text("".join(f"{u},{i},{r:.2f}\n" for u, i, r in zip(raw.user_ids, raw.item_ids, raw.ratings)))
    retrain = _script("retrain")
    for flags, message in (
        (["--optimizer", "adagrad", "--momentum", "0.9"], "--momentum applies to sgd"),
        (["--patience", "0"], "--patience must be >= 1"),
        (["--loss", "bpr", "--rank-loss", "softmax"], "--loss bpr already ranks"),
    ):
        code = retrain.main(["--data", str(data), "--store", str(tmp_path / "store"), "--quiet", *flags])
        assert code == 2 and message in capsys.readouterr().err
    assert not list((tmp_path / "store" / "versions").glob("*.ckpt"))


def test_every_resolved_config_validates_so_a_checkpoint_can_be_retrained_from():
    """retrain.py validates the current model's (resolved) config as its base: a default that validate refuses (ALS
    stored lr 0.0) stopped every retrain over such a model. Every kind, engine and ranker the resolution picks."""
    from model.networks import MODEL_KINDS
    from model.train import resolve

    resolved = 0
    for kind in MODEL_KINDS:
        for implicit, rows in itertools.product((False, True), (1_000, 600_000)):
            for extra in ({}, {"loss": "bpr"}, {"loss": "softmax"}, {"rank_loss": "softmax"}, {"engine": "als"}):
                try:
                    config = resolve(TrainConfig(model=kind, **extra), implicit, rows)
                except ValueError:  # a combination resolve refuses (mse on implicit data, ALS for a network)
                    continue
                resolved += 1
                assert validate(config) is config, (kind, implicit, rows, extra)
    assert resolved >= 100
