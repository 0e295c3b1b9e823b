"""Config loading: defaults, durations, and errors that name the file, the field path and
what was expected — never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from meshproxy.config.load import ConfigError, load
from meshproxy.config.model import Config, parse_duration, workload_from_pod


def write(tmp_path, text: str):
    p = tmp_path / "mesh.yaml"
    p.write_text(text)
    return p


def test_defaults_follow_istio():
    cfg = Config()
    assert (cfg.outbound.port, cfg.inbound.port) == (15001, 15006)
    assert (cfg.admin.address, cfg.admin.port) == ("127.0.0.1", 15000)
    assert (cfg.health.port, cfg.prometheus.port) == (15021, 15090)
    assert (cfg.proxy.uid, cfg.proxy.gid) == (1337, 1337)
    assert cfg.drain.duration == 5.0
    assert cfg.inbound.passthrough_source == "127.0.0.6"


def test_empty_file_is_defaults(tmp_path):
    assert load(write(tmp_path, "")) == Config()


def test_node_identity_from_downward_api(monkeypatch):
    monkeypatch.setenv("POD_NAME", "reviews-v1-5b7c8d9f4-abcde")
    monkeypatch.setenv("POD_NAMESPACE", "bookinfo")
    monkeypatch.setenv("SERVICE_ACCOUNT", "reviews")
    monkeypatch.setenv("INSTANCE_IP", "198.18.0.7")
    cfg = Config()
    assert cfg.node.workload == "reviews-v1"
    assert (cfg.node.pod_namespace, cfg.node.service_account, cfg.node.instance_ip) == (
        "bookinfo", "reviews", "198.18.0.7")


@pytest.mark.parametrize("pod, workload", [
    ("reviews-v1-5b7c8d9f4-abcde", "reviews-v1"),
    ("db-0", "db-0"),
    ("job-x7k2p", "job"),
    ("plain", "plain"),
])
def test_workload_from_pod(pod, workload):
    assert workload_from_pod(pod) == workload


@pytest.mark.parametrize("text, seconds", [("250ms", 0.25), ("5s", 5), ("2m", 120), ("1h", 3600),
                                           (3, 3.0), ("1.5s", 1.5), ("10", 10.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 parsecs", "-1s", True, -2, "s"])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("text, path, expected", [
    ("listeners:\n  - name: a\n    port: abc\n    upstream: 1.2.3.4:80\n", "listeners[0].port", "expected a valid integer"),
    ("listeners:\n  - name: a\n    port: 70000\n    upstream: 1.2.3.4:80\n", "listeners[0].port", "65535"),
    ("listeners:\n  - name: a\n    port: 80\n    upstream: nowhere\n", "listeners[0].upstream", "host:port"),
    ("listeners:\n  - name: a\n    port: 80\n", "listeners[0].upstream", "required field is missing"),
    ("tcp:\n  idle_timeout: forever\n", "tcp.idle_timeout", "expected a duration"),
    ("admin:\n  address: localhostt\n", "admin.address", "expected an IP address"),
    ("inbound:\n  prot: 1\n", "inbound.prot", "unknown field"),
    ("log:\n  level: loud\n", "log.level", "expected one of"),
    ("listeners:\n  - {name: a, port: 1, upstream: '1.1.1.1:1'}\n  - {name: a, port: 2, upstream: '1.1.1.1:1'}\n",
     "listeners[1].name", "duplicate"),
])
def test_errors_name_file_path_and_expectation(tmp_path, text, path, expected):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: {path}: "), msg
    assert expected in msg


def test_yaml_syntax_error_has_line(tmp_path):
    p = write(tmp_path, "admin:\n  port: [1,\n")
    with pytest.raises(ConfigError, match=r"invalid YAML: line \d+, column \d+"):
        load(p)


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load(write(tmp_path, "- 1\n- 2\n"))


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        load("/nonexistent/mesh.yaml")


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "meshproxy", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def test_validate_cli_reports_without_traceback(tmp_path):
    p = write(tmp_path, "tcp:\n  connect_timeout: soon\n")
    proc = run_cli("validate", str(p))
    assert proc.returncode == 2
    assert f"{p}: tcp.connect_timeout: expected a duration" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_cli_accepts_good_file(tmp_path):
    p = write(tmp_path, "listeners:\n  - {name: web, port: 9000, upstream: '127.0.0.1:8080'}\n")
    proc = run_cli("validate", str(p))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_run_with_bad_config_from_env_exits_2(tmp_path):
    p = write(tmp_path, "outbound: {port: -1}\n")
    proc = run_cli("run", env={"MESHPROXY_CONFIG": str(p)})
    assert proc.returncode == 2
    assert f"{p}: outbound.port" in proc.stderr
    assert "Traceback" not in proc.stderr
