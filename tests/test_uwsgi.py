"""The real uWSGI with the real uwsgi.ini on a free loopback port, over HTTP."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

import pytest

from tests.test_models import KINDS


def call(base: str, path: str, body: object | bytes | None = None, method: str | None = None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"} if data is not None else {}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type"), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), json.loads(err.read())


@pytest.fixture
def server(start_uwsgi, small_ckpt_path):
    return start_uwsgi(small_ckpt_path)


def test_recommend_predict_and_errors_over_http(server, small_ckpt):
    user = small_ckpt.user_ids[0]
    status, ctype, body = call(server.base, f"/recommend?user_id={user}&k=5")
    assert status == 200 and ctype == "application/json" and len(body["items"]) == 5
    assert body["model_version"] == small_ckpt.model_version

    status, _, single = call(server.base, "/predict", {"user_id": user, "item_id": small_ckpt.item_ids[0]})
    assert status == 200 and single["fallback"] is None
    pairs = [{"user_id": user, "item_id": small_ckpt.item_ids[0]}, {"user_id": "nobody", "item_id": "x"}]
    status, _, batch = call(server.base, "/predict", {"pairs": pairs})
    assert status == 200 and batch["predictions"][0]["rating"] == single["rating"]
    assert batch["predictions"][1]["fallback"] == "baseline"

    for path, body, want, field in [
        ("/recommend?user_id=1&k=0", None, 422, "k"),
        ("/predict", b"{not json", 400, "body"),
        ("/predict", {"pairs": [{"user_id": "u", "item_id": "i"}] * 10_001}, 422, "pairs"),
    ]:
        status, ctype, err = call(server.base, path, body)
        assert status == want and ctype == "application/json"
        assert err["error"]["details"][0]["field"] == field
    status, ctype, err = call(server.base, "/nowhere")
    assert status == 404 and ctype == "application/json"
    status, _, _ = call(server.base, "/healthz", b"{}", method="POST")
    assert status == 405


def test_the_access_log_is_one_json_object_per_line(server):
    """It was a JSON message behind logging's ``time INFO recsys.access:`` prefix: not a line a shipper parses."""
    req = urllib.request.Request(server.base + "/recommend?user_id=nobody&k=2", headers={"X-Request-ID": "trace-42"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    deadline = time.monotonic() + 10
    while '"trace-42"' not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(line for line in server.log().splitlines() if '"trace-42"' in line)
    entry = json.loads(line)
    assert entry["request_id"] == "trace-42" and entry["path"] == "/recommend" and entry["status"] == 200
    assert entry["method"] == "GET" and entry["duration_ms"] > 0 and entry["model_version"]
    assert entry["time"].endswith("+00:00") and entry["time"][:4].isdigit()


def test_oversized_body_gets_413_json_not_a_dropped_connection(server):
    payload = b'{"pairs": [' + b'{"user_id": "u", "item_id": "i"},' * 300_000 + b'{"user_id": "u", "item_id": "i"}]}'
    assert len(payload) > 8 * 1024 * 1024
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", "/predict", body=payload, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 413 and body["error"]["details"][0]["field"] == "body"


def test_missing_checkpoint_serves_503_and_healthz(start_uwsgi, tmp_path):
    server = start_uwsgi(tmp_path / "none.ckpt")
    status, _, body = call(server.base, "/recommend?user_id=1")
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    assert call(server.base, "/healthz")[0] == 200


def test_serving_features_over_http(server, small_ckpt):
    """readyz, similar, fold-in, exclude/items, OpenAPI and metrics aggregated across workers."""
    status, _, ready = call(server.base, "/readyz")
    assert status == 200 and ready["ready"] and ready["model_version"] == small_ckpt.model_version
    user, items = small_ckpt.user_ids[1], small_ckpt.item_ids
    top = [it["item_id"] for it in call(server.base, f"/recommend?user_id={user}&k=3")[2]["items"]]
    cut = call(server.base, f"/recommend?user_id={user}&k=2&exclude={top[0]}")[2]
    assert [it["item_id"] for it in cut["items"]] == top[1:3]
    only = call(server.base, f"/recommend?user_id={user}&k=5&items={top[2]}&items={top[1]}")[2]
    assert [it["item_id"] for it in only["items"]] == [top[1], top[2]]
    status, _, sim = call(server.base, f"/similar?item_id={items[0]}&k=4")
    assert status == 200 and len(sim["items"]) == 4
    status, _, folded = call(server.base, "/recommend", {"history": items[:5], "k": 3})
    assert status == 200 and len(folded["items"]) == 3 and not {i["item_id"] for i in folded["items"]} & set(items[:5])
    status, _, doc = call(server.base, "/openapi.json")
    assert status == 200 and "/similar" in doc["paths"]

    n = 40
    for _ in range(n):
        assert call(server.base, f"/recommend?user_id={user}&k=1")[0] == 200
    with urllib.request.urlopen(server.base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    line = next(
        row
        for row in text.splitlines()
        if row.startswith('recsys_requests_total{endpoint="/recommend",method="GET",status="200"}')
    )
    assert float(line.split()[-1]) == n + 3  # every worker's requests, counted once
    assert f'recsys_model_info{{model_version="{small_ckpt.model_version}"' in text


@pytest.fixture(scope="module")
def kind_checkpoints(tmp_path_factory):
    """One tiny checkpoint per kind (the checkerboard of tests/test_models.py)."""
    from model import checkpoint
    from model.interactions import build_dataset
    from model.train import fit
    from tests.test_models import KINDS, checkerboard

    dataset = build_dataset(checkerboard())
    paths = {}
    for kind in KINDS:
        result = fit(dataset.interactions, KINDS[kind], progress=False)
        path = tmp_path_factory.mktemp(kind) / "m.ckpt"
        paths[kind] = checkpoint.save(checkpoint.from_training(result, dataset), path)
    return paths


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_is_served_by_uwsgi(start_uwsgi, kind_checkpoints, kind):
    server = start_uwsgi(kind_checkpoints[kind], RECSYS_PROCESSES="1")
    status, _, model = call(server.base, "/model")
    assert status == 200 and model["kind"] == KINDS[kind].model
    status, _, rec = call(server.base, "/recommend?user_id=u0&k=3")
    assert status == 200 and len(rec["items"]) == 3 and rec["fallback"] is None
    from model import checkpoint
    from service.index import ServingIndex

    local = ServingIndex(checkpoint.load(kind_checkpoints[kind])).recommend("u0", 3)
    assert [i["item_id"] for i in rec["items"]] == local.item_ids  # the worker serves what the model ranks
    status, _, pred = call(server.base, "/predict", {"pairs": [{"user_id": "u0", "item_id": "i1"}] * 2})
    assert status == 200 and 1.0 <= pred["predictions"][0]["rating"] <= 5.0
    status, _, folded = call(server.base, "/recommend", {"history": ["i20", "i21", "i22"], "k": 2})
    assert status == 200 and not {i["item_id"] for i in folded["items"]} & {"i20", "i21", "i22"}
    status, _, sim = call(server.base, "/similar?item_id=i5&k=2")
    assert status == 200 and len(sim["items"]) == 2
