"""The real uWSGI with the real uwsgi.ini on a free loopback port, over HTTP."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

import pytest


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
    status, _, _ = call(server.base, "/recommend?user_id=1", b"{}", method="POST")
    assert status == 405


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
