"""service/prestart.py, which uwsgi.ini runs before binding: settings uWSGI reads are refused with one line, and
the metrics directory loses only prometheus_client's files."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import pytest

from model import cpus
from service import prestart
from service.config import ConfigError
from tests.conftest import REPO

BASE = {"RECSYS_HOST": "127.0.0.1", "RECSYS_PORT": "8123", "RECSYS_CHECKPOINT": "artifacts/model.ckpt"}


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("RECSYS_HOST", "", "expected an address"),  # uWSGI bound 0.0.0.0
        ("RECSYS_HOST", " 127.0.0.1", "expected an address"),
        ("RECSYS_HOST", "::1", "in brackets"),  # uWSGI bound 255.255.255.255
        ("RECSYS_HOST", "[not-v6]", "not an IPv6 address"),
        ("RECSYS_HOST", "bogus.invalid", "not an IPv4 address or a name that resolves"),
        ("RECSYS_PORT", "abc", "whole number 1..65535"),  # uWSGI took a random port
        ("RECSYS_PORT", "99999", "whole number 1..65535"),
        ("RECSYS_PORT", "", "whole number 1..65535"),
        ("RECSYS_PROCESSES", "0", "whole number >= 1"),  # a master with no workers: requests hung
        ("RECSYS_PROCESSES", "2.5", "whole number >= 1"),
        ("RECSYS_RELOAD_ON_RSS", "-1", "whole number >= 1"),  # ignored without a word
        ("RECSYS_CHECKPOINT", "", "expected a path"),  # silently the default checkpoint
        ("RECSYS_ANN_EF_SEARCH", "99999999999", "<= 100000"),  # ready, then every /recommend a 500
        ("RECSYS_MAX_BODY_BYTES", "100000000", "limit-post"),  # a larger body got no response at all
        ("RECSYS_RELOAD_INTERVAL", "1e10", "<= 86400"),  # the reload thread died of an OverflowError
        ("RECSYS_RELOAD_INTERVAL", "0.000001", "0 \\(off\\) or 0.1 to 86400 seconds"),  # an idle worker at 60% CPU
    ],
)
def test_a_setting_uwsgi_or_the_app_cannot_use_is_refused(name, value, says):
    with pytest.raises(ConfigError, match=f"^{name}=.*{says}"):
        prestart.check({**BASE, name: value})


def test_good_settings_pass():
    prestart.check({**BASE, "RECSYS_HOST": "[::1]", "RECSYS_PROCESSES": "3", "RECSYS_RELOAD_ON_RSS": "2048"})
    prestart.check({**BASE, "RECSYS_HOST": "localhost"})


def test_the_metrics_directory_loses_only_metric_files(tmp_path):
    """``rm -f DIR/*.db`` in a shell deleted any .db file there, followed a planted symlink and ran $(...)."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for name in ("counter_12.db", "histogram_12.db", "gauge_liveall_12.db", "users.db", "notes.txt"):
        (metrics / name).write_text("x")
    prestart.check({**BASE, "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
    assert sorted(p.name for p in metrics.iterdir()) == [prestart.INSTANCE_LOCK, "notes.txt", "users.db"]

    fresh = tmp_path / "new" / "metrics"
    prestart.check({**BASE, "PROMETHEUS_MULTIPROC_DIR": str(fresh)})
    assert fresh.is_dir() and (fresh.stat().st_mode & 0o777) == 0o700

    link = tmp_path / "planted"
    link.symlink_to(metrics)
    with pytest.raises(ConfigError, match="symlink"):
        prestart.check({**BASE, "PROMETHEUS_MULTIPROC_DIR": str(link)})
    odd = tmp_path / "odd$(touch INJECTED)"
    prestart.check({**BASE, "PROMETHEUS_MULTIPROC_DIR": str(odd)})
    assert odd.is_dir() and not (tmp_path / "INJECTED").exists()  # a name, never a command
    with pytest.raises(ConfigError, match="expected a directory"):
        prestart.check({**BASE, "PROMETHEUS_MULTIPROC_DIR": ""})


def test_uwsgi_refuses_an_empty_host_before_binding_and_keeps_other_files(start_uwsgi, small_ckpt_path, tmp_path):
    """The real uWSGI and uwsgi.ini: an empty RECSYS_HOST listened on every interface; now nothing is bound."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "users.db").write_text("not ours")
    bad = start_uwsgi(small_ckpt_path, wait=False, RECSYS_HOST="", PROMETHEUS_MULTIPROC_DIR=str(metrics))
    bad.proc.wait(timeout=60)
    assert bad.proc.returncode != 0
    assert "recsys: refusing to start: RECSYS_HOST='': expected an address" in bad.log()
    assert "bound to" not in bad.log()
    good = start_uwsgi(small_ckpt_path, RECSYS_PROCESSES="1", PROMETHEUS_MULTIPROC_DIR=str(metrics))
    assert good.proc.poll() is None and (metrics / "users.db").read_text() == "not ours"


def test_the_check_imports_no_torch():
    """uWSGI runs it before every start: the package's app (torch, 3 s) is deferred to first use."""
    code = "import sys, service.prestart; print('torch' in sys.modules, 'flask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_a_misspelt_setting_is_named_with_the_likely_one(tmp_path, monkeypatch, capsys):
    for name, value in {**BASE, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "RECSYS_CHEKPOINT": "x.ckpt"}.items():
        monkeypatch.setenv(name, value)
    assert prestart.main() == 0
    err = capsys.readouterr().err
    assert "recsys: warning: RECSYS_CHEKPOINT is not a setting, ignored (did you mean RECSYS_CHECKPOINT?)" in err


def _cgroup(tmp_path, self_lines: list[str], files: dict[str, str]):
    """A fake cgroup mount (``files``: path under it -> content) and a /proc/self/cgroup of ``self_lines``."""
    root = tmp_path / "cgroup"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    root.mkdir(exist_ok=True)
    self_cgroup = tmp_path / "self-cgroup"
    self_cgroup.write_text("\n".join(self_lines) + "\n")
    return root, self_cgroup


@pytest.mark.parametrize(
    ("self_lines", "files", "quota"),
    [
        (["0::/"], {"cpu.max": "max 100000"}, None),  # v2, no limit
        (["0::/"], {"cpu.max": "150000 100000"}, 1.5),  # a container's --cpus=1.5 (cgroup namespace)
        (["0::/app/web"], {"app/cpu.max": "200000 100000", "app/web/cpu.max": "max 100000"}, 2.0),  # a parent's
        (["0::/docker/abc"], {"cpu.max": "300000 100000"}, 3.0),  # own path not under the mount: the mount's
        (["3:cpu,cpuacct:/", "0::/"], {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        (["3:cpu,cpuacct:/x"], {"cpu/x/cpu.cfs_quota_us": "50000", "cpu/x/cpu.cfs_period_us": "100000"}, 0.5),  # v1
        (["0::/"], {"cpu.max": "garbage"}, None),  # unreadable: no quota, not a crash
        ([], {}, None),
    ],
)
def test_the_cgroup_cpu_quota_is_read_from_v1_and_v2(tmp_path, self_lines, files, quota):
    root, self_cgroup = _cgroup(tmp_path, self_lines, files)
    assert cpus.cgroup_cpu_quota(root, self_cgroup) == quota


def test_the_default_worker_count_is_the_usable_cpus(tmp_path):
    """Affinity first, then the quota rounded up (1.5 CPUs: 2 workers); never 0."""
    mask = len(os.sched_getaffinity(0))
    assert cpus.available_cpus(tmp_path / "none", tmp_path / "none") == mask
    root, self_cgroup = _cgroup(tmp_path, ["0::/"], {"cpu.max": "150000 100000"})
    assert cpus.available_cpus(root, self_cgroup) == min(mask, 2)
    (root / "cpu.max").write_text("10000 100000")
    assert cpus.available_cpus(root, self_cgroup) == 1


def test_uwsgi_starts_one_worker_per_cpu_it_may_use(start_uwsgi, small_ckpt_path):
    """uWSGI's own %k counted the machine's cores whatever the affinity (or a container's quota): under a
    one-CPU mask it started a worker per core of the machine."""
    cpu = min(os.sched_getaffinity(0))
    server = start_uwsgi(small_ckpt_path, affinity={cpu})
    assert server.log().count("spawned uWSGI worker") == 1
    with urllib.request.urlopen(server.base + "/readyz", timeout=30) as resp:
        assert resp.status == 200
    everywhere = start_uwsgi(small_ckpt_path)
    assert everywhere.log().count("spawned uWSGI worker") == cpus.available_cpus()


def test_a_metrics_directory_others_can_write_is_refused(tmp_path):
    """Mode 777 was accepted: another user could drop a junk .db there, and /metrics then failed on every scrape."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match=r"writable by other users \(0o777\); chmod go-w"):
        prestart.check({**BASE, "PROMETHEUS_MULTIPROC_DIR": str(shared)})
    shared.chmod(0o755)
    prestart.check({**BASE, "PROMETHEUS_MULTIPROC_DIR": str(shared)})


def test_a_directory_a_running_instance_holds_is_refused_and_kept(tmp_path):
    """A second instance given the first one's metrics directory deleted its live metric files."""
    metrics = tmp_path / "metrics"
    prestart.check({**BASE, "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
    (metrics / "counter_7.db").write_text("live")
    hold = "import sys, service.prestart as p; p.hold_metrics_dir(sys.argv[1]); print(1, flush=True); sys.stdin.read()"
    worker = subprocess.Popen(  # a worker of a running instance: holds the lock until it exits
        [sys.executable, "-c", hold, str(metrics)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout.readline().strip() == "1"
        with pytest.raises(ConfigError, match="in use by another running instance"):
            prestart.check({**BASE, "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
        assert (metrics / "counter_7.db").read_text() == "live"
    finally:
        worker.communicate("", timeout=30)
    prestart.check({**BASE, "PROMETHEUS_MULTIPROC_DIR": str(metrics)})  # its workers gone: the next start cleans
    assert not (metrics / "counter_7.db").exists()


def test_uwsgi_refuses_the_metrics_directory_of_a_running_instance(start_uwsgi, small_ckpt_path, tmp_path):
    metrics = tmp_path / "metrics"
    first = start_uwsgi(small_ckpt_path, RECSYS_PROCESSES="1", PROMETHEUS_MULTIPROC_DIR=str(metrics))
    with urllib.request.urlopen(first.base + "/recommend?user_id=1&k=2", timeout=30) as resp:
        assert resp.status == 200
    files = sorted(p.name for p in metrics.iterdir() if p.name.endswith(".db"))
    assert files
    second = start_uwsgi(small_ckpt_path, wait=False, RECSYS_PROCESSES="1", PROMETHEUS_MULTIPROC_DIR=str(metrics))
    second.proc.wait(timeout=60)
    assert second.proc.returncode != 0
    assert "refusing to start: PROMETHEUS_MULTIPROC_DIR=" in second.log() and "another running instance" in second.log()
    assert sorted(p.name for p in metrics.iterdir() if p.name.endswith(".db")) == files
    with urllib.request.urlopen(first.base + "/metrics", timeout=30) as resp:
        assert b'recsys_requests_total{endpoint="/recommend"' in resp.read()
