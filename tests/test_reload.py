"""Hot reload: a replaced checkpoint is served without a failed request; a bad one is refused."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from model import checkpoint
from model.train import TrainConfig, fit
from service.state import ModelHolder


@pytest.fixture(scope="module")
def other_ckpt_path(tmp_path_factory, small_dataset) -> Path:
    """A second model of the same data (another seed): another model_version."""
    result = fit(small_dataset.interactions, TrainConfig(dim=8, epochs=3, seed=99), progress=False)
    path = tmp_path_factory.mktemp("other") / "model.ckpt"
    checkpoint.save(checkpoint.from_training(result, small_dataset), path)
    return path


def replace_atomically(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".incoming")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_holder_swaps_on_change_and_keeps_old_on_bad_file(tmp_path, small_ckpt_path, other_ckpt_path, small_ckpt):
    live = tmp_path / "live.ckpt"
    shutil.copyfile(small_ckpt_path, live)
    holder = ModelHolder(live)
    assert holder.version == small_ckpt.model_version and not holder.check()
    (tmp_path / "bad").write_bytes(b"not a checkpoint")
    os.replace(tmp_path / "bad", live)
    assert not holder.check()
    assert holder.version == small_ckpt.model_version and holder.state.index is not None
    replace_atomically(other_ckpt_path, live)
    assert holder.check()
    assert holder.version == checkpoint.load(other_ckpt_path).model_version


def test_missing_model_is_picked_up_when_it_appears(tmp_path, small_ckpt_path, small_ckpt):
    live = tmp_path / "live.ckpt"
    holder = ModelHolder(live)
    assert holder.state.index is None
    replace_atomically(small_ckpt_path, live)
    assert holder.check() and holder.version == small_ckpt.model_version


def test_a_vanished_file_is_said_once_and_a_pointer_back_to_the_served_file_loads_nothing(
    tmp_path, small_ckpt_path, other_ckpt_path, small_ckpt, caplog
):
    """Found by the operator review: a deleted file (a store's current left dangling) was silent (no log line, no
    failed reload counted) while /readyz said all was well; and pointing back at the file being served, after a
    refused one, loaded it again in full (seconds and memory at a million items)."""
    live = tmp_path / "live.ckpt"
    shutil.copyfile(small_ckpt_path, live)
    outcomes = []
    holder = ModelHolder(live, on_change=lambda state, ok: outcomes.append(ok))
    served = holder.state
    os.rename(live, tmp_path / "aside.ckpt")
    assert not holder.check() and not holder.check() and holder.state is served
    assert outcomes == [None, False], "one failed reload for the vanished file, not one per poll"
    assert "no such checkpoint file" in holder.refused  # /readyz says so (found by the operator review)
    assert (
        caplog.text.count("no such checkpoint file") == 1 and f"still serving {small_ckpt.model_version}" in caplog.text
    )
    os.rename(tmp_path / "aside.ckpt", live)  # the same file back: nothing to load
    assert not holder.check() and holder.state is served and outcomes == [None, False] and holder.refused is None
    (tmp_path / "bad").write_bytes(b"not a checkpoint")
    os.replace(tmp_path / "bad", live)
    assert not holder.check() and outcomes == [None, False, False] and "not a torch.save zip" in holder.refused
    replace_atomically(other_ckpt_path, live)
    assert holder.check() and holder.version == checkpoint.load(other_ckpt_path).model_version
    assert holder.refused is None


def test_the_access_log_names_the_model_that_answered_not_the_newest(app, other_ckpt_path, caplog):
    """Found by the operator review: around a reload, 9 of 44,734 access lines named the other version: the line
    took the holder's version when it was written, after the request had been answered by the one before."""
    holder = app.extensions["recsys"]
    answering = holder.state
    newer = ModelHolder(other_ckpt_path).state
    recommend = answering.index.recommend

    def reload_meanwhile(*args, **kwargs):
        holder.state = newer  # the watcher swaps the model while this request is being answered
        return recommend(*args, **kwargs)

    answering.index.recommend = reload_meanwhile
    try:
        with caplog.at_level("INFO", logger="recsys.access"):
            body = app.test_client().get("/recommend?user_id=u1&k=3").get_json()
    finally:
        del answering.index.recommend
        holder.state = answering
    line = json.loads([r.getMessage() for r in caplog.records if r.name == "recsys.access"][-1])
    assert body["model_version"] == line["model_version"] == answering.index.model_version != newer.index.model_version


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_replacing_the_checkpoint_under_load_fails_no_request(start_uwsgi, tmp_path, small_ckpt_path, other_ckpt_path):
    live = tmp_path / "live.ckpt"
    shutil.copyfile(small_ckpt_path, live)
    server = start_uwsgi(live, RECSYS_RELOAD_INTERVAL="0.2")
    old, new = checkpoint.load(small_ckpt_path).model_version, checkpoint.load(other_ckpt_path).model_version
    user = checkpoint.load(small_ckpt_path).user_ids[0]
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def load_loop():
        while not stop.is_set():
            try:
                status, body = _get(f"{server.base}/recommend?user_id={user}&k=5")
                results.append((status, body.get("model_version")))
            except OSError as exc:  # a failed connection counts as a failed request
                results.append((0, repr(exc)))

    threads = [threading.Thread(target=load_loop) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    (tmp_path / "garbage").write_bytes(b"\x80\x02garbage")
    os.replace(tmp_path / "garbage", live)  # a bad checkpoint first: refused, old model keeps serving
    time.sleep(1.0)
    assert _get(server.base + "/readyz")[1]["model_version"] == old
    replace_atomically(other_ckpt_path, live)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and sum(v == new for _, v in results[-20:]) < 20:
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    failed = [r for r in results if r[0] != 200]
    versions = [v for _, v in results]
    assert not failed, failed[:5]
    assert len(results) > 100 and versions[0] == old and versions[-1] == new
    assert set(versions) == {old, new}
    assert "reload refused" in server.log()


def test_a_wrongly_typed_checkpoint_is_refused_at_start_up_and_on_reload(tmp_path, small_ckpt_path, small_ckpt):
    """Before: a field of the wrong type (seen_indptr as a list) raised AttributeError out of create_app, and
    on reload it was neither counted nor retried."""
    from service import create_app, metrics
    from tests.test_checkpoint import _tampered

    live = tmp_path / "live.ckpt"
    _tampered(small_ckpt_path, live, seen_indptr=lambda t: t.tolist())
    client = create_app({"CHECKPOINT": str(live), "TESTING": True, "RELOAD_INTERVAL": 0}).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "seen_indptr is a list" in ready.get_json()["reason"]

    replace_atomically(small_ckpt_path, live)
    app = create_app({"CHECKPOINT": str(live), "TESTING": True, "RELOAD_INTERVAL": 0})
    holder, client = app.extensions["recsys"], app.test_client()
    failed = metrics.RELOADS.labels(result="failed")._value.get()
    _tampered(small_ckpt_path, tmp_path / "incoming", seen_indptr=lambda t: t.tolist())
    os.replace(tmp_path / "incoming", live)
    assert not holder.check()  # refused, counted, the old model keeps serving
    assert metrics.RELOADS.labels(result="failed")._value.get() == failed + 1
    ready = client.get("/readyz").get_json()  # ready, and says which file it refused (found by the operator review)
    assert ready["model_version"] == small_ckpt.model_version and "seen_indptr is a list" in ready["reload_refused"]
    assert client.get(f"/recommend?user_id={small_ckpt.user_ids[0]}&k=3").status_code == 200
    replace_atomically(small_ckpt_path, live)  # the next change is tried again
    assert holder.check() and holder.version == small_ckpt.model_version


def test_a_first_load_is_not_counted_as_a_reload_and_latency_is_by_method(small_ckpt_path, small_ckpt):
    """Found by the operator review: reloads_total{result="ok"} was 2 right after a start (one per worker) and grew
    with every respawn, and GET and POST /recommend shared one latency histogram (a list, and a fold-in)."""
    from service import create_app, metrics

    before = {r: metrics.RELOADS.labels(result=r)._value.get() for r in ("ok", "failed")}
    client = create_app({"CHECKPOINT": str(small_ckpt_path), "TESTING": True, "RELOAD_INTERVAL": 0}).test_client()
    assert {r: metrics.RELOADS.labels(result=r)._value.get() for r in ("ok", "failed")} == before
    user, item = small_ckpt.user_ids[0], small_ckpt.item_ids[0]
    assert client.get(f"/recommend?user_id={user}&k=3").status_code == 200
    assert client.post("/recommend", json={"history": [item], "k": 3}).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    for method in ("GET", "POST"):
        assert f'recsys_request_duration_seconds_count{{endpoint="/recommend",method="{method}"}}' in text
