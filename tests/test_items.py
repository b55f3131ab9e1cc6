"""Item metadata: reading the files (MovieLens and generic), malformed ones named by line, the checkpoint field
and its validation, ``scripts/train.py --items`` end to end."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
import torch

from model import checkpoint
from model.checkpoint import CheckpointError
from model.item_files import read_items
from model.items import build
from tests.conftest import REPO, write_lines

MOVIES_CSV = [
    "movieId,title,genres",
    "1,Toy Story (1995),Adventure|Animation|Children",
    '11,"American President, The (1995)",Comedy|Drama|Romance',
    "99,Untitled,(no genres listed)",
]


def test_movielens_files_are_read_as_such(tmp_path):
    table = read_items(write_lines(tmp_path / "movies.csv", MOVIES_CSV))
    assert (table.names, table.kinds) == (["title", "year", "genres"], ["str", "int", "list"])
    assert table.rows["11"] == [["American President, The (1995)"], ["1995"], ["Comedy", "Drama", "Romance"]]
    assert table.rows["99"] == [["Untitled"], [], []]

    u_item = "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|" + "0|" * 12 + "0\n"
    u_item += "2|Caf\xe9 (1994)|||http://y|1|" + "0|" * 17 + "0\n"  # latin-1, as ML-100k ships it
    table = read_items(write_lines(tmp_path / "u.item", u_item.encode("latin-1")))
    assert table.rows["1"] == [["Toy Story (1995)"], ["1995"], ["Animation", "Children's", "Comedy"]]
    assert table.rows["2"] == [["Café (1994)"], [], []]  # no release date; genre 'unknown' is none

    dat = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure\n"
    table = read_items(write_lines(tmp_path / "movies.dat", dat.encode("latin-1")))
    assert table.rows["2"] == [["Jumanji (1995)"], ["1995"], ["Adventure"]]


def test_generic_csv_tsv_and_parquet_infer_kinds(tmp_path):
    lines = ["sku,name,tags,price_cents,year", "a1,Lamp,home|light,1999,2001", "b2,Desk,,250,", "c3,Chair,home,x9,1999"]
    table = read_items(write_lines(tmp_path / "items.csv", lines))
    assert table.kinds == ["str", "list", "str", "int"]  # "x9" makes price_cents text; a year column of ints
    assert table.rows["b2"] == [["Desk"], [], ["250"], []] and table.rows["a1"][1] == ["home", "light"]
    table = read_items(write_lines(tmp_path / "items.tsv", [line.replace(",", "\t") for line in lines]))
    assert table.rows["c3"] == [["Chair"], ["home"], ["x9"], ["1999"]]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"item": [7, 8], "genres": [["a", "b"], None], "year": [1990, None], "title": ["x", "y"]}),
        tmp_path / "items.parquet",
    )
    table = read_items(tmp_path / "items.parquet")
    assert table.kinds == ["list", "int", "str"]
    assert table.rows == {"7": [["a", "b"], ["1990"], ["x"]], "8": [[], [], ["y"]]}


MALFORMED = {
    "short_row": (MOVIES_CSV + ["12,Heat (1995)"], ":5: expected 3 fields, got 2"),
    "duplicate_item": (MOVIES_CSV + ["1,Again (1995),Drama"], ":5: item '1' already described on line 2"),
    "not_utf8": (b"id,title\n1,ok\n2,caf\xe9\n", ":3: not utf-8 text"),
    "colon_in_name": (["id,genre:main", "1,x"], ":1: attribute name 'genre:main'"),
    "unterminated_quote": (["id,title", '1,"open', "2,x"], ":3: malformed CSV"),
    "bad_flag": (
        ["1|A (1995)|01-Jan-1995||u" + "|0" * 19, "2|B (1995)|01-Jan-1995||u|2" + "|0" * 18],
        ":2: genre flags must be 0 or 1",
    ),
    "value_too_long": (["id,title", "1," + "x" * 1025], ":2: title: a value longer than 1024 characters"),
    "empty_id": (["id,title", ",x"], ":2: empty item id"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_metadata_names_file_and_line(case, tmp_path):
    content, message = MALFORMED[case]
    path = write_lines(tmp_path / "items.csv", content)
    with pytest.raises(ValueError, match=re.escape(f"{path}{message}")):
        read_items(path)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_items_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_with_items_stores_them_and_a_bad_file_writes_nothing(tmp_path, capsys):
    data = write_lines(tmp_path / "r.csv", [f"u{u},{i},{1 + (u + i) % 5}" for u in range(12) for i in (1, 11, 2)])
    items = write_lines(tmp_path / "movies.csv", MOVIES_CSV)
    train = _script("train")
    out = tmp_path / "m.ckpt"
    flags = ["--quiet", "--data", str(data), "--dim", "4", "--epochs", "2", "--rank-epochs", "2", "--out", str(out)]
    bad = write_lines(tmp_path / "bad.csv", MOVIES_CSV + ["5,Short"])
    assert train.main([*flags, "--items", str(bad)]) == 2
    assert f"{bad}:5: expected 3 fields, got 2" in capsys.readouterr().err and not out.exists()

    assert train.main([*flags, "--items", str(items)]) == 0
    assert "3 rows, attributes title, year, genres; 2 of the model's 3 items described" in capsys.readouterr().out
    ckpt = checkpoint.load(out)
    attrs = {a.name: a for a in ckpt.item_attributes.attributes}
    first = ckpt.item_ids.index("11")
    assert attrs["title"].vocab[attrs["title"].values[attrs["title"].indptr[first]]] == "American President, The (1995)"
    assert np.diff(attrs["genres"].indptr)[ckpt.item_ids.index("2")] == 0  # item 2 has no row: no values
    assert ckpt.config.items == str(items)


def _with_attributes(source, target):
    ckpt = checkpoint.load(source)
    rows = {0: [["A"], ["x", "y"]], 2: [["B"], []]}
    ckpt.item_attributes = build(["title", "tags"], ["str", "list"], rows, ckpt.num_items)
    return checkpoint.save(ckpt, target)


def _edit_attribute(path, target, change):
    raw = torch.load(path, map_location="cpu", weights_only=True)
    change(raw["item_attributes"])
    torch.save(raw, target)
    return target


TAMPERED = {
    "codes_out_of_range": (lambda a: a[0].update(values=torch.tensor([5, 0], dtype=torch.int32)), "outside the vocab"),
    "two_titles": (lambda a: a[0].update(indptr=a[1]["indptr"]), "more values than a str attribute allows"),
    "indptr_short": (lambda a: a[0].update(indptr=torch.zeros(3, dtype=torch.int64)), "indptr must be"),
    "duplicate_name": (lambda a: a[1].update(name="title"), "duplicate attribute name"),
    "code_in_name": (lambda a: a[0].update(name="a:b"), "holds ':'"),
    "vocab_not_strings": (lambda a: a[1].update(vocab=[1, 2]), "vocab is not a list of strings"),
    "unknown_kind": (lambda a: a[1].update(kind="set"), "kind 'set' is not one of"),
}


def test_attributes_round_trip_and_tampered_ones_are_refused(small_ckpt_path, tmp_path):
    good = _with_attributes(small_ckpt_path, tmp_path / "good.ckpt")
    attrs = checkpoint.load(good).item_attributes
    assert attrs.names == ["title", "tags"] and attrs.attributes[1].vocab == ["x", "y"]
    assert attrs.attributes[0].indptr.tolist()[:4] == [0, 1, 1, 2]
    for case, (change, message) in TAMPERED.items():
        bad = _edit_attribute(good, tmp_path / f"{case}.ckpt", change)
        with pytest.raises(CheckpointError, match=re.escape(message)):
            checkpoint.load(bad)


def test_retrain_stores_items_keeps_them_and_reads_only_the_file_named(tmp_path, capsys):
    from model.store import ModelStore

    rows = [f"u{u},{i},{1 + (u * 7 + i) % 5}" for u in range(30) for i in (1, 11, 2, 3, 5) if (u + i) % 4]
    data = write_lines(tmp_path / "r.csv", rows)
    items = write_lines(tmp_path / "movies.csv", MOVIES_CSV + ["2,Heat (1995),Action|Crime"])
    retrain, store = _script("retrain"), tmp_path / "store"
    fast = ["--quiet", "--dim", "4", "--member-dim", "4", "--epochs", "2", "--rank-epochs", "2", "--force"]
    assert retrain.main(["--data", str(data), "--store", str(store), "--items", str(items), *fast]) == 0
    write_lines(items, MOVIES_CSV + ["2,Heat"])  # now malformed: a run without --items does not read it
    # Without --items the run keeps the current model's attributes (stored in it) and its config's record of them.
    assert retrain.main(["--data", str(data), "--store", str(store), "--seed", "1", *fast]) == 0  # a new version
    current = checkpoint.load(ModelStore(store).path_of(ModelStore(store).current()))
    assert current.config.items == str(items) and "genres" in current.item_attributes.names
    versions = len(ModelStore(store).versions())
    capsys.readouterr()
    # The file named: read, and malformed, the run stops, nothing promoted.
    assert retrain.main(["--data", str(data), "--store", str(store), "--seed", "2", "--items", str(items), *fast]) == 2
    assert f"{items}:5: expected 3 fields, got 2" in capsys.readouterr().err
    assert len(ModelStore(store).versions()) == versions
    # --items '': trained without attributes.
    assert retrain.main(["--data", str(data), "--store", str(store), "--seed", "3", "--items", "", *fast]) == 0
    assert checkpoint.load(ModelStore(store).path_of(ModelStore(store).current())).item_attributes is None


def test_an_unknown_attribute_is_named_without_echoing_a_huge_name():
    """Found by the security review: a 100 KB attribute name came back whole in the 422's reason."""
    from service.attributes import UnknownAttribute

    reason = str(UnknownAttribute("x" * 100_000, ["genres"]))
    assert len(reason) < 200 and reason.startswith(f"unknown attribute '{'x' * 64}'... (known: genres)")
    assert str(UnknownAttribute("colour", ["genres"])) == "unknown attribute 'colour' (known: genres)"
