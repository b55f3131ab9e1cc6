"""GET /docs: Swagger UI over /openapi.json with its assets served by the service, rendered by headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest


def test_docs_page_and_assets_come_from_the_service(client):
    assert client.get("/docs").status_code == 308  # to /docs/
    page = client.get("/docs/")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/docs/") for a in assets), assets  # nothing from a CDN
    assert '"url": "/openapi.json"' in html and '"validatorUrl": null' in html  # no call to validator.swagger.io
    for name, kind in [("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")]:
        with client.get(f"/docs/{name}") as asset:  # a file response: closed here, not by the garbage collector
            assert asset.status_code == 200 and kind in asset.content_type and len(asset.data) > 10_000
    missing = client.get("/docs/nothing.js")
    assert missing.status_code == 404 and missing.json["error"]["status"] == 404


def chromium() -> str:
    """The browser, or a skip on a developer machine without it (CI installs it in .ci/run: there it must run)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium) before make test")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it, where this test runs")
    return found


def test_docs_render_in_headless_chromium(start_uwsgi, small_ckpt_path, tmp_path):
    browser = chromium()
    server = start_uwsgi(small_ckpt_path)
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        # Every host but the service's unresolvable: the page renders only if the service serves all it needs.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom",
        f"{server.base}/docs",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    # Swagger UI's rendered operations (its JS fetched /openapi.json and drew one block per path and method).
    paths = re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom)
    assert {"/recommend", "/predict", "/similar"} <= set(paths), dom[-3000:]
    assert paths.count("/recommend") == 2  # GET and POST
    assert "Rating predictions for one pair or a batch" in dom  # a summary from the document
