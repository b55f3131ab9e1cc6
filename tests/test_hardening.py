"""Bad input over HTTP against the real uWSGI (JSON 4xx naming the field), and the security defaults."""

from __future__ import annotations

import http.client
import json
import re
import socket
import urllib.parse
import urllib.request

import pytest

from service.schemas import MAX_ID_LENGTH, MAX_QUERY_LIST
from tests.conftest import REPO


@pytest.fixture(scope="module")
def server(tmp_path_factory, small_ckpt_path):
    from tests.conftest import UwsgiServer

    srv = UwsgiServer(small_ckpt_path, tmp_path_factory.mktemp("hard") / "uwsgi.log", RECSYS_ACCESS_LOG="0")
    srv.wait_ready()
    yield srv
    srv.stop()


def send(server, method: str, path: str, body: object | bytes | None = None):
    """(status, headers, parsed JSON body) over one loopback connection."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    assert resp.getheader("Content-Type") == "application/json", raw[:200]
    return resp.status, resp, json.loads(raw)


def q(**params) -> str:
    return urllib.parse.urlencode(params, doseq=True)


LONG = "é" * (MAX_ID_LENGTH + 1)  # 257 characters, 514 bytes of UTF-8
NON_ASCII = "ユーザー-Ünïcødé-👤"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("GET", "/recommend?" + q(user_id=LONG), None, 422, "user_id"),
        ("GET", "/similar?" + q(item_id=LONG), None, 422, "item_id"),
        ("POST", "/predict", {"user_id": "u1", "item_id": LONG}, 422, "item_id"),
        ("POST", "/predict", {"pairs": [{"user_id": LONG, "item_id": "i1"}]}, 422, "pairs.0.user_id"),
        ("POST", "/recommend", {"history": [LONG]}, 422, "history.0.item_id"),
        ("GET", "/recommend?" + q(user_id="u1", k=1001), None, 422, "k"),
        ("GET", "/similar?" + q(item_id="i1", k=0), None, 422, "k"),
        ("POST", "/recommend", {"history": ["i1"], "k": 1001}, 422, "k"),
        ("POST", "/recommend", {"history": ["i1"], "k": "5"}, 422, "k"),  # JSON bodies are not coerced
        ("POST", "/recommend", {"history": [{"item_id": "i1", "rating": False}]}, 422, "history.0.rating"),
        # Python's json reads NaN and 1e999 (infinity): a rating must be finite, else the answer was 200 and empty
        ("POST", "/recommend", b'{"history": [{"item_id": "i1", "rating": NaN}]}', 422, "history.0.rating"),
        ("POST", "/recommend", b'{"history": [{"item_id": "i1", "rating": 1e999}]}', 422, "history.0.rating"),
        ("POST", "/recommend", {"history": ["i1"] * 10_001}, 422, "history"),
        ("GET", "/recommend?" + q(user_id="u1", exclude=["i1"] * (MAX_QUERY_LIST + 1)), None, 422, "exclude"),
        ("GET", "/recommend?" + q(user_id=["u1", "u2"]), None, 422, "user_id"),  # which one? refused
        ("GET", "/recommend?user_id=u1&k=2&&=x", None, 422, "query"),  # a value for no parameter
        ("POST", "/recommend", b"[" * 100_000 + b"]" * 100_000, 400, "body"),  # the decoder's recursion: was a 500
        ("POST", "/predict", b"[" * 100_000 + b"]" * 100_000, 400, "body"),
        # A union's member ("function-after[...]", "list[...]") is pydantic's, not a field the client sent.
        ("POST", "/recommend", {"history": ["i1"], "filter": {"year": 1.5}}, 422, "filter.year"),
        ("POST", "/recommend", {"history": ["i1"], "filter": {"genres": [None]}}, 422, "filter.genres.0"),
        ("POST", "/recommend", {"history": ["i1"], "genres[0]": "x"}, 422, "genres[0]"),  # a client's key that
        ("POST", "/recommend", {"history": [{"item_id": "i1", "x[0]": 1}]}, 422, "history.0.x[0]"),  # looks like one
    ],
)
def test_bad_input_is_json_4xx_naming_the_field(server, method, path, body, status, field):
    got, _, err = send(server, method, path, body)
    assert got == status and err["error"]["status"] == status
    assert field in [d["field"] for d in err["error"]["details"]], err


def test_an_id_too_long_or_empty_is_named_in_characters(server):
    """Pydantic's reason for the id constraint read "Value should have at most 256 items after validation"."""
    _, _, err = send(server, "GET", "/recommend?" + q(user_id=LONG))
    assert err["error"]["details"] == [{"field": "user_id", "reason": "should have at most 256 characters, not 257"}]
    _, _, err = send(server, "POST", "/predict", {"user_id": "", "item_id": "i1"})
    assert err["error"]["details"] == [{"field": "user_id", "reason": "must not be empty"}]


def test_made_up_methods_do_not_grow_the_metrics(server):
    """Each unknown method token was a new ``method`` label: one client grew /metrics by 2,000 series in 1.4 s."""
    for n in range(20):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(f"M{n:05d}XYZ /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert b" 405 " in b"".join(iter(lambda: sock.recv(65536), b"")).split(b"\r\n")[0] + b" "
    with urllib.request.urlopen(server.base + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    assert "XYZ" not in text and 'method="other"' in text


def test_non_ascii_ids_are_ordinary_ids(server):
    status, _, body = send(server, "GET", "/recommend?" + q(user_id=NON_ASCII, k=2))
    assert status == 200 and body["user_id"] == NON_ASCII and body["fallback"] == "popular"
    status, _, body = send(server, "POST", "/predict", {"user_id": NON_ASCII, "item_id": "i1"})
    assert status == 200 and body["user_id"] == NON_ASCII and body["fallback"] == "baseline"
    status, _, body = send(server, "GET", "/similar?" + q(item_id=NON_ASCII))
    assert status == 404 and body["error"]["details"][0]["field"] == "item_id"


def test_raw_non_utf8_bytes_in_the_query_are_ids_not_a_500(server):
    """A client that sends bytes unencoded (not UTF-8): they stay percent-encoded, as werkzeug leaves invalid
    percent-escapes; the id is then simply unknown (it raised UnicodeDecodeError: a 500)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /recommend?user_id=\xff\xfe&k=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200", raw[:300]
    answer = json.loads(body)
    assert answer["user_id"] == "%FF%FE" and answer["fallback"] == "popular"


def test_a_request_id_ending_in_a_line_break_is_replaced_not_a_500(server):
    """Found by the security review: ``X-Request-ID: abc\\n`` passed the pattern (``$`` matches before a final line
    break), and setting it on the response raised (a 500, two tracebacks, no access-log line)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: abc\n\r\nConnection: close\r\n\r\n")
        raw = b"".join(iter(lambda: sock.recv(65536), b""))
    head = raw.partition(b"\r\n\r\n")[0].decode()
    assert head.split(" ")[1] == "200", raw[:300]
    assert re.search(r"(?im)^X-Request-ID: [0-9a-f]{32}$", head), head


def test_a_chunked_body_is_411_not_an_empty_body(server):
    """uWSGI's http-socket hands the app no chunked body: it was a 400 "empty body" (the security review)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        body = b'{"user_id": "u1", "item_id": "i1"}'
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        sock.sendall(head + b"Connection: close\r\n\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        raw = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, answer = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"411", raw[:300]
    assert json.loads(answer)["error"]["code"] == "length_required"


def test_a_request_line_uwsgi_cannot_parse_gets_a_400(server):
    """``GARBAGE`` reached the app without REQUEST_METHOD: werkzeug's KeyError, a traceback in the log per request
    and the connection closed without an answer (the security review)."""
    for line in (b"GARBAGE", b"GET"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(line + b"\r\n\r\n")
            raw = b"".join(iter(lambda: sock.recv(65536), b""))
        head, _, answer = raw.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400", raw[:300]
        assert json.loads(answer)["error"]["code"] == "bad_request" and b"X-Request-ID: " in head
    assert "KeyError" not in server.log()


def test_many_invalid_entries_cost_linear_time(app):
    """30,000 invalid entries: the details were de-duplicated by a list scan (18 s for one request in review)."""
    import time

    body = {name: [[k] for k in range(10_000)] for name in ("history", "exclude", "items")}
    started = time.perf_counter()
    response = app.test_client().post("/recommend", json=body)
    assert response.status_code == 422 and len(response.get_json()["error"]["details"]) >= 20_000
    assert time.perf_counter() - started < 5.0  # 0.4 s before the dedupe, 18 s with the quadratic one


def test_oversized_history_body_is_413_json(server):
    body = b'{"history": [' + b'"i1",' * 2_000_000 + b'"i1"]}'  # ~10 MB, over the 8 MiB default
    status, _, err = send(server, "POST", "/recommend", body)
    assert status == 413 and err["error"]["details"][0]["field"] == "body"


def test_a_query_uwsgi_dropped_is_414_json_not_a_422_for_a_missing_field(server):
    """uWSGI's 64 KiB buffer carries the query twice: from about 33,000 bytes it drops QUERY_STRING, and the app
    answered 422 "user_id: Field required" to a request that had one (CI found it through the fuzz test)."""
    long_list = ",".join(["i1"] * 13_000)  # 38,999 bytes
    for path in (f"/recommend?user_id=u1&exclude={long_list}", f"/similar?item_id=i1&k=3&x={long_list}"):
        status, _, err = send(server, "GET", path)
        assert status == 414 and err["error"]["code"] == "uri_too_long", err
        assert err["error"]["details"][0]["field"] == "query" and "32 KiB" in err["error"]["details"][0]["reason"]
    status, _, _ = send(server, "GET", "/recommend?user_id=u1&exclude=" + ",".join(["i1"] * 900))  # fits: as before
    assert status == 200


def test_wrong_method_names_the_allowed_ones(server):
    status, resp, err = send(server, "DELETE", "/predict")
    assert status == 405 and err["error"]["code"] == "method_not_allowed"
    assert "POST" in resp.getheader("Allow")


# --- security defaults -----------------------------------------------------------------------------


def test_no_endpoint_changes_state(app):
    """Every route only reads: POST /recommend and POST /predict compute answers and store nothing.

    A state-changing endpoint (a reload trigger, say) would need a token from the environment, compared
    with hmac.compare_digest, and be off when the variable is unset; none exists, and this list makes
    adding one a deliberate change.
    """
    routes = {(m, r.rule) for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}}
    assert routes == {
        ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/model"), ("GET", "/recommend"), ("POST", "/recommend"),
        ("GET", "/similar"), ("POST", "/predict"), ("GET", "/metrics"), ("GET", "/openapi.json"),
        ("GET", "/static/<path:filename>"), ("GET", "/docs/"), ("GET", "/docs/<path:path>"),
    }  # fmt: skip


def _ini() -> list[tuple[str, str]]:
    """(option, value) pairs in order (uwsgi.ini repeats keys, so configparser cannot read it)."""
    lines = (REPO / "uwsgi.ini").read_text().splitlines()
    return [tuple(p.strip() for p in ln.split("=", 1)) for ln in lines if "=" in ln and not ln.startswith(";")]


def test_uwsgi_exposes_only_http_on_loopback_by_default_and_limits_bodies():
    options = _ini()
    names = [k for k, _ in options]
    assert ("set-placeholder", "host=127.0.0.1") in options and ("http-socket", "%(host):%(port)") in options
    # Never uWSGI's own protocol, nor its stats server, on a socket.
    assert not {"socket", "uwsgi-socket", "shared-socket", "stats", "stats-server", "http"} & set(names)
    limit_post = int(dict(options)["limit-post"])
    from service.config import DEFAULTS, SETTINGS

    assert limit_post > DEFAULTS["MAX_BODY_BYTES"] > 0  # Flask answers 413 first; uWSGI is the backstop
    assert SETTINGS["MAX_BODY_BYTES"].maximum == limit_post  # a larger setting could never answer its 413


def test_docker_image_runs_as_a_non_root_user():
    dockerfile = (REPO / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", final_stage, flags=re.M)
    assert users and users[-1] not in {"root", "0"}
    # The code and the venv stay root's: the runtime user owns artifacts/ alone (no --chown on the copy of /app).
    copies = re.findall(r"^COPY\s.*$", final_stage, flags=re.M)
    assert copies and not any("--chown" in line for line in copies), copies
    assert re.search(r"^RUN install -d -o recsys -g recsys /app/artifacts$", final_stage, flags=re.M)
