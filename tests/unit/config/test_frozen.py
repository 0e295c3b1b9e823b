"""The compiled config: a child process validates, the sidecar gets frozen records that read
exactly like the pydantic models (attributes, derived properties, equality, dump)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from meshproxy.config.frozen import CompileError, Record, compile_config, dump, fields_of, thaw
from meshproxy.config.load import load

RICH = {
    "node": {"pod_name": "reviews-v1-5b7c8d9f4-abcde", "pod_namespace": "bookinfo"},
    "listeners": [{"name": "web", "port": 18080, "protocol": "http", "upstream": "[::1]:8080"}],
    "clusters": [{"name": "ratings", "endpoints": ["198.19.0.10:9080", "198.19.0.11:9080"], "protocol": "http1"}],
    "routes": [
        {"name": "r1", "match": {"path": {"prefix": "/ratings"}, "headers": [{"name": "x-v", "exact": "2"}]},
         "cluster": "ratings", "timeout": "250ms"},
        {"name": "split", "weighted_clusters": [{"cluster": "ratings", "weight": 100}]},
    ],
    "reload": {"interval": "2s"},
    "security": {"authorization_policies": [
        {"name": "deny-admin", "action": "DENY", "rules": [
            {"from": [{"principals": ["*/sa/attacker"]}], "to": [{"paths": ["/admin*"], "methods": ["POST"]}]}]},
    ]},
}


@pytest.fixture
def rich_file(tmp_path):
    p = tmp_path / "rich.yaml"
    p.write_text(yaml.safe_dump(RICH))
    return p


def test_compiled_config_reads_like_the_validated_one(rich_file):
    frozen, model = compile_config(str(rich_file)), load(rich_file)
    assert dump(frozen) == model.model_dump(mode="json")
    assert fields_of(frozen) == fields_of(model)
    assert fields_of(frozen.security) == fields_of(model.security)
    # derived properties come along
    assert frozen.node.workload == model.node.workload == "reviews-v1"
    assert frozen.listeners[0].upstream_addr == ("::1", 8080)
    assert frozen.security.tls.enabled is False
    assert frozen.routes[0].timeout == 0.25
    assert frozen.security.authorization_policies[0].rules[0].from_[0].principals == ["*/sa/attacker"]
    assert not hasattr(frozen, "model_dump")  # a plain record, not a pydantic model


def test_records_are_frozen_comparable_and_hashable(rich_file):
    a, b = compile_config(str(rich_file)), compile_config(str(rich_file))
    assert isinstance(a, Record) and a == b and hash(a) == hash(b)
    assert a.routes[0] != a.routes[1]
    with pytest.raises(AttributeError, match="frozen"):
        a.reload = None
    assert "Cluster(name='ratings'" in repr(a.clusters[0])


def test_defaults_compile_without_a_file():
    assert dump(compile_config(None)) == load(None).model_dump(mode="json")


def test_a_bad_file_is_a_config_error_naming_file_and_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("listeners:\n  - {name: x, port: 99999, upstream: 'a:1'}\n")
    with pytest.raises(CompileError) as e:
        compile_config(str(p))
    assert e.value.config_error
    assert str(e.value) == f"{p}: listeners[0].port: expected less than or equal to 65535, got 99999"


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(CompileError) as e:
        compile_config(str(tmp_path / "nope.yaml"))
    assert e.value.config_error and "nope.yaml" in str(e.value)


def test_compiler_cli_prints_tagged_json(rich_file):
    out = subprocess.run([sys.executable, "-m", "meshproxy.config.compile", str(rich_file)],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert data["$model"] == "Config" and data["clusters"][0]["$model"] == "Cluster"
    assert thaw(data) == compile_config(str(rich_file))


def test_thaw_keeps_plain_dicts_and_lists():
    v = thaw({"$model": "Thing", "labels": {"a": "1"}, "items": [{"$model": "Item", "n": 1}]})
    assert v.labels == {"a": "1"} and v.items[0].n == 1 and type(v).__name__ == "Thing"


def test_compiles_when_sys_executable_is_not_executable_for_us(rich_file, monkeypatch, tmp_path):
    # as uid 1337 a venv's python link may point into root's private home: fall back to /proc/self/exe
    fake = tmp_path / "python3"
    fake.write_text("")
    fake.chmod(0o644)
    monkeypatch.setattr(sys, "executable", str(fake))
    assert dump(compile_config(str(rich_file))) == load(rich_file).model_dump(mode="json")
