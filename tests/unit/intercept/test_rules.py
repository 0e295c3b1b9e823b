"""Golden and property tests for the pure rule renderer (meshproxy.intercept.rules).

The golden files are the exact text handed to iptables-restore; any rule change
fails here until the goldens are regenerated on purpose:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/intercept/test_rules.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshproxy.intercept import rules
from meshproxy.intercept.cli import render_all
from meshproxy.intercept.rules import ConfigError, InterceptConfig, render

GOLDEN = Path(__file__).parent / "golden"
DEFAULT = InterceptConfig()

# name -> (config, family); family None = both families as `iptables print` shows them.
CASES = {
    "defaults-v4": (DEFAULT, 4),
    "defaults-v6": (DEFAULT, 6),
    "include-inbound-ports": (DEFAULT.replace(include_inbound_ports="8080, 9090"), None),
    "no-inbound": (DEFAULT.replace(include_inbound_ports=""), 4),
    "exclude-outbound": (DEFAULT.replace(exclude_outbound_cidrs="10.0.0.0/8,fd00::/8,192.168.1.7",
                                         exclude_outbound_ports="3306,5432"), None),
    "include-outbound-cidrs": (DEFAULT.replace(include_outbound_cidrs="10.96.0.0/12,198.19.0.0/16,2001:db8::/32"),
                               None),
    "include-loopback": (DEFAULT.replace(include_outbound_cidrs="127.0.0.0/8,10.0.0.0/8"), 4),
    "no-ipv6": (DEFAULT.replace(ipv6=False, proxy_uid=2000, proxy_gid=2001, inbound_port=16006,
                                outbound_port=16001, exclude_inbound_ports=""), None),
}


def _rendered(cfg: InterceptConfig, family: int | None) -> str:
    return render_all(cfg) if family is None else render(cfg, family)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    text = _rendered(*CASES[name])
    path = GOLDEN / f"{name}.rules"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing {path}: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} changed: review the diff, then regenerate with UPDATE_GOLDEN=1"


def test_no_stale_goldens():
    assert {p.stem for p in GOLDEN.glob("*.rules")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_rule_is_tagged_and_every_chain_declared(name):
    cfg, family = CASES[name]
    for fam in ([family] if family else rules.families(cfg)):
        lines = render(cfg, fam).splitlines()
        assert lines[0] == "*nat" and lines[-1] == "COMMIT"
        assert [line for line in lines if line.startswith(":")] == [f":{c} - [0:0]" for c in rules.CHAINS]
        body = [line for line in lines if line.startswith("-")]
        assert body and all(line.startswith("-A ") for line in body)
        assert all(f"-m comment --comment {rules.COMMENT} -j " in line for line in body)


def _chain(text: str, chain: str) -> list[str]:
    prefix = f"-A {chain} "
    return [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]


def test_default_semantics_v4():
    text = render(DEFAULT, 4)
    tag = f"-m comment --comment {rules.COMMENT}"
    assert _chain(text, "PREROUTING") == [f"-p tcp {tag} -j MESH_INBOUND"]
    assert _chain(text, "OUTPUT") == [f"-p tcp {tag} -j MESH_OUTPUT"]
    assert _chain(text, "MESH_IN_REDIRECT") == [f"-p tcp {tag} -j REDIRECT --to-ports 15006"]
    assert _chain(text, "MESH_REDIRECT") == [f"-p tcp {tag} -j REDIRECT --to-ports 15001"]
    inbound = _chain(text, "MESH_INBOUND")
    assert [r.split("--dport ")[1].split()[0] for r in inbound[:-1]] == ["15090", "15021", "15020"]
    assert inbound[-1].endswith("-j MESH_IN_REDIRECT")
    output = _chain(text, "MESH_OUTPUT")
    assert output[0].startswith("-s 127.0.0.6/32 -o lo ") and output[0].endswith("-j RETURN")
    assert output[-1] == f"{tag} -j MESH_REDIRECT"  # everything not returned above is captured


def test_exclusions_come_before_the_redirect():
    cfg = DEFAULT.replace(exclude_outbound_ports="25", exclude_outbound_cidrs="10.0.0.0/8")
    output = _chain(render(cfg, 4), "MESH_OUTPUT")
    assert output[0].startswith("-p tcp -m tcp --dport 25 ")  # before the self-loop rules, as in Istio
    assert output.index(next(r for r in output if r.startswith("-d 10.0.0.0/8 "))) < len(output) - 1


def test_cidrs_are_split_by_family():
    cfg = DEFAULT.replace(include_outbound_cidrs="10.0.0.0/8,fd00::/8")
    assert "-d 10.0.0.0/8 " in render(cfg, 4) and "fd00::/8" not in render(cfg, 4)
    assert "-d fd00::/8 " in render(cfg, 6) and "10.0.0.0/8" not in render(cfg, 6)


def test_include_list_of_other_family_captures_nothing_outbound():
    cfg = DEFAULT.replace(include_outbound_cidrs="10.0.0.0/8")
    assert "-j MESH_REDIRECT" not in render(cfg, 6)


def test_host_bits_are_masked_and_duplicates_dropped():
    cfg = DEFAULT.replace(exclude_outbound_cidrs="10.1.2.3/8,10.0.0.0/8", exclude_outbound_ports="80,80")
    text = render(cfg, 4)
    assert text.count("-d 10.0.0.0/8 ") == 1 and text.count("--dport 80 ") == 1


def test_include_ports_ignore_excludes_like_istio():
    cfg = DEFAULT.replace(include_inbound_ports="8080")
    assert _chain(render(cfg, 4), "MESH_INBOUND") == [
        f"-p tcp -m tcp --dport 8080 -m comment --comment {rules.COMMENT} -j MESH_IN_REDIRECT"]


def test_families():
    assert rules.families(DEFAULT) == (4, 6)
    assert rules.families(DEFAULT.replace(ipv6=False)) == (4,)
    with pytest.raises(ValueError):
        render(DEFAULT, 5)


@pytest.mark.parametrize("changes, flag, fragment", [
    ({"inbound_port": 0}, "--inbound-port", "not a valid port"),
    ({"outbound_port": 70000}, "--outbound-port", "not a valid port"),
    ({"proxy_uid": -1}, "--proxy-uid", "uid/gid"),
    ({"proxy_gid": "1337"}, "--proxy-gid", "uid/gid"),
    ({"include_inbound_ports": "80,http"}, "--include-inbound-ports", "'http'"),
    ({"exclude_inbound_ports": "65536"}, "--exclude-inbound-ports", "'65536'"),
    ({"exclude_outbound_ports": "-1"}, "--exclude-outbound-ports", "'-1'"),
    ({"include_outbound_cidrs": "10.0.0.0/33"}, "--include-outbound-cidrs", "'10.0.0.0/33'"),
    ({"exclude_outbound_cidrs": "10.0.0.0/8,nope"}, "--exclude-outbound-cidrs", "'nope'"),
    ({"include_outbound_cidrs": "*,10.0.0.0/8"}, "--include-outbound-cidrs", "'*'"),
    ({"inbound_passthrough_source": "::6"}, "--inbound-passthrough-source", "IPv4"),
    ({"inbound_passthrough_source_v6": "127.0.0.6"}, "--inbound-passthrough-source-v6", "IPv6"),
    ({"ipv6": "no"}, "--ipv6", "true or false"),
])
def test_validation_names_the_flag(changes, flag, fragment):
    with pytest.raises(ConfigError) as info:
        DEFAULT.replace(**changes)
    assert str(info.value).startswith(f"{flag}: ") and fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_wildcards_and_empty_lists_are_valid():
    cfg = InterceptConfig(include_inbound_ports=" * ", exclude_inbound_ports="", include_outbound_cidrs="")
    text = render(cfg, 4)
    assert "-j MESH_REDIRECT" not in text  # "" = capture nothing outbound
    assert _chain(text, "MESH_INBOUND") == [f"-p tcp -m comment --comment {rules.COMMENT} -j MESH_IN_REDIRECT"]
