"""Item metadata, filters and explanations through the real uWSGI: a model trained with ``scripts/train.py --items``."""

from __future__ import annotations

import urllib.parse

import pytest
import torch

from model import checkpoint
from model.interactions import build_dataset
from model.item_files import read_items
from model.networks import build_network
from model.train import TrainConfig, TrainResult
from service.index import ServingIndex
from tests.conftest import write_lines
from tests.test_items import _script
from tests.test_models import BLOCK, block, checkerboard
from tests.test_uwsgi import call


def genres_of(i: int) -> str:
    return f"Block{i // BLOCK}|{'Even' if i % 2 == 0 else 'Odd'}"


@pytest.fixture(scope="module")
def items_ckpt(tmp_path_factory):
    """The default kind (rating MF + implicit-ALS head) on the checkerboard, trained by train.py with a movies.csv
    whose genres are each item's block and parity, and a year that cycles over 1990..1994."""
    tmp = tmp_path_factory.mktemp("items")
    raw = checkerboard()
    data = write_lines(tmp / "r.csv", [f"{u},{i},{r}" for u, i, r in zip(raw.user_ids, raw.item_ids, raw.ratings)])
    n_items = len(set(raw.item_ids.tolist()))
    movies = ["movieId,title,genres"] + [
        f'i{i},"Movie {i}, The ({1990 + i % 5})",{genres_of(i)}' for i in range(n_items) if i != 3
    ]  # i3 has no row: served without attributes
    items = write_lines(tmp / "movies.csv", movies)
    out = tmp / "m.ckpt"
    flags = ["--dim", "8", "--member-dim", "4", "--epochs", "20", "--rank-dim", "8", "--rank-epochs", "10"]
    flags += ["--quiet", "--data", str(data), "--items", str(items), "--out", str(out)]
    assert _script("train").main(flags) == 0
    return out


@pytest.fixture(scope="module")
def local(items_ckpt):
    return ServingIndex(checkpoint.load(items_ckpt))


def get(server, path: str, **params) -> tuple[int, dict]:
    query = urllib.parse.urlencode([(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])])
    status, _, body = call(server.base, f"{path}?{query}")
    return status, body


def test_titles_filters_and_explanations_over_http(start_uwsgi, items_ckpt, local):
    server = start_uwsgi(items_ckpt)
    status, body = get(server, "/recommend", user_id="u0", k=5)
    assert status == 200 and len(body["items"]) == 5
    for item in body["items"]:
        i = int(item["item_id"][1:])
        want = {"title": f"Movie {i}, The ({1990 + i % 5})", "year": 1990 + i % 5, "genres": genres_of(i).split("|")}
        assert item["attributes"] == ({} if i == 3 else want)

    # A genre filter: only matching items, still k of them (the list walk or the scan, the same answer as in-process).
    for user in ("u0", "u13", "u40"):
        status, body = get(server, "/recommend", user_id=user, k=6, filter=["genres:Odd", "genres:Block2"])
        assert status == 200 and len(body["items"]) == 5  # block 2 has 5 odd items, the user saw none of them
        assert all(set(it["attributes"]["genres"]) == {"Odd", "Block2"} for it in body["items"])
        want = local.recommend(user, 6, filters={"genres": ["Odd", "Block2"]}).item_ids
        assert [it["item_id"] for it in body["items"]] == want
    status, body = get(server, "/recommend", user_id="u0", k=4, filter="genres:Even")
    assert len(body["items"]) == 4 and all("Even" in it["attributes"]["genres"] for it in body["items"])
    status, body = get(server, "/recommend", user_id="u0", k=3, filter="title:Movie 12, The (1992)")
    assert [it["item_id"] for it in body["items"]] == ["i12"]  # a value with a comma is one value
    status, body = get(server, "/similar", item_id="i0", k=3, filter="year:1993")
    assert status == 200 and len(body["items"]) == 3 and all(it["attributes"]["year"] == 1993 for it in body["items"])

    # explain=true: each item names the user's own history items, largest share first.
    seen = {local.item_ids[i] for i in local.seen(local.user_index["u0"])}
    status, body = get(server, "/recommend", user_id="u0", k=3, explain="true")
    assert status == 200
    for item in body["items"]:
        shares = [c["share"] for c in item["explanation"]]
        assert 0 < len(shares) <= 5 and shares == sorted(shares, reverse=True)
        assert {c["item_id"] for c in item["explanation"]} <= seen
        assert all("title" in c["attributes"] or c["item_id"] == "i3" for c in item["explanation"])
    history = {"history": ["i20", "i21", "i22", "i24"], "k": 3, "filter": {"genres": "Block2"}, "explain": True}
    status, _, body = call(server.base, "/recommend", history)
    assert status == 200 and [block(it["item_id"]) for it in body["items"]] == [2, 2, 2]
    assert all({c["item_id"] for c in it["explanation"]} <= set(history["history"]) for it in body["items"])

    # Bad filters: 422 naming the field and the attribute.
    for params in ({"filter": "colour:red"}, {"filter": "nocolon"}, {"filter": "year:soon"}):
        status, body = get(server, "/recommend", user_id="u0", **params)
        assert status == 422 and body["error"]["details"][0]["field"].startswith("filter")
    assert "unknown attribute 'colour' (known: title, year, genres)" in str(get(server, "/similar", item_id="i1",
                                                                               filter="colour:red")[1])  # fmt: skip
    status, _, body = call(server.base, "/recommend", {"history": ["i1"], "filter": {"mood": "calm"}})
    assert status == 422 and "'mood'" in body["error"]["details"][0]["reason"]

    # The served OpenAPI document describes this model's filters (what a schema-valid request may name).
    status, _, doc = call(server.base, "/openapi.json")
    (param,) = [p for p in doc["paths"]["/recommend"]["get"]["parameters"] if p["name"] == "filter"]
    assert param["schema"]["items"]["pattern"] == r"^(?:genres:|title:|year:\s*[+-]?[0-9]+\s*$)"
    body = doc["paths"]["/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert sorted(body["properties"]["filter"]["anyOf"][0]["properties"]) == ["genres", "title", "year"]


def test_a_filter_value_may_contain_a_colon(items_ckpt, tmp_path):
    """``filter=attribute:value`` splits at the first colon: the value is everything after it, colons included
    (a title such as 'Star Wars: Episode IV'). Split at the last colon, the attribute read 'title:Star Wars'."""
    from service import create_app

    ckpt = checkpoint.load(items_ckpt)
    title = "Star Wars: Episode IV - A New Hope (1977)"
    movies = ["movieId,title,genres", f'i12,"{title}",Sci-Fi', "i13,Star Wars (1977),Sci-Fi"]  # i13: not asked for
    ckpt.item_attributes = read_items(write_lines(tmp_path / "movies.csv", movies)).align(ckpt.item_ids)
    path = checkpoint.save(ckpt, tmp_path / "colon.ckpt")
    client = create_app({"CHECKPOINT": str(path), "TESTING": True, "RELOAD_INTERVAL": 0}).test_client()
    for url in (f"/recommend?user_id=u0&k=3&filter={urllib.parse.quote('title:' + title)}",
                f"/similar?item_id=i0&k=3&filter={urllib.parse.quote('title:' + title)}"):  # fmt: skip
        resp = client.get(url)
        assert resp.status_code == 200, resp.get_json()
        assert [it["item_id"] for it in resp.get_json()["items"]] == ["i12"]
        assert resp.get_json()["items"][0]["attributes"]["title"] == title


def test_explain_is_refused_for_neumf(tmp_path):
    """NeuMF's scores do not split over the history: a 422 naming explain, while filters still work."""
    from service import create_app

    dataset = build_dataset(checkerboard())
    config = TrainConfig(model="neumf", loss="bce", dim=4, layers="8,4", epochs=1, lr=0.01, reg=0.0, batch_size=64)
    torch.manual_seed(0)
    net = build_network("neumf", dataset.interactions.num_users, dataset.interactions.num_items, config)
    ckpt = checkpoint.from_training(TrainResult(net, config, 3.0, (1.0, 5.0), {}), dataset)
    path = checkpoint.save(ckpt, tmp_path / "neumf.ckpt")
    client = create_app({"CHECKPOINT": str(path), "TESTING": True, "RELOAD_INTERVAL": 0}).test_client()
    resp = client.get("/recommend?user_id=u0&explain=true")
    assert resp.status_code == 422 and resp.json["error"]["details"][0]["field"] == "explain"
    assert "neumf" in resp.json["error"]["details"][0]["reason"]
    assert client.get("/recommend?user_id=u0&k=2").json["items"][0]["attributes"] == {}  # no --items: {}
    resp = client.get("/recommend?user_id=u0&filter=genres:Comedy")
    assert resp.status_code == 422 and "trained without --items" in resp.json["error"]["details"][0]["reason"]
    params = {
        p["name"]: p["schema"] for p in client.get("/openapi.json").json["paths"]["/recommend"]["get"]["parameters"]
    }
    assert params["explain"]["enum"] == [False] and params["filter"]["maxItems"] == 0  # what this model answers


def test_batch_file_with_filters_equals_the_filtered_recommend(items_ckpt, local, tmp_path, capsys):
    """scripts/recommend_batch.py --filter: each user's rows are the filtered /recommend answer (the call the view
    makes); an unknown attribute or a non-integer year stops the run before anything is written."""
    import pyarrow.parquet as pq

    batch = _script("recommend_batch")
    out = tmp_path / "comedy.parquet"
    base = ["--checkpoint", str(items_ckpt), "--k", "4", "--quiet"]
    assert batch.main([*base, "--out", str(out), "--filter", "genres:Odd", "--filter", "year:1991"]) == 0
    rows = pq.read_table(out).to_pylist()
    by_user: dict[str, list[str]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row["item_id"])
    assert len(by_user) == len(local.user_index)
    for user, items in by_user.items():
        assert items == local.recommend(user, 4, filters={"genres": ["Odd"], "year": ["1991"]}).item_ids
        assert all(int(i[1:]) % 2 == 1 and int(i[1:]) % 5 == 1 for i in items)
    for bad, message in (("colour:red", "colour"), ("year:soon", "year"), ("genres", "attribute:value")):
        missing = tmp_path / "never.parquet"
        assert batch.main([*base, "--out", str(missing), "--filter", bad]) == 2
        assert message in capsys.readouterr().err and not missing.exists()
    # A value no item holds (a typo, a case slip) writes the empty lists it asks for, and says so.
    assert batch.main([*base, "--out", str(out), "--filter", "genres:odd"]) == 0
    assert "warning: no item matches --filter genres:odd" in capsys.readouterr().err
    assert pq.read_table(out).num_rows == 0


def test_only_the_first_items_of_a_long_answer_are_explained(tmp_path):
    """k = 1,000 with explain over a 10,000-item history took 1.4-2.1 s of a worker: each explained item is a pass
    over the whole history. The first EXPLAINED_ITEMS items are explained, the rest come without."""
    from service.explain import EXPLAINED_ITEMS
    from service.index import ServingIndex
    from tests.test_ann import planted_checkpoint

    ckpt = planted_checkpoint()
    index = ServingIndex(ckpt, prune_min_items=0)
    history = ckpt.item_ids[:300]
    k = EXPLAINED_ITEMS + 50
    asked = [(index.recommend, ckpt.user_ids[0]), (index.recommend_for_history, history)]
    for method, who in asked:
        records = method(who, k, explain=True).records()
        assert len(records) == k
        assert all(r["explanation"] for r in records[:EXPLAINED_ITEMS])
        assert not any("explanation" in r for r in records[EXPLAINED_ITEMS:])
        assert [r["item_id"] for r in method(who, k).records()] == [r["item_id"] for r in records]  # same items


def test_retrain_keeps_the_current_models_attributes_and_reads_only_the_file_it_is_given(items_ckpt, tmp_path):
    """Found by the security review: a retrain without --items re-read the path stored in the current model's
    config, so a planted version naming another file (one the retrain job can read) had its content published as
    attributes. It keeps the attributes stored in the current model now, and reads only a file named on its
    command line."""
    from model.store import ModelStore

    retrain = _script("retrain")
    store = ModelStore(tmp_path / "store").init()
    current = checkpoint.load(items_ckpt)
    store.add(current)
    store.set_current(current.model_version)
    secret = write_lines(tmp_path / "secret.csv", ["item,secret", "i1,hunter2"])
    planted = checkpoint.load(items_ckpt)
    planted.config.items, planted.model_version = str(secret), current.model_version + "-planted"
    store.add(planted)
    store.set_current(planted.model_version)
    data = items_ckpt.parent / "r.csv"
    flags = ["--data", str(data), "--store", str(store.root), "--quiet", "--force", "--epochs", "2", "--seed", "5"]
    assert retrain.main(flags) == 0
    attrs = checkpoint.load(store.current_path()).item_attributes
    assert [a.name for a in attrs.attributes] == [a.name for a in current.item_attributes.attributes]
    assert "hunter2" not in {v for a in attrs.attributes for v in a.vocab}
    assert [a.vocab for a in attrs.attributes] == [a.vocab for a in current.item_attributes.attributes]  # same items
    renamed = write_lines(tmp_path / "renamed.csv", ["movieId,title", "i1,Renamed"])
    assert retrain.main([*flags[:-2], "--seed", "6", "--items", str(renamed)]) == 0
    attrs = checkpoint.load(store.current_path()).item_attributes
    assert [a.name for a in attrs.attributes] == ["title"] and attrs.attributes[0].vocab == ["Renamed"]


def test_a_body_takes_at_most_32_filter_values_in_all_and_the_document_says_so(items_ckpt):
    """Found by the security review: a body's value lists were uncapped (each value is a condition over the
    catalogue). Across attributes the model has, 33 values are refused naming the rule, 32 are answered; the
    model's OpenAPI document bounds them too (the review of the cap found it did not)."""
    from service import create_app

    client = create_app({"CHECKPOINT": str(items_ckpt), "RELOAD_INTERVAL": 0}).test_client()
    for counts, status in (((20, 13), 422), ((20, 12), 200)):
        body = {"history": ["i1"], "filter": {"genres": ["Block0"] * counts[0], "title": ["x"] * counts[1]}}
        resp = client.post("/recommend", json=body)
        assert resp.status_code == status, resp.get_json()
    assert resp.status_code == 200 and resp.get_json()["items"] == []  # no item has the title "x"
    details = client.post("/recommend", json={"history": ["i1"], "filter": {"genres": ["a"] * 20, "year": [1] * 13}})
    assert details.get_json()["error"]["details"] == [
        {"field": "filter", "reason": "should have at most 32 values in all, not 33"}
    ]
    schema = client.get("/openapi.json").get_json()["paths"]["/recommend"]["post"]["requestBody"]
    described = schema["content"]["application/json"]["schema"]["properties"]["filter"]["anyOf"][0]
    assert described["maxProperties"] == 32
    assert described["properties"]["genres"]["anyOf"][1]["maxItems"] == 32
